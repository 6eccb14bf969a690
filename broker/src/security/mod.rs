//! Per-destination authorization (Artemis' security settings, ActiveMQ's
//! authorizationPlugin): the roles a client holds and what each role may do on which
//! destinations.
//!
//! A client's roles come from `auth.roles` (role → users; certificate users from
//! `auth.certificateUsers` are ordinary user names) or, logged in anonymously, from
//! `auth.anonymousRoles`. `auth.permissions` lists patterns with the roles allowed to
//! [`Permission::Send`], [`Permission::Consume`], [`Permission::Browse`] and
//! [`Permission::Create`]; the most specific matching pattern decides (see
//! [`pattern::Pattern`]). With no entries at all, every authenticated client may do
//! everything; with entries, a destination no entry matches is denied.
//!
//! Everything here is pure: the protocol layer asks, the engine is never involved.

pub mod pattern;

use crate::config::{AuthConfig, User};
use pattern::Pattern;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

/// What a client asks to do with a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// SEND to it (in a transaction too).
    Send,
    /// SUBSCRIBE to consume (ACK/NACK ride on the subscription).
    Consume,
    /// SUBSCRIBE with `browser:true`: see a queue's messages without consuming them.
    Browse,
    /// Bring a destination the broker does not hold yet into being (by a SEND or SUBSCRIBE).
    Create,
}

impl Permission {
    pub const ALL: [Permission; 4] = [Permission::Send, Permission::Consume, Permission::Browse, Permission::Create];

    /// The name in `auth.permissions` and in the `permission` label of
    /// `duomq_authorization_denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Send => "send",
            Permission::Consume => "consume",
            Permission::Browse => "browse",
            Permission::Create => "create",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Permission::Send => "send to",
            Permission::Consume => "consume from",
            Permission::Browse => "browse",
            Permission::Create => "create",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why `auth.roles`, `auth.anonymousRoles` or `auth.permissions` cannot be used: the
/// field and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

/// Checks the authorization parts of `auth:` as config validation does.
pub fn validate(auth: &AuthConfig) -> Result<(), Invalid> {
    let invalid = |field: &'static str, message: String| Err(Invalid { field, message });
    for (role, users) in &auth.roles {
        if role.trim().is_empty() {
            return invalid("auth.roles", "a role name is empty".into());
        }
        if let Some(i) = users.iter().position(|u| u.trim().is_empty()) {
            return invalid("auth.roles", format!("role {role:?}: user {i} has an empty name"));
        }
    }
    if let Some(i) = auth.anonymous_roles.iter().position(|r| r.trim().is_empty()) {
        return invalid("auth.anonymousRoles", format!("role {i} has an empty name"));
    }
    let known: BTreeSet<&str> = auth.roles.keys().chain(&auth.anonymous_roles).map(String::as_str).collect();
    let mut seen = BTreeSet::new();
    for (i, entry) in auth.permissions.iter().enumerate() {
        let parsed = Pattern::parse(&entry.pattern).map_err(|e| Invalid {
            field: "auth.permissions",
            message: format!("entry {i}: match {:?}: {e}", entry.pattern),
        })?;
        if !seen.insert(parsed.to_string()) {
            return invalid(
                "auth.permissions",
                format!("entry {i}: match {:?} appears twice; merge the two entries into one", entry.pattern),
            );
        }
        for (permission, roles) in entry.roles() {
            if let Some(role) = roles.iter().find(|r| !known.contains(r.as_str())) {
                return invalid(
                    "auth.permissions",
                    format!(
                        "entry {i} ({:?}): {permission} names role {role:?}, which neither auth.roles nor auth.anonymousRoles defines (add it to auth.roles with its users, or correct the name)",
                        entry.pattern
                    ),
                );
            }
        }
    }
    Ok(())
}

trait EntryRoles {
    fn roles(&self) -> [(Permission, &Vec<String>); 4];
}

impl EntryRoles for crate::config::Permission {
    fn roles(&self) -> [(Permission, &Vec<String>); 4] {
        [
            (Permission::Send, &self.send),
            (Permission::Consume, &self.consume),
            (Permission::Browse, &self.browse),
            (Permission::Create, &self.create),
        ]
    }
}

/// One `auth.permissions` entry, parsed.
#[derive(Debug)]
struct Rule {
    pattern: Pattern,
    /// Per [`Permission`], the roles holding it.
    roles: [Vec<String>; 4],
}

/// Decides what clients may do; built once from `auth:` when the broker starts.
#[derive(Debug, Default)]
pub struct Authorizer {
    /// Role → its users, as `auth.roles` lists them.
    roles: Vec<(String, Vec<String>)>,
    anonymous_roles: Vec<String>,
    /// Most specific first (see [`Pattern::specificity`]); ties keep the config order.
    rules: Vec<Rule>,
}

impl Authorizer {
    /// Builds the authorizer from a validated `auth:` section. `users` are the users the
    /// broker loaded (`auth.users` and `auth.usersFile`): a role member that is neither one
    /// of them nor a certificate user can never log in, which is logged.
    pub fn new(auth: &AuthConfig, users: &[User]) -> Authorizer {
        let mut rules: Vec<Rule> = Vec::with_capacity(auth.permissions.len());
        for entry in &auth.permissions {
            match Pattern::parse(&entry.pattern) {
                Ok(pattern) => rules.push(Rule {
                    pattern,
                    roles: [entry.send.clone(), entry.consume.clone(), entry.browse.clone(), entry.create.clone()],
                }),
                // Config validation refuses these before the broker starts.
                Err(e) => tracing::error!(pattern = %entry.pattern, error = %e, "ignoring an invalid auth.permissions entry"),
            }
        }
        // Stable: among equally specific patterns the one listed first decides.
        rules.sort_by_key(|r| r.pattern.specificity());
        for (role, members) in &auth.roles {
            for member in members {
                let known = users.iter().any(|u| &u.name == member) || auth.certificate_users.values().any(|u| u == member);
                if !known && !users.is_empty() {
                    tracing::warn!(%role, user = %member, "auth.roles names a user that is neither in auth.users, auth.usersFile nor auth.certificateUsers");
                }
            }
        }
        Authorizer {
            roles: auth.roles.iter().map(|(r, u)| (r.clone(), u.clone())).collect(),
            anonymous_roles: auth.anonymous_roles.clone(),
            rules,
        }
    }

    /// No `auth.permissions`: every authenticated client may do everything.
    pub fn is_open(&self) -> bool {
        self.rules.is_empty()
    }

    /// Who a connection is, for its life: `login` as `authenticate` proved it (`""` for
    /// an anonymous client) and the roles that gives it.
    pub fn principal(&self, login: &str) -> Principal {
        let roles = if login.is_empty() {
            self.anonymous_roles.clone()
        } else {
            self.roles.iter().filter(|(_, users)| users.iter().any(|u| u == login)).map(|(r, _)| r.clone()).collect()
        };
        Principal { user: login.to_string(), roles: roles.into() }
    }

    /// Whether `who` may do `permission` on `destination` (as the client wrote it).
    pub fn check(&self, who: &Principal, destination: &str, permission: Permission) -> Result<(), Denied> {
        if self.is_open() {
            return Ok(());
        }
        let Some(rule) = self.rules.iter().find(|r| r.pattern.matches(destination)) else {
            return Err(Denied::new(who, destination, permission, None));
        };
        let allowed = &rule.roles[permission as usize];
        if who.roles.iter().any(|r| allowed.contains(r)) {
            Ok(())
        } else {
            Err(Denied::new(who, destination, permission, Some(rule.pattern.to_string())))
        }
    }
}

/// An authenticated client: its user (`""` when anonymous) and roles.
#[derive(Debug, Clone, Default)]
pub struct Principal {
    pub user: String,
    pub roles: Arc<[String]>,
}

/// A refused request, worded for the client: the ERROR frame's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub user: String,
    pub destination: String,
    pub permission: Permission,
    pub roles: Vec<String>,
    /// The `auth.permissions` pattern that decided; none when no entry matched.
    pub pattern: Option<String>,
}

impl Denied {
    fn new(who: &Principal, destination: &str, permission: Permission, pattern: Option<String>) -> Denied {
        Denied {
            user: who.user.clone(),
            destination: destination.to_string(),
            permission,
            roles: who.roles.to_vec(),
            pattern,
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.user.is_empty() {
            f.write_str("an anonymous client")?;
        } else {
            write!(f, "user {:?}", self.user)?;
        }
        write!(f, " may not {} {} (needs the {} permission", self.permission.verb(), self.destination, self.permission)?;
        match &self.pattern {
            Some(p) => write!(f, ", which the auth.permissions entry {p:?} does not give")?,
            None => f.write_str("; no auth.permissions entry matches this destination")?,
        }
        if self.roles.is_empty() {
            f.write_str("; roles: none)")
        } else {
            write!(f, "; roles: {})", self.roles.join(", "))
        }
    }
}

impl std::error::Error for Denied {}

/// A connection's decisions so far, by destination: roles and rules do not change while
/// it lives, so each (destination, permission) pair is looked up once. Bounded.
#[derive(Debug, Default)]
pub struct Decisions {
    /// Per destination: the permissions checked (high nibble) and those granted (low).
    known: std::collections::HashMap<Box<str>, u8>,
}

/// Destinations a connection remembers decisions for before starting afresh.
const MAX_DECISIONS: usize = 1024;

impl Decisions {
    /// [`Authorizer::check`], remembered.
    pub fn check(&mut self, authorizer: &Authorizer, who: &Principal, destination: &str, permission: Permission) -> Result<(), Denied> {
        if authorizer.is_open() {
            return Ok(());
        }
        let bit = permission.bit();
        if let Some(&bits) = self.known.get(destination) {
            if bits & (bit << 4) != 0 {
                return if bits & bit != 0 { Ok(()) } else { authorizer.check(who, destination, permission) };
            }
        }
        let result = authorizer.check(who, destination, permission);
        if self.known.len() >= MAX_DECISIONS && !self.known.contains_key(destination) {
            self.known.clear();
        }
        let bits = self.known.entry(Box::from(destination)).or_default();
        *bits |= (bit << 4) | if result.is_ok() { bit } else { 0 };
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Permission as Entry;

    fn entry(pattern: &str, send: &[&str], consume: &[&str]) -> Entry {
        let v = |r: &[&str]| r.iter().map(|s| s.to_string()).collect();
        Entry { pattern: pattern.into(), send: v(send), consume: v(consume), browse: Vec::new(), create: Vec::new() }
    }

    fn auth(permissions: Vec<Entry>) -> AuthConfig {
        let mut a = AuthConfig::default();
        a.roles.insert("producers".into(), vec!["app".into()]);
        a.roles.insert("consumers".into(), vec!["reader".into(), "app".into()]);
        a.roles.insert("ops".into(), vec!["ops".into()]);
        a.anonymous_roles = vec!["guest".into()];
        a.permissions = permissions;
        a
    }

    #[test]
    fn given_no_permissions_should_allow_everything() {
        let a = Authorizer::new(&auth(Vec::new()), &[]);
        assert!(a.check(&a.principal("nobody"), "/queue/x", Permission::Create).is_ok());
    }

    #[test]
    fn given_roles_should_give_users_and_anonymous_their_roles() {
        let a = Authorizer::new(&auth(Vec::new()), &[]);
        assert_eq!(&*a.principal("app").roles, ["consumers".to_string(), "producers".to_string()]);
        assert_eq!(&*a.principal("").roles, ["guest".to_string()]);
        assert!(a.principal("stranger").roles.is_empty());
    }

    #[test]
    fn given_most_specific_entry_should_decide() {
        let a = Authorizer::new(
            &auth(vec![
                entry(">", &["ops"], &["ops"]),
                entry("/queue/orders.>", &["producers"], &["consumers"]),
                entry("/queue/orders.eu", &[], &["consumers"]),
            ]),
            &[],
        );
        let app = a.principal("app");
        assert!(a.check(&app, "/queue/orders.us", Permission::Send).is_ok());
        let denied = a.check(&app, "/queue/orders.eu", Permission::Send).expect_err("exact entry gives no send");
        assert_eq!(denied.pattern.as_deref(), Some("/queue/orders.eu"));
        assert!(a.check(&app, "/queue/orders.eu", Permission::Consume).is_ok());
        assert!(a.check(&app, "/topic/prices", Permission::Send).is_err());
        assert!(a.check(&a.principal("ops"), "/topic/prices", Permission::Send).is_ok());
    }

    #[test]
    fn given_no_matching_entry_should_deny_naming_permission_and_roles() {
        let a = Authorizer::new(&auth(vec![entry("/queue/orders.>", &["producers"], &[])]), &[]);
        let denied = a.check(&a.principal("reader"), "/queue/other", Permission::Send).expect_err("no entry matches");
        assert_eq!(
            denied.to_string(),
            "user \"reader\" may not send to /queue/other (needs the send permission; no auth.permissions entry matches this destination; roles: consumers)"
        );
        let denied = a.check(&a.principal(""), "/queue/orders.x", Permission::Send).expect_err("guest may not send");
        assert!(denied.to_string().starts_with("an anonymous client may not send to /queue/orders.x (needs the send permission"), "{denied}");
        assert!(denied.to_string().ends_with("roles: guest)"), "{denied}");
    }

    #[test]
    fn given_decisions_should_remember_both_outcomes() {
        let a = Authorizer::new(&auth(vec![entry("/queue/a", &["producers"], &[])]), &[]);
        let app = a.principal("app");
        let mut d = Decisions::default();
        for _ in 0..2 {
            assert!(d.check(&a, &app, "/queue/a", Permission::Send).is_ok());
            assert!(d.check(&a, &app, "/queue/a", Permission::Consume).is_err());
        }
    }

    #[test]
    fn given_invalid_entries_should_refuse_with_field_and_fix() {
        let bad = validate(&auth(vec![entry("/queue/orders.>.x", &["producers"], &[])])).expect_err("> not last");
        assert_eq!(bad.field, "auth.permissions");
        assert!(bad.message.contains("entry 0") && bad.message.contains("last word"), "{}", bad.message);
        let bad = validate(&auth(vec![entry("/queue/a", &["producer"], &[])])).expect_err("unknown role");
        assert!(bad.message.contains("\"producer\"") && bad.message.contains("auth.roles"), "{}", bad.message);
        let bad = validate(&auth(vec![entry("/queue/a", &[], &[]), entry("/queue/a", &[], &[])])).expect_err("twice");
        assert!(bad.message.contains("twice"), "{}", bad.message);
        assert!(validate(&auth(vec![entry(">", &["guest"], &["ops"])])).is_ok());
    }
}
