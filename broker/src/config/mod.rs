//! `broker.yaml`: the broker's one config tree. Every field has a default, so an empty
//! file (or none) is a working single broker on loopback. Layers, later wins:
//! built-in defaults, the YAML file, `DUOMQ_*` environment variables, command-line flags.
//!
//! The operator renders this file from these same types, so the two cannot disagree.
//! This module only reads and checks configuration; it starts nothing.

pub mod address;
pub mod connector_uri;
mod database;
mod ha;
mod network;
mod tls;
mod units;

pub use ha::{
    ArbiterConfig, ArbiterKind, ClusterConfig, HaConfig, HaPolicy, LeaseConfig, LeaseTarget, Member, PreferredRole,
    ReplicationMode, BackupAck, RoleChoice, NODE_NAME_ENV, POD_NAMESPACE_ENV, SERVICE_ACCOUNT_NAMESPACE_FILE,
};
pub use network::{DestinationFilter, GroupingConfig, GroupingHandler, NetworkConfig, NetworkConnector, MAX_NETWORK_TTL};
pub use units::{ByteSize, HumanDuration};
pub use address::{AddressSettings, AddressSettingsEntry, AddressSettingsTable, DeadLetter, FullPolicy};
pub use tls::{ClientAuth, ClientTlsConfig, ListenerTlsConfig, Permission, Roles, TlsConfig, TlsVersion};
pub use database::{DatabaseConfig, DatabaseLeaseConfig, DatabaseUrlError, SslMode, StoreKind};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The commented default file printed by `duomq-broker print-default-config`.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("default.yaml");

/// Prefix of environment variables that override config fields:
/// `DUOMQ_STOMP__LISTEN=0.0.0.0:61613` sets `stomp.listen`
/// (`__` separates levels, `SNAKE_CASE` maps to `camelCase`).
pub const ENV_PREFIX: &str = "DUOMQ_";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("failed to read config file {path}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("invalid config in {origin}: {field}: {message}")]
    Parse { origin: String, field: String, message: String },
    #[error("invalid config: {field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("invalid config: addressSettings[{index}]: {problem}")]
    AddressSettings { index: usize, problem: address::AddressSettingsError },
    #[error("failed to read users file {path} (auth.usersFile)")]
    ReadUsers { path: PathBuf, source: std::io::Error },
    #[error("failed to read the cluster password file {path} (ha.cluster.passwordFile)")]
    ReadPassword { path: PathBuf, source: std::io::Error },
    #[error("invalid users file {path} line {line}: expected NAME:PASSWORD")]
    UsersLine { path: PathBuf, line: usize },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub node: NodeConfig,
    pub stomp: StompConfig,
    /// The AMQP 1.0 listener (off unless enabled). Left out of a rendered file at its
    /// default, so rendered configs without AMQP stay the same.
    #[serde(skip_serializing_if = "AmqpConfig::is_default")]
    pub amqp: AmqpConfig,
    pub admin: AdminConfig,
    pub storage: StorageConfig,
    pub memory: MemoryConfig,
    pub destinations: DestinationsConfig,
    /// Per-destination settings by pattern: dead letters, redelivery, expiry, size limit
    /// and what happens at it (see [`address`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub address_settings: Vec<AddressSettingsEntry>,
    pub auth: AuthConfig,
    /// TLS on the STOMP listener, the cluster port and the admin API. Left out of a
    /// rendered file at its default, so rendered configs without TLS stay the same.
    #[serde(skip_serializing_if = "TlsConfig::is_default")]
    pub tls: TlsConfig,
    pub ha: HaConfig,
    /// Store-and-forward bridges to other groups (accepted, not active yet).
    pub network: NetworkConfig,
    /// Cluster-wide message grouping (the grouping handler).
    pub grouping: GroupingConfig,
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    /// Testing features, off by default. Left out of a rendered file at its default.
    #[serde(skip_serializing_if = "DebugConfig::is_default")]
    pub debug: DebugConfig,
}

/// Features for tests only, never for production.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DebugConfig {
    /// Serves `/debug/faults` on the admin API, where a request signed with the cluster
    /// password sets fault rules: drop, delay, duplicate or reorder cluster frames, cut
    /// this member off from a peer, fail or slow the journal's fdatasyncs (see `faults`).
    /// Off, the endpoint answers 404 and no rule can be set. `--fault-injection` turns it
    /// on too; the broker says so loudly at startup.
    pub fault_injection: bool,
}

impl DebugConfig {
    pub fn is_default(&self) -> bool {
        *self == DebugConfig::default()
    }
}

/// What `/metrics` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Per-destination series (`duomq_queue_*`) are shown for at most this many
    /// destinations: those holding the most messages (depth plus in flight), ties by name.
    /// `duomq_destinations` counts all, `duomq_destination_series_omitted` the rest.
    pub max_destination_series: usize,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig { max_destination_series: 500 }
    }
}

/// The async runtime serving connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads serving connections; 0 picks one less than the CPUs available (at least 1),
    /// leaving a CPU to the journal writer, whose hand-offs dominate a synchronous send.
    pub worker_threads: usize,
}

impl RuntimeConfig {
    /// The number of worker threads to start.
    pub fn effective_worker_threads(&self) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Stable name of this broker; empty means a random id kept in `data_dir/node-id`.
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StompConfig {
    pub listen: SocketAddr,
    pub max_connections: usize,
    /// A client must send CONNECT within this time.
    pub connect_timeout: HumanDuration,
    /// Heart-beat interval the broker offers to send (0s: never).
    pub heartbeat_send: HumanDuration,
    /// Heart-beat interval the broker wants from clients (0s: none).
    pub heartbeat_receive: HumanDuration,
    /// A client is dropped after this many missed heart-beat intervals.
    pub heartbeat_grace: u32,
    /// Bytes of a frame's head as sent: command line, header lines and the blank line that
    /// ends them, line endings included, before unescaping (see `stomp::Limits`).
    pub max_header_bytes: ByteSize,
    /// Header lines of one frame.
    pub max_headers: usize,
    /// Bytes of one frame's body.
    pub max_body_bytes: ByteSize,
    /// Unacknowledged messages in flight per subscription unless the SUBSCRIBE asks for fewer.
    pub default_prefetch: u32,
    /// A connection on which nothing was read or written for this long is closed, heart-beats
    /// negotiated or not (0s: never). Clients that stay connected while idle negotiate
    /// heart-beats.
    pub idle_timeout: HumanDuration,
    /// A frame, once its first byte arrived, must arrive whole within this time.
    pub frame_timeout: HumanDuration,
    /// A write to a client that does not complete within this time closes the connection.
    pub write_timeout: HumanDuration,
    /// Bytes of frames (receipts, errors) queued for one client that does not read them;
    /// past this the broker stops reading from that client until it catches up.
    pub max_outgoing_bytes: ByteSize,
    /// Bytes the whole broker holds in frames still being received; a connection whose frame
    /// would go past it gets an ERROR and is closed.
    pub max_partial_frame_bytes: ByteSize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Transactions one connection may have open at once.
    pub max_transactions_per_connection: usize,
}

impl Default for StompConfig {
    fn default() -> StompConfig {
        StompConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 61613)),
            max_connections: 10_000,
            connect_timeout: HumanDuration::secs(10),
            heartbeat_send: HumanDuration::secs(10),
            heartbeat_receive: HumanDuration::secs(10),
            heartbeat_grace: 3,
            max_header_bytes: ByteSize::kib(64),
            max_headers: 128,
            max_body_bytes: ByteSize::mib(16),
            default_prefetch: 1000,
            idle_timeout: HumanDuration::secs(60),
            frame_timeout: HumanDuration::secs(60),
            write_timeout: HumanDuration::secs(30),
            max_outgoing_bytes: ByteSize::mib(1),
            max_partial_frame_bytes: ByteSize::mib(256),
            max_subscriptions_per_connection: 1000,
            max_transactions_per_connection: 16,
        }
    }
}

/// The AMQP 1.0 listener (see `crate::amqp`): the same queues, topics, users and
/// permissions as STOMP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// Off by default while AMQP support is partial (see the README).
    pub enabled: bool,
    pub listen: SocketAddr,
    /// The largest AMQP frame the broker accepts and sends (at least 512 bytes, as the
    /// specification requires); a larger one closes the connection with
    /// `amqp:connection:framing-error`. Messages larger than a frame arrive in several.
    pub max_frame_size: ByteSize,
    /// The idle timeout the broker announces in its open: a client that sends nothing
    /// (not even empty frames) for this long is disconnected (0s: none).
    pub idle_timeout: HumanDuration,
}

impl AmqpConfig {
    pub fn is_default(&self) -> bool {
        *self == AmqpConfig::default()
    }
}

impl Default for AmqpConfig {
    fn default() -> AmqpConfig {
        AmqpConfig {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 5672)),
            max_frame_size: ByteSize::kib(64),
            idle_timeout: HumanDuration::secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// `/metrics` answers without credentials (for Prometheus); `false` asks for them as
    /// `/status` does. `/healthz` and `/readyz` are always open (probes).
    #[serde(skip_serializing_if = "is_true")]
    pub open_metrics: bool,
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig { listen: SocketAddr::from(([127, 0, 0, 1], 8161)), open_metrics: true }
    }
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub segment_size: ByteSize,
    pub max_batch_bytes: ByteSize,
    /// fdatasync every group commit. Turning it off loses receipted messages on power loss.
    pub fsync: bool,
    /// `file` (the journal in `dataDir`) or `database` (PostgreSQL, `storage.database`).
    /// Left out of a rendered file at their defaults, so that configs rendered before the
    /// database store existed (the operator's, hashed into its pods) stay the same.
    #[serde(skip_serializing_if = "StoreKind::is_file")]
    pub store: StoreKind,
    /// The shared database, for `store: database`.
    #[serde(skip_serializing_if = "DatabaseConfig::is_default")]
    pub database: DatabaseConfig,
    /// Journal bytes on disk past which persistent messages are refused until consumers
    /// free space (segments reclaimed); 0: unlimited. File journal only.
    #[serde(skip_serializing_if = "ByteSize::is_zero")]
    pub max_disk_bytes: ByteSize,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            data_dir: PathBuf::from("./data"),
            segment_size: ByteSize::mib(64),
            max_batch_bytes: ByteSize::mib(4),
            fsync: true,
            store: StoreKind::File,
            database: DatabaseConfig::default(),
            max_disk_bytes: ByteSize(0),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Message bytes one queue may hold before producers to it are slowed down.
    pub max_queue_bytes: ByteSize,
    /// Message bytes all queues together may hold before every producer is slowed down.
    pub max_broker_bytes: ByteSize,
    /// How long a producer waits for room before its SEND fails with an ERROR.
    pub producer_block_timeout: HumanDuration,
    /// What happens to a topic subscriber whose private queue reaches `max_queue_bytes`.
    pub slow_topic_subscriber: SlowTopicSubscriber,
}

impl Default for MemoryConfig {
    fn default() -> MemoryConfig {
        MemoryConfig {
            max_queue_bytes: ByteSize::mib(64),
            max_broker_bytes: ByteSize::mib(512),
            producer_block_timeout: HumanDuration::secs(30),
            slow_topic_subscriber: SlowTopicSubscriber::Disconnect,
        }
    }
}

/// The policy for a topic subscriber that reads slower than the topic's producers send.
/// Producers to a topic never wait for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SlowTopicSubscriber {
    /// Send it an ERROR, close its connection and drop its copies (ActiveMQ's
    /// abortSlowConsumerStrategy, Artemis' slow-consumer-policy KILL).
    Disconnect,
    /// Keep it connected and drop the copies that do not fit (counted in
    /// `duomq_topic_copies_dropped_total`).
    Drop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DestinationsConfig {
    /// Queues and topics the broker holds at once; a SEND or SUBSCRIBE that would create
    /// one more gets an ERROR.
    pub max_destinations: usize,
    /// A destination that holds no message, has no consumer and is not used for this long is
    /// removed (it comes back on next use). 0s: never.
    pub idle_timeout: HumanDuration,
    /// How often every queue is scanned for messages whose `expires` time passed (dropped,
    /// or moved to `addressSettings` `expiryAddress`); an expired message met at dispatch
    /// goes at once. 0s: no scan (as Artemis' message-expiry-scan-period). Left out of a
    /// rendered file at its default, so configs rendered before it existed stay the same.
    #[serde(skip_serializing_if = "is_default_expiry_scan_period")]
    pub expiry_scan_period: HumanDuration,
}

fn is_default_expiry_scan_period(period: &HumanDuration) -> bool {
    *period == DestinationsConfig::default().expiry_scan_period
}

impl Default for DestinationsConfig {
    fn default() -> DestinationsConfig {
        DestinationsConfig { max_destinations: 10_000, idle_timeout: HumanDuration::secs(60), expiry_scan_period: HumanDuration::secs(30) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AuthConfig {
    pub users: Vec<User>,
    /// A file of `NAME:PASSWORD` lines (`#` starts a comment), added to `users`.
    pub users_file: Option<PathBuf>,
    /// With users configured, still accept clients that send no login.
    pub allow_anonymous: bool,
    /// Role name → the users holding it (Artemis' roles file). Users from `users`,
    /// `usersFile` and `certificateUsers` alike.
    #[serde(skip_serializing_if = "Roles::is_empty")]
    pub roles: Roles,
    /// Roles of a client that logged in anonymously (`allowAnonymous`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub anonymous_roles: Vec<String>,
    /// Per-destination permissions. Empty: every authenticated client may do everything
    /// (as before). With any entry, a destination no entry matches is denied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<Permission>,
    /// A client certificate's subject common name → the user it logs in as (with
    /// `tls.stomp.clientAuth`). A CONNECT with a login as well must name the same user.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub certificate_users: BTreeMap<String, String>,
    /// Users holding one of these roles may read `/status` (and `/metrics` when closed)
    /// with HTTP Basic credentials. Admin writes need the cluster credentials.
    #[serde(skip_serializing_if = "is_default_admin_roles")]
    pub admin_roles: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            users: Vec::new(),
            users_file: None,
            allow_anonymous: false,
            roles: Roles::new(),
            anonymous_roles: Vec::new(),
            permissions: Vec::new(),
            certificate_users: BTreeMap::new(),
            admin_roles: default_admin_roles(),
        }
    }
}

fn default_admin_roles() -> Vec<String> {
    vec!["admin".to_string()]
}

fn is_default_admin_roles(roles: &Vec<String>) -> bool {
    *roles == default_admin_roles()
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User").field("name", &self.name).field("password", &"<redacted>").finish()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `duomq_broker=debug,info`. `RUST_LOG` wins if set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig { level: "info".to_string(), format: LogFormat::Text }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A command-line override of one field, by its dotted path (`storage.data_dir`).
#[derive(Debug, Clone)]
pub struct Override {
    pub path: &'static str,
    pub value: String,
}

impl BrokerConfig {
    /// Builds the effective config from the file (if any), the environment and the flags,
    /// then validates it.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[Override],
    ) -> Result<BrokerConfig, ConfigError> {
        let (mut doc, origin) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::ReadFile { path: path.to_path_buf(), source })?;
                let doc = if text.trim().is_empty() {
                    serde_yaml::Value::Mapping(Default::default())
                } else {
                    serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
                        origin: path.display().to_string(),
                        field: "(document)".to_string(),
                        message: e.to_string(),
                    })?
                };
                (doc, path.display().to_string())
            }
            None => (serde_yaml::Value::Mapping(Default::default()), "built-in defaults".to_string()),
        };
        let mut from_env = false;
        for (key, value) in env {
            // Only `SECTION__FIELD` names are config; `DUOMQ_URL` and friends belong to the CLI.
            let Some(rest) = key.strip_prefix(ENV_PREFIX).filter(|r| r.contains("__")) else { continue };
            let path: Vec<String> = rest.split("__").map(snake_to_camel).collect();
            set_path(&mut doc, &path, &value);
            from_env = true;
        }
        for o in overrides {
            let path: Vec<String> = o.path.split('.').map(str::to_string).collect();
            set_path(&mut doc, &path, &o.value);
        }
        let origin = if from_env || !overrides.is_empty() {
            format!("{origin} with environment/flag overrides")
        } else {
            origin
        };
        let config: BrokerConfig = serde_path_to_error::deserialize(doc).map_err(|e| {
            ConfigError::Parse { origin, field: e.path().to_string(), message: e.into_inner().to_string() }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// `addressSettings` parsed, over the defaults `memory.maxQueueBytes` implies (and
    /// `page` by default with the file journal).
    pub fn address_settings_table(&self) -> Result<AddressSettingsTable, ConfigError> {
        let table = AddressSettingsTable::new(&self.address_settings, self.memory.max_queue_bytes.as_usize())
            .map_err(|(index, problem)| ConfigError::AddressSettings { index, problem })?;
        // Paging reads messages back from the file journal; the database store has none.
        if self.storage.store == StoreKind::Database {
            if let Some(i) = self.address_settings.iter().position(|e| e.address_full_policy == Some(FullPolicy::Page)) {
                return Err(ConfigError::AddressSettings { index: i, problem: address::AddressSettingsError::PagingNeedsJournal });
            }
            return Ok(table);
        }
        Ok(table.with_default_policy(FullPolicy::Page))
    }

    /// Checks what types alone cannot; errors name the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.stomp.max_connections == 0 {
            return invalid("stomp.maxConnections", "must be at least 1");
        }
        if self.stomp.connect_timeout.get().is_zero() {
            return invalid("stomp.connectTimeout", "must be longer than 0s");
        }
        if self.stomp.heartbeat_grace == 0 {
            return invalid("stomp.heartbeatGrace", "must be at least 1");
        }
        if self.stomp.max_header_bytes.0 < 1024 {
            return invalid("stomp.maxHeaderBytes", "must be at least 1KiB");
        }
        if self.stomp.max_headers == 0 {
            return invalid("stomp.maxHeaders", "must be at least 1");
        }
        if self.stomp.max_body_bytes.0 == 0 {
            return invalid("stomp.maxBodyBytes", "must be larger than 0");
        }
        if self.stomp.default_prefetch == 0 {
            return invalid("stomp.defaultPrefetch", "must be at least 1");
        }
        if self.ha.policy == HaPolicy::Replication && self.node.id.len() > crate::cluster::MAX_HANDSHAKE_NAME {
            return invalid(
                "node.id",
                format!("must be at most {} bytes with replication (it travels in the cluster handshake)", crate::cluster::MAX_HANDSHAKE_NAME),
            );
        }
        if self.stomp.frame_timeout.get().is_zero() {
            return invalid("stomp.frameTimeout", "must be longer than 0s");
        }
        if self.stomp.write_timeout.get().is_zero() {
            return invalid("stomp.writeTimeout", "must be longer than 0s");
        }
        if self.stomp.max_outgoing_bytes.0 == 0 {
            return invalid("stomp.maxOutgoingBytes", "must be larger than 0");
        }
        if self.stomp.max_partial_frame_bytes < self.stomp.max_body_bytes {
            return invalid("stomp.maxPartialFrameBytes", "must be at least stomp.maxBodyBytes so one largest frame can arrive");
        }
        if self.stomp.max_subscriptions_per_connection == 0 {
            return invalid("stomp.maxSubscriptionsPerConnection", "must be at least 1");
        }
        if self.stomp.max_transactions_per_connection == 0 {
            return invalid("stomp.maxTransactionsPerConnection", "must be at least 1");
        }
        if self.destinations.max_destinations == 0 {
            return invalid("destinations.maxDestinations", "must be at least 1");
        }
        if self.stomp.listen == self.admin.listen {
            return invalid("admin.listen", "must differ from stomp.listen");
        }
        self.validate_amqp()?;
        if self.storage.data_dir.as_os_str().is_empty() {
            return invalid("storage.dataDir", "must not be empty");
        }
        match self.storage.store {
            StoreKind::Database => {
                if self.ha.policy != HaPolicy::SharedStore {
                    return invalid(
                        "storage.store",
                        "database is a shared store: set ha.policy: sharedStore (one member alone works too)",
                    );
                }
                self.storage.database.validate()?;
                if self.storage.segment_size != StorageConfig::default().segment_size {
                    return invalid("storage.segmentSize", "is for the file journal; the database store has no segments (remove it)");
                }
                if !self.storage.max_disk_bytes.is_zero() {
                    return invalid("storage.maxDiskBytes", "is for the file journal; with storage.store: database the database's own quota applies (remove it)");
                }
                if self.ha.arbiter != ArbiterConfig::default() {
                    return invalid(
                        "ha.arbiter",
                        "is not used with storage.store: database: the database lease decides who is live (set storage.database.lease instead)",
                    );
                }
            }
            StoreKind::File if self.storage.database != DatabaseConfig::default() => {
                return invalid("storage.database", "is set but storage.store is file: set storage.store: database to use it");
            }
            StoreKind::File => {}
        }
        if self.storage.segment_size < ByteSize::kib(64) {
            return invalid("storage.segmentSize", "must be at least 64KiB");
        }
        if self.storage.segment_size < self.stomp.max_body_bytes {
            return invalid("storage.segmentSize", "must be at least stomp.maxBodyBytes so any message fits a segment");
        }
        if self.storage.max_batch_bytes.0 == 0 {
            return invalid("storage.maxBatchBytes", "must be larger than 0");
        }
        if self.memory.max_queue_bytes.0 == 0 {
            return invalid("memory.maxQueueBytes", "must be larger than 0");
        }
        if self.memory.max_broker_bytes < self.memory.max_queue_bytes {
            return invalid("memory.maxBrokerBytes", "must be at least memory.maxQueueBytes");
        }
        self.address_settings_table()?;
        for (i, u) in self.auth.users.iter().enumerate() {
            if u.name.is_empty() || u.name.contains(':') {
                return Err(ConfigError::Invalid {
                    field: "auth.users",
                    message: format!("user {i} needs a non-empty name without ':'"),
                });
            }
        }
        for (cn, user) in &self.auth.certificate_users {
            if cn.is_empty() || user.is_empty() || user.contains(':') {
                return invalid("auth.certificateUsers", format!("{cn:?}: {user:?}: needs a common name and a user name without ':'"));
            }
        }
        if let Err(e) = crate::security::validate(&self.auth) {
            return invalid(e.field, e.message);
        }
        if let Err((field, message)) = self.tls.validate() {
            return invalid(field, message);
        }
        self.ha.validate()?;
        if self.ha.policy == HaPolicy::SharedStore && self.node.id.trim().is_empty() {
            // The generated id lives in dataDir/node-id, which the members share.
            return invalid("node.id", "must be set with ha.policy sharedStore: members share storage.dataDir, so a generated id would be the same for all");
        }
        self.network.validate()?;
        self.validate_connectors_leave_own_group()?;
        self.grouping.validate()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return invalid("log.level", format!("not a valid filter: {e}"));
        }
        Ok(())
    }

    fn validate_amqp(&self) -> Result<(), ConfigError> {
        let amqp = &self.amqp;
        if !amqp.enabled {
            if self.tls.amqp.enabled {
                return invalid("tls.amqp.enabled", "needs amqp.enabled: true (there is no AMQP listener to put TLS on)");
            }
            return Ok(());
        }
        if amqp.listen == self.stomp.listen || amqp.listen == self.admin.listen {
            return invalid("amqp.listen", "must differ from stomp.listen and admin.listen");
        }
        if amqp.max_frame_size.0 < 512 || amqp.max_frame_size.0 > u64::from(u32::MAX) {
            return invalid("amqp.maxFrameSize", "must be between 512 bytes (the AMQP minimum) and 4GiB");
        }
        if amqp.idle_timeout.get().as_millis() > u128::from(u32::MAX) {
            return invalid("amqp.idleTimeout", "must be at most 49 days (AMQP's idle-time-out is 32-bit milliseconds)");
        }
        if self.tls.stomp.enabled && !self.tls.amqp.enabled {
            return invalid(
                "tls.amqp.enabled",
                "must be true with amqp.enabled and tls.stomp.enabled: AMQP would be plaintext beside a TLS-only STOMP port",
            );
        }
        Ok(())
    }

    /// A bridge never links into its own group: a connector that lists this broker's own
    /// cluster address or one of its group's members is refused, naming both.
    fn validate_connectors_leave_own_group(&self) -> Result<(), ConfigError> {
        let own: Vec<(String, String)> = std::iter::once(("this broker".to_string(), self.ha.cluster.listen.to_string()))
            .chain(self.ha.members.iter().filter(|m| !m.cluster.is_empty()).map(|m| (format!("member {}", m.name), m.cluster.clone())))
            .collect();
        for (i, c) in self.network.connectors.iter().enumerate() {
            let Ok(uri) = c.parsed_uri() else { continue };
            for address in &uri.addresses {
                let text = format!("{}:{}", address.host, address.port);
                let bracketed = format!("[{}]:{}", address.host, address.port);
                if let Some((who, _)) = own.iter().find(|(_, a)| *a == text || *a == bracketed) {
                    return invalid(
                        "network.connectors",
                        format!(
                            "connector {i} ({:?}): {address} is {who} of this broker's own group {:?}; a bridge links to other groups only (remove it from uri)",
                            c.name, self.ha.group_name
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// All users: those in the file plus `auth.users_file`.
    pub fn load_users(&self) -> Result<Vec<User>, ConfigError> {
        let mut users = self.auth.users.clone();
        if let Some(path) = &self.auth.users_file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::ReadUsers { path: path.clone(), source })?;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (name, password) = line
                    .split_once(':')
                    .ok_or_else(|| ConfigError::UsersLine { path: path.clone(), line: i + 1 })?;
                users.push(User { name: name.to_string(), password: password.to_string() });
            }
        }
        Ok(users)
    }
}

/// A validation failure of one field.
fn invalid(field: &'static str, message: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { field, message: message.into() })
}

fn snake_to_camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut upper = false;
    for c in s.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Sets `path` in a YAML document to a scalar parsed as YAML (so `true`, `5` and `5s` all
/// take the type the field expects), creating mappings on the way.
fn set_path(doc: &mut serde_yaml::Value, path: &[String], raw: &str) {
    let value: serde_yaml::Value =
        serde_yaml::from_str(raw).unwrap_or_else(|_| serde_yaml::Value::String(raw.to_string()));
    let mut node = doc;
    for key in path {
        if !node.is_mapping() {
            *node = serde_yaml::Value::Mapping(Default::default());
        }
        let serde_yaml::Value::Mapping(map) = node else { return };
        node = map.entry(serde_yaml::Value::String(key.clone())).or_insert(serde_yaml::Value::Null);
    }
    *node = value;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_text(text: &str) -> Result<BrokerConfig, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        BrokerConfig::load(Some(f.path()), Vec::new(), &[])
    }

    #[test]
    fn given_printed_default_config_when_parsed_should_equal_defaults() {
        let cfg = load_text(DEFAULT_CONFIG_YAML).unwrap();
        assert_eq!(cfg, BrokerConfig::default());
    }

    #[test]
    fn given_worker_threads_should_use_them_and_otherwise_leave_a_cpu_to_the_journal() {
        let cfg = load_text("runtime:\n  workerThreads: 3\n").unwrap();
        assert_eq!(cfg.runtime.effective_worker_threads(), 3);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let auto = BrokerConfig::default().runtime.effective_worker_threads();
        assert_eq!(auto, cpus.saturating_sub(1).max(1));
    }

    #[test]
    fn given_printed_default_config_should_mention_every_field() {
        let printed: serde_yaml::Value = serde_yaml::from_str(DEFAULT_CONFIG_YAML).unwrap();
        // The storage fields left out at their defaults are set, so that they count too.
        let mut all = BrokerConfig::default();
        all.storage.store = StoreKind::Database;
        all.storage.database.url = Some("postgresql://h/db".into());
        all.admin.open_metrics = false;
        all.destinations.expiry_scan_period = HumanDuration::secs(5);
        all.tls.stomp.enabled = true;
        all.tls.amqp.enabled = true;
        all.amqp.enabled = true;
        all.debug.fault_injection = true;
        all.auth.roles.insert("admin".into(), vec!["ops".into()]);
        all.auth.anonymous_roles = vec!["guest".into()];
        all.auth.permissions = vec![Permission {
            pattern: ">".into(),
            send: vec!["a".into()],
            consume: vec!["a".into()],
            browse: vec!["a".into()],
            create: vec!["a".into()],
        }];
        all.auth.certificate_users.insert("cn".into(), "ops".into());
        all.auth.admin_roles = vec!["ops".into()];
        let full = serde_yaml::to_value(all).unwrap();
        fn keys(v: &serde_yaml::Value, prefix: &str, out: &mut Vec<String>) {
            if let serde_yaml::Value::Mapping(m) = v {
                for (k, v) in m {
                    let k = format!("{prefix}{}", k.as_str().unwrap_or("?"));
                    keys(v, &format!("{k}."), out);
                    out.push(k);
                }
            }
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        keys(&printed, "", &mut a);
        keys(&full, "", &mut b);
        // Map entries are examples, not fields.
        b.retain(|k| k != "auth.roles.admin" && k != "auth.certificateUsers.cn");
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn given_no_file_should_use_defaults() {
        let cfg = BrokerConfig::load(None, Vec::new(), &[]).unwrap();
        assert_eq!(cfg.stomp.listen.to_string(), "127.0.0.1:61613");
        assert_eq!(cfg.admin.listen.to_string(), "127.0.0.1:8161");
        assert_eq!(cfg.storage.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn given_backup_ack_should_parse_both_values_and_name_the_field_when_wrong() {
        assert_eq!(BrokerConfig::default().ha.backup_ack, BackupAck::Written);
        let cfg = load_text("ha:\n  backupAck: synced\n").unwrap();
        assert_eq!(cfg.ha.backup_ack, BackupAck::Synced);
        let err = load_text("ha:\n  backupAck: fsynced\n").unwrap_err().to_string();
        assert!(err.contains("ha.backupAck"), "{err}");
    }

    #[test]
    fn given_unknown_field_should_name_it() {
        let err = load_text("stomp:\n  lisen: 1.2.3.4:5\n").unwrap_err().to_string();
        assert!(err.contains("stomp") && err.contains("lisen"), "{err}");
    }

    #[test]
    fn given_bad_value_should_name_field_path() {
        let err = load_text("memory:\n  maxQueueBytes: 12parsecs\n").unwrap_err().to_string();
        assert!(err.contains("memory.maxQueueBytes"), "{err}");
        let err = load_text("stomp:\n  listen: nowhere\n").unwrap_err().to_string();
        assert!(err.contains("stomp.listen"), "{err}");
    }

    #[test]
    fn given_invalid_combination_should_name_field() {
        let err = load_text("memory:\n  maxQueueBytes: 2GiB\n  maxBrokerBytes: 1GiB\n").unwrap_err();
        assert!(err.to_string().contains("memory.maxBrokerBytes"), "{err}");
    }

    #[rstest::rstest]
    #[case::plaintext_amqp_beside_tls_stomp("amqp: {enabled: true}\ntls: {certFile: c, keyFile: k, stomp: {enabled: true}}\n", "tls.amqp.enabled")]
    #[case::amqps_without_the_listener("tls: {certFile: c, keyFile: k, amqp: {enabled: true}}\n", "needs amqp.enabled")]
    #[case::client_auth_without_tls("amqp: {enabled: true}\ntls: {caFile: ca, amqp: {clientAuth: optional}}\n", "tls.amqp.clientAuth")]
    #[case::client_auth_without_a_ca("amqp: {enabled: true}\ntls: {certFile: c, keyFile: k, amqp: {enabled: true, clientAuth: required}}\n", "tls.caFile")]
    fn given_bad_amqp_tls_config_should_name_the_field(#[case] text: &str, #[case] field: &str) {
        let err = load_text(text).unwrap_err().to_string();
        assert!(err.contains(field), "{text}\n=> {err}");
    }

    #[test]
    fn given_amqps_beside_tls_stomp_should_load() {
        let cfg = load_text("amqp: {enabled: true}\ntls: {certFile: c, keyFile: k, caFile: ca, stomp: {enabled: true}, amqp: {enabled: true, clientAuth: optional}}\n").unwrap();
        assert!(cfg.tls.amqp.enabled && cfg.tls.any_enabled());
    }

    #[test]
    fn given_env_and_flags_should_override_file_in_order() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"storage:\n  dataDir: /from/file\nstomp:\n  heartbeatSend: 1s\n").unwrap();
        let env = vec![
            ("DUOMQ_STORAGE__DATA_DIR".to_string(), "/from/env".to_string()),
            ("DUOMQ_STOMP__HEARTBEAT_SEND".to_string(), "2s".to_string()),
            ("DUOMQ_STORAGE__FSYNC".to_string(), "false".to_string()),
            ("OTHER".to_string(), "x".to_string()),
            ("DUOMQ_URL".to_string(), "stomp://elsewhere".to_string()),
        ];
        let flags = [Override { path: "storage.dataDir", value: "/from/flag".to_string() }];
        let cfg = BrokerConfig::load(Some(f.path()), env, &flags).unwrap();
        assert_eq!(cfg.storage.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(cfg.stomp.heartbeat_send, HumanDuration::secs(2));
        assert!(!cfg.storage.fsync);
    }

    #[test]
    fn given_shared_store_without_node_id_should_name_node_id() {
        let err = load_text("ha:\n  policy: sharedStore\n  groupName: g1\n").unwrap_err().to_string();
        assert!(err.contains("node.id"), "{err}");
        let cfg = load_text("node:\n  id: a\nha:\n  policy: sharedStore\n  groupName: g1\n").unwrap();
        assert_eq!(cfg.ha.policy, HaPolicy::SharedStore);
    }

    const DATABASE: &str = "node:\n  id: a\nha:\n  policy: sharedStore\n  groupName: g1\nstorage:\n  store: database\n  database:\n    url: postgresql://u@h/db\n";

    #[rstest::rstest]
    #[case::database_needs_shared_store("storage:\n  store: database\n  database:\n    url: postgresql://u@h/db\n", "storage.store")]
    #[case::database_needs_a_url("node:\n  id: a\nha:\n  policy: sharedStore\n  groupName: g1\nstorage:\n  store: database\n", "storage.database.url")]
    #[case::database_section_under_file_store("storage:\n  database:\n    url: postgresql://u@h/db\n", "storage.database")]
    #[case::url_and_file("storage:\n    urlFile: /u\n", "urlFile")]
    #[case::renew_longer_than_half_the_lease("storage:\n    lease: {duration: 2s, renewInterval: 1500ms}\n", "renewInterval")]
    #[case::segments_are_for_files("storage:\n  segmentSize: 1MiB\n", "storage.segmentSize")]
    #[case::arbiter_is_the_lease("ha:\n  arbiter: {retryInterval: 5s}\n", "ha.arbiter")]
    #[case::replication_settings_under_a_shared_store("ha:\n  replication: async\n", "ha.replication")]
    #[case::table_prefix("storage:\n    tablePrefix: Bad-Name\n", "tablePrefix")]
    fn given_bad_database_store_config_should_name_the_field(#[case] text: &str, #[case] field: &str) {
        // The cases starting with "storage:\n    " are merged into the valid DATABASE config.
        let text = if let Some(rest) = text.strip_prefix("storage:\n    ") {
            format!("{DATABASE}    {rest}")
        } else if text.starts_with("storage:\n  segmentSize") {
            format!("{DATABASE}  segmentSize: 1MiB\n")
        } else if let Some(rest) = text.strip_prefix("ha:\n") {
            DATABASE.replace("  groupName: g1\n", &format!("  groupName: g1\n{rest}"))
        } else {
            text.to_string()
        };
        let err = load_text(&text).unwrap_err().to_string();
        assert!(err.contains(field), "{text}\n=> {err}");
    }

    #[test]
    fn given_database_store_should_load_with_lease_defaults() {
        let cfg = load_text(DATABASE).unwrap();
        assert_eq!(cfg.storage.store, StoreKind::Database);
        assert_eq!(cfg.storage.database.lease.duration, HumanDuration::secs(10));
    }

    #[test]
    fn given_shared_store_members_without_cluster_address_should_load() {
        let text = "node:\n  id: a\nha:\n  policy: sharedStore\n  groupName: g1\n  members:\n    - name: b\n      stomp: b:61613\n";
        let cfg = load_text(text).unwrap();
        assert_eq!(cfg.ha.members[0].stomp, "b:61613");
    }

    #[test]
    fn given_network_and_grouping_should_load() {
        let text = "network:\n  connectors:\n    - name: to-g2\n      uri: masterslave:(tcp://g2-a:61616, tcp://g2-b:61616)\n      duplex: true\n      networkTTL: 2\n\
                    grouping:\n  handler: remote\n  address: masterslave:(tcp://g1-a:61616,tcp://g1-b:61616)\n  timeout: 2s\n";
        let cfg = load_text(text).unwrap();
        assert_eq!(cfg.network.connectors[0].network_ttl, 2);
        assert!(cfg.network.connectors[0].duplex);
        assert_eq!(cfg.grouping.handler, GroupingHandler::Remote);
        assert_eq!(cfg.grouping.timeout.get(), std::time::Duration::from_secs(2));
    }

    #[test]
    fn given_connector_into_own_group_should_be_refused_naming_the_member() {
        let text = "node:\n  id: g1-0\nha:\n  policy: replication\n  groupName: g1\n  cluster:\n    listen: 127.0.0.1:7001\n    password: x\n  members:\n    - name: g1-1\n      cluster: 127.0.0.1:7002\n      stomp: 127.0.0.1:7102\n\
                    network:\n  connectors:\n    - name: loop\n      uri: masterslave:(tcp://127.0.0.1:7002,tcp://127.0.0.1:7003)\n";
        let err = load_text(text).unwrap_err().to_string();
        assert!(err.contains("network.connectors") && err.contains("member g1-1") && err.contains("own group"), "{err}");
    }

    #[test]
    fn given_bad_connector_uri_in_file_should_name_field_and_problem() {
        let err = load_text("network:\n  connectors:\n    - name: x\n      uri: failover:(tcp://a:1)\n").unwrap_err().to_string();
        assert!(err.contains("network.connectors") && err.contains("unknown scheme"), "{err}");
    }

    #[test]
    fn given_users_file_should_add_users() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"# comment\nalice:secret\n\nbob:p:w\n").unwrap();
        let cfg = BrokerConfig {
            auth: AuthConfig { users_file: Some(f.path().to_path_buf()), ..Default::default() },
            ..Default::default()
        };
        let users = cfg.load_users().unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[1].password, "p:w");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The configs in broker/examples are documentation; they must stay valid.
    #[test]
    fn given_example_configs_should_all_load() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("examples dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                BrokerConfig::load(Some(&path), Vec::new(), &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 8, "expected the pair and three-pair examples, found {seen}");
    }
}
