//! Bad input never crashes the broker or loses data: malformed and unknown frames,
//! oversized frames and headers, invalid UTF-8, silent clients, connection storms.

mod common;

use common::{eventually, Broker, Conn, FRAME_TIMEOUT};
use duomq_broker::stomp::Command;
use duomq_testkit::timeouts;

const LIMITS: &str = "stomp:\n  maxBodyBytes: 64KiB\n  maxHeaderBytes: 4KiB\n  maxHeaders: 16\n  connectTimeout: 1s\n";

/// Sends `bytes` after CONNECT and expects an ERROR whose message contains `why`, then a close.
fn expect_error_after(b: &Broker, bytes: &[u8], why: &str) {
    let mut c = b.connect();
    let _ = c.send_bytes(bytes);
    let e = c.expect(Command::Error);
    let msg = e.get("message").unwrap_or("").to_string();
    assert!(msg.contains(why), "ERROR message {msg:?} should mention {why:?}");
    assert!(c.closed_within(FRAME_TIMEOUT), "connection must close after ERROR");
}

#[test]
fn given_malformed_frames_should_answer_error_close_and_keep_serving() {
    let b = Broker::start("malformed", LIMITS);
    // A persistent message that must survive every bad client below.
    let mut p = b.connect();
    p.send_receipted("/queue/keep", "precious", true);

    expect_error_after(&b, b"FLY\n\n\0", "unknown command");
    expect_error_after(&b, b"SEND\nno colon here\n\n\0", "no ':'");
    expect_error_after(&b, b"SEND\ndestination:/queue/x\nk:\xff\xfe\n\n\0", "UTF-8");
    expect_error_after(&b, b"SEND\ndestination:/queue/x\nk:bad\\tescape\n\n\0", "escape");
    expect_error_after(&b, b"SEND\ndestination:/queue/x\ncontent-length:zz\n\n\0", "content-length");
    expect_error_after(&b, b"SEND\ndestination:/queue/x\ncontent-length:2\n\nabc\0", "NUL");
    expect_error_after(&b, b"SEND\ndestination:/elsewhere/x\n\nhi\0", "must start with /queue/ or /topic/");
    expect_error_after(&b, b"SEND\n\nno destination\0", "destination");
    expect_error_after(&b, b"MESSAGE\ndestination:/queue/x\n\n\0", "not a client frame");
    expect_error_after(&b, b"SUBSCRIBE\ndestination:/queue/x\nid:1\nack:sometimes\n\n\0", "ack mode");
    expect_error_after(&b, b"ACK\nid:99-99\n\n\0", "invalid acknowledgement");
    expect_error_after(&b, b"CONNECT\naccept-version:1.2\n\n\0", "not a client frame");

    // Garbage before CONNECT.
    let mut c = Conn::raw(b.stomp_port);
    c.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(c.expect(Command::Error).command, Command::Error);

    let mut consumer = b.connect();
    consumer.subscribe("s", "/queue/keep", "client-individual", &[]);
    let m = consumer.expect(Command::Message);
    assert_eq!(&m.body[..], b"precious");
    assert!(b.log_text().contains("closing connection after error"));
}

#[test]
fn given_oversized_frames_should_refuse_before_buffering_them() {
    let b = Broker::start("oversized", LIMITS);
    let big = vec![b'x'; 65 * 1024];
    let mut frame = b"SEND\ndestination:/queue/big\ncontent-length:66560\n\n".to_vec();
    frame.extend_from_slice(&big);
    frame.push(0);
    expect_error_after(&b, &frame, "exceeds the limit");
    // Without content-length: refused once the body passes the limit.
    let mut frame = b"SEND\ndestination:/queue/big\n\n".to_vec();
    frame.extend_from_slice(&big);
    expect_error_after(&b, &frame, "exceeds the limit");
    let mut long_header = b"SEND\ndestination:/queue/big\nh:".to_vec();
    long_header.extend(std::iter::repeat_n(b'y', 8 * 1024));
    long_header.extend_from_slice(b"\n\n\0");
    expect_error_after(&b, &long_header, "headers exceed");
    let mut many = b"SEND\ndestination:/queue/big\n".to_vec();
    for i in 0..40 {
        many.extend_from_slice(format!("h{i}:v\n").as_bytes());
    }
    many.extend_from_slice(b"\n\0");
    expect_error_after(&b, &many, "more than 16 headers");
    // Just under the limit is fine.
    let mut ok = b.connect();
    let body = vec![b'z'; 64 * 1024];
    ok.send(
        &duomq_broker::stomp::Frame::new(Command::Send)
            .header("destination", "/queue/big")
            .header("receipt", "r")
            .with_body(body),
    );
    ok.expect(Command::Receipt);
}

#[test]
fn given_client_that_says_nothing_should_be_dropped_after_connect_timeout() {
    let b = Broker::start("silent", LIMITS);
    let mut c = Conn::raw(b.stomp_port);
    assert!(c.closed_within(timeouts::CLOSE), "a client without CONNECT must be disconnected");
    let mut half = Conn::raw(b.stomp_port);
    half.send_bytes(b"CONNECT\naccept-version:1.2\n").unwrap();
    assert!(half.closed_within(timeouts::CLOSE), "a half-sent CONNECT must time out too");
    b.connect().send_receipted("/queue/alive", "yes", false);
}

#[test]
fn given_thousands_of_connections_opening_and_closing_should_keep_serving() {
    let b = Broker::start("storm", LIMITS);
    let mut p = b.connect();
    p.send_receipted("/queue/storm", "before", true);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let port = b.stomp_port;
            std::thread::spawn(move || {
                for i in 0..500 {
                    match i % 3 {
                        // Connect and vanish.
                        0 => drop(std::net::TcpStream::connect(("127.0.0.1", port))),
                        // Full session.
                        1 => Conn::connect(port, &[("accept-version", "1.2")]).disconnect(),
                        // CONNECT, SEND half a frame, vanish.
                        _ => {
                            let mut c = Conn::connect(port, &[("accept-version", "1.2")]);
                            let _ = c.send_bytes(format!("SEND\ndestination:/queue/storm{t}\ncontent-length:100\n\nabc").as_bytes());
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("storm thread");
    }
    let mut c = b.connect();
    c.subscribe("s", "/queue/storm", "auto", &[]);
    assert_eq!(&c.expect(Command::Message).body[..], b"before");
    // Every connection is gone again.
    eventually("every storm connection closed", timeouts::SETTLE, || b.status()["connections"].as_u64().unwrap_or(u64::MAX) <= 2);
}

#[test]
fn given_connection_limit_should_close_extra_connections() {
    let b = Broker::start("conn-limit", "stomp:\n  maxConnections: 3\n");
    let _held: Vec<Conn> = (0..3).map(|_| b.connect()).collect();
    let mut extra = Conn::raw(b.stomp_port);
    assert!(extra.closed_within(FRAME_TIMEOUT));
    drop(_held);
    eventually("no connection left", timeouts::CLOSE, || b.status()["connections"].as_u64() == Some(0));
    b.connect().send_receipted("/queue/after", "x", false);
}
