//! The admin HTTP contract: paths, port and JSON types. The operator imports this module,
//! so broker and operator cannot disagree on it. Types only; no server code here.

use serde::{Deserialize, Serialize};

pub use crate::faults::rules::{
    Direction, DiskFault, DiskFaultStatus, FaultRules, FaultsStatus, FrameAction, FrameRule, FrameRuleStatus,
};

pub const DEFAULT_PORT: u16 = 8161;
/// 200 while the process runs.
pub const HEALTHZ: &str = "/healthz";
/// 200 when this member is live (journal recovered, STOMP listener serving clients), or a
/// backup that could take over at once: with replication, one whose sync state is
/// `synced`; with a shared store, a slave waiting for the lock whose data directory
/// answers. 503 otherwise (starting, stopping, a backup still syncing or cut off from its
/// store, a member fenced by an admin request), with a one-line reason in the body. Kubernetes rolling updates wait for Ready
/// pods, so a healthy backup must count as ready; route clients by role, not readiness.
pub const READYZ: &str = "/readyz";
/// [`BrokerStatus`] as JSON. Needs credentials whenever the broker has any (a cluster
/// password or users): a `GET` signed like [`SWITCHOVER`] (empty body), or HTTP Basic of a
/// user holding a role in `auth.adminRoles` (see [`super::access`]); 401 without (with a
/// Basic challenge), 403 for a user without an admin role.
pub const STATUS: &str = "/status";
/// Prometheus text exposition. Open while `admin.openMetrics` (the default); otherwise it
/// needs credentials as [`STATUS`] does.
pub const METRICS: &str = "/metrics";
/// `POST` a [`SwitchoverRequest`] to the live, signed with the cluster password (see
/// [`super::auth`]): a planned hand-over of the live role to a named in-sync backup, with
/// nothing lost. The live stops accepting clients, waits until the target has every record
/// it wrote, hands the group's arbiter claim to exactly that member and rejoins as its
/// backup. Answers when the hand-over is done: 200 [`SwitchoverReply`]; 401 unsigned or
/// wrongly signed; 409 [`AdminError`] when refused (this member is not live, the target is
/// itself or not an in-sync backup, another hand-over is under way); 500 when the
/// hand-over failed or timed out after clients were stopped (the group then fails over as
/// after a crash, to an in-sync member).
pub const SWITCHOVER: &str = "/ha/switchover";

/// `POST` a [`DrainRequest`] to a group's live, signed like [`SWITCHOVER`]: the group is being
/// removed (a BrokerGroup scaled down). The live stops taking clients (new STOMP connections
/// get an ERROR saying the group is draining; open client connections are closed so that
/// failover clients move to another group), stops advertising demand on its bridges, and
/// forwards every queued message over its linked bridges to the named groups, whether or
/// not they have consumers (and whatever the connectors' destination filters say), refusing
/// what other groups forward to it. Each message is settled here only once stored there,
/// as with any forward, so nothing is lost if either side dies; a resend after a crash is
/// stored once (the forward's id is kept in the journal). Messages are spread over the
/// linked targets, those with consumers for the queue first. Messages of a message group
/// go to the one target that took the group's first message here (the queue keeps the
/// group on that bridge while it is linked), or, when the grouping handler gave the group
/// to a target group, to that group; a group bound to this group is forwarded like any
/// message and bound anew by the target. Topics: their subscribers were clients of this
/// group, so their subscriptions end with their connections, with what they held; topic
/// messages already taken by a bridge to a target go on. Links to non-target groups forward
/// nothing. Idempotent: asking again answers the progress (with other targets, changes
/// them). 200 [`DrainStatus`]; 400 without targets or naming this group; 401 unsigned or
/// wrongly signed; 409 [`AdminError`] when this member is not live (or is fenced). Not
/// persistent: a member that becomes live later (a restart, a failover) serves clients
/// again and is asked again by the operator.
pub const DRAIN: &str = "/ha/drain";
/// `POST` a [`FenceRequest`] to any member, signed like [`SWITCHOVER`] (CloudNativePG's
/// fencing): a fenced member stops serving and replicating (or polling the journal lock,
/// or the database lease), is not ready, never takes the live role, and keeps its data;
/// unfencing makes it rejoin its group as a backup (resyncing as needed). A live is
/// refused (409) unless `force`: hand its role over first (the operator switches over to
/// an in-sync backup before fencing a live). A forced live stops serving as after a crash
/// (with replication it confirms no more writes at once), closes its journal and gives its
/// claim up (lock, Lease or database lease) so a backup takes over. A standalone broker
/// (`ha.policy: none`) is refused (409): it has no group. Idempotent. 200 [`FenceReply`],
/// answered at once (`/status` shows the member `fenced` within moments); 401 unsigned or
/// wrongly signed. Not persistent: the operator asks again after a restart while the
/// member is still listed in the `duomq.io/fenced-members` annotation.
pub const FENCE: &str = "/ha/fence";

/// `GET`: every destination with its depth, in flight, consumers and bytes
/// ([`DestinationList`]; topics summed over their subscribers). Needs credentials as
/// [`STATUS`] does.
pub const QUEUES: &str = "/queues";
/// `POST` a [`BrowseRequest`]: the first messages waiting in a queue (not those in flight),
/// in the order consumers get them: those in memory, then paged ones read from the
/// journal; nothing taken ([`BrowseReply`]). A read: HTTP Basic of
/// an admin user, or signed like [`SWITCHOVER`] (over this body). 404 for a queue the
/// broker does not hold; 400 for a topic.
pub const QUEUE_BROWSE: &str = "/queues/browse";
/// `POST` a [`PurgeRequest`], signed like [`SWITCHOVER`]: removes every message waiting in
/// the queue when the purge began (messages in flight stay with their consumers), journaled
/// as acks so none comes back after a restart; [`PurgeReply`]. 404 for a queue the broker
/// does not hold; 409 on a member that is not live.
pub const QUEUE_PURGE: &str = "/queues/purge";
/// `POST` a [`DeleteRequest`], signed like [`SWITCHOVER`]: removes the waiting messages
/// with these ids (as [`QUEUE_BROWSE`] shows them); [`DeleteReply`] says which were not
/// waiting (in flight, or not in the queue).
pub const QUEUE_DELETE: &str = "/queues/delete";
/// `POST` a [`MoveRequest`], signed like [`SWITCHOVER`]: moves waiting messages to another
/// queue (created when missing, within `destinations.maxDestinations`), all of them, the
/// first `limit`, or those with `ids`, keeping their order, headers and bodies. Each batch
/// of up to 500 is one journal record adding the messages to the target and acking them
/// from the source, so a crash never loses or doubles one. [`MoveReply`]. 404 for a source
/// the broker does not hold; 400 for a topic, a reserved name or a move onto itself; 500
/// when the target cannot take them (memory limits, a failed write): what earlier batches
/// moved stays moved, the rest stays put.
pub const QUEUE_MOVE: &str = "/queues/move";
/// Fault injection, for tests only: served only by a broker started with
/// `debug.faultInjection: true` (or `--fault-injection`); otherwise every method answers
/// 404 with an [`AdminError`] saying so. `PUT` a [`FaultRules`] (signed like [`SWITCHOVER`],
/// with the method `PUT`): it replaces every rule in force (cluster frames dropped,
/// delayed, duplicated or reordered, partitions from peers, failing or slow journal
/// fdatasyncs) and answers the new [`FaultsStatus`]; 400 for rules that cannot work, naming
/// the rule. `DELETE` (signed, empty body) removes them all: the network heals, the disk
/// recovers. `GET` answers the [`FaultsStatus`]: the rules in order and what each acted
/// on; it needs credentials as [`STATUS`] does. Not persistent: a restarted broker has no
/// rules.
pub const DEBUG_FAULTS: &str = "/debug/faults";
/// How many messages a browse answers without a `limit`.
pub const BROWSE_DEFAULT_LIMIT: usize = 100;
/// The most a browse answers.
pub const BROWSE_MAX_LIMIT: usize = 10_000;

/// The answer to `GET /queues`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationList {
    /// Sorted by name.
    pub destinations: Vec<QueueStatus>,
}

/// The body of `POST /queues/browse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrowseRequest {
    /// `/queue/NAME`.
    pub queue: String,
    /// At most this many ([`BROWSE_DEFAULT_LIMIT`] when absent; 1 to [`BROWSE_MAX_LIMIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// How a browsed message's body is written in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BodyEncoding {
    /// The body is UTF-8 text, given as it is.
    Utf8,
    /// The body is not UTF-8: standard base64 with padding.
    Base64,
}

/// One message waiting in a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrowsedMessage {
    /// The broker's id: the `message-id` consumers see; what delete and move take.
    pub id: u64,
    /// The producer's headers, in order, as `[name, value]` pairs.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub body_encoding: BodyEncoding,
    /// Body bytes.
    pub size: u64,
    /// Delivered before and handed back (a consumer left, or NACKed it).
    pub redelivered: bool,
}

/// The answer to `POST /queues/browse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrowseReply {
    pub queue: String,
    /// Messages waiting in all (the list holds the first of them).
    pub depth: u64,
    pub messages: Vec<BrowsedMessage>,
}

/// The body of `POST /queues/purge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeRequest {
    pub queue: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PurgeReply {
    pub queue: String,
    pub removed: u64,
}

/// The body of `POST /queues/delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteRequest {
    pub queue: String,
    pub ids: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteReply {
    pub queue: String,
    pub removed: u64,
    /// Ids asked for that were not waiting: in flight at a consumer, or not in the queue.
    #[serde(default)]
    pub missing: Vec<u64>,
}

/// The body of `POST /queues/move`: every waiting message, or the first `limit`, or those
/// with `ids` (not both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MoveRequest {
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MoveReply {
    pub from: String,
    pub to: String,
    pub moved: u64,
    /// Ids asked for that were not waiting in `from`.
    #[serde(default)]
    pub missing: Vec<u64>,
}

/// The body of `POST /ha/drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainRequest {
    /// The groups (`ha.groupName`) the messages go to: the ones that stay. Links to any other
    /// group forward nothing while draining.
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DrainState {
    /// Moving messages; `messagesLeft` counts down.
    Draining,
    /// No message and no client left: the group can be deleted.
    Drained,
    /// Messages are left but no bridge that forwards from here (a connector's link, or a
    /// duplex link a target opened) reaches a target group; `reason` says why (no
    /// connector at all, or each connector's link state and last error).
    Stuck,
}

/// A draining live's progress, in `/status` and as the answer to `POST /ha/drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    pub state: DrainState,
    /// Messages still held here: queued and in flight, over all point-to-point queues
    /// (topic subscriptions are not counted: see [`DRAIN`]).
    pub messages_left: u64,
    /// Messages forwarded to the targets since the drain began.
    pub forwarded: u64,
    pub targets: Vec<String>,
    /// Why the drain is stuck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The body of `POST /ha/fence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FenceRequest {
    /// true to fence, false to unfence.
    pub fenced: bool,
    /// Fence even a live (its clients are cut off; the group fails over as after a crash).
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FenceReply {
    pub node: String,
    /// Whether the member is fenced now.
    pub fenced: bool,
}

/// What a broker is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// Recovering the journal; not serving clients yet.
    Starting,
    /// Serving clients.
    Live,
    /// A replication backup: follows its live, refuses clients.
    Backup,
    /// Stopping: no new clients, finishing in-flight work.
    Stopping,
    /// A live that lost the group's Lease (it could not renew it in time, or another
    /// member holds it now): it stopped serving clients and confirms no more writes, and
    /// rejoins as a backup once it reaches the new live. Also a member fenced by an admin
    /// request (`adminFenced`), until it is unfenced.
    Fenced,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStatus {
    pub version: String,
    pub node_id: String,
    pub role: Role,
    pub uptime_seconds: u64,
    pub connections: u64,
    /// Message bytes held in memory across all queues.
    pub memory_bytes: u64,
    /// Journal bytes on disk against the quota; absent without a broker or a file journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskStatus>,
    pub queues: Vec<QueueStatus>,
    /// Durable topic subscriptions, by client id and name.
    #[serde(default)]
    pub durable_subscriptions: Vec<DurableSubscriptionStatus>,
    /// Replication state; absent on a standalone broker (`ha.policy: none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaStatus>,
    /// Network bridges; absent when the broker has no connector and no inbound link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStatus>,
    /// The clustered grouping handler; absent with `grouping.handler: none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grouping: Option<GroupingStatus>,
    /// Fenced by an admin request ([`FENCE`]); its role is then `fenced`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin_fenced: bool,
    /// A drain ([`DRAIN`]) under way or done on this live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainStatus>,
}

impl BrokerStatus {
    /// A broker with nothing to report yet beyond who it is: no queues, no connections, no
    /// replication, network or grouping section (the start of a test's or a probe's view).
    pub fn bare(node_id: &str, role: Role) -> BrokerStatus {
        BrokerStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            node_id: node_id.to_string(),
            role,
            uptime_seconds: 0,
            connections: 0,
            memory_bytes: 0,
            disk: None,
            queues: Vec::new(),
            durable_subscriptions: Vec::new(),
            ha: None,
            network: None,
            grouping: None,
            admin_fenced: false,
            drain: None,
        }
    }
}

/// Which grouping handler a broker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GroupingHandlerKind {
    /// Decides group bindings for the cluster; they are journaled and replicated.
    Local,
    /// Asks the local handler, and caches what it learnt.
    Remote,
}

/// The clustered grouping handler of a live broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupingStatus {
    pub handler: GroupingHandlerKind,
    /// This broker's group name (a local handler's is the one the cluster asks).
    pub group: String,
    /// Cluster bindings held: decided (local) or cached (remote).
    pub bindings: u64,
    /// Proposals made (remote) or answered (local).
    pub proposals_total: u64,
    /// Decisions that did not come within `grouping.timeout` (the SENDs were refused).
    pub timeouts_total: u64,
    /// Bindings removed unused after `grouping.groupTimeout`.
    pub reaped_total: u64,
    /// Remote: whether the link to the local handler's live is up; local: always true.
    pub connected: bool,
    /// Remote: the member of the local handler's group it is linked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// This broker's bridges to other groups.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    /// The connectors of `network.connectors`, in config order.
    pub connectors: Vec<ConnectorStatus>,
    /// Links other brokers opened to this one (their connectors).
    pub inbound: Vec<InboundLinkStatus>,
}

/// One connector: a link per remote group it reaches (one for `masterslave:` and `tcp://`,
/// one per address for `static:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorStatus {
    pub name: String,
    pub uri: String,
    pub duplex: bool,
    pub links: Vec<LinkStatus>,
}

impl ConnectorStatus {
    /// Every link of the connector is up.
    pub fn linked(&self) -> bool {
        !self.links.is_empty() && self.links.iter().all(|l| l.state == LinkState::Linked)
    }
}

/// The state of one bridge link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LinkState {
    /// Trying the listed members in order.
    Connecting,
    /// Linked to the remote group's live.
    Linked,
    /// The remote refused the link (wrong password, own group): retried, nothing forwarded.
    Refused,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    /// What the link reaches: a `masterslave:(…)` list or one `tcp://host:port`.
    pub target: String,
    pub state: LinkState,
    /// Seconds in the current state.
    pub state_seconds: u64,
    /// The address linked to (the remote group's live), when linked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_group: Option<String>,
    /// Why the last attempt failed, while not linked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Destinations the remote has consumers for (its demand), sorted; at most 100 listed.
    pub remote_demand: Vec<String>,
    /// How many destinations the remote asks for in all.
    pub remote_demand_count: u64,
    /// How many destinations this side asked the remote for (duplex links only).
    pub local_demand_count: u64,
    /// Messages sent over the link and confirmed by the remote.
    pub forwarded_out: u64,
    /// Messages received over the link (duplex) and stored here.
    pub forwarded_in: u64,
}

/// A link another broker's connector opened to this one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundLinkStatus {
    pub connector: String,
    pub remote_node: String,
    pub remote_group: String,
    pub duplex: bool,
    /// How many destinations this side asked the remote for.
    pub local_demand_count: u64,
    /// Messages received over the link and stored here.
    pub forwarded_in: u64,
    /// Messages sent back over a duplex link and confirmed.
    pub forwarded_out: u64,
}

/// A member's view of its live/backup group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HaStatus {
    pub group: String,
    pub epoch: u64,
    /// The live's node id (this node's own when it is live), if known.
    pub live: Option<String>,
    /// On a backup: how far it is from its live.
    pub sync: Option<SyncStatus>,
    /// On a live: its backups.
    pub backups: Vec<BackupStatus>,
    /// On a live: no synced backup is connected, so writes are not replicated.
    pub alone: bool,
    /// With `storage.store: database`: the database and its lease as this member sees them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseStatus>,
    /// Members whose cluster port refused this member's last connection (TLS: another CA,
    /// an expired certificate, TLS on one end only; or the cluster credentials), and why.
    /// A member leaves the list once a connection to it gets through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_by: Vec<ClusterRefusal>,
}

/// A member's cluster port refusing this member, and why (`HaStatus.refused_by`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRefusal {
    /// The member's cluster address as configured (`ha.members[].cluster`).
    pub member: String,
    pub reason: String,
}

/// A shared-database member's view of the database (`storage.store: database`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// The last statement (a commit, a renewal or a poll) reached the database.
    pub reachable: bool,
    /// Why the last statement failed, while it is unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The lease's holder, as last read (this member's own name on the live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_holder: Option<String>,
    /// On the live: milliseconds until it fences itself unless a renewal succeeds; on a
    /// backup: until the lease expires in the database's clock, as last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_remaining_ms: Option<u64>,
    /// Transactions committed by this member's current live term.
    pub commits: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SyncState {
    /// Looking for its live or waiting for the arbiter.
    Connecting,
    /// Receiving the live's journal.
    Syncing,
    /// Caught up; follows every append.
    Synced,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    pub state: SyncState,
    pub lag_bytes: u64,
    pub lag_records: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    pub node: String,
    pub state: SyncState,
    pub lag_bytes: u64,
    pub lag_records: u64,
}

/// The body of `POST /ha/switchover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverRequest {
    /// The node id of the backup that becomes live (on Kubernetes, its pod name).
    pub to: String,
}

/// The answer to a switchover that was carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverReply {
    /// The member that was live (this one).
    pub from: String,
    /// The member that was handed the live role.
    pub to: String,
    /// The epoch the new live was told to take.
    pub epoch: u64,
}

/// Why an admin write was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminError {
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DestinationKind {
    Queue,
    Topic,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// The STOMP destination, `/queue/NAME` or `/topic/NAME`.
    pub name: String,
    pub kind: DestinationKind,
    /// Messages waiting for a consumer.
    pub depth: u64,
    /// Delivered and not yet acknowledged.
    pub in_flight: u64,
    pub consumers: u64,
    pub bytes: u64,
    pub enqueued_total: u64,
    pub acked_total: u64,
    /// Message groups (`JMSXGroupID`) bound to a consumer of this queue.
    #[serde(default)]
    pub groups: u64,
    /// Messages kept in the journal only until consumers catch up (`addressFullPolicy:
    /// page`), and their bytes; not counted in `depth`.
    #[serde(default)]
    pub paged: u64,
    #[serde(default)]
    pub paged_bytes: u64,
}

/// The journal's disk use against `storage.maxDiskBytes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskStatus {
    pub journal_bytes: u64,
    /// 0: unlimited.
    pub max_disk_bytes: u64,
}

/// A durable topic subscription (CONNECT's `client-id` and SUBSCRIBE's
/// `activemq.subscriptionName` or `durable-subscription-name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DurableSubscriptionStatus {
    pub client_id: String,
    pub name: String,
    /// The `/topic/NAME` it keeps the messages of.
    pub topic: String,
    /// It keeps only the messages this selects (SUBSCRIBE's `selector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Messages kept for it, waiting for its consumer.
    pub depth: u64,
    /// Delivered to its consumer and not yet acknowledged.
    pub in_flight: u64,
    pub bytes: u64,
    /// Kept in the journal only (its topic's `addressFullPolicy: page`), not yet read back;
    /// not counted in `depth`.
    #[serde(default)]
    pub paged: u64,
    /// Whether its consumer is attached now.
    pub consumer_attached: bool,
}
