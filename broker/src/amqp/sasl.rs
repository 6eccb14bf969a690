//! SASL for the AMQP listener with the broker's users (`auth.users`, `auth.usersFile`):
//! PLAIN proves a user by its password, ANONYMOUS is offered only where STOMP lets a
//! client in without a login (no users configured, or `auth.allowAnonymous`), and
//! EXTERNAL only on amqps to a client whose certificate `auth.certificateUsers` maps.
//! As on STOMP, such a certificate decides who the client is whatever the mechanism: a
//! PLAIN login naming another user is refused. Who the client proved to be is left in a
//! slot the connection reads once SASL is done.

use crate::config::User;
use fe2o3_amqp::acceptor::sasl_acceptor::{SaslAcceptor, SaslServerFrame};
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use parking_lot::Mutex;
use std::sync::Arc;

const PLAIN: &str = "PLAIN";
const ANONYMOUS: &str = "ANONYMOUS";
const EXTERNAL: &str = "EXTERNAL";

/// What SASL concluded about a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Authenticated as this user (`""`: anonymous).
    User(String),
    /// Refused: the login tried (for the log), or the mechanism.
    Refused(String),
}

/// One connection's SASL negotiation (fe2o3 clones it per connection; the slot is shared
/// with the connection that built it).
#[derive(Clone)]
pub struct BrokerSasl {
    users: Arc<[User]>,
    anonymous: bool,
    /// The user the client's certificate maps to (amqps with a client certificate).
    certificate_user: Option<String>,
    pub outcome: Arc<Mutex<Option<Outcome>>>,
}

impl BrokerSasl {
    pub fn new(users: &[User], allow_anonymous: bool, certificate_user: Option<String>) -> BrokerSasl {
        BrokerSasl {
            users: users.into(),
            anonymous: users.is_empty() || allow_anonymous,
            certificate_user,
            outcome: Arc::new(Mutex::new(None)),
        }
    }

    /// The user `init` proves, if it proves one.
    fn decide(&self, init: &SaslInit) -> Outcome {
        let response = init.initial_response.as_ref().map(|b| b.as_slice()).unwrap_or_default();
        if let Some(user) = &self.certificate_user {
            // The certificate proves the user; a name the client asks for must be it.
            let asked = match init.mechanism.as_str() {
                EXTERNAL => response,
                PLAIN => response.split(|b| *b == 0).nth(1).unwrap_or_default(),
                _ => &[],
            };
            return if asked.is_empty() || asked == user.as_bytes() {
                Outcome::User(user.clone())
            } else {
                Outcome::Refused(String::from_utf8_lossy(asked).into_owned())
            };
        }
        match init.mechanism.as_str() {
            ANONYMOUS if self.anonymous => Outcome::User(String::new()),
            PLAIN => {
                let mut parts = response.split(|b| *b == 0);
                let (_authzid, login, password) = (parts.next(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
                let login = String::from_utf8_lossy(login).into_owned();
                if self.users.is_empty() && self.anonymous {
                    // No users: a login proves nothing, as with STOMP (anonymous).
                    return Outcome::User(String::new());
                }
                let ok = self.users.iter().any(|u| {
                    u.name == login && !u.password.is_empty() && crate::server::connection::constant_time_eq(u.password.as_bytes(), password)
                });
                if ok {
                    Outcome::User(login)
                } else {
                    Outcome::Refused(login)
                }
            }
            other => Outcome::Refused(format!("mechanism {other}")),
        }
    }
}

impl SaslAcceptor for BrokerSasl {
    fn mechanisms(&self) -> Array<Symbol> {
        let mut offered = Vec::new();
        if self.certificate_user.is_some() {
            offered.push(Symbol::from(EXTERNAL));
        }
        offered.push(Symbol::from(PLAIN));
        if self.anonymous {
            offered.push(Symbol::from(ANONYMOUS));
        }
        Array::from(offered)
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let outcome = self.decide(&init);
        let code = match outcome {
            Outcome::User(_) => SaslCode::Ok,
            Outcome::Refused(_) => SaslCode::Auth,
        };
        *self.outcome.lock() = Some(outcome);
        SaslServerFrame::Outcome(SaslOutcome { code, additional_data: None })
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        // Neither mechanism sends a challenge, so no response is expected.
        SaslServerFrame::Outcome(SaslOutcome { code: SaslCode::Sys, additional_data: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::primitives::Binary;

    fn init(mechanism: &str, response: Option<&[u8]>) -> SaslInit {
        SaslInit { mechanism: Symbol::from(mechanism), initial_response: response.map(|r| Binary::from(r.to_vec())), hostname: None }
    }

    fn users() -> Vec<User> {
        vec![User { name: "app".into(), password: "secret".into() }]
    }

    #[test]
    fn given_users_should_prove_plain_and_refuse_wrong_password_and_anonymous() {
        let sasl = BrokerSasl::new(&users(), false, None);
        assert_eq!(sasl.decide(&init(PLAIN, Some(b"\0app\0secret"))), Outcome::User("app".into()));
        assert_eq!(sasl.decide(&init(PLAIN, Some(b"\0app\0wrong"))), Outcome::Refused("app".into()));
        assert_eq!(sasl.decide(&init(PLAIN, None)), Outcome::Refused(String::new()));
        assert!(matches!(sasl.decide(&init(ANONYMOUS, None)), Outcome::Refused(_)));
        assert_eq!(sasl.mechanisms().0, vec![Symbol::from(PLAIN)]);
    }

    #[test]
    fn given_no_users_or_allow_anonymous_should_offer_anonymous() {
        let open = BrokerSasl::new(&[], false, None);
        assert_eq!(open.decide(&init(ANONYMOUS, None)), Outcome::User(String::new()));
        assert_eq!(open.decide(&init(PLAIN, Some(b"\0x\0y"))), Outcome::User(String::new()));
        let mixed = BrokerSasl::new(&users(), true, None);
        assert_eq!(mixed.decide(&init(ANONYMOUS, None)), Outcome::User(String::new()));
        assert_eq!(mixed.decide(&init(PLAIN, Some(b"\0app\0secret"))), Outcome::User("app".into()));
        assert!(mixed.mechanisms().0.contains(&Symbol::from(ANONYMOUS)));
    }

    #[test]
    fn given_a_mapped_client_certificate_should_offer_external_and_log_in_as_its_user() {
        let sasl = BrokerSasl::new(&users(), false, Some("ops".into()));
        assert_eq!(sasl.mechanisms().0[0], Symbol::from(EXTERNAL));
        assert_eq!(sasl.decide(&init(EXTERNAL, None)), Outcome::User("ops".into()));
        assert_eq!(sasl.decide(&init(EXTERNAL, Some(b"ops"))), Outcome::User("ops".into()));
        assert_eq!(sasl.decide(&init(EXTERNAL, Some(b"app"))), Outcome::Refused("app".into()));
        // PLAIN naming another user than the certificate's is refused, even with its password.
        assert_eq!(sasl.decide(&init(PLAIN, Some(b"\0app\0secret"))), Outcome::Refused("app".into()));
        assert_eq!(sasl.decide(&init(ANONYMOUS, None)), Outcome::User("ops".into()));
        let without = BrokerSasl::new(&users(), false, None);
        assert!(!without.mechanisms().0.contains(&Symbol::from(EXTERNAL)));
        assert!(matches!(without.decide(&init(EXTERNAL, None)), Outcome::Refused(_)));
    }
}
