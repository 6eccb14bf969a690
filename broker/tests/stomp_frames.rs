//! STOMP semantics against the real broker process over TCP: every frame type, queues
//! and topics, acks, redelivery, prefetch, transactions, heart-beats, auth.

mod common;

use common::{body_text, Broker, Conn, FRAME_TIMEOUT};
use duomq_broker::stomp::{Command, Frame};
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(300);

#[test]
fn given_connect_when_versions_offered_should_negotiate_highest() {
    let b = Broker::start("negotiate", "");
    for (offer, want) in [("1.2", "1.2"), ("1.1", "1.1"), ("1.0,1.1,1.2", "1.2"), ("1.1,1.0", "1.1")] {
        let mut c = Conn::raw(b.stomp_port);
        c.send(&Frame::new(Command::Connect).header("accept-version", offer).header("host", "/"));
        let f = c.expect(Command::Connected);
        assert_eq!(f.get("version"), Some(want), "offer {offer}");
        assert!(f.get("heart-beat").is_some());
        assert!(f.get("session").is_some());
        assert!(f.get("server").unwrap_or("").starts_with("duomq/"));
    }
    let mut c = Conn::raw(b.stomp_port);
    c.send(&Frame::new(Command::Stomp).header("accept-version", "2.0").header("host", "/"));
    let f = c.expect(Command::Error);
    assert!(f.get("message").unwrap_or("").contains("version"));
    assert!(c.closed_within(FRAME_TIMEOUT));
    // 1.0: no accept-version header.
    let mut c = Conn::raw(b.stomp_port);
    c.send(&Frame::new(Command::Connect));
    assert_eq!(c.expect(Command::Connected).get("version"), Some("1.0"));
}

#[test]
fn given_queue_when_message_sent_should_deliver_with_headers_and_receipt() {
    let b = Broker::start("queue-basic", "");
    let mut consumer = b.connect();
    consumer.subscribe("s1", "/queue/basic", "auto", &[]);
    let mut producer = b.connect();
    producer.send(
        &Frame::new(Command::Send)
            .header("destination", "/queue/basic")
            .header("receipt", "77")
            .header("custom", "a:b\\c\nd")
            .header("content-type", "text/plain")
            .with_body("hello"),
    );
    assert_eq!(producer.expect(Command::Receipt).get("receipt-id"), Some("77"));
    let m = consumer.expect(Command::Message);
    assert_eq!(body_text(&m), "hello");
    assert_eq!(m.get("destination"), Some("/queue/basic"));
    assert_eq!(m.get("subscription"), Some("s1"));
    assert!(m.get("message-id").is_some());
    assert_eq!(m.get("custom"), Some("a:b\\c\nd"), "escaped header must round trip");
    assert_eq!(m.get("content-type"), Some("text/plain"));
    assert_eq!(m.get("receipt"), None);
}

#[test]
fn given_a_connection_subscribed_where_it_sends_should_get_each_receipt_before_its_message() {
    let b = Broker::start("receipt-order", "");
    let mut c = b.connect();
    c.subscribe("own", "/queue/own", "auto", &[]);
    for i in 0..20 {
        let receipt = format!("r{i}");
        c.send(
            &Frame::new(Command::Send)
                .header("destination", "/queue/own")
                .header("persistent", "true")
                .header("receipt", receipt.as_str())
                .with_body(format!("m{i}")),
        );
        let first = c.expect_frame();
        assert_eq!((first.command, first.get("receipt-id")), (Command::Receipt, Some(receipt.as_str())), "send {i}");
        assert_eq!(body_text(&c.expect(Command::Message)), format!("m{i}"));
    }
}

#[test]
fn given_binary_body_with_nuls_should_arrive_intact() {
    let b = Broker::start("binary", "");
    let mut c = b.connect();
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    c.send(&Frame::new(Command::Send).header("destination", "/queue/bin").header("receipt", "r").with_body(body.clone()));
    c.expect(Command::Receipt);
    c.subscribe("s", "/queue/bin", "auto", &[]);
    let m = c.expect(Command::Message);
    assert_eq!(&m.body[..], &body[..]);
}

#[test]
fn given_two_consumers_on_queue_should_share_messages_fairly() {
    let b = Broker::start("fair", "");
    let mut a = b.connect();
    let mut c = b.connect();
    a.subscribe("a", "/queue/fair", "client-individual", &[]);
    c.subscribe("c", "/queue/fair", "client-individual", &[]);
    let mut p = b.connect();
    for i in 0..20 {
        p.send_receipted("/queue/fair", &i.to_string(), false);
    }
    let mut got_a = 0;
    while a.read_frame(SHORT).is_some() {
        got_a += 1;
    }
    let mut got_c = 0;
    while c.read_frame(SHORT).is_some() {
        got_c += 1;
    }
    assert_eq!(got_a + got_c, 20);
    assert_eq!(got_a, 10, "round robin between two consumers with room");
}

#[test]
fn given_topic_should_copy_to_every_subscriber_and_not_keep_for_later_ones() {
    let b = Broker::start("topic", "");
    let mut s1 = b.connect();
    let mut s2 = b.connect();
    s1.subscribe("t", "/topic/news", "auto", &[]);
    s2.subscribe("t", "/topic/news", "client", &[]);
    let mut p = b.connect();
    p.send_receipted("/topic/news", "one", true);
    assert_eq!(body_text(&s1.expect(Command::Message)), "one");
    assert_eq!(body_text(&s2.expect(Command::Message)), "one");
    let mut late = b.connect();
    late.subscribe("t", "/topic/news", "auto", &[]);
    assert!(late.read_frame(SHORT).is_none(), "a topic keeps nothing for later subscribers");
}

#[test]
fn given_nack_should_redeliver_marked_redelivered() {
    let b = Broker::start("nack", "");
    let mut c = b.connect();
    c.subscribe("s", "/queue/nack", "client-individual", &[]);
    c.send_receipted("/queue/nack", "x", true);
    let m = c.expect(Command::Message);
    assert_eq!(m.get("redelivered"), None);
    c.send(&Frame::new(Command::Nack).header("id", m.get("ack").unwrap()).header("receipt", "n"));
    // RECEIPT and redelivery can come in either order.
    let mut saw_receipt = false;
    let mut again = None;
    for _ in 0..2 {
        let f = c.expect_frame();
        match f.command {
            Command::Receipt => saw_receipt = true,
            Command::Message => again = Some(f),
            _ => panic!("unexpected {f:?}"),
        }
    }
    assert!(saw_receipt);
    let again = again.expect("redelivery");
    assert_eq!(again.get("redelivered"), Some("true"));
    assert_eq!(again.get("message-id"), m.get("message-id"));
    c.ack(&again, true);
    assert_eq!(b.queue_depth("/queue/nack"), 0);
}

#[test]
fn given_consumer_disconnects_without_ack_should_redeliver_to_another() {
    let b = Broker::start("redeliver", "");
    let mut p = b.connect();
    for i in 0..3 {
        p.send_receipted("/queue/rd", &format!("m{i}"), true);
    }
    let mut first = b.connect();
    first.subscribe("s", "/queue/rd", "client-individual", &[]);
    for _ in 0..3 {
        first.expect(Command::Message);
    }
    drop(first);
    let mut second = b.connect();
    second.subscribe("s", "/queue/rd", "client-individual", &[]);
    let mut bodies = vec![];
    for _ in 0..3 {
        let m = second.expect(Command::Message);
        assert_eq!(m.get("redelivered"), Some("true"));
        bodies.push(body_text(&m));
        second.ack(&m, false);
    }
    assert_eq!(bodies, ["m0", "m1", "m2"], "order kept on redelivery");
}

#[test]
fn given_client_ack_mode_should_ack_cumulatively() {
    let b = Broker::start("cumulative", "");
    let mut c = b.connect();
    c.subscribe("s", "/queue/cum", "client", &[]);
    let mut p = b.connect();
    for i in 0..5 {
        p.send_receipted("/queue/cum", &i.to_string(), true);
    }
    let msgs: Vec<Frame> = (0..5).map(|_| c.expect(Command::Message)).collect();
    c.ack(&msgs[2], true);
    assert_eq!(b.queue_depth("/queue/cum"), 2);
    c.disconnect();
    let mut d = b.connect();
    d.subscribe("s", "/queue/cum", "client-individual", &[]);
    let rest: Vec<String> = (0..2).map(|_| body_text(&d.expect(Command::Message))).collect();
    assert_eq!(rest, ["3", "4"]);
}

#[test]
fn given_prefetch_should_bound_in_flight_until_acked() {
    let b = Broker::start("prefetch", "");
    let mut p = b.connect();
    for i in 0..10 {
        p.send_receipted("/queue/pf", &i.to_string(), false);
    }
    let mut c = b.connect();
    c.subscribe("s", "/queue/pf", "client-individual", &[("activemq.prefetchSize", "3")]);
    let first: Vec<Frame> = (0..3).map(|_| c.expect(Command::Message)).collect();
    assert!(c.read_frame(SHORT).is_none(), "no more than the prefetch in flight");
    c.ack(&first[0], false);
    let next = c.expect(Command::Message);
    assert_eq!(body_text(&next), "3");
}

#[test]
fn given_transaction_should_hide_sends_until_commit_and_drop_on_abort() {
    let b = Broker::start("tx", "");
    let mut c = b.connect();
    c.subscribe("s", "/queue/tx", "client-individual", &[]);
    let mut p = b.connect();
    p.send(&Frame::new(Command::Begin).header("transaction", "t1"));
    p.send(&Frame::new(Command::Send).header("destination", "/queue/tx").header("transaction", "t1").header("persistent", "true").with_body("a"));
    p.send(&Frame::new(Command::Send).header("destination", "/queue/tx").header("transaction", "t1").with_body("b"));
    assert!(c.read_frame(SHORT).is_none(), "nothing visible before COMMIT");
    p.send(&Frame::new(Command::Commit).header("transaction", "t1").header("receipt", "c"));
    p.expect(Command::Receipt);
    let got: Vec<Frame> = (0..2).map(|_| c.expect(Command::Message)).collect();
    assert_eq!(got.iter().map(body_text).collect::<Vec<_>>(), ["a", "b"]);

    p.send(&Frame::new(Command::Begin).header("transaction", "t2"));
    p.send(&Frame::new(Command::Send).header("destination", "/queue/tx").header("transaction", "t2").with_body("gone"));
    p.send(&Frame::new(Command::Abort).header("transaction", "t2").header("receipt", "a"));
    p.expect(Command::Receipt);
    assert!(c.read_frame(SHORT).is_none(), "aborted sends never arrive");

    // Acks inside a transaction take effect at commit.
    c.send(&Frame::new(Command::Begin).header("transaction", "t3"));
    for m in &got {
        c.send(&Frame::new(Command::Ack).header("id", m.get("ack").unwrap()).header("transaction", "t3"));
    }
    assert_eq!(b.queue_depth("/queue/tx"), 2);
    c.send(&Frame::new(Command::Commit).header("transaction", "t3").header("receipt", "c3"));
    c.expect(Command::Receipt);
    assert_eq!(b.queue_depth("/queue/tx"), 0);

    p.send(&Frame::new(Command::Commit).header("transaction", "nope").header("receipt", "x"));
    let e = p.expect(Command::Error);
    assert_eq!(e.get("receipt-id"), Some("x"));
    assert!(p.closed_within(FRAME_TIMEOUT));
}

#[test]
fn given_unsubscribe_should_stop_deliveries_and_release_in_flight() {
    let b = Broker::start("unsub", "");
    let mut c = b.connect();
    c.subscribe("s", "/queue/un", "client-individual", &[]);
    c.send_receipted("/queue/un", "1", false);
    c.expect(Command::Message);
    c.send(&Frame::new(Command::Unsubscribe).header("id", "s").header("receipt", "u"));
    c.expect(Command::Receipt);
    c.send_receipted("/queue/un", "2", false);
    assert!(c.read_frame(SHORT).is_none());
    assert_eq!(b.queue_depth("/queue/un"), 2);
    c.send(&Frame::new(Command::Unsubscribe).header("id", "s"));
    assert_eq!(c.expect(Command::Error).get("message").map(|m| m.contains("subscription")), Some(true));
}

#[test]
fn given_heartbeats_should_send_them_and_drop_a_silent_client() {
    let b = Broker::start("heartbeat", "stomp:\n  heartbeatSend: 100ms\n  heartbeatReceive: 100ms\n  heartbeatGrace: 2\n");
    let mut c = Conn::connect(b.stomp_port, &[("accept-version", "1.2"), ("heart-beat", "100,100")]);
    c.subscribe("s", "/queue/hb", "client-individual", &[]);
    let mut p = b.connect();
    p.send_receipted("/queue/hb", "x", true);
    c.expect(Command::Message);
    // Say nothing: the broker sends heart-beats, then drops us and redelivers.
    assert!(c.closed_within(Duration::from_secs(10)), "silent client must be dropped");
    let mut other = b.connect();
    other.subscribe("s", "/queue/hb", "client-individual", &[]);
    assert_eq!(other.expect(Command::Message).get("redelivered"), Some("true"));

    let mut talker = Conn::connect(b.stomp_port, &[("accept-version", "1.2"), ("heart-beat", "100,100")]);
    for _ in 0..10 {
        talker.send_bytes(b"\n").unwrap();
        let _ = talker.read_frame(Duration::from_millis(100));
    }
    assert!(talker.heartbeats_seen > 0, "broker sends heart-beats when idle");
    talker.send_receipted("/queue/hb2", "still here", false);
}

#[test]
fn given_users_should_refuse_wrong_password_and_anonymous() {
    let b = Broker::start("auth", "auth:\n  users:\n    - name: app\n      password: s3cret\n");
    let mut ok = Conn::connect(b.stomp_port, &[("accept-version", "1.2"), ("login", "app"), ("passcode", "s3cret")]);
    ok.send_receipted("/queue/a", "x", false);
    for headers in [vec![("login", "app"), ("passcode", "wrong")], vec![], vec![("login", "eve"), ("passcode", "s3cret")]] {
        let mut c = Conn::raw(b.stomp_port);
        let mut f = Frame::new(Command::Connect).header("accept-version", "1.2");
        for (k, v) in headers {
            f = f.header(k, v);
        }
        c.send(&f);
        let e = c.expect(Command::Error);
        assert!(e.get("message").unwrap_or("").contains("authentication failed"));
        assert!(c.closed_within(FRAME_TIMEOUT));
    }
    let open = Broker::start("auth-anon", "auth:\n  allowAnonymous: true\n  users:\n    - name: app\n      password: s3cret\n");
    Conn::connect(open.stomp_port, &[("accept-version", "1.2")]);
}

#[test]
fn given_receipt_on_disconnect_should_answer_then_close() {
    let b = Broker::start("disconnect", "");
    let mut c = b.connect();
    c.send(&Frame::new(Command::Send).header("destination", "/queue/d").header("persistent", "true").with_body("x"));
    c.send(&Frame::new(Command::Disconnect).header("receipt", "bye"));
    assert_eq!(c.expect(Command::Receipt).get("receipt-id"), Some("bye"));
    assert!(c.closed_within(FRAME_TIMEOUT));
    assert_eq!(b.queue_depth("/queue/d"), 1, "work before DISCONNECT is done before its receipt");
}

#[test]
fn given_stomp_1_1_ack_by_message_id_should_work() {
    let b = Broker::start("ack11", "");
    let mut c = Conn::connect(b.stomp_port, &[("accept-version", "1.1")]);
    c.subscribe("s", "/queue/a11", "client-individual", &[]);
    c.send_receipted("/queue/a11", "x", true);
    let m = c.expect(Command::Message);
    c.send(
        &Frame::new(Command::Ack)
            .header("message-id", m.get("message-id").unwrap())
            .header("subscription", "s")
            .header("receipt", "ok"),
    );
    c.expect(Command::Receipt);
    assert_eq!(b.queue_depth("/queue/a11"), 0);
}

#[test]
fn given_stomp_1_1_when_a_header_value_ends_in_cr_should_deliver_the_cr() {
    let b = Broker::start("cr11", "");
    // 1.1's end of line is LF alone: the CR before it is the value's.
    let mut consumer = Conn::connect(b.stomp_port, &[("accept-version", "1.1")]);
    consumer.subscribe("s", "/queue/cr11", "auto", &[]);
    let mut producer = Conn::connect(b.stomp_port, &[("accept-version", "1.1")]);
    producer.send_bytes(b"SEND\ndestination:/queue/cr11\nk:v\r\nreceipt:r\n\nx\0").unwrap();
    producer.expect(Command::Receipt);
    let m = consumer.expect(Command::Message);
    assert_eq!(m.get("k"), Some("v\r"));
}

#[test]
fn given_connect_in_crlf_lines_should_strip_the_cr_only_when_it_offers_1_2() {
    let b = Broker::start("cr-connect", "auth:\n  users:\n    - name: app\n      password: s3cret\n");
    let mut c = Conn::raw(b.stomp_port);
    c.send_bytes(b"CONNECT\r\naccept-version:1.1,1.2\r\nhost:/\r\nlogin:app\r\npasscode:s3cret\r\n\r\n\0").unwrap();
    assert_eq!(c.expect(Command::Connected).get("version"), Some("1.2"));
    // Offering only 1.1, the CR is part of the passcode, which is then wrong.
    let mut c = Conn::raw(b.stomp_port);
    c.send_bytes(b"CONNECT\naccept-version:1.1\nhost:/\nlogin:app\npasscode:s3cret\r\n\n\0").unwrap();
    c.expect(Command::Error);
    assert!(c.closed_within(FRAME_TIMEOUT));
}

#[test]
fn given_a_nul_in_a_header_should_answer_error_naming_the_header_and_close() {
    let b = Broker::start("nul-header", "");
    let mut c = b.connect();
    c.send_bytes(b"SEND\ndestination:/queue/ok\nk:a\0b\nreceipt:r\n\nx\0").unwrap();
    let e = c.expect(Command::Error);
    let message = e.get("message").unwrap_or("");
    assert!(message.contains("NUL") && message.contains("\"k\""), "{message}");
    assert!(c.closed_within(FRAME_TIMEOUT));
    assert_eq!(b.queue_depth("/queue/ok"), 0);
}

#[test]
fn given_max_header_bytes_should_accept_a_head_of_exactly_the_limit_and_refuse_one_byte_more() {
    let b = Broker::start("head-limit", "stomp:\n  maxHeaderBytes: 4KiB\n");
    // The head: command line, header lines and the blank line, end-of-lines included.
    let head = |len: usize| {
        let start = b"SEND\ndestination:/queue/h\nreceipt:r\npad:".as_slice();
        let mut frame = start.to_vec();
        frame.extend(std::iter::repeat_n(b'p', len - start.len() - 2));
        frame.extend_from_slice(b"\n\n");
        assert_eq!(frame.len(), len);
        frame.push(0);
        frame
    };
    let mut c = b.connect();
    c.send_bytes(&head(4096)).unwrap();
    assert_eq!(c.expect(Command::Receipt).get("receipt-id"), Some("r"));
    c.send_bytes(&head(4097)).unwrap();
    let e = c.expect(Command::Error);
    assert!(e.get("message").unwrap_or("").contains("headers exceed 4096 bytes"), "{e:?}");
    assert_eq!(b.queue_depth("/queue/h"), 1);
}
