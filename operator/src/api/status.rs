//! The BrokerGroup's status: what the operator observed, for people (`kubectl get/describe`)
//! and for automation (`kubectl wait --for=condition=Available`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types, PascalCase as Kubernetes does.
pub mod condition {
    /// Every group has a live broker serving clients.
    pub const AVAILABLE: &str = "Available";
    /// Every group has at least one backup in sync with its live.
    pub const REPLICATED: &str = "Replicated";
    /// The operator is still creating or updating objects, members are starting, a rolling
    /// upgrade (reason RollingUpgrade) or a switchover (reason Switchover) is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Something needs attention: an invalid spec, a group without a live, a missing Secret,
    /// a switchover that was refused (reason SwitchoverFailed), a member that cannot reach
    /// the shared database (reason DatabaseUnreachable).
    pub const DEGRADED: &str = "Degraded";
    /// No network connector of any group's live has been unlinked for a minute or more
    /// (reason AllConnectorsLinked, ConnectorsLinking or NoConnectors); False with reason
    /// ConnectorUnlinked, naming the group, connector and last error.
    pub const NETWORK_LINKED: &str = "NetworkLinked";
    /// The BrokerGroup is hibernated (annotation `duomq.io/hibernation: on`): no broker
    /// pod runs; claims and Secrets are kept (reason Hibernated, or Resuming while the pods
    /// come back).
    pub const HIBERNATED: &str = "Hibernated";
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BrokerGroupStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Available, Replicated, Progressing, Degraded and NetworkLinked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Groups with a live broker, of all groups, e.g. 2/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    /// Unplanned changes of live (LiveLost, OperatorFailover) of all groups since the
    /// BrokerGroup was created.
    #[serde(default)]
    pub failovers: i64,
    /// Planned hand-overs (Switchover, Failback, RollingUpgrade, Fence) of all groups.
    #[serde(default)]
    pub switchovers: i64,
    /// Network connectors linked, of all connectors of every group, e.g. 4/4; absent when no
    /// group has a connector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked: Option<String>,
    /// One entry per group, in group order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub groups: Vec<GroupStatus>,
    /// The clustered grouping handler, with `spec.grouping`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grouping: Option<GroupingHandlerStatus>,
    /// The certificates in use, with `spec.tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
}

/// The certificates the brokers are given.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    /// The Secret mounted into the broker pods (tls.crt, tls.key, ca.crt).
    pub secret_name: String,
    /// When the member certificate expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When the CA (the first certificate of ca.crt) expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_not_after: Option<Time>,
    /// OperatorManaged: when the operator last issued the member certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_at: Option<Time>,
}

/// Where the LOCAL grouping handler runs and how the REMOTE handlers reach it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupingHandlerStatus {
    /// The group whose live runs the LOCAL handler (`spec.grouping.localGroup`).
    pub local_group: String,
    /// The pod running it: that group's live; absent while the group has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    /// Group bindings the LOCAL handler holds, as its live reports them; absent when it
    /// reports none (not answering, or a broker without grouping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bindings: Option<i64>,
    /// The other groups' lives whose REMOTE handler is linked to the LOCAL handler, of all
    /// other groups, e.g. 2/2.
    pub remotes_connected: String,
    /// SENDs the REMOTE handlers refused because no decision came within grouping.timeout,
    /// summed over the other groups' current lives.
    #[serde(default)]
    pub timeouts: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupStatus {
    /// The group's backup-group name (also its StatefulSet's name).
    pub name: String,
    /// The pod that is live now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    /// The member last seen live; kept while the group has no live, so that the next live
    /// is counted as a failover from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_live: Option<String>,
    /// The pod that should be live when all is well (the group's first member, or in a
    /// hostPairs layout the member on the pair's node for this group).
    pub preferred_live: String,
    /// The other members and how far they are from the live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<MemberStatus>,
    /// The group's epoch: it increases on every change of live.
    #[serde(default)]
    pub epoch: i64,
    /// Unplanned changes of live of this group seen by the operator.
    #[serde(default)]
    pub failovers: i64,
    /// Planned hand-overs of this group's live role.
    #[serde(default)]
    pub switchovers: i64,
    /// Members fenced (annotation `duomq.io/fenced-members`) that report they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fenced: Vec<String>,
    /// The group is being removed (spec.groups was lowered): its messages move to the
    /// remaining groups over the bridges, and it is deleted once empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<GroupDrain>,
    /// The most recent failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRecord>,
    /// A planned hand-over of the live role (switchover, failback, rolling upgrade) that the
    /// live agreed to and that has not shown in `live` yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<PendingSwitchover>,
    /// Network connectors the group's live runs: one per other group of this BrokerGroup, one
    /// per group of each connected BrokerGroup, one per uri connector.
    #[serde(default)]
    pub connectors: i64,
    /// Of `connectors`, those whose every link is up, as the live reports them (0 while the
    /// group has no live).
    #[serde(default)]
    pub connectors_linked: i64,
    /// Connectors of the live that have not linked for a minute or more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlinked_connectors: Vec<String>,
    /// sharedDatabase: members that report they cannot reach the database (a live among
    /// them fences itself once its lease runs out; a backup among them cannot take over).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub database_unreachable: Vec<String>,
}

/// A group being drained before it is deleted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupDrain {
    /// When the operator first asked the group's live to drain.
    pub since: Time,
    /// Messages still held by the group, as its live reports them (absent while unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_left: Option<i64>,
    /// Messages moved to the remaining groups so far (by the current live).
    #[serde(default)]
    pub forwarded: i64,
    /// Why the drain cannot go on (no bridge to a remaining group is linked), while stuck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingSwitchover {
    /// The pod the live role is being handed to.
    pub to: String,
    /// Switchover, Failback or RollingUpgrade.
    pub reason: FailoverReason,
    /// When the live agreed to hand over.
    pub time: Time,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Pod name.
    pub pod: String,
    /// What the member reports: starting, backup, live, stopping; unreachable when its admin
    /// endpoint does not answer; pending when the pod is not running.
    pub state: String,
    /// The member holds everything the live has (replication), or waits on the shared store
    /// (for a shared database: and reaches it).
    pub synced: bool,
    /// Bytes of journal the member is behind its live.
    #[serde(default)]
    pub lag: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRecord {
    /// When the operator saw the new live.
    pub time: Time,
    /// The pod that was live before.
    pub from: String,
    /// The pod that is live now.
    pub to: String,
    /// Why: LiveLost, OperatorFailover, Switchover, Failback, RollingUpgrade or Fence.
    pub reason: FailoverReason,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FailoverReason {
    /// The live stopped answering and a backup took over.
    LiveLost,
    /// The operator saw the live was dead and released its arbiter for a backup.
    OperatorFailover,
    /// A planned hand-over to a named backup, asked for with the `duomq.io/switchover`
    /// annotation (`duomq-operator switchover`). allowFailback leaves such a live alone.
    Switchover,
    /// The preferred member took the live role back (with allowFailback, the operator
    /// switches over to it once it is back and in sync).
    Failback,
    /// A planned hand-over by the operator during a rolling upgrade: the live's member was
    /// next to be updated.
    RollingUpgrade,
    /// A planned hand-over by the operator because the live was listed in the
    /// `duomq.io/fenced-members` annotation.
    Fence,
}
