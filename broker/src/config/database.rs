//! `storage.store: database`: the journal in PostgreSQL, shared by the members of a group
//! (ActiveMQ's JDBC master/slave with the lease-database-locker). See `crate::db`.

use super::{ConfigError, HumanDuration};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where persistent messages are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum StoreKind {
    /// The file journal in `storage.dataDir` (replicated, or on a shared volume).
    #[default]
    File,
    /// PostgreSQL tables shared by the group's members (`storage.database`); the member
    /// holding the database lease is live. Needs `ha.policy: sharedStore`.
    Database,
}

/// TLS towards the database, as libpq's `sslmode` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, unverified; plaintext otherwise.
    Prefer,
    /// TLS, certificate not verified (libpq's `require` without a root certificate).
    Require,
    /// TLS, the server certificate chain verified against `sslRootCert`; any host name.
    VerifyCa,
    /// TLS, chain verified against `sslRootCert` and the host name checked.
    VerifyFull,
}

impl StoreKind {
    pub fn is_file(&self) -> bool {
        *self == StoreKind::File
    }
}

impl SslMode {
    pub fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// The database lease that decides who is live (holder, epoch and expiry, in the
/// database's clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DatabaseLeaseConfig {
    /// How long a lease lasts after each renewal. A live that has not renewed within it
    /// (measured on its own clock from when it sent the last successful renewal) fences
    /// itself; a backup takes the lease once the database's clock passes the expiry.
    pub duration: HumanDuration,
    /// How often the live renews.
    pub renew_interval: HumanDuration,
    /// How often a backup checks whether the lease expired.
    pub poll_interval: HumanDuration,
}

impl Default for DatabaseLeaseConfig {
    fn default() -> Self {
        DatabaseLeaseConfig {
            duration: HumanDuration::secs(10),
            renew_interval: HumanDuration::secs(2),
            poll_interval: HumanDuration::secs(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgresql://user:password@host:port/dbname?sslmode=…` (libpq's URL form; the
    /// key/value form works too).
    pub url: Option<String>,
    /// A file holding the URL (for example the `uri` key of the Secret CloudNativePG
    /// creates for an application user); read at every connection, so a rotated Secret
    /// counts from the next reconnection.
    pub url_file: Option<PathBuf>,
    /// Overrides the URL's `sslmode` (libpq's default, `prefer`, when neither says).
    pub ssl_mode: Option<SslMode>,
    /// CA certificates (PEM) for `verify-ca`/`verify-full`; overrides the URL's
    /// `sslrootcert`.
    pub ssl_root_cert: Option<PathBuf>,
    /// Give up one connection attempt after this long.
    pub connect_timeout: HumanDuration,
    /// Longest wait between reconnection attempts (the wait doubles from 100ms up to it).
    pub max_reconnect_delay: HumanDuration,
    /// Prefix of the tables (`<prefix>_messages`, `<prefix>_lease`, …); several groups
    /// share the tables, keyed by `ha.groupName`.
    pub table_prefix: String,
    pub lease: DatabaseLeaseConfig,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            url_file: None,
            ssl_mode: None,
            ssl_root_cert: None,
            connect_timeout: HumanDuration::secs(5),
            max_reconnect_delay: HumanDuration::secs(5),
            table_prefix: "duomq".to_string(),
            lease: DatabaseLeaseConfig::default(),
        }
    }
}

/// How a database URL failed to load.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseUrlError {
    #[error("failed to read the database URL file {path} (storage.database.urlFile)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the database URL file {path} is empty (storage.database.urlFile)")]
    Empty { path: PathBuf },
    #[error("no database URL: set storage.database.url or storage.database.urlFile")]
    Missing,
}

impl DatabaseConfig {
    pub fn is_default(&self) -> bool {
        *self == DatabaseConfig::default()
    }

    /// The URL, from `url` or read from `url_file` now.
    pub fn load_url(&self) -> Result<String, DatabaseUrlError> {
        if let Some(url) = &self.url {
            return Ok(url.clone());
        }
        let Some(path) = &self.url_file else { return Err(DatabaseUrlError::Missing) };
        let text = std::fs::read_to_string(path).map_err(|source| DatabaseUrlError::Read { path: path.clone(), source })?;
        let url = text.trim().to_string();
        if url.is_empty() {
            return Err(DatabaseUrlError::Empty { path: path.clone() });
        }
        Ok(url)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, message: &str| Err(ConfigError::Invalid { field, message: message.to_string() });
        match (&self.url, &self.url_file) {
            (None, None) => return invalid("storage.database.url", "set the database URL (or storage.database.urlFile) for storage.store: database"),
            (Some(_), Some(_)) => return invalid("storage.database.urlFile", "set either url or urlFile, not both"),
            _ => {}
        }
        if self.table_prefix.is_empty()
            || !self.table_prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || self.table_prefix.len() > 40
        {
            return invalid("storage.database.tablePrefix", "must be 1 to 40 of a-z, 0-9 and _");
        }
        if self.connect_timeout.get().is_zero() {
            return invalid("storage.database.connectTimeout", "must be longer than 0s");
        }
        if self.max_reconnect_delay.get() < std::time::Duration::from_millis(100) {
            return invalid("storage.database.maxReconnectDelay", "must be at least 100ms");
        }
        let lease = &self.lease;
        if lease.duration.get() < std::time::Duration::from_secs(1) {
            return invalid("storage.database.lease.duration", "must be at least 1s");
        }
        if lease.renew_interval.get().is_zero() || lease.renew_interval.get() * 2 > lease.duration.get() {
            return invalid(
                "storage.database.lease.renewInterval",
                "must be longer than 0s and at most half of lease.duration, so one failed renewal does not fence the live",
            );
        }
        if lease.poll_interval.get().is_zero() {
            return invalid("storage.database.lease.pollInterval", "must be longer than 0s");
        }
        if matches!(self.ssl_mode, Some(SslMode::VerifyCa | SslMode::VerifyFull)) && self.ssl_root_cert.is_none() && self.url.as_deref().is_some_and(|u| !u.contains("sslrootcert")) {
            return invalid("storage.database.sslRootCert", "verify-ca and verify-full need the CA certificates (sslRootCert, or sslrootcert in the URL)");
        }
        Ok(())
    }
}
