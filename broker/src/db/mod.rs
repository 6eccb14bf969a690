//! The shared database store (`storage.store: database`): ActiveMQ's JDBC master/slave
//! with the lease-database-locker, on PostgreSQL, plus the fencing token ActiveMQ lacks.
//!
//! - **The lease** (`lease`): one row per group in `<prefix>_lease` with the holder, an
//!   epoch and an expiry in the database's clock. A backup polls it and takes it once it
//!   expired, bumping the epoch. The live renews it every `renewInterval`; a live that got
//!   no renewal through for `lease.duration` (on its own clock, counted from when it sent
//!   the last good one, so always before the database's expiry) fences itself.
//! - **The journal** (`store`): messages are rows of `<prefix>_messages`; acknowledgements
//!   delete them. Appends are group-committed: everything queued while one statement runs
//!   goes into the next, one statement and one transaction, so a persistent SEND's RECEIPT
//!   waits for the commit.
//! - **The fencing token**: every write statement updates the lease row *where the epoch is
//!   still its own* and writes only through that row. A member paused past its lease (GC,
//!   VM stall, SIGSTOP) finds the epoch moved on, and the database writes nothing for it.
//!   The takeover itself waits on the row lock of a write in flight, so a write either
//!   commits before the new live reads the tables or not at all.
//! - **Connections**: the URL is read from `url` or `urlFile` at each connection; `sslmode`
//!   is honoured as libpq does (`tls`). A lost connection is opened again with a doubling
//!   backoff, and the batch in flight is sent again (it is idempotent), so producers wait
//!   while the database restarts, and get an ERROR only if the live fences first.

mod lease;
mod metrics;
mod schema;
mod store;
mod tls;

pub use lease::{keep_lease, Acquired, Attempt, LeaseView, Term};
pub use metrics::DatabaseMetrics;
pub use schema::{migrate, Tables, SCHEMA_VERSION};
pub use store::{recover, DbStore};
pub use tls::TlsError;

use crate::config::{DatabaseConfig, DatabaseUrlError, SslMode, StorageConfig};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;
use tokio_postgres::Client;

#[derive(Debug, Error)]
pub enum DbError {
    #[error("failed to load the database URL")]
    Url(#[source] DatabaseUrlError),
    #[error("invalid database URL (storage.database): {reason}")]
    BadUrl { reason: String },
    #[error("failed to set up TLS to the database")]
    Tls(#[source] TlsError),
    #[error("failed to connect to the database {target}")]
    Connect { target: String, source: tokio_postgres::Error },
    #[error("timed out connecting to the database {target} after {after:?}")]
    ConnectTimeout { target: String, after: Duration },
    #[error("failed to {what}")]
    Query { what: &'static str, source: tokio_postgres::Error },
    #[error("failed to read a stored message: {reason}")]
    Unreadable { reason: String },
    #[error("not connected to the database")]
    NotConnected,
    #[error("no answer from the database within {after:?}")]
    NoAnswer { after: Duration },
    #[error("the term ended: {reason}")]
    Fenced { reason: String },
    #[error("the database schema is version {found}, newer than this broker knows ({known}); upgrade the broker")]
    SchemaTooNew { found: i32, known: i32 },
}

impl DbError {
    /// The database rolled the statement back for reasons of its own (a serialization
    /// failure, a deadlock: SQLSTATE class 40): the same statement may simply be sent again.
    pub fn transient(&self) -> bool {
        matches!(self, DbError::Query { source, .. } if source.as_db_error().is_some_and(|db| db.code().code().starts_with("40")))
    }

    /// Retrying cannot help: the configuration or the schema must change first.
    pub fn is_fatal(&self) -> bool {
        matches!(self, DbError::BadUrl { .. } | DbError::SchemaTooNew { .. } | DbError::Tls(_) | DbError::Unreadable { .. })
    }

    /// The connection is gone: open a new one before the next statement.
    pub fn lost_connection(&self) -> bool {
        match self {
            // An administrator's shutdown or termination (57P01..57P03) ends the session too.
            DbError::Query { source, .. } => {
                source.is_closed()
                    || source.as_db_error().is_none_or(|db| db.code().code().starts_with("57P"))
            }
            DbError::Unreadable { .. } | DbError::SchemaTooNew { .. } | DbError::BadUrl { .. } | DbError::Tls(_) => false,
            DbError::Url(_)
            | DbError::Connect { .. }
            | DbError::ConnectTimeout { .. }
            | DbError::NotConnected
            | DbError::NoAnswer { .. }
            | DbError::Fenced { .. } => true,
        }
    }
}

/// One group's view of the shared database: how to connect, which tables.
#[derive(Debug, Clone)]
pub struct Database {
    pub config: DatabaseConfig,
    /// Most message bytes one group commit carries (`storage.maxBatchBytes`).
    pub max_batch_bytes: usize,
    /// `storage.fsync`: with `false` the writer's commits do not wait for the database's
    /// WAL flush (`synchronous_commit = off`): benchmarks only, like the file journal's.
    pub synchronous: bool,
    pub group: String,
    pub node: String,
    pub tables: Tables,
    pub metrics: DatabaseMetrics,
}

impl std::fmt::Debug for DatabaseMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseMetrics")
    }
}

/// The URL split into what tokio-postgres parses and the TLS settings duomq applies.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// The URL without `sslmode` and `sslrootcert`.
    url: String,
    ssl_mode: SslMode,
    root_cert: Option<PathBuf>,
}

/// Takes `sslmode` and `sslrootcert` out of a `postgresql://` URL's query or a key/value
/// string; the config's own settings win over them.
fn split_target(url: &str, config: &DatabaseConfig) -> Result<Target, DbError> {
    let mut mode = None;
    let mut root = None;
    let mut take = |key: &str, value: &str| -> Result<bool, DbError> {
        match key {
            "sslmode" => {
                mode = Some(SslMode::parse(value).ok_or_else(|| DbError::BadUrl {
                    reason: format!("sslmode={value} is not one of disable, prefer, require, verify-ca, verify-full"),
                })?);
                Ok(true)
            }
            "sslrootcert" => {
                root = Some(PathBuf::from(value));
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(k, v)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) }
            }
            None => url.to_string(),
        }
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            let (k, v) = token.split_once('=').unwrap_or((token, ""));
            if !take(k.trim(), v.trim().trim_matches('\''))? {
                kept.push(token);
            }
        }
        kept.join(" ")
    };
    Ok(Target {
        url: rest,
        ssl_mode: config.ssl_mode.or(mode).unwrap_or(SslMode::Prefer),
        root_cert: config.ssl_root_cert.clone().or(root),
    })
}

impl Database {
    pub fn new(storage: &StorageConfig, group: &str, node: &str, metrics: DatabaseMetrics) -> Database {
        let config = &storage.database;
        Database {
            config: config.clone(),
            max_batch_bytes: storage.max_batch_bytes.as_usize(),
            synchronous: storage.fsync,
            group: group.to_string(),
            node: node.to_string(),
            tables: Tables::new(&config.table_prefix),
            metrics,
        }
    }

    /// Opens a connection (the URL read now) and spawns its I/O task.
    pub async fn connect(&self) -> Result<Client, DbError> {
        let url = self.config.load_url().map_err(DbError::Url)?;
        let target = split_target(&url, &self.config)?;
        let mut pg: tokio_postgres::Config =
            target.url.parse().map_err(|e: tokio_postgres::Error| DbError::BadUrl { reason: e.to_string() })?;
        let timeout = self.config.connect_timeout.get();
        pg.connect_timeout(timeout);
        pg.application_name(format!("duomq {} ({})", self.node, self.group));
        pg.ssl_mode(match target.ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        let shown = describe(&pg);
        let tls = match target.ssl_mode {
            SslMode::Disable => None,
            mode => Some(tls::client_config(mode, target.root_cert.as_deref()).map_err(DbError::Tls)?),
        };
        let connecting = async {
            let client = match tls {
                None => {
                    let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
                    tokio::spawn(drive(connection));
                    client
                }
                Some(tls) => {
                    let (client, connection) = pg.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls)).await?;
                    tokio::spawn(drive(connection));
                    client
                }
            };
            Ok::<Client, tokio_postgres::Error>(client)
        };
        match tokio::time::timeout(timeout + Duration::from_secs(1), connecting).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source)) => Err(DbError::Connect { target: shown, source }),
            Err(_) => Err(DbError::ConnectTimeout { target: shown, after: timeout }),
        }
    }
}

async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!(error = %crate::report::error_chain(&e), "database connection ended");
    }
}

/// `user@host:port/dbname`, never the password.
fn describe(pg: &tokio_postgres::Config) -> String {
    let host = pg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!("{}@{host}:{port}/{}", pg.get_user().unwrap_or("?"), pg.get_dbname().unwrap_or("?"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("postgresql://u:p@h:5/db?sslmode=require", "postgresql://u:p@h:5/db", SslMode::Require, None)]
    #[case("postgresql://u:p@h/db?application_name=x&sslmode=verify-full&sslrootcert=/ca.crt", "postgresql://u:p@h/db?application_name=x", SslMode::VerifyFull, Some("/ca.crt"))]
    #[case("postgres://u@h/db", "postgres://u@h/db", SslMode::Prefer, None)]
    #[case("host=h user=u sslmode=disable dbname=d", "host=h user=u dbname=d", SslMode::Disable, None)]
    fn given_url_should_take_out_tls_settings(#[case] url: &str, #[case] rest: &str, #[case] mode: SslMode, #[case] root: Option<&str>) {
        let target = split_target(url, &DatabaseConfig::default()).unwrap();
        assert_eq!(target, Target { url: rest.into(), ssl_mode: mode, root_cert: root.map(PathBuf::from) });
    }

    #[test]
    fn given_config_tls_settings_should_override_the_url() {
        let config = DatabaseConfig { ssl_mode: Some(SslMode::Disable), ssl_root_cert: Some("/mine".into()), ..DatabaseConfig::default() };
        let target = split_target("postgresql://h/db?sslmode=require&sslrootcert=/url", &config).unwrap();
        assert_eq!((target.ssl_mode, target.root_cert), (SslMode::Disable, Some(PathBuf::from("/mine"))));
    }

    #[test]
    fn given_unknown_sslmode_should_refuse_naming_it() {
        let err = split_target("postgresql://h/db?sslmode=maybe", &DatabaseConfig::default()).unwrap_err();
        assert!(err.to_string().contains("sslmode=maybe"), "{err}");
    }
}
