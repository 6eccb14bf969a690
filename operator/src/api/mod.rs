//! The `BrokerGroup` API (`duomq.io/v1alpha1`): the Rust types the CRD in `crds/` is
//! generated from. Field docs become `kubectl explain` text; CEL rules
//! (`x-kubernetes-validations`) reject specs that cannot work, each with a message that says
//! what to fix. Types and schema only: no rendering, no client.

mod address;
mod status;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use address::*;
pub use status::*;

pub const GROUP: &str = "duomq.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "BrokerGroup";

/// A BrokerGroup runs `groups` live/backup groups of the duomq broker. Each group is one live
/// broker and `backupsPerGroup` backups that take over, without losing an acknowledged
/// message, when the live is lost.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "duomq.io",
    version = "v1alpha1",
    kind = "BrokerGroup",
    namespaced,
    status = "BrokerGroupStatus",
    shortname = "bg",
    category = "duomq",
    doc = "A BrokerGroup runs live/backup groups of the duomq message broker that survive the loss of a broker, a pod or a node without losing an acknowledged message. The annotation duomq.io/switchover: <group>=<pod> (or `duomq-operator switchover`) hands a group's live role to that in-sync member; the operator removes it once done.",
    cel,
    printcolumn = r#"{"name":"Groups","type":"integer","jsonPath":".spec.groups","description":"Live/backup groups"}"#,
    printcolumn = r#"{"name":"Live","type":"string","jsonPath":".status.live","description":"Groups with a live broker, of all groups"}"#,
    printcolumn = r#"{"name":"Replicated","type":"string","jsonPath":".status.conditions[?(@.type==\"Replicated\")].status","description":"Every group has an in-sync backup"}"#,
    printcolumn = r#"{"name":"Linked","type":"string","jsonPath":".status.linked","description":"Network connectors linked, of all (empty without connectors)"}"#,
    printcolumn = r#"{"name":"Failovers","type":"integer","jsonPath":".status.failovers","description":"Unplanned changes of live (a live lost) of all groups since creation"}"#,
    printcolumn = r#"{"name":"Switchovers","type":"integer","jsonPath":".status.switchovers","description":"Planned hand-overs (switchover, failback, rolling upgrade, fence) of all groups since creation"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("!has(self.spec.networkConnectors) || self.spec.networkConnectors.all(c, !has(c.brokerGroup) || c.brokerGroup != self.metadata.name)").message("a network connector cannot point at its own BrokerGroup (the groups of one BrokerGroup are already connected to each other): remove it or name another BrokerGroup").field_path(".spec.networkConnectors")
)]
#[x_kube(
    validation = Rule::new("self.ha.mode != 'replication' || self.backupsPerGroup >= 1").message("replication needs a backup to replicate to: set backupsPerGroup to 1 or more"),
    validation = Rule::new("self.ha.mode != 'sharedStore' || self.backupsPerGroup >= 1").message("a shared-store group needs a slave to take over: set backupsPerGroup to 1 or more"),
    validation = Rule::new("self.ha.mode != 'sharedDatabase' || self.backupsPerGroup >= 1").message("a shared-database group needs a slave to take over the database lease: set backupsPerGroup to 1 or more"),
    validation = Rule::new("self.ha.mode != 'sharedDatabase' || !has(self.storage) || (!has(self.storage.storageClassName) && (!has(self.storage.size) || self.storage.size == '10Gi'))").message("storage is for journal volumes: a shared-database group keeps its messages in PostgreSQL and has none; remove storage.size and storage.storageClassName"),
    validation = Rule::new("self.ha.mode != 'sharedDatabase' || !self.ha.allowFailback").message("allowFailback is for replication: a shared-database slave takes over the database lease itself and there is nothing to fail back; set ha.allowFailback to false"),
    validation = Rule::new("self.ha.arbiter != 'quorum' || self.groups >= 3").message("a quorum arbiter needs at least three groups to vote (Artemis' rule): set groups to 3 or more, or use ha.arbiter kubernetes"),
    validation = Rule::new("self.ha.mode == 'replication' || ((!has(self.ha.replication) || self.ha.replication == 'sync') && (!has(self.ha.backupAck) || self.ha.backupAck == 'written'))").message("ha.replication and ha.backupAck are for replication: a shared store or shared database has no backups to wait for; remove them"),
    validation = Rule::new("self.ha.mode != 'sharedStore' || !self.ha.allowFailback").message("allowFailback is for replication: a shared-store slave takes over the store itself and there is nothing to fail back; set ha.allowFailback to false"),
    validation = Rule::new("self.ha.mode != 'sharedStore' || has(self.storage.storageClassName)").message("shared store keeps each group's journal on one volume all its members mount: set storage.storageClassName to a class that provides ReadWriteMany volumes (NFS, CephFS)"),
    validation = Rule::new("self.layout.type != 'hostPairs' || !has(self.layout.hostPairs) || self.groups == 2 * size(self.layout.hostPairs)").message("a hostPairs layout runs two groups on each pair of nodes: set groups to twice the number of hostPairs (an even number)"),
    validation = Rule::new("self.layout.type != 'hostPairs' || self.backupsPerGroup == 1").message("a host pair has two nodes, one per member: set backupsPerGroup to 1"),
    validation = Rule::new("!has(self.grouping) || self.grouping.localGroup < self.groups").message("grouping.localGroup must be the index of one of this BrokerGroup's groups (0 to groups - 1)"),
    validation = Rule::new("!has(self.tls) || self.tls.mode != 'OperatorManaged' || !has(self.networkConnectors) || self.networkConnectors.all(c, !has(c.brokerGroup))").message("a brokerGroup network connector with tls.mode OperatorManaged cannot work: each BrokerGroup has its own CA, so the two refuse each other's certificates on the cluster port; give both BrokerGroups tls.mode Secret with certificates from one issuer (cert-manager)"),
    validation = Rule::new("!has(self.amqp) || !self.amqp.enabled || (self.ports.amqp != self.ports.stomp && self.ports.amqp != self.ports.cluster && self.ports.amqp != self.ports.admin)").message("ports.amqp must differ from ports.stomp, ports.cluster and ports.admin: a port serves one listener; pick another AMQP port (the default is 5672)").field_path(".ports.amqp"),
    validation = Rule::new("has(self.tls) == has(oldSelf.tls)").message("tls cannot be added to or removed from an existing BrokerGroup: members with and without TLS refuse each other on the cluster port, so a rolling restart would stall with no backup in sync. Delete the BrokerGroup (its journal volumes, and the messages in them, are kept) and create it again with the change")
)]
#[serde(rename_all = "camelCase")]
pub struct BrokerGroupSpec {
    /// Container image of the duomq broker.
    #[serde(default = "default_image")]
    pub image: String,

    /// When the kubelet pulls the broker image: IfNotPresent, Always or Never.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,

    /// How many live/backup groups to run. Each group is one live broker and its backups. The
    /// groups of one BrokerGroup are networked: every group's live bridges to every other
    /// group's live (a full mesh, networkTTL 1, forwarding what the other side's consumers ask
    /// for), so a client may send to any group and consume from any other.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 32))]
    pub groups: i32,

    /// Backups in each group (the live is extra). Replication and shared store need at least one.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 4))]
    pub backups_per_group: i32,

    /// How the members of a group stay highly available.
    #[serde(default)]
    pub ha: HaSpec,

    /// Where the members of each group run.
    #[serde(default)]
    pub layout: LayoutSpec,

    /// The journal's volume.
    #[serde(default)]
    pub storage: StorageSpec,

    /// CPU and memory for each broker container. Defaults: requests 100m CPU and 128Mi memory,
    /// limit 512Mi memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Ports the brokers listen on.
    #[serde(default)]
    pub ports: PortsSpec,

    /// Name of a Secret in this namespace whose key `users` holds the client users, one
    /// `NAME:PASSWORD` per line. Without it every client is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_secret: Option<String>,

    /// The network between this BrokerGroup's own groups (every group's live bridges to every
    /// other group's, TTL 1, forwarding what the other side's consumers ask for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<MeshSpec>,

    /// Store-and-forward connectors from every group of this BrokerGroup to brokers outside
    /// it: another BrokerGroup in this namespace (a link to each of its groups), or an
    /// explicit `masterslave:(…)`, `static:(…)` or `tcp://` address on the cluster port.
    /// Only a group's live runs them; a link follows the remote group's live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 16))]
    pub network_connectors: Vec<NetworkConnectorSpec>,

    /// Clustered message grouping: one group hosts the LOCAL grouping handler, the others ask it
    /// (REMOTE), so all messages of one group (JMSXGroupID) go to one consumer wherever they
    /// arrive. They reach that consumer's group over the bridges every BrokerGroup has between
    /// its groups; a queue in network.excludedDestinations is not bridged, so its message
    /// groups are pinned per group only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grouping: Option<GroupingSpec>,

    /// Additions to every broker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,

    /// AMQP 1.0 beside STOMP, for JMS applications (Qpid JMS) and the Proton, .NET, Go and
    /// Node AMQP clients, on the same queues, topics, users and permissions. With enabled:
    /// true every broker listens on ports.amqp (default 5672), and the client Services carry
    /// that port, named amqp: `amqp://<name>:5672` reaches the lives of all groups,
    /// `amqp://<name>-g<N>:5672` one group's live. With spec.tls the port speaks `amqps://`
    /// only, with tls.clientAuth as on STOMP. A backup answers an AMQP client with a
    /// redirect (`amqp:connection:redirect`) to its live's stable name
    /// (`<pod>.<name>-g<N>-members.<namespace>.svc`), which Qpid JMS follows. Absent or not
    /// enabled: no AMQP port anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amqp: Option<AmqpSpec>,

    /// TLS on every listener: STOMP (`stomp+ssl://`), AMQP when spec.amqp is enabled
    /// (`amqps://`), the cluster port (mutual TLS between members, on top of the cluster
    /// credentials) and the admin API (HTTPS; the probes follow). Absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Who may do what on which destinations. Absent: every authenticated client may do
    /// everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<AuthorizationSpec>,

    /// Per-destination dead letters, redelivery, expiry and size limits by pattern, as the
    /// broker's addressSettings (Artemis' address-settings), rendered into every member's
    /// broker.yaml; a change rolls the members. Each field of a destination comes from the
    /// most specific entry that sets it; what none sets keeps the broker's default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["match".into()]))]
    #[schemars(length(max = 256))]
    pub address_settings: Vec<AddressSettingSpec>,
}

/// The AMQP 1.0 listener of every broker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AmqpSpec {
    /// Turns the AMQP listener on: every broker listens on ports.amqp, and the client
    /// Services, the members' headless Service and the pods carry the port (named amqp).
    /// Changing it restarts the members one by one, without losing a message.
    #[serde(default)]
    pub enabled: bool,
}

/// Where the certificates come from. OperatorManaged: a CA per BrokerGroup in the Secret
/// `<name>-ca` (never mounted into pods) and a member certificate in `<name>-tls` (tls.crt,
/// tls.key, ca.crt) naming every member and client Service, renewed `renewBefore` its expiry
/// with a rolling restart. Secret: `secretName`, in cert-manager's shape.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'Secret' || (has(self.secretName) && self.secretName != '')").message("tls.mode Secret needs tls.secretName: a Secret with tls.crt, tls.key and ca.crt (cert-manager's Certificate writes them) whose certificate names every member and client Service"),
    validation = Rule::new("self.mode != 'OperatorManaged' || !has(self.secretName)").message("tls.secretName is for tls.mode Secret: the operator names its own Secret <name>-tls; remove secretName or set mode Secret"),
    validation = Rule::new("self.mode != 'Secret' || (!has(self.certificateDuration) && !has(self.renewBefore) && !has(self.caDuration))").message("certificateDuration, renewBefore and caDuration are for tls.mode OperatorManaged: with mode Secret whoever writes the Secret (cert-manager) renews it; remove them"),
    validation = Rule::new("self.mode != 'OperatorManaged' || (has(self.certificateDuration) && !(self.certificateDuration.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self.certificateDuration != '')) || (has(self.renewBefore) && !(self.renewBefore.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self.renewBefore != '')) || duration(has(self.renewBefore) ? self.renewBefore : '720h') + duration('10m') <= duration(has(self.certificateDuration) ? self.certificateDuration : '2160h')").message("tls.renewBefore must be at least 10m shorter than tls.certificateDuration (defaults 720h and 2160h), or certificates would be renewed, and the brokers restarted, as soon as they are issued"),
    validation = Rule::new("self.mode != 'OperatorManaged' || (has(self.certificateDuration) && !(self.certificateDuration.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self.certificateDuration != '')) || (has(self.caDuration) && !(self.caDuration.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self.caDuration != '')) || duration(has(self.certificateDuration) ? self.certificateDuration : '2160h') <= duration(has(self.caDuration) ? self.caDuration : '87600h')").message("tls.certificateDuration must not be longer than tls.caDuration (default 87600h): a certificate cannot outlive its CA")
)]
pub struct TlsSpec {
    /// OperatorManaged (the default) or Secret.
    #[serde(default)]
    pub mode: TlsMode,
    /// mode Secret: the Secret holding tls.crt, tls.key and ca.crt, in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$"))]
    pub secret_name: Option<String>,
    /// OperatorManaged: how long a member certificate is valid, a Go-style duration such as
    /// 2160h (the default) or 90m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(TLS_DURATION_RULE).message("tls.certificateDuration is a duration such as 2160h or 2h30m (units h, m, s): fix it"), validation = Rule::new("!self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') || self == '' || duration(self) >= duration('1h')").message("tls.certificateDuration must be at least 1h"))]
    pub certificate_duration: Option<String>,
    /// OperatorManaged: a member certificate is renewed (a new one from the same CA, then a
    /// rolling restart free of message loss) this long before it expires; default 720h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(TLS_DURATION_RULE).message("tls.renewBefore is a duration such as 720h or 30m (units h, m, s): fix it"))]
    pub renew_before: Option<String>,
    /// OperatorManaged: how long the CA is valid; default 87600h (ten years). The CA is
    /// made once and never replaced by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(TLS_DURATION_RULE).message("tls.caDuration is a duration such as 87600h (units h, m, s): fix it"))]
    pub ca_duration: Option<String>,
    /// Client certificates on STOMP (and AMQP with spec.amqp): None (not asked for),
    /// Optional (checked when sent; its common name logs in as the user
    /// authorization.certificateUsers maps it to) or Required.
    #[serde(default)]
    pub client_auth: TlsClientAuth,
}

/// A Go-style duration in hours, minutes and seconds (`2160h`, `1h30m`, `119m59s`).
const TLS_DURATION_RULE: &str = "self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != ''";

pub const DEFAULT_CERTIFICATE_DURATION: &str = "2160h";
pub const DEFAULT_RENEW_BEFORE: &str = "720h";
pub const DEFAULT_CA_DURATION: &str = "87600h";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TlsMode {
    #[default]
    OperatorManaged,
    Secret,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TlsClientAuth {
    #[default]
    None,
    Optional,
    Required,
}

/// Roles, per-destination permissions and certificate users, rendered into every broker's
/// `auth:`. Inline, or from a ConfigMap or Secret key holding the same fields as YAML
/// (`permissionsFrom`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.permissionsFrom) || (!has(self.roles) && !has(self.permissions) && !has(self.anonymousRoles) && !has(self.certificateUsers))").message("authorization.permissionsFrom replaces roles, permissions, anonymousRoles and certificateUsers: keep them in the referenced ConfigMap or Secret, or inline, not both"))]
pub struct AuthorizationSpec {
    /// Role name → the users holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<BTreeMap<String, Vec<String>>>,
    /// Roles of clients that connect without a login (with users and allowAnonymous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_roles: Option<Vec<String>>,
    /// Users holding one of these roles may read the admin API's /status with HTTP Basic
    /// credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_roles: Option<Vec<String>>,
    /// A client certificate's common name → the user it logs in as (with tls.clientAuth
    /// Optional or Required): on STOMP, and on AMQP with spec.amqp (SASL EXTERNAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_users: Option<BTreeMap<String, String>>,
    /// Who may send, consume, browse and create on the destinations `match` names. With
    /// any entry, a destination no entry matches is denied; the most specific entry decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub permissions: Option<Vec<PermissionSpec>>,
    /// The roles, permissions, anonymousRoles and certificateUsers as YAML under a key of a
    /// ConfigMap or Secret in this namespace, read at every reconcile (a change rolls the
    /// brokers onto it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions_from: Option<PermissionsFrom>,
}

/// One permission entry: a destination pattern and the roles allowed each operation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PermissionSpec {
    /// `/queue/orders.>`, `/topic/prices.*` or `>` (everything): `*` is one dot-separated
    /// word, a final `>` the rest.
    #[serde(rename = "match")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(r"self == '>' || self.matches('^/(queue|topic)/([^.>]+\\.)*([^.>]+|>)$')").message("a permission's match is >, or /queue/ or /topic/ then dot-separated words, * for any one word and > only as the last word (e.g. /queue/orders.>)"))]
    pub pattern: String,
    /// Roles that may SEND.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub send: Vec<String>,
    /// Roles that may SUBSCRIBE and ACK/NACK.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consume: Vec<String>,
    /// Roles that may browse (SUBSCRIBE with browser:true).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub browse: Vec<String>,
    /// Roles that may create a destination the broker does not hold yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create: Vec<String>,
}

/// A ConfigMap or a Secret key holding authorization YAML.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMapKeyRef) != has(self.secretKeyRef)").message("authorization.permissionsFrom needs exactly one of configMapKeyRef or secretKeyRef"))]
pub struct PermissionsFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ObjectKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<ObjectKeyRef>,
}

/// A key of a ConfigMap or Secret in the BrokerGroup's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectKeyRef {
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_image() -> String {
    format!("duomq/broker:{}", env!("CARGO_PKG_VERSION"))
}

fn one() -> i32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    #[default]
    IfNotPresent,
    Always,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Always => "Always",
            PullPolicy::Never => "Never",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'sharedDatabase' || (has(self.database) && has(self.database.secretRef) && self.database.secretRef.name != '')").message("ha.mode sharedDatabase keeps the messages in PostgreSQL: set ha.database.secretRef.name to the Secret holding the database URL (CloudNativePG creates <cluster>-app, key uri)"),
    validation = Rule::new("self.mode == 'sharedDatabase' || !has(self.database)").message("ha.database is for ha.mode sharedDatabase: remove it (ha.mode cannot change on an existing BrokerGroup)")
)]
pub struct HaSpec {
    /// replication: members share nothing; the live streams every persistent write to its
    /// backups (Artemis style). sharedStore: members mount one ReadWriteMany volume; whoever
    /// holds its lock is master (ActiveMQ style). sharedDatabase: members share a PostgreSQL
    /// database (ha.database); whoever holds its lease is master (ActiveMQ's JDBC
    /// master/slave). Cannot be changed later.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("ha.mode cannot change on an existing BrokerGroup: create a new BrokerGroup and move clients to it"))]
    pub mode: HaMode,

    /// When the original live (the group's first member) comes back after a failover, it
    /// resyncs and then takes the live role back. With the kubernetes arbiter the operator
    /// does this: once that member runs and reports synced, it asks the live for a
    /// switchover to it (reason Failback), never during a rolling upgrade. With quorum the
    /// brokers do it themselves.
    #[serde(default)]
    pub allow_failback: bool,

    /// replication mode only. sync: a persistent send is receipted only once every in-sync
    /// backup has it. async: receipts do not wait (a failover may lose the last writes).
    #[serde(default)]
    pub replication: ReplicationMode,

    /// replication mode only: when a backup acknowledges a batch. written (the default, as
    /// Artemis's backups do): once the batch is in its copy; it fdatasyncs right after. A
    /// receipted message is then on the live's disk and in the backup's memory. synced:
    /// after the backup's fdatasync, so on both disks; every receipt waits for the slower
    /// of two fdatasyncs.
    #[serde(default)]
    pub backup_ack: BackupAck,

    /// Who decides that a backup may take over. kubernetes (the default): a Lease per group
    /// that the live holds and renews; a backup takes it only when the live's claim has
    /// expired or was released, and only if it was in sync; a live that cannot renew fences
    /// itself. quorum (Artemis style): a majority of the other groups' members must confirm
    /// the live is gone; needs at least three groups.
    #[serde(default)]
    pub arbiter: ArbiterSpec,

    /// Name of a Secret with keys `user` and `password`: the cluster credentials members
    /// authenticate each other with. When empty the operator creates `<name>-cluster` with a
    /// random password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_credentials_secret: Option<String>,

    /// sharedDatabase mode only: the PostgreSQL database the members of every group share
    /// (a CloudNativePG cluster's application database, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseSpec>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HaMode {
    #[default]
    Replication,
    SharedStore,
    SharedDatabase,
}

/// The database of sharedDatabase mode: messages and the lease that decides each group's
/// live are rows of PostgreSQL tables, keyed by the group's name, so every group of the
/// BrokerGroup shares the one database (ActiveMQ's JDBC master/slave).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.sslMode) || !(self.sslMode in ['verify-ca', 'verify-full']) || has(self.caSecretRef)").message("sslMode verify-ca and verify-full check the server's certificate against a CA: set ha.database.caSecretRef to the Secret holding it (CloudNativePG: <cluster>-ca, key ca.crt)"))]
pub struct DatabaseSpec {
    /// The Secret holding the database URL (`postgresql://user:password@host:5432/db`),
    /// mounted read-only into the broker pods. CloudNativePG creates one for the
    /// application user of a cluster: `<cluster>-app`, key `uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<DatabaseSecretRef>,

    /// TLS towards the database, as libpq's sslmode: disable, prefer, require, verify-ca or
    /// verify-full. Overrides the URL's sslmode; without either, prefer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_mode: Option<DatabaseSslMode>,

    /// The Secret holding the CA certificates (PEM) the server's certificate is checked
    /// against, needed by verify-ca and verify-full (CloudNativePG: `<cluster>-ca`, key
    /// `ca.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,

    /// The database lease: the member holding it is its group's live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<DatabaseLeaseSpec>,

    /// Prefix of the tables (`<prefix>_messages`, `<prefix>_lease`, …); BrokerGroups
    /// sharing one database need different prefixes, or different group names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[a-z0-9_]+$"))]
    pub table_prefix: Option<String>,
}

/// The key of a Secret holding the database URL.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSecretRef {
    /// The Secret's name, in the BrokerGroup's namespace.
    #[serde(default)]
    #[schemars(
        length(max = 253),
        regex(pattern = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$")
    )]
    pub name: String,
    /// The key holding the URL.
    #[serde(default = "default_database_url_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// The key of a Secret holding CA certificates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// The Secret's name, in the BrokerGroup's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The key holding the PEM certificates.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_database_url_key() -> String {
    crate::names::DATABASE_URL_KEY.into()
}

fn default_ca_key() -> String {
    crate::names::DATABASE_CA_KEY.into()
}

/// libpq's sslmode values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DatabaseSslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Timing of the database lease. A live that cannot renew within `duration` fences itself
/// (stops serving); a slave takes the lease once it expired in the database's clock, so a
/// failover after a crash takes about `duration` plus `pollInterval`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!self.duration.matches('^[0-9]+(ms|s|m|h)$') || duration(self.duration) >= duration('1s')").message("ha.database.lease.duration must be at least 1s (the default is 10s)"),
    validation = Rule::new("!self.duration.matches('^[0-9]+(ms|s|m|h)$') || !self.renewInterval.matches('^[0-9]+(ms|s|m|h)$') || duration(self.renewInterval) + duration(self.renewInterval) <= duration(self.duration)").message("ha.database.lease.renewInterval must be at most half of lease.duration, so one failed renewal does not fence the live: shorten renewInterval or lengthen duration")
)]
pub struct DatabaseLeaseSpec {
    /// How long a lease lasts after each renewal, e.g. 10s.
    #[serde(default = "default_lease_duration")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("ha.database.lease.duration is a whole number and one unit, ms, s, m or h (e.g. 10s): fix the duration"))]
    pub duration: String,
    /// How often the live renews, e.g. 2s; at most half of duration.
    #[serde(default = "default_lease_renew_interval")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new(DURATION_RULE).message("ha.database.lease.renewInterval is a whole number and one unit, ms, s, m or h (e.g. 2s): fix the duration"),
        validation = Rule::new("!self.matches('^0+(ms|s|m|h)$')").message("ha.database.lease.renewInterval must be longer than 0: set e.g. 2s")
    )]
    pub renew_interval: String,
    /// How often a slave looks whether the lease expired, e.g. 1s.
    #[serde(default = "default_lease_poll_interval")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new(DURATION_RULE).message("ha.database.lease.pollInterval is a whole number and one unit, ms, s, m or h (e.g. 1s): fix the duration"),
        validation = Rule::new("!self.matches('^0+(ms|s|m|h)$')").message("ha.database.lease.pollInterval must be longer than 0: set e.g. 1s")
    )]
    pub poll_interval: String,
}

impl Default for DatabaseLeaseSpec {
    fn default() -> Self {
        DatabaseLeaseSpec {
            duration: default_lease_duration(),
            renew_interval: default_lease_renew_interval(),
            poll_interval: default_lease_poll_interval(),
        }
    }
}

fn broker_lease_default() -> duomq_broker::config::DatabaseLeaseConfig {
    duomq_broker::config::DatabaseLeaseConfig::default()
}

fn default_lease_duration() -> String {
    broker_lease_default().duration.to_string()
}

fn default_lease_renew_interval() -> String {
    broker_lease_default().renew_interval.to_string()
}

fn default_lease_poll_interval() -> String {
    broker_lease_default().poll_interval.to_string()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ArbiterSpec {
    #[default]
    Kubernetes,
    Quorum,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BackupAck {
    #[default]
    Written,
    Synced,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ReplicationMode {
    #[default]
    Sync,
    Async,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'hostPairs' || (has(self.hostPairs) && size(self.hostPairs) > 0)").message("layout.type hostPairs needs layout.hostPairs: list pairs of node names"))]
pub struct LayoutSpec {
    /// spread: members of a group never share a node. hostPairs: each pair of nodes runs two
    /// groups crossed over: the first group's live on the first node and its backup on the
    /// second, the second group the other way round.
    #[serde(default, rename = "type")]
    pub kind: LayoutKind,

    /// hostPairs layout only: the pairs of nodes, in group order (pair 0 runs groups 0 and 1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub host_pairs: Vec<HostPair>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LayoutKind {
    #[default]
    Spread,
    HostPairs,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.nodes[0] != self.nodes[1]").message("the two nodes of a host pair must be different nodes"))]
pub struct HostPair {
    /// Two node names (`kubernetes.io/hostname`).
    #[schemars(length(min = 2, max = 2))]
    pub nodes: Vec<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each journal volume, e.g. 10Gi.
    #[serde(default = "default_storage_size")]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("storage.size must be a positive Kubernetes quantity such as 10Gi or 500Mi (units Ki, Mi, Gi, Ti or k, M, G, T; 1GB is not one, write 1G or 1Gi)"))]
    pub size: String,

    /// StorageClass of the volumes; the cluster's default class when empty. Shared store needs
    /// a class that provides ReadWriteMany volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

fn default_storage_size() -> String {
    "10Gi".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortsSpec {
    /// STOMP port for clients.
    #[serde(default = "default_stomp_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub stomp: i32,
    /// Cluster port: replication, votes and network connectors.
    #[serde(default = "default_cluster_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub cluster: i32,
    /// Admin HTTP port: health, status and Prometheus metrics.
    #[serde(default = "default_admin_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub admin: i32,
    /// AMQP 1.0 port for clients, used with spec.amqp.enabled; must differ from the others.
    #[serde(default = "default_amqp_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub amqp: i32,
}

impl Default for PortsSpec {
    fn default() -> Self {
        PortsSpec {
            stomp: default_stomp_port(),
            cluster: default_cluster_port(),
            admin: default_admin_port(),
            amqp: default_amqp_port(),
        }
    }
}

fn default_stomp_port() -> i32 {
    61613
}
fn default_cluster_port() -> i32 {
    61616
}
fn default_admin_port() -> i32 {
    i32::from(duomq_broker::admin::api::DEFAULT_PORT)
}
fn default_amqp_port() -> i32 {
    i32::from(duomq_broker::config::AmqpConfig::default().listen.port())
}

/// The CEL rule every destination-pattern list carries: the broker's pattern syntax.
const PATTERN_RULE: &str = r"self.all(p, p.matches('^/(queue|topic)/([^.>]+\\.)*([^.>]+|>)$'))";
const PATTERN_MESSAGE: &str = "a destination pattern is /queue/ or /topic/ then dot-separated words, * for any one word and > only as the last word for the rest (e.g. /queue/orders.> or /topic/*.prices): fix the pattern";

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.brokerGroup) != has(self.uri)").message("a network connector needs exactly one of brokerGroup (another BrokerGroup in this namespace) or uri (a masterslave:(…) list)"),
    validation = Rule::new("!has(self.uri) || self.uri.startsWith('masterslave:(') || self.uri.startsWith('static:(') || self.uri.startsWith('tcp://')").message("a network connector uri must look like masterslave:(tcp://a:61616,tcp://b:61616), static:(…) or tcp://host:port"),
    validation = Rule::new("!has(self.passwordSecret) || has(self.uri)").message("passwordSecret is for uri connectors: a brokerGroup connector already presents that BrokerGroup's cluster password; remove passwordSecret"),
    validation = Rule::new("!self.dynamicOnly || !has(self.staticallyIncludedDestinations) || size(self.staticallyIncludedDestinations) == 0").message("dynamicOnly forwards only what remote consumers ask for, so it cannot have staticallyIncludedDestinations: remove one of the two")
)]
pub struct NetworkConnectorSpec {
    /// Unique name of the connector.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Another BrokerGroup in this namespace: the connector reaches every one of its groups
    /// and authenticates with that BrokerGroup's cluster password (the operator mounts its
    /// cluster-credentials Secret into this BrokerGroup's pods). Both BrokerGroups must use
    /// the same cluster user (the default `duomq-cluster` unless a named Secret sets another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_group: Option<String>,
    /// An explicit list of the members of one remote group on their cluster ports, e.g.
    /// `masterslave:(tcp://a:61616,tcp://b:61616)`; `static:(…)` for independent brokers,
    /// each linked; or one `tcp://host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub uri: Option<String>,
    /// Also carry messages from the remote side back over the same link (one link serves both
    /// directions; the remote needs no connector of its own).
    #[serde(default)]
    pub duplex: bool,
    /// How many bridges a message, or a consumer's demand, may cross (ActiveMQ's
    /// networkTTL). 1 reaches the brokers this connector links to and no further.
    #[serde(default = "default_network_ttl", rename = "networkTTL")]
    #[schemars(range(min = 1, max = 16))]
    pub network_ttl: i32,
    /// Forward only what consumers on the remote side ask for: no
    /// staticallyIncludedDestinations.
    #[serde(default)]
    pub dynamic_only: bool,
    /// Remote consumers rank below local ones: a queue's messages cross the bridge only when
    /// its local consumers are busy or absent.
    #[serde(default = "yes")]
    pub decrease_network_consumer_priority: bool,
    /// Destinations never forwarded: `/queue/NAME` or `/topic/NAME` patterns, `*` for one
    /// dot-separated word, a final `>` for the rest (`/queue/audit.>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = Rule::new(PATTERN_RULE).message(PATTERN_MESSAGE))]
    pub excluded_destinations: Vec<String>,
    /// Destinations forwarded even when the remote has no consumer for them (same patterns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = Rule::new(PATTERN_RULE).message(PATTERN_MESSAGE))]
    pub statically_included_destinations: Vec<String>,
    /// Messages in flight on the bridge before the remote confirms them.
    #[serde(default = "default_prefetch_size")]
    #[schemars(range(min = 1, max = 65536))]
    pub prefetch_size: i32,
    /// For a uri connector to brokers whose cluster password is not this BrokerGroup's: the
    /// Secret in this namespace and its key holding that password. The operator mounts it
    /// into this BrokerGroup's pods; the remote side needs nothing. The link presents this
    /// BrokerGroup's cluster user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretKeyRef>,
}

/// The bridges between the groups of one BrokerGroup.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    /// Destinations the groups never forward to each other, so each group keeps its own:
    /// `/queue/NAME` or `/topic/NAME` patterns, `*` for one word, a final `>` for the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = Rule::new(PATTERN_RULE).message(PATTERN_MESSAGE))]
    pub excluded_destinations: Vec<String>,
}

/// A key of a Secret in the BrokerGroup's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The key holding the password.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_network_ttl() -> i32 {
    1
}

fn yes() -> bool {
    true
}

fn default_prefetch_size() -> i32 {
    1000
}

fn default_password_key() -> String {
    crate::names::CLUSTER_PASSWORD_KEY.into()
}

/// The CEL rule of a grouping duration: what the broker reads, in one unit.
const DURATION_RULE: &str = "self.matches('^[0-9]+(ms|s|m|h)$')";

/// Clustered message grouping (Artemis' LOCAL/REMOTE grouping handlers), rendered into every
/// member's broker.yaml (`crate::render::config`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupingSpec {
    /// Index of the group whose live runs the LOCAL grouping handler (0 is the first group).
    /// Its bindings are journaled and replicated with the group, so they survive its failover.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub local_group: i32,
    /// How long a REMOTE handler waits for the LOCAL handler's decision before the SEND is
    /// refused with an ERROR naming the group, e.g. 5s or 500ms.
    #[serde(default = "default_grouping_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new(DURATION_RULE).message("grouping.timeout is a whole number and one unit, ms, s, m or h (e.g. 5s or 500ms): fix the duration"),
        validation = Rule::new("!self.matches('^0+(ms|s|m|h)$')").message("grouping.timeout must be longer than 0: a SEND would never wait for the handler's decision; set e.g. 5s")
    )]
    pub timeout: String,
    /// A group binding unused this long is removed by the LOCAL handler's reaper (Artemis'
    /// group-timeout); the group binds afresh on its next message. 0s keeps bindings forever.
    #[serde(default = "default_group_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("grouping.groupTimeout is a whole number and one unit, ms, s, m or h (e.g. 1h, or 0s to keep bindings forever): fix the duration"))]
    pub group_timeout: String,
    /// How often the reaper looks for bindings unused for groupTimeout.
    #[serde(default = "default_reaper_period")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new(DURATION_RULE).message("grouping.reaperPeriod is a whole number and one unit, ms, s, m or h (e.g. 30s): fix the duration"),
        validation = Rule::new("!self.matches('^0+(ms|s|m|h)$')").message("grouping.reaperPeriod must be longer than 0: set e.g. 30s")
    )]
    pub reaper_period: String,
    /// Group bindings a queue keeps on every broker: past it the least recently used idle
    /// binding is dropped, and the LOCAL handler refuses a new group for a queue holding
    /// this many cluster bindings. Bounds the memory a producer inventing a group per
    /// message can take.
    #[serde(default = "default_max_groups")]
    #[x_kube(validation = Rule::new("self >= 1").message("grouping.maxGroups must be at least 1 (the default is 10000)"))]
    pub max_groups: i64,
}

fn default_grouping_timeout() -> String {
    "5s".into()
}

fn default_group_timeout() -> String {
    "1h".into()
}

fn default_reaper_period() -> String {
    "30s".into()
}

fn default_max_groups() -> i64 {
    i64::try_from(duomq_broker::config::GroupingConfig::default().max_groups).unwrap_or(i64::MAX)
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    /// Extra labels on every broker pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on every broker pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Tolerations of every broker pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node labels every broker pod requires.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// PriorityClass of the broker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}
