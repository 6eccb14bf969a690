//! The client against a scripted fake broker on a loopback socket: each test plays the
//! broker's side frame by frame, so the client's handling of every answer is pinned
//! without a real broker.

use super::*;
use crate::stomp::{Inbound, Limits, StompCodec};
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound on any single wait in these tests, so a bug fails instead of hanging.
const STEP: Duration = Duration::from_secs(5);

struct FakePeer {
    stream: TcpStream,
    codec: StompCodec,
    buf: BytesMut,
}

impl FakePeer {
    async fn next_inbound(&mut self) -> Option<Inbound> {
        loop {
            if let Some(item) = self.codec.decode(&mut self.buf).expect("client sent a malformed frame") {
                return Some(item);
            }
            let n = tokio::time::timeout(STEP, self.stream.read_buf(&mut self.buf)).await.ok()?.ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            match self.next_inbound().await? {
                Inbound::Frame(f) => return Some(f),
                Inbound::Heartbeat => continue,
            }
        }
    }

    async fn expect(&mut self, command: Command) -> Frame {
        let frame = self.next_frame().await.unwrap_or_else(|| panic!("expected {command}, connection ended"));
        assert_eq!(frame.command, command, "unexpected frame {frame:?}");
        frame
    }

    async fn expect_any(&mut self) -> Frame {
        self.next_frame().await.unwrap_or_else(|| panic!("expected a frame, connection ended"))
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.codec.encode(&frame, &mut out);
        self.stream.write_all(&out).await.expect("fake broker failed to write");
    }

    async fn receipt_for(&mut self, frame: &Frame) {
        let id = frame.get("receipt").expect("frame asked for no receipt").to_string();
        self.send(Frame::new(Command::Receipt).header("receipt-id", id)).await;
    }

    /// Reads CONNECT and answers CONNECTED with the given heart-beat header.
    async fn accept_connect(&mut self, heart_beat: &str) -> Frame {
        let connect = self.expect(Command::Connect).await;
        self.send(Frame::new(Command::Connected).header("version", "1.2").header("heart-beat", heart_beat)).await;
        connect
    }
}

/// A listener on a free loopback port and its URL.
async fn fake_broker() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("failed to bind a loopback port");
    let port = listener.local_addr().expect("bound listener has an address").port();
    (listener, format!("stomp://127.0.0.1:{port}"))
}

async fn accept(listener: &TcpListener) -> FakePeer {
    let (stream, _) =
        tokio::time::timeout(STEP, listener.accept()).await.expect("no client came").expect("accept failed");
    FakePeer { stream, codec: StompCodec::new(Limits::default()), buf: BytesMut::new() }
}

fn quiet() -> ClientOptions {
    ClientOptions { heartbeat: Heartbeat::OFF, ..ClientOptions::default() }
}

#[tokio::test]
async fn given_credentials_when_connecting_should_send_versions_host_login_and_heartbeat() {
    let (listener, url) = fake_broker().await;
    let broker = tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        peer.accept_connect("0,0").await
    });
    let options = ClientOptions { passcode: Some("override".into()), ..ClientOptions::default() };
    let client = Client::connect(&url.replace("stomp://", "stomp://app:secret@"), options).await.unwrap();
    let connect = broker.await.unwrap();
    assert_eq!(connect.get("accept-version"), Some("1.2,1.1"));
    assert_eq!(connect.get("host"), Some("127.0.0.1"));
    assert_eq!(connect.get("login"), Some("app"));
    assert_eq!(connect.get("passcode"), Some("override"));
    assert_eq!(connect.get("heart-beat"), Some("10000,10000"));
    assert_eq!(client.version(), Version::V1_2);
}

#[tokio::test]
async fn given_error_answer_when_connecting_should_fail_refused_with_broker_message() {
    let (listener, url) = fake_broker().await;
    tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        peer.expect(Command::Connect).await;
        peer.send(Frame::new(Command::Error).header("message", "authentication failed for login \"x\"")).await;
    });
    let err = Client::connect(&url, quiet()).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused { message } if message == "authentication failed for login \"x\""),
        "{err:?}"
    );
}

#[tokio::test]
async fn given_nothing_listening_when_connecting_should_fail_naming_the_address() {
    let (listener, url) = fake_broker().await;
    drop(listener);
    let err = Client::connect(&url, quiet()).await.unwrap_err();
    let addr = url.trim_start_matches("stomp://").to_string();
    assert!(matches!(&err, ClientError::Connect { addr: a, .. } if *a == addr), "{err:?}");
}

#[tokio::test]
async fn given_failover_url_when_first_member_is_down_should_connect_to_the_next() {
    let (down, down_url) = fake_broker().await;
    drop(down);
    let (listener, up_url) = fake_broker().await;
    tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        peer.accept_connect("0,0").await;
        peer.next_frame().await
    });
    let url = format!("failover:({down_url},{up_url})?randomize=false");
    let client = Client::connect(&url, quiet()).await.unwrap();
    assert_eq!(client.connected_to().to_string(), up_url);
}

#[tokio::test]
async fn given_pipelined_sends_when_receipts_arrive_should_complete_each_future() {
    let (listener, url) = fake_broker().await;
    let broker = tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        peer.accept_connect("0,0").await;
        let mut sends = Vec::new();
        for _ in 0..3 {
            sends.push(peer.expect(Command::Send).await);
        }
        // Answer in reverse to show receipts are matched by id, not by order.
        for send in sends.iter().rev() {
            peer.receipt_for(send).await;
        }
        sends
    });
    let client = Client::connect(&url, quiet()).await.unwrap();
    let mut window = Vec::new();
    for i in 0..3 {
        let options =
            SendOptions { persistent: true, headers: vec![("seq".into(), i.to_string())], ..SendOptions::default() };
        window.push(client.send_with_receipt("/queue/a", format!("m{i}"), options).await.unwrap());
    }
    for receipt in window {
        tokio::time::timeout(STEP, receipt).await.unwrap().unwrap();
    }
    let sends = broker.await.unwrap();
    assert_eq!(sends[1].get("destination"), Some("/queue/a"));
    assert_eq!(sends[1].get("persistent"), Some("true"));
    assert_eq!(sends[1].get("seq"), Some("1"));
    assert_eq!(&sends[1].body[..], b"m1");
}

#[tokio::test]
async fn given_error_after_connect_when_receipt_pending_should_fail_it_with_broker_message() {
    let (listener, url) = fake_broker().await;
    tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        peer.accept_connect("0,0").await;
        peer.expect(Command::Send).await;
        peer.send(Frame::new(Command::Error).header("message", "destination is full")).await;
    });
    let client = Client::connect(&url, quiet()).await.unwrap();
    let receipted = SendOptions { receipt: true, ..SendOptions::default() };
    let err = client.send("/queue/a", "x", receipted.clone()).await.unwrap_err();
    assert!(matches!(&err, ClientError::Broker { message } if message == "destination is full"), "{err:?}");
    // Later calls report the same cause rather than a bare "closed".
    let again = client.send("/queue/a", "y", receipted).await.unwrap_err();
    assert!(matches!(again, ClientError::Broker { .. }), "{again:?}");
    assert!(matches!(client.failure(), Some(ClientError::Broker { .. })));
}

#[tokio::test]
async fn given_no_receipt_when_receipt_timeout_passes_should_fail_with_timeout() {
    let (listener, url) = fake_broker().await;
    tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        peer.accept_connect("0,0").await;
        while peer.next_frame().await.is_some() {}
    });
    let options = ClientOptions { receipt_timeout: Duration::from_millis(50), ..quiet() };
    let client = Client::connect(&url, options).await.unwrap();
    let err = client.commit("tx1").await.unwrap_err();
    assert!(matches!(&err, ClientError::Timeout { what } if what.contains("COMMIT")), "{err:?}");
}

#[tokio::test]
async fn given_subscription_when_messages_arrive_should_route_them_and_ack_by_token() {
    let (listener, url) = fake_broker().await;
    let broker = tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        peer.accept_connect("0,0").await;
        let subscribe = peer.expect(Command::Subscribe).await;
        peer.receipt_for(&subscribe).await;
        let id = subscribe.get("id").unwrap_or_default().to_string();
        for (n, redelivered) in [(1, false), (2, true)] {
            let mut message = Frame::new(Command::Message)
                .header("subscription", id.as_str())
                .header("message-id", n.to_string())
                .header("destination", "/queue/a")
                .header("ack", format!("7-{n}"))
                .header("custom", "v")
                .with_body(format!("body{n}"));
            if redelivered {
                message = message.header("redelivered", "true");
            }
            peer.send(message).await;
        }
        let ack = peer.expect(Command::Ack).await;
        let nack = peer.expect(Command::Nack).await;
        peer.receipt_for(&nack).await;
        (subscribe, ack, nack)
    });
    let client = Client::connect(&url, quiet()).await.unwrap();
    let mut sub = client.subscribe("/queue/a", AckMode::ClientIndividual, Some(5)).await.unwrap();
    let first = tokio::time::timeout(STEP, sub.recv()).await.unwrap().unwrap();
    let second = tokio::time::timeout(STEP, sub.recv()).await.unwrap().unwrap();
    assert_eq!((first.message_id.as_str(), first.redelivered, &first.body[..]), ("1", false, &b"body1"[..]));
    assert_eq!(first.header("custom"), Some("v"));
    assert!(second.redelivered);
    client.ack(&first).await.unwrap();
    client.nack_with(&second, AckOptions { receipt: true, transaction: Some("t".into()) }).await.unwrap();
    let (subscribe, ack, nack) = broker.await.unwrap();
    assert_eq!(subscribe.get("ack"), Some("client-individual"));
    assert_eq!(subscribe.get("activemq.prefetchSize"), Some("5"));
    assert_eq!(ack.get("id"), Some("7-1"));
    assert_eq!((nack.get("id"), nack.get("transaction")), (Some("7-2"), Some("t")));
}

#[tokio::test]
async fn given_auto_ack_message_when_acked_should_refuse_locally() {
    let (listener, url) = fake_broker().await;
    tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        peer.accept_connect("0,0").await;
        while peer.next_frame().await.is_some() {}
    });
    let client = Client::connect(&url, quiet()).await.unwrap();
    let message = Message {
        destination: "/queue/a".into(),
        message_id: "9".into(),
        subscription: "sub-1".into(),
        ack: None,
        redelivered: false,
        headers: vec![],
        body: Bytes::new(),
    };
    let err = client.ack(&message).await.unwrap_err();
    assert!(matches!(err, ClientError::NotAckable { .. }), "{err:?}");
}

#[tokio::test]
async fn given_disconnect_when_broker_receipts_should_close_and_end_subscriptions() {
    let (listener, url) = fake_broker().await;
    tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        peer.accept_connect("0,0").await;
        let subscribe = peer.expect(Command::Subscribe).await;
        peer.receipt_for(&subscribe).await;
        let disconnect = peer.expect(Command::Disconnect).await;
        peer.receipt_for(&disconnect).await;
    });
    let client = Client::connect(&url, quiet()).await.unwrap();
    let mut sub = client.subscribe("/topic/t", AckMode::Auto, None).await.unwrap();
    client.disconnect().await.unwrap();
    assert!(tokio::time::timeout(STEP, sub.recv()).await.unwrap().is_none());
    assert!(client.failure().is_none());
    assert!(matches!(client.send("/queue/a", "x", SendOptions::default()).await, Err(ClientError::Closed)));
    client.disconnect().await.unwrap();
}

#[tokio::test]
async fn given_negotiated_heartbeat_when_idle_should_send_eols() {
    let (listener, url) = fake_broker().await;
    let broker = tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        peer.accept_connect("0,20").await;
        peer.next_inbound().await
    });
    let options =
        ClientOptions { heartbeat: Heartbeat { send: Duration::from_millis(20), receive: Duration::ZERO }, ..quiet() };
    let _client = Client::connect(&url, options).await.unwrap();
    assert_eq!(broker.await.unwrap(), Some(Inbound::Heartbeat));
}

#[tokio::test]
async fn given_silent_broker_when_heartbeats_were_promised_should_close_with_timeout() {
    let (listener, url) = fake_broker().await;
    tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        peer.accept_connect("20,0").await;
        // Promise heart-beats every 20ms, then say nothing.
        tokio::time::sleep(STEP).await;
    });
    let options =
        ClientOptions { heartbeat: Heartbeat { send: Duration::ZERO, receive: Duration::from_millis(20) }, ..quiet() };
    let client = Client::connect(&url, options).await.unwrap();
    // The fake never answers the receipt: the silence closes the connection first.
    let err = tokio::time::timeout(STEP, client.commit("tx")).await.unwrap().unwrap_err();
    assert!(matches!(&err, ClientError::Timeout { what } if what.contains("heart-beat")), "{err:?}");
    assert!(matches!(client.failure(), Some(ClientError::Timeout { .. })));
}

// --- failover ---------------------------------------------------------------------------

/// A failover URL over `members`, in order, reconnecting fast.
fn failover_url(members: &[&str], extra: &str) -> String {
    format!("failover:({})?randomize=false&initialReconnectDelay=10ms&maxReconnectDelay=50ms{extra}", members.join(","))
}

async fn next_event(events: &mut broadcast::Receiver<ConnectionEvent>) -> ConnectionEvent {
    tokio::time::timeout(STEP, events.recv()).await.expect("no connection event").expect("event channel closed")
}

#[tokio::test]
async fn given_dropped_member_when_sends_unreceipted_should_resubscribe_and_resend_them_on_the_next() {
    let (listener_a, url_a) = fake_broker().await;
    let (listener_b, url_b) = fake_broker().await;
    let member_a = tokio::spawn(async move {
        let mut peer = accept(&listener_a).await;
        drop(listener_a);
        peer.accept_connect("0,0").await;
        let subscribe = peer.expect(Command::Subscribe).await;
        peer.receipt_for(&subscribe).await;
        let sends = [peer.expect(Command::Send).await, peer.expect(Command::Send).await];
        // The live dies with both SENDs unreceipted.
        (subscribe, sends)
    });
    let member_b = tokio::spawn(async move {
        let mut peer = accept(&listener_b).await;
        peer.accept_connect("0,0").await;
        let subscribe = peer.expect(Command::Subscribe).await;
        let sends = [peer.expect(Command::Send).await, peer.expect(Command::Send).await];
        for send in &sends {
            peer.receipt_for(send).await;
        }
        let id = subscribe.get("id").unwrap_or_default().to_string();
        let message = Frame::new(Command::Message)
            .header("subscription", id)
            .header("message-id", "1")
            .header("destination", "/queue/a")
            .header("ack", "b-1")
            .with_body("after failover");
        peer.send(message).await;
        (subscribe, sends, peer)
    });

    let client = Client::connect(&failover_url(&[&url_a, &url_b], ""), quiet()).await.unwrap();
    let mut events = client.events();
    let options = SubscribeOptions {
        ack: AckMode::ClientIndividual,
        prefetch: Some(7),
        headers: vec![("selector".into(), "x = 1".into())],
    };
    let mut sub = client.subscribe_with("/queue/a", options).await.unwrap();
    let persistent = SendOptions { persistent: true, ..SendOptions::default() };
    let first = client.send_with_receipt("/queue/a", "one", persistent.clone()).await.unwrap();
    let second = client.send_with_receipt("/queue/a", "two", persistent).await.unwrap();
    tokio::time::timeout(STEP, first).await.unwrap().unwrap();
    tokio::time::timeout(STEP, second).await.unwrap().unwrap();

    let (subscribe_a, sends_a) = member_a.await.unwrap();
    let (subscribe_b, sends_b, _peer_b) = member_b.await.unwrap();
    let without_receipt = |f: &Frame| f.headers.iter().filter(|(k, _)| k != "receipt").cloned().collect::<Vec<_>>();
    assert_eq!(without_receipt(&subscribe_b), without_receipt(&subscribe_a), "same id, ack, prefetch, headers");
    assert_eq!(subscribe_b.get("receipt"), None, "a confirmed subscription is replayed without receipt");
    let ids = |sends: &[Frame; 2]| sends.clone().map(|f| f.get("message-id").map(str::to_string));
    assert_eq!(ids(&sends_b), ids(&sends_a), "resent in order with the same message-id");
    assert_ne!(ids(&sends_a)[0], ids(&sends_a)[1]);
    assert_eq!(&sends_b[1].body[..], b"two");

    let delivered = tokio::time::timeout(STEP, sub.recv()).await.unwrap().unwrap();
    assert_eq!(&delivered.body[..], b"after failover");
    assert_eq!(client.failovers(), 1);
    assert_eq!(client.connected_to().to_string(), url_b);
    assert!(matches!(next_event(&mut events).await, ConnectionEvent::Lost { member, .. } if member.to_string() == url_a));
    assert!(matches!(next_event(&mut events).await, ConnectionEvent::Reconnected { member, .. } if member.to_string() == url_b));
}

#[tokio::test]
async fn given_live_shutting_down_when_it_then_answers_not_live_should_skip_it_for_the_next_member() {
    let (listener_live, url_live) = fake_broker().await;
    let (listener_backup, url_backup) = fake_broker().await;
    let backup_url = url_backup.clone();
    tokio::spawn(async move {
        let mut peer = accept(&listener_live).await;
        peer.accept_connect("0,0").await;
        peer.send(Frame::new(Command::Error).header("message", "broker is shutting down")).await;
        // Restarted as a backup: it refuses clients and names the live.
        loop {
            let mut peer = accept(&listener_live).await;
            peer.expect(Command::Connect).await;
            let refusal = format!("not live: backup of group g1; live is {backup_url}");
            peer.send(Frame::new(Command::Error).header("message", refusal)).await;
        }
    });
    let backup = tokio::spawn(async move {
        let mut peer = accept(&listener_backup).await;
        peer.accept_connect("0,0").await;
        let send = peer.expect(Command::Send).await;
        peer.receipt_for(&send).await;
        peer
    });
    let client = Client::connect(&failover_url(&[&url_live, &url_backup], ""), quiet()).await.unwrap();
    let receipted = SendOptions { receipt: true, ..SendOptions::default() };
    tokio::time::timeout(STEP, client.send("/queue/a", "x", receipted)).await.unwrap().unwrap();
    let _peer = backup.await.unwrap();
    assert_eq!(client.connected_to().to_string(), url_backup);
    assert_eq!(client.failovers(), 1);
    assert!(client.failure().is_none());
}

#[tokio::test]
async fn given_no_member_up_when_attempts_run_out_should_fail_pending_operations_and_end_subscriptions() {
    let (listener, url) = fake_broker().await;
    tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        drop(listener);
        peer.accept_connect("0,0").await;
        let subscribe = peer.expect(Command::Subscribe).await;
        peer.receipt_for(&subscribe).await;
        peer.expect(Command::Send).await;
    });
    let client = Client::connect(&failover_url(&[&url], "&maxReconnectAttempts=2"), quiet()).await.unwrap();
    let mut events = client.events();
    let mut sub = client.subscribe("/queue/a", AckMode::Auto, None).await.unwrap();
    let pending = client.send_with_receipt("/queue/a", "x", SendOptions::default()).await.unwrap();
    let err = tokio::time::timeout(STEP, pending).await.unwrap().unwrap_err();
    assert!(matches!(&err, ClientError::FailoverExhausted { attempts: 2, .. }), "{err:?}");
    assert!(err.to_string().contains("after 2 attempts"), "{err}");
    assert!(tokio::time::timeout(STEP, sub.recv()).await.unwrap().is_none());
    assert!(matches!(client.failure(), Some(ClientError::FailoverExhausted { .. })));
    let later = client.send("/queue/a", "y", SendOptions::default()).await.unwrap_err();
    assert!(matches!(later, ClientError::FailoverExhausted { .. }), "{later:?}");
    assert!(matches!(next_event(&mut events).await, ConnectionEvent::Lost { .. }));
    assert!(matches!(next_event(&mut events).await, ConnectionEvent::GaveUp { attempts: 2, .. }));
}

#[tokio::test]
async fn given_failover_when_old_deliveries_and_transactions_are_settled_should_not_send_them_to_the_new_broker() {
    let (listener_a, url_a) = fake_broker().await;
    let (listener_b, url_b) = fake_broker().await;
    tokio::spawn(async move {
        let mut peer = accept(&listener_a).await;
        drop(listener_a);
        peer.accept_connect("0,0").await;
        let subscribe = peer.expect(Command::Subscribe).await;
        peer.receipt_for(&subscribe).await;
        let message = Frame::new(Command::Message)
            .header("subscription", subscribe.get("id").unwrap_or_default())
            .header("message-id", "5")
            .header("destination", "/queue/a")
            .header("ack", "a-5");
        peer.send(message).await;
        peer.expect(Command::Begin).await;
        peer.expect(Command::Send).await;
        // The client sends nothing more until it sees the connection drop.
    });
    let member_b = tokio::spawn(async move {
        let mut peer = accept(&listener_b).await;
        peer.accept_connect("0,0").await;
        let mut seen = Vec::new();
        loop {
            let frame = peer.expect_any().await;
            if frame.get("receipt").is_some() {
                peer.receipt_for(&frame).await;
            }
            let done = frame.command == Command::Disconnect;
            seen.push(frame);
            if done {
                return seen;
            }
        }
    });
    let client = Client::connect(&failover_url(&[&url_a, &url_b], ""), quiet()).await.unwrap();
    let mut events = client.events();
    let mut sub = client.subscribe("/queue/a", AckMode::ClientIndividual, None).await.unwrap();
    let old = tokio::time::timeout(STEP, sub.recv()).await.unwrap().unwrap();
    client.begin("tx1").await.unwrap();
    let in_tx = SendOptions { transaction: Some("tx1".into()), ..SendOptions::default() };
    client.send("/queue/a", "in tx", in_tx).await.unwrap();
    assert!(matches!(next_event(&mut events).await, ConnectionEvent::Lost { .. }));
    assert!(matches!(next_event(&mut events).await, ConnectionEvent::Reconnected { .. }));

    let err = client.ack_with_receipt(&old).await.unwrap_err();
    assert!(matches!(&err, ClientError::AckLost { message_id } if message_id == "5"), "{err:?}");
    client.ack(&old).await.unwrap();
    let err = client.commit("tx1").await.unwrap_err();
    assert!(matches!(&err, ClientError::TransactionLost { transaction } if transaction == "tx1"), "{err:?}");
    client.disconnect().await.unwrap();

    let seen: Vec<Command> = member_b.await.unwrap().iter().map(|f| f.command).collect();
    assert_eq!(seen, [Command::Subscribe, Command::Disconnect], "no ACK, COMMIT or tx SEND reached B");
}

#[tokio::test]
async fn given_dedup_ids_when_sending_should_number_sends_unless_the_caller_names_one() {
    let (listener, url) = fake_broker().await;
    let broker = tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        peer.accept_connect("0,0").await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(peer.expect(Command::Send).await.get("message-id").map(str::to_string));
        }
        ids
    });
    let plain = fake_broker().await;
    let client = Client::connect(&url, ClientOptions { dedup_ids: true, ..quiet() }).await.unwrap();
    client.send("/queue/a", "1", SendOptions::default()).await.unwrap();
    client.send("/queue/a", "2", SendOptions::default()).await.unwrap();
    let named = SendOptions { message_id: Some("mine".into()), ..SendOptions::default() };
    client.send("/queue/a", "3", named).await.unwrap();
    let ids = broker.await.unwrap();
    let (first, second) = (ids[0].clone().unwrap(), ids[1].clone().unwrap());
    let (run, seq) = first.rsplit_once('-').unwrap();
    assert_eq!(second, format!("{run}-{}", seq.parse::<u64>().unwrap() + 1));
    assert_eq!(ids[2].as_deref(), Some("mine"));

    // A plain URL without dedup_ids adds none.
    let (listener, url) = plain;
    let broker = tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        peer.accept_connect("0,0").await;
        peer.expect(Command::Send).await
    });
    let client = Client::connect(&url, quiet()).await.unwrap();
    client.send("/queue/a", "1", SendOptions::default()).await.unwrap();
    assert_eq!(broker.await.unwrap().get("message-id"), None);
}
