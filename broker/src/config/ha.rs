//! The `ha` section of `broker.yaml`: live/backup replication (HornetQ/Artemis style).
//! Types and checks only; the `ha` module acts on them.

use super::{ConfigError, HumanDuration};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HaConfig {
    /// `none`: a standalone broker. `replication`: a member of a live/backup group that
    /// shares no storage; the live streams every persistent write to its backups.
    pub policy: HaPolicy,
    /// The role this member prefers: a `primary` starts as live when no live of its group
    /// answers; a `backup` always starts as a backup.
    pub role: PreferredRole,
    /// The backup-group name: members with the same name replicate to each other.
    pub group_name: String,
    pub cluster: ClusterConfig,
    /// The other members of this group (their cluster and STOMP addresses).
    pub members: Vec<Member>,
    /// A primary that comes back while its backup is live resyncs, then takes the role back.
    pub allow_failback: bool,
    /// `sync`: a persistent SEND is receipted (and an ACK takes effect) only once every
    /// synced backup has it. `async`: the live does not wait for backups.
    pub replication: ReplicationMode,
    pub arbiter: ArbiterConfig,
    /// How often a backup pings its live.
    pub check_period: HumanDuration,
    /// A live that has not answered for this long is considered gone.
    pub connection_ttl: HumanDuration,
}

impl Default for HaConfig {
    fn default() -> HaConfig {
        HaConfig {
            policy: HaPolicy::None,
            role: PreferredRole::Primary,
            group_name: String::new(),
            cluster: ClusterConfig::default(),
            members: Vec::new(),
            allow_failback: false,
            replication: ReplicationMode::Sync,
            arbiter: ArbiterConfig::default(),
            check_period: HumanDuration::millis(200),
            connection_ttl: HumanDuration::millis(1000),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HaPolicy {
    None,
    Replication,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PreferredRole {
    Primary,
    Backup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReplicationMode {
    Sync,
    Async,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Address of the cluster listener (replication, votes).
    pub listen: SocketAddr,
    /// The cluster user; every member of a cluster uses the same user and password.
    pub user: String,
    /// The cluster password; prefer `passwordFile` (a mounted Secret).
    pub password: String,
    pub password_file: Option<PathBuf>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("listen", &self.listen)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("password_file", &self.password_file)
            .finish()
    }
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 61616)),
            user: "duomq-cluster".to_string(),
            password: String::new(),
            password_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Member {
    /// The member's node id (`node.id`).
    pub name: String,
    /// Its cluster address, `host:port`.
    pub cluster: String,
    /// Its STOMP address, `host:port` (named in the ERROR a backup sends to clients).
    pub stomp: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ArbiterConfig {
    /// `quorum`: activate only with a majority of the cluster's other servers confirming
    /// the live is gone. `fileLock`: activate only after taking the lock the live holds.
    pub kind: ArbiterKind,
    /// Cluster addresses of the servers that vote (the other groups' members).
    pub voters: Vec<String>,
    pub vote_timeout: HumanDuration,
    /// How long a backup that lost a vote waits before asking again.
    pub retry_interval: HumanDuration,
    /// The lock file (on storage every member of the group shares) for `fileLock`.
    pub lock_file: Option<PathBuf>,
}

impl Default for ArbiterConfig {
    fn default() -> ArbiterConfig {
        ArbiterConfig {
            kind: ArbiterKind::Quorum,
            voters: Vec::new(),
            vote_timeout: HumanDuration::secs(2),
            retry_interval: HumanDuration::secs(1),
            lock_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ArbiterKind {
    Quorum,
    FileLock,
}

impl HaConfig {
    pub fn enabled(&self) -> bool {
        self.policy == HaPolicy::Replication
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let invalid = |field: &'static str, message: &str| Err(ConfigError::Invalid { field, message: message.to_string() });
        if self.group_name.trim().is_empty() {
            return invalid("ha.groupName", "must be set with policy replication (members of one group share it)");
        }
        if self.cluster.password.is_empty() && self.cluster.password_file.is_none() {
            return invalid("ha.cluster.passwordFile", "set ha.cluster.passwordFile (or ha.cluster.password) for replication");
        }
        if self.cluster.user.is_empty() {
            return invalid("ha.cluster.user", "must not be empty");
        }
        if self.members.is_empty() {
            return invalid("ha.members", "list the other members of the group (name, cluster, stomp)");
        }
        if self.check_period.get().is_zero() || self.connection_ttl < self.check_period {
            return invalid("ha.connectionTtl", "must be at least ha.checkPeriod, which must be above 0s");
        }
        if self.arbiter.kind == ArbiterKind::FileLock && self.arbiter.lock_file.is_none() {
            return invalid("ha.arbiter.lockFile", "is required with arbiter kind fileLock");
        }
        Ok(())
    }

    /// The cluster password, from the file when one is given.
    pub fn load_password(&self) -> Result<String, ConfigError> {
        match &self.cluster.password_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|source| ConfigError::ReadPassword { path: path.clone(), source }),
            None => Ok(self.cluster.password.clone()),
        }
    }
}
