//! Who may read the admin API's closed views (`/status`, and `/metrics` with
//! `admin.openMetrics: false`). `/healthz` and `/readyz` are always open (kubelet probes);
//! the writes check their own signature (see the handlers).
//!
//! A broker with any credentials (a cluster password, or users) answers a closed view only
//! to a request that shows either
//! - the [`auth::SIGNATURE_HEADER`] signed with the cluster password over the method, the
//!   path and the (empty) body, as the operator signs, or
//! - HTTP Basic of a user (`auth.users`, `auth.usersFile`) holding one of
//!   `auth.adminRoles` in `auth.roles`, compared in constant time.
//!
//! A broker with neither (a developer's broker on loopback) stays open and says so at
//! startup. Refusals answer 401 with `WWW-Authenticate: Basic realm="duomq"` (no or wrong
//! credentials), or 403 for a user whose password is right but who holds no admin role
//! (asking again with the same credentials cannot help), with a one-line body saying what
//! is accepted; both are counted in `duomq_admin_refused_requests`.

use super::auth;
use crate::config::{BrokerConfig, User};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// The realm of the `WWW-Authenticate` challenge.
pub const REALM: &str = "duomq";

/// Why a closed view was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No, malformed or wrong credentials: 401.
    Unauthenticated(String),
    /// A known user without an admin role: 403.
    Forbidden(String),
}

impl Refused {
    pub fn code(&self) -> StatusCode {
        match self {
            Refused::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refused::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The answer: the status code, the Basic challenge, and the reason in one line.
    pub fn into_response(self, config: &BrokerConfig) -> Response {
        let code = self.code();
        let (Refused::Unauthenticated(reason) | Refused::Forbidden(reason)) = self;
        let body = format!("{reason}; accepted: {}\n", accepted(config));
        (code, [(header::WWW_AUTHENTICATE, format!("Basic realm=\"{REALM}\""))], body).into_response()
    }
}

/// What a closed view accepts, in words.
fn accepted(config: &BrokerConfig) -> String {
    format!(
        "HTTP Basic of a user holding one of the roles auth.adminRoles [{}], or the {} header signed with the cluster password",
        config.auth.admin_roles.join(", "),
        auth::SIGNATURE_HEADER
    )
}

/// Whether the broker has any credentials at all: a cluster password (or its file), or users.
/// Without any, the closed views are open.
pub fn has_credentials(config: &BrokerConfig, users: &[User]) -> bool {
    config.ha.cluster.password_file.is_some() || !config.ha.cluster.password.is_empty() || !users.is_empty()
}

/// Checks a `GET` of a closed view at `path` (the request has no body).
pub fn check_read(config: &BrokerConfig, users: &[User], path: &str, headers: &HeaderMap) -> Result<(), Refused> {
    check_view(config, users, "GET", path, b"", headers)
}

/// Checks a read that carries its question in a body (`POST /queues/browse`): as
/// [`check_read`], a signature then covering `method`, `path` and `body`.
pub fn check_view(config: &BrokerConfig, users: &[User], method: &str, path: &str, body: &[u8], headers: &HeaderMap) -> Result<(), Refused> {
    if !has_credentials(config, users) {
        return Ok(());
    }
    if let Some(signature) = headers.get(auth::SIGNATURE_HEADER) {
        return check_signature(config, method, path, body, signature.to_str().ok());
    }
    match headers.get(header::AUTHORIZATION).map(|v| v.to_str().ok().and_then(auth::parse_basic)) {
        None => Err(Refused::Unauthenticated("credentials required".into())),
        Some(None) => Err(Refused::Unauthenticated("malformed Authorization header: only HTTP Basic is accepted".into())),
        Some(Some((user, password))) => check_basic(config, users, &user, &password),
    }
}

fn check_signature(config: &BrokerConfig, method: &str, path: &str, body: &[u8], signature: Option<&str>) -> Result<(), Refused> {
    let password = config
        .ha
        .load_password()
        .map_err(|e| Refused::Unauthenticated(format!("the cluster password cannot be read: {}", crate::report::error_chain(&e))))?;
    if password.is_empty() {
        return Err(Refused::Unauthenticated("no cluster password is configured: a signature cannot be checked".into()));
    }
    auth::verify(password.as_bytes(), method, path, body, signature, auth::unix_now()).map_err(|e| Refused::Unauthenticated(e.to_string()))
}

fn check_basic(config: &BrokerConfig, users: &[User], name: &str, password: &str) -> Result<(), Refused> {
    // Every user is compared, so the time does not say which names exist.
    let known = users
        .iter()
        .filter(|u| !u.password.is_empty())
        .fold(false, |found, u| (auth::constant_time_eq(u.password.as_bytes(), password.as_bytes()) & (u.name == name)) | found);
    if !known {
        return Err(Refused::Unauthenticated(format!("wrong user name or password for {name:?}")));
    }
    let admin = config
        .auth
        .admin_roles
        .iter()
        .any(|role| config.auth.roles.get(role).is_some_and(|holders| holders.iter().any(|h| h == name)));
    if admin {
        Ok(())
    } else {
        Err(Refused::Forbidden(format!("user {name:?} holds none of the roles in auth.adminRoles")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn config(password: &str, admins: &[&str]) -> BrokerConfig {
        let mut config = BrokerConfig::default();
        config.ha.cluster.password = password.into();
        config.auth.roles.insert("admin".into(), admins.iter().map(|s| s.to_string()).collect());
        config
    }

    fn users() -> Vec<User> {
        vec![User { name: "ops".into(), password: "ops-pw".into() }, User { name: "app".into(), password: "app-pw".into() }]
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("header value"));
        h
    }

    #[test]
    fn given_no_password_and_no_users_should_stay_open() {
        assert_eq!(check_read(&BrokerConfig::default(), &[], "/status", &HeaderMap::new()), Ok(()));
    }

    #[test]
    fn given_credentials_configured_should_need_a_signature_or_an_admin_user() {
        let config = config("s3cret", &["ops"]);
        let users = users();
        let check = |h: &HeaderMap| check_read(&config, &users, "/status", h);
        assert!(matches!(check(&HeaderMap::new()), Err(Refused::Unauthenticated(_))));
        let signed = auth::sign(b"s3cret", "GET", "/status", b"", auth::unix_now());
        assert_eq!(check(&headers(auth::SIGNATURE_HEADER, &signed)), Ok(()));
        let for_a_post = auth::sign(b"s3cret", "POST", "/status", b"", auth::unix_now());
        assert!(matches!(check(&headers(auth::SIGNATURE_HEADER, &for_a_post)), Err(Refused::Unauthenticated(_))));
        let other_path = auth::sign(b"s3cret", "GET", "/metrics", b"", auth::unix_now());
        assert!(matches!(check(&headers(auth::SIGNATURE_HEADER, &other_path)), Err(Refused::Unauthenticated(_))));
        assert_eq!(check(&headers("authorization", &auth::basic_header("ops", "ops-pw"))), Ok(()));
        assert!(matches!(check(&headers("authorization", &auth::basic_header("app", "app-pw"))), Err(Refused::Forbidden(_))));
        assert!(matches!(check(&headers("authorization", &auth::basic_header("ops", "app-pw"))), Err(Refused::Unauthenticated(_))));
        assert!(matches!(check(&headers("authorization", &auth::basic_header("nobody", "ops-pw"))), Err(Refused::Unauthenticated(_))));
        assert!(matches!(check(&headers("authorization", "Bearer xyz")), Err(Refused::Unauthenticated(_))));
    }

    #[test]
    fn given_users_only_should_refuse_signatures_and_say_why() {
        let config = config("", &["ops"]);
        let signed = auth::sign(b"anything", "GET", "/status", b"", auth::unix_now());
        let refused = check_read(&config, &users(), "/status", &headers(auth::SIGNATURE_HEADER, &signed));
        assert!(matches!(&refused, Err(Refused::Unauthenticated(r)) if r.contains("no cluster password")), "{refused:?}");
    }
}
