//! The `ha` section of `broker.yaml`: live/backup groups, either replicated
//! (HornetQ/Artemis style) or on one shared store (ActiveMQ shared file system
//! master/slave). Types and checks only; the `ha` module acts on them.

use super::{invalid, ConfigError, HumanDuration};
use crate::cluster::MAX_HANDSHAKE_NAME;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// When a backup acknowledges a batch: `written` (into its copy, then it fdatasyncs;
    /// as Artemis's backups do) or `synced` (after its fdatasync).
    pub backup_ack: BackupAck,
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
            backup_ack: BackupAck::Written,
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

/// When a backup acknowledges what it mirrored, and so when a synchronously replicated
/// receipt may go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BackupAck {
    /// Once the batch is written into the backup's copy (its page cache); the backup
    /// fdatasyncs right after acknowledging. A receipted message is on the live's disk and
    /// in the backup's memory: only the live's disk failing together with the backup's
    /// host losing power within that fdatasync could lose it. Artemis's backups acknowledge
    /// the same way (they append without a sync).
    Written,
    /// After the backup's fdatasync: a receipted message is on both disks. Every receipt
    /// then waits for the slower of two fdatasyncs.
    Synced,
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
    /// Cluster connections still in their handshake (not yet authenticated) at once. When
    /// all are taken, a newcomer takes the place of the oldest if that one has stalled for
    /// a second or more; otherwise it gets a `Refused` frame naming this limit.
    pub max_pending_connections: usize,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("listen", &self.listen)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("password_file", &self.password_file)
            .field("max_pending_connections", &self.max_pending_connections)
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
            max_pending_connections: 16,
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
    /// Its AMQP address, `host:port` (where a backup redirects AMQP clients while this
    /// member is live); empty: AMQP clients of a backup are told no live is known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub amqp: String,
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
    /// The group's `coordination.k8s.io/v1` Lease for `kubernetes`.
    pub lease: LeaseConfig,
}

impl Default for ArbiterConfig {
    fn default() -> ArbiterConfig {
        ArbiterConfig {
            kind: ArbiterKind::Quorum,
            voters: Vec::new(),
            vote_timeout: HumanDuration::secs(2),
            retry_interval: HumanDuration::secs(1),
            lock_file: None,
            lease: LeaseConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ArbiterKind {
    Quorum,
    FileLock,
    /// A Kubernetes Lease per group: whoever holds it is live.
    Kubernetes,
}

/// The group's Lease (`ha.arbiter.kind: kubernetes`). Whoever holds it is live; a backup
/// takes it only when its holder released it or stopped renewing it, and only if the
/// holder listed that backup as in sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// The Lease's name; `null` means `ha.groupName`.
    pub name: Option<String>,
    /// Its namespace; `null` means the `POD_NAMESPACE` environment variable, else the
    /// namespace of the pod's service account.
    pub namespace: Option<String>,
    /// How long a holder's claim lasts without renewal; a backup takes the Lease over
    /// once it has seen it unrenewed for this long. Written as `leaseDurationSeconds`.
    pub duration: HumanDuration,
    /// A live that could not renew for this long fences itself: it stops serving clients
    /// and rejoins as a backup. Must be below `duration`.
    pub renew_deadline: HumanDuration,
    /// How often the live renews (and publishes its in-sync backups).
    pub renew_interval: HumanDuration,
}

impl Default for LeaseConfig {
    fn default() -> LeaseConfig {
        LeaseConfig {
            name: None,
            namespace: None,
            duration: HumanDuration::secs(15),
            renew_deadline: HumanDuration::secs(10),
            renew_interval: HumanDuration::secs(2),
        }
    }
}

/// The environment variable holding the pod's namespace (downward API
/// `metadata.namespace`), the default namespace of the group's Lease.
pub const POD_NAMESPACE_ENV: &str = "POD_NAMESPACE";
/// Where Kubernetes mounts the pod's service-account namespace.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Where the group's Lease lives, with the defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTarget {
    pub name: String,
    pub namespace: String,
}

/// A Kubernetes object name (RFC 1123 subdomain): what a Lease may be called.
fn is_object_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && name.starts_with(alnum)
        && name.ends_with(alnum)
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
            if self.arbiter.kind == ArbiterKind::Kubernetes {
                return invalid("ha.arbiter.kind", "kubernetes needs policy replication (a shared store's journal lock is its arbiter)");
            }
            return self.validate_shared_store();
        }
        if self.cluster.password.is_empty() && self.cluster.password_file.is_none() {
            return invalid("ha.cluster.passwordFile", "set ha.cluster.passwordFile (or ha.cluster.password) for replication");
        }
        if self.cluster.user.is_empty() {
            return invalid("ha.cluster.user", "must not be empty");
        }
        if self.cluster.max_pending_connections == 0 {
            return invalid("ha.cluster.maxPendingConnections", "must be at least 1 (backups and voters connect through it)");
        }
        if self.group_name.len() > MAX_HANDSHAKE_NAME {
            return invalid("ha.groupName", format!("must be at most {MAX_HANDSHAKE_NAME} bytes (it travels in the cluster handshake)"));
        }
        if let Some(m) = self.members.iter().find(|m| m.name.len() > MAX_HANDSHAKE_NAME) {
            return invalid("ha.members", format!("member name {:?} is longer than {MAX_HANDSHAKE_NAME} bytes (node ids travel in the cluster handshake)", m.name));
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
        if self.arbiter.kind == ArbiterKind::Kubernetes {
            return self.validate_lease();
        }
        Ok(())
    }

    fn validate_lease(&self) -> Result<(), ConfigError> {
        let lease = &self.arbiter.lease;
        match &lease.name {
            Some(name) if !is_object_name(name) => {
                return invalid("ha.arbiter.lease.name", format!("{name:?} is not a Kubernetes object name (lowercase letters, digits, '-', '.')"));
            }
            None if !is_object_name(&self.group_name) => {
                return invalid(
                    "ha.arbiter.lease.name",
                    format!("defaults to ha.groupName {:?}, which is not a Kubernetes object name; set it", self.group_name),
                );
            }
            _ => {}
        }
        if lease.namespace.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return invalid("ha.arbiter.lease.namespace", "must name a namespace when set");
        }
        if lease.renew_interval.get().is_zero() {
            return invalid("ha.arbiter.lease.renewInterval", "must be longer than 0s");
        }
        if lease.renew_deadline <= lease.renew_interval {
            return invalid("ha.arbiter.lease.renewDeadline", "must be longer than ha.arbiter.lease.renewInterval");
        }
        if lease.duration <= lease.renew_deadline {
            // The gap is the time a live that lost the API has to fence itself before a
            // backup may take over.
            return invalid("ha.arbiter.lease.duration", "must be longer than ha.arbiter.lease.renewDeadline");
        }
        Ok(())
    }

    /// The group's Lease: `lease.name` or the group name, in `lease.namespace`, else
    /// `POD_NAMESPACE`, else the service account's namespace. `env` and `read` are injected
    /// so tests need not touch the process environment or the file system.
    pub fn lease_target(
        &self,
        env: impl Fn(&str) -> Option<String>,
        read: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<LeaseTarget, ConfigError> {
        let lease = &self.arbiter.lease;
        let name = lease.name.clone().unwrap_or_else(|| self.group_name.clone());
        if let Some(namespace) = &lease.namespace {
            return Ok(LeaseTarget { name, namespace: namespace.clone() });
        }
        if let Some(namespace) = env(POD_NAMESPACE_ENV).filter(|n| !n.trim().is_empty()) {
            return Ok(LeaseTarget { name, namespace: namespace.trim().to_string() });
        }
        match read(Path::new(SERVICE_ACCOUNT_NAMESPACE_FILE)) {
            Ok(namespace) if !namespace.trim().is_empty() => Ok(LeaseTarget { name, namespace: namespace.trim().to_string() }),
            Ok(_) => Err(ConfigError::Invalid {
                field: "ha.arbiter.lease.namespace",
                message: format!("not set, {POD_NAMESPACE_ENV} is not set and {SERVICE_ACCOUNT_NAMESPACE_FILE} is empty"),
            }),
            Err(e) => Err(ConfigError::Invalid {
                field: "ha.arbiter.lease.namespace",
                message: format!("not set, {POD_NAMESPACE_ENV} is not set and {SERVICE_ACCOUNT_NAMESPACE_FILE} cannot be read ({e})"),
            }),
        }
    }

    /// Only what a shared-store member uses: it needs no cluster port or password, the
    /// journal lock is its arbiter.
    fn validate_shared_store(&self) -> Result<(), ConfigError> {
        if self.allow_failback {
            return invalid("ha.allowFailback", "must be false with policy sharedStore (the lock holder stays live)");
        }
        let replicated = HaConfig::default();
        if self.replication != replicated.replication || self.backup_ack != replicated.backup_ack {
            return invalid(
                "ha.replication",
                "ha.replication and ha.backupAck are for policy replication: a shared store has no backups to wait for (remove them)",
            );
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
    #[case(&kubernetes("    lease:\n      renewInterval: 0s\n"), "ha.arbiter.lease.renewInterval")]
    #[case(&kubernetes("    lease:\n      renewInterval: 10s\n"), "ha.arbiter.lease.renewDeadline")]
    #[case(&kubernetes("    lease:\n      renewDeadline: 15s\n"), "ha.arbiter.lease.duration")]
    #[case(&kubernetes("    lease:\n      name: Not_A_Name\n"), "ha.arbiter.lease.name")]
    #[case(&kubernetes("    lease:\n      namespace: \"\"\n"), "ha.arbiter.lease.namespace")]
    #[case("ha:\n  policy: sharedStore\n  arbiter:\n    kind: kubernetes\n", "ha.arbiter.kind")]
    #[case("ha:\n  policy: replication\n  cluster:\n    password: p\n    maxPendingConnections: 0\n  members:\n    - name: b\n      cluster: b:2\n      stomp: b:1\n", "ha.cluster.maxPendingConnections")]
    #[case(&format!("ha:\n  policy: replication\n  cluster:\n    password: p\n  members:\n    - name: {}\n      cluster: b:2\n      stomp: b:1\n", "b".repeat(1025)), "ha.members")]
    fn given_invalid_ha_section_should_name_field(#[case] ha: &str, #[case] field: &str) {
        given_ha_section_should_fail_naming(ha, field, "g1");
    }

    /// A replication section with the kubernetes arbiter and `lease` (indented for `arbiter:`).
    fn kubernetes(lease: &str) -> String {
        format!("ha:\n  policy: replication\n  cluster:\n    password: p\n  members:\n    - name: b\n      cluster: b:2\n      stomp: b:1\n  arbiter:\n    kind: kubernetes\n{lease}")
    }

    #[test]
    fn given_group_name_that_is_no_object_name_should_ask_for_a_lease_name() {
        given_ha_section_should_fail_naming(&kubernetes(""), "ha.arbiter.lease.name", "Group One");
        let text = format!("node:\n  id: a\n{}", kubernetes(""));
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        doc["ha"]["groupName"] = "g1".into();
        let config: crate::config::BrokerConfig = serde_yaml::from_value(doc).unwrap();
        config.validate().unwrap();
    }

    #[rstest]
    #[case(Some("ns-config"), Some("ns-env"), Ok("ns-file"), Ok("ns-config"))]
    #[case(None, Some("ns-env"), Ok("ns-file"), Ok("ns-env"))]
    #[case(None, None, Ok("ns-file\n"), Ok("ns-file"))]
    #[case(None, None, Err(()), Err("ha.arbiter.lease.namespace"))]
    #[case(None, Some(""), Ok(""), Err("ha.arbiter.lease.namespace"))]
    fn given_namespace_sources_should_pick_config_then_env_then_service_account(
        #[case] configured: Option<&str>,
        #[case] env: Option<&str>,
        #[case] file: Result<&str, ()>,
        #[case] expected: Result<&str, &str>,
    ) {
        let mut ha = HaConfig { group_name: "g1".into(), ..HaConfig::default() };
        ha.arbiter.lease.namespace = configured.map(str::to_string);
        let target = ha.lease_target(
            |key| (key == POD_NAMESPACE_ENV).then(|| env.map(str::to_string)).flatten(),
            |path| {
                assert_eq!(path, Path::new(SERVICE_ACCOUNT_NAMESPACE_FILE));
                file.map(str::to_string).map_err(|()| std::io::Error::from(std::io::ErrorKind::NotFound))
            },
        );
        match expected {
            Ok(namespace) => assert_eq!(target.unwrap(), LeaseTarget { name: "g1".into(), namespace: namespace.into() }),
            Err(field) => assert!(target.unwrap_err().to_string().contains(field)),
        }
    }

    fn given_ha_section_should_fail_naming(ha: &str, field: &str, group: &str) {
        let text = format!("node:\n  id: a\n{ha}");
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        doc["ha"]["groupName"] = group.into();
        let config: crate::config::BrokerConfig = serde_yaml::from_value(doc).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
}
