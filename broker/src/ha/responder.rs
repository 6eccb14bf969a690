//! What a backup says to STOMP clients: it accepts the connection, reads the CONNECT and
//! answers with an ERROR naming the live, so failover clients move on at once. It serves
//! no messages and holds no state.

use crate::stomp::{Command, Frame, Inbound, Limits, StompCodec};
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The ERROR message a backup sends; failover clients recognise the `not live` prefix.
pub fn not_live_message(group: &str, live: Option<&str>) -> String {
    match live {
        Some(addr) => format!("not live: backup of group {group}; live is stomp://{addr}"),
        None => format!("not live: backup of group {group}; no live known yet"),
    }
}

/// Answers every client with "not live" until `stop` is cancelled. `live` is read per
/// connection, so the answer follows the group as it changes.
pub async fn serve(
    listener: &TcpListener,
    group: String,
    live: Arc<parking_lot::RwLock<Option<String>>>,
    stop: CancellationToken,
) {
    loop {
        let (mut stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let message = not_live_message(&group, live.read().as_deref());
        tokio::spawn(async move {
            let mut codec = StompCodec::new(Limits::default());
            let mut buf = BytesMut::with_capacity(1024);
            let first = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    if let Ok(Some(Inbound::Frame(f))) = codec.decode(&mut buf) {
                        return Some(f);
                    }
                    match stream.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            let receipt = first.ok().flatten().and_then(|f| f.get("receipt").map(str::to_string));
            let mut error = Frame::new(Command::Error).header("message", message.clone()).with_body(format!("{message}\n"));
            if let Some(r) = receipt {
                error = error.header("receipt-id", r);
            }
            let mut out = BytesMut::new();
            codec.encode(&error, &mut out);
            let _ = stream.write_all(&out).await;
            let _ = stream.shutdown().await;
        });
    }
}
