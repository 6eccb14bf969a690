//! What a backup (or a fenced member) says to AMQP clients: it completes SASL (any
//! mechanism it offers succeeds: nothing is granted) and the open, then closes the
//! connection with `amqp:connection:redirect` naming the live's host and port (its
//! `ha.members` entry's `amqp`), so clients that follow redirects (Qpid JMS, Proton)
//! move on at once; with no live known, `amqp:connection:forced` says so. It serves no
//! messages and holds no state. Like the STOMP responder it answers at most
//! [`crate::ha::responder::MAX_RESPONDER_CONNECTIONS`] clients at a time, each within
//! [`ANSWER_TIMEOUT`]. With `tls.amqp.enabled` the answer follows the TLS handshake, so
//! amqps clients read it too.

use super::AmqpMetrics;
use crate::ha::responder::{next_client, not_live_message, MAX_RESPONDER_CONNECTIONS};
use crate::tls::{self, Listener, TlsContext};
use fe2o3_amqp::acceptor::sasl_acceptor::{SaslAcceptor, SaslServerFrame};
use fe2o3_amqp::acceptor::ConnectionAcceptor;
use fe2o3_amqp::types::definitions::{self, ConnectionError, Fields};
use fe2o3_amqp::types::primitives::{Array, Symbol, Value};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use parking_lot::RwLock;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long one client may take from its first byte to reading the redirect.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The backup's AMQP answer.
pub struct Redirect {
    pub group: String,
    pub node: String,
    /// The live's AMQP `host:port`, read per connection.
    pub live: Arc<RwLock<Option<String>>>,
    pub metrics: AmqpMetrics,
    pub tls: Arc<TlsContext>,
}

impl Redirect {
    /// Answers every AMQP client until `stop` is cancelled.
    pub async fn serve(self, listener: &TcpListener, stop: CancellationToken) {
        let answering = Arc::new(tokio::sync::Semaphore::new(MAX_RESPONDER_CONNECTIONS));
        while let Some((tcp, peer)) = next_client(listener, &stop).await {
            self.metrics.refused("not_live");
            let Ok(permit) = Arc::clone(&answering).try_acquire_owned() else {
                tracing::debug!(%peer, "backup closed an AMQP connection unanswered: too many clients are being answered at once");
                continue;
            };
            let live = self.live.read().clone();
            let error = refusal(&self.group, live.as_deref(), self.tls.config().amqp.enabled);
            let acceptor = ConnectionAcceptor::builder()
                .container_id(self.node.clone())
                .sasl_acceptor(AnySasl)
                .build();
            let tls = Arc::clone(&self.tls);
            tokio::spawn(async move {
                let _permit = permit;
                let answered = tokio::time::timeout(ANSWER_TIMEOUT, async {
                    let stream = tls::accept(tcp, tls.acceptor(Listener::Amqp), ANSWER_TIMEOUT, Listener::Amqp, &tls.metrics)
                        .await
                        .map_err(|e| fe2o3_amqp::connection::OpenError::Io(std::io::Error::other(crate::report::error_chain(&e))))?;
                    let mut connection = acceptor.accept(stream).await?;
                    connection.close_with_error(error).await.map_err(|e| fe2o3_amqp::connection::OpenError::Io(std::io::Error::other(e.to_string())))
                })
                .await;
                match answered {
                    Ok(Ok(())) => tracing::debug!(%peer, live = ?live, "redirected an AMQP client to the live"),
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "backup's AMQP answer not completed"),
                    Err(_) => tracing::debug!(%peer, "backup's AMQP answer timed out"),
                }
            });
        }
    }
}

/// The close error a backup sends: a redirect to `live` (`host:port`; `amqps://` in the
/// description when `tls`), else a forced close saying no live is known.
pub fn refusal(group: &str, live: Option<&str>, tls: bool) -> definitions::Error {
    let scheme = if tls { "amqps" } else { "amqp" };
    let description = not_live_message(group, live.map(|l| format!("{scheme}://{l}")).as_deref());
    match live.and_then(split_host_port) {
        Some((host, port)) => {
            let mut info = Fields::new();
            info.insert(Symbol::from("hostname"), Value::String(host.clone()));
            info.insert(Symbol::from("network-host"), Value::String(host));
            info.insert(Symbol::from("port"), Value::Int(i32::from(port)));
            definitions::Error::new(ConnectionError::Redirect, Some(description), Some(info))
        }
        None => definitions::Error::new(ConnectionError::ConnectionForced, Some(description), None),
    }
}

/// `host:port` or `[v6]:port` split in two.
fn split_host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?)).filter(|(h, _)| !h.is_empty())
}

/// SASL that lets every client through to the redirect: a backup grants nothing.
#[derive(Clone)]
struct AnySasl;

impl SaslAcceptor for AnySasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![Symbol::from("PLAIN"), Symbol::from("ANONYMOUS")])
    }

    fn on_init(&mut self, _init: SaslInit) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome { code: SaslCode::Ok, additional_data: None })
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome { code: SaslCode::Ok, additional_data: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::definitions::ErrorCondition;

    #[test]
    fn given_live_address_should_redirect_to_its_host_and_port() {
        let e = refusal("g1", Some("10.1.2.3:5673"), false);
        assert_eq!(e.condition, ErrorCondition::ConnectionError(ConnectionError::Redirect));
        let info = e.info.expect("info");
        assert_eq!(info.get(&Symbol::from("network-host")), Some(&Value::String("10.1.2.3".into())));
        assert_eq!(info.get(&Symbol::from("port")), Some(&Value::Int(5673)));
        assert!(e.description.unwrap_or_default().ends_with("live is amqp://10.1.2.3:5673"));
        let v6 = refusal("g1", Some("[::1]:5672"), true);
        assert!(v6.description.as_deref().unwrap_or_default().ends_with("live is amqps://[::1]:5672"), "{:?}", v6.description);
        let v6 = v6.info.expect("info");
        assert_eq!(v6.get(&Symbol::from("hostname")), Some(&Value::String("::1".into())));
    }

    #[test]
    fn given_no_live_should_close_forced() {
        let e = refusal("g1", None, false);
        assert_eq!(e.condition, ErrorCondition::ConnectionError(ConnectionError::ConnectionForced));
        assert!(e.description.unwrap_or_default().contains("no live known yet"));
        assert_eq!(refusal("g1", Some("nonsense"), false).condition, ErrorCondition::ConnectionError(ConnectionError::ConnectionForced));
    }
}
