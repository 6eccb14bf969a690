//! The `ha` section of `broker.yaml`: live/backup groups, either replicated
//! (HornetQ/Artemis style) or on one shared store (ActiveMQ shared file system
//! master/slave). Types and checks only; the `ha` module acts on them.

use super::{invalid, ConfigError, HumanDuration};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HaConfig {
    /// `none`: a standalone broker. `replication`: a member of a live/backup group that
    /// shares no storage; the live streams every persistent write to its backups.
    /// `sharedStore`: members share `storage.dataDir`; whoever holds its journal lock is live.
    pub policy: HaPolicy,
    /// The role this member prefers: a `primary` starts as live when no live of its group
    /// answers; a `backup` always starts as a backup.
    pub role: PreferredRole,
    /// Host-pair layouts on Kubernetes: when set, this member prefers `primary` if the
    /// `NODE_NAME` environment variable (the pod's node, from the downward API) equals it,
    /// `backup` otherwise; `role` is then ignored.
    pub primary_node: Option<String>,
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
            primary_node: None,
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
    SharedStore,
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
    /// Its cluster address, `host:port` (required with replication; unused with sharedStore).
    #[serde(default)]
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

/// The environment variable holding the Kubernetes node a pod runs on (downward API
/// `spec.nodeName`), compared with `ha.primaryNode`.
pub const NODE_NAME_ENV: &str = "NODE_NAME";

/// The role a member takes and why, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleChoice {
    pub role: PreferredRole,
    pub reason: String,
}

impl HaConfig {
    /// The role this member prefers: `role`, unless `primaryNode` is set, in which case
    /// the node it runs on decides. `env` looks up an environment variable (injected so
    /// tests need not touch the process environment).
    pub fn effective_role(&self, env: impl Fn(&str) -> Option<String>) -> RoleChoice {
        let Some(primary_node) = &self.primary_node else {
            return RoleChoice { role: self.role, reason: "ha.role".to_string() };
        };
        match env(NODE_NAME_ENV) {
            Some(node) if node == *primary_node => RoleChoice {
                role: PreferredRole::Primary,
                reason: format!("{NODE_NAME_ENV} {node:?} is ha.primaryNode"),
            },
            Some(node) => RoleChoice {
                role: PreferredRole::Backup,
                reason: format!("{NODE_NAME_ENV} {node:?} is not ha.primaryNode {primary_node:?}"),
            },
            None => RoleChoice {
                role: PreferredRole::Backup,
                reason: format!("{NODE_NAME_ENV} is not set, so this cannot be ha.primaryNode {primary_node:?}"),
            },
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.policy == HaPolicy::None {
            return Ok(());
        }
        if self.group_name.trim().is_empty() {
            return invalid("ha.groupName", "must be set with policy replication or sharedStore (members of one group share it)");
        }
        if self.primary_node.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return invalid("ha.primaryNode", "must name a Kubernetes node when set");
        }
        if self.policy == HaPolicy::SharedStore {
            return self.validate_shared_store();
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
        if let Some(m) = self.members.iter().find(|m| m.cluster.trim().is_empty()) {
            return invalid("ha.members", format!("member {:?} needs its cluster address for replication", m.name));
        }
        if self.check_period.get().is_zero() || self.connection_ttl < self.check_period {
            return invalid("ha.connectionTtl", "must be at least ha.checkPeriod, which must be above 0s");
        }
        if self.arbiter.kind == ArbiterKind::FileLock && self.arbiter.lock_file.is_none() {
            return invalid("ha.arbiter.lockFile", "is required with arbiter kind fileLock");
        }
        Ok(())
    }

    /// Only what a shared-store member uses: it needs no cluster port or password, the
    /// journal lock is its arbiter.
    fn validate_shared_store(&self) -> Result<(), ConfigError> {
        if self.allow_failback {
            return invalid("ha.allowFailback", "must be false with policy sharedStore (the lock holder stays live)");
        }
        if self.arbiter.retry_interval.get().is_zero() {
            return invalid("ha.arbiter.retryInterval", "must be longer than 0s (a shared-store backup retries the lock this often)");
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

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn with_primary_node(node: Option<&str>) -> HaConfig {
        HaConfig { role: PreferredRole::Primary, primary_node: node.map(str::to_string), ..HaConfig::default() }
    }

    #[rstest]
    #[case(None, Some("node-1"), PreferredRole::Primary, "ha.role")]
    #[case(Some("node-1"), Some("node-1"), PreferredRole::Primary, "is ha.primaryNode")]
    #[case(Some("node-1"), Some("node-2"), PreferredRole::Backup, "is not ha.primaryNode")]
    #[case(Some("node-1"), None, PreferredRole::Backup, "NODE_NAME is not set")]
    fn given_primary_node_and_node_name_should_choose_role_and_say_why(
        #[case] primary_node: Option<&str>,
        #[case] node_name: Option<&str>,
        #[case] role: PreferredRole,
        #[case] reason: &str,
    ) {
        let choice = with_primary_node(primary_node)
            .effective_role(|key| (key == NODE_NAME_ENV).then(|| node_name.map(str::to_string)).flatten());
        assert_eq!(choice.role, role);
        assert!(choice.reason.contains(reason), "{}", choice.reason);
    }

    #[rstest]
    #[case("ha:\n  policy: sharedStore\n  allowFailback: true\n", "ha.allowFailback")]
    #[case("ha:\n  policy: sharedStore\n  arbiter:\n    retryInterval: 0s\n", "ha.arbiter.retryInterval")]
    #[case("ha:\n  policy: sharedStore\n  primaryNode: \"\"\n", "ha.primaryNode")]
    #[case("ha:\n  policy: replication\n  cluster:\n    password: p\n  members:\n    - name: b\n      stomp: b:1\n", "ha.members")]
    fn given_invalid_ha_section_should_name_field(#[case] ha: &str, #[case] field: &str) {
        let text = format!("node:\n  id: a\n{ha}");
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        doc["ha"]["groupName"] = "g1".into();
        let config: crate::config::BrokerConfig = serde_yaml::from_value(doc).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
}
