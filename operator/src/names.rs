//! The operator's constants and object names in one place: label keys, the field manager,
//! mount paths, and how every object of a BrokerGroup is named.

use std::collections::BTreeMap;

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "duomq-operator";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The group (backup-group name) a member belongs to.
pub const LABEL_GROUP: &str = "duomq.io/group";
/// `live` or `backup`; kept current on pods by the operator, so client Services follow the live.
pub const LABEL_ROLE: &str = "duomq.io/role";
pub const ROLE_LIVE: &str = "live";
pub const ROLE_BACKUP: &str = "backup";
/// The live of a group being drained before removal: out of the client Service.
pub const ROLE_DRAINING: &str = "draining";

pub const APP_NAME: &str = "duomq-broker";
pub const COMPONENT_BROKER: &str = "broker";
/// The broker container of every broker pod.
pub const BROKER_CONTAINER: &str = "broker";

/// Where a broker pod finds its files.
pub const CONFIG_DIR: &str = "/etc/duomq";
pub const CLUSTER_SECRET_DIR: &str = "/etc/duomq/cluster";
pub const USERS_SECRET_DIR: &str = "/etc/duomq/users";
/// sharedDatabase: the database URL Secret's key and the CA Secret's key, mounted here.
pub const DATABASE_SECRET_DIR: &str = "/etc/duomq/database";
pub const DATABASE_CA_DIR: &str = "/etc/duomq/database-ca";
/// Default keys of those Secrets (CloudNativePG's application and CA Secrets).
pub const DATABASE_URL_KEY: &str = "uri";
pub const DATABASE_CA_KEY: &str = "ca.crt";
/// Remote cluster passwords of network connectors: `<connector>/password` each.
pub const NETWORK_SECRET_DIR: &str = "/etc/duomq/network";
pub const DATA_DIR: &str = "/var/lib/duomq";
/// `spec.tls`: the certificate Secret (`tls.crt`, `tls.key`, `ca.crt`), mounted here; the
/// broker reads the files again as the kubelet updates them.
pub const TLS_DIR: &str = "/etc/duomq/tls";
/// Keys of a certificate Secret, as cert-manager writes them.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
pub const TLS_CA_KEY: &str = "ca.crt";
/// On a broker pod template: a hash of the certificate Secret's content, so a new
/// certificate (a renewal, a changed Secret) rolls the members onto it.
pub const TLS_CHECKSUM_ANNOTATION: &str = "duomq.io/tls-checksum";
/// Keys of the cluster-credentials Secret.
pub const CLUSTER_USER_KEY: &str = "user";
pub const CLUSTER_PASSWORD_KEY: &str = "password";
/// Key of the client users Secret: `NAME:PASSWORD` lines.
pub const USERS_KEY: &str = "users";
/// The cluster user of a generated credentials Secret.
pub const DEFAULT_CLUSTER_USER: &str = "duomq-cluster";

/// UID and GID the broker image runs as.
pub const BROKER_UID: i64 = 10001;

/// Name of group `index` of BrokerGroup `bg`: also its backup-group name and StatefulSet name.
pub fn group_name(bg: &str, index: usize) -> String {
    format!("{bg}-g{index}")
}

/// The headless Service giving each member of a group a stable DNS name.
pub fn members_service(group: &str) -> String {
    format!("{group}-members")
}

/// Pod `ordinal` of a group's StatefulSet.
pub fn pod_name(group: &str, ordinal: usize) -> String {
    format!("{group}-{ordinal}")
}

/// A member's DNS name inside the cluster (resolved through the pod's search path, so it
/// works whatever the cluster domain is).
pub fn pod_host(group: &str, ordinal: usize, namespace: &str) -> String {
    member_host(group, &pod_name(group, ordinal), namespace)
}

/// [`pod_host`] of a member known by its pod name.
pub fn member_host(group: &str, pod: &str, namespace: &str) -> String {
    format!("{pod}.{}.{namespace}.svc", members_service(group))
}

pub fn config_map(group: &str) -> String {
    format!("{group}-config")
}

/// tls.mode OperatorManaged: the BrokerGroup's CA (certificate and key; never mounted).
pub fn ca_secret(bg: &str) -> String {
    format!("{bg}-ca")
}

/// tls.mode OperatorManaged: the member certificate, key and CA certificate.
pub fn tls_secret(bg: &str) -> String {
    format!("{bg}-tls")
}

pub fn generated_cluster_secret(bg: &str) -> String {
    format!("{bg}-cluster")
}

pub fn broker_service_account(bg: &str) -> String {
    format!("{bg}-broker")
}

/// On a group's Lease: the holder whose claim the operator released because it knew that
/// live was dead (so the status can say `OperatorFailover`).
pub const RELEASED_HOLDER_ANNOTATION: &str = "duomq.io/released-holder";

/// On a BrokerGroup: switchovers asked for, `<group>=<pod>` (comma-separated for several
/// groups), e.g. `pair-g0=pair-g0-1`. The operator asks the group's live to hand the role
/// to that pod and removes the entry once the pod is live. `duomq-operator switchover` sets it.
pub const SWITCHOVER_ANNOTATION: &str = "duomq.io/switchover";

/// On a BrokerGroup: `on` hibernates it (CloudNativePG's `cnpg.io/hibernation`): every
/// group's StatefulSet goes to zero pods, lives last so they hold the newest journal; claims,
/// Secrets and the spec stay. `off` or removing the annotation resumes it. `kubectl duomq
/// hibernate|resume` sets it.
pub const HIBERNATION_ANNOTATION: &str = "duomq.io/hibernation";
pub const HIBERNATION_ON: &str = "on";
pub const HIBERNATION_OFF: &str = "off";

/// On a BrokerGroup: a JSON list of member pods to fence (CloudNativePG's
/// `cnpg.io/fencedInstances`), e.g. `["pair-g0-1"]`. A fenced member stops serving and
/// replicating and never takes the live role; its pod and data stay. A live listed here is
/// first switched over to an in-sync backup. `kubectl duomq fence|unfence` edits it.
pub const FENCED_MEMBERS_ANNOTATION: &str = "duomq.io/fenced-members";

/// The Lease the operator's replicas elect their leader on, in the operator's namespace.
pub const OPERATOR_LEASE: &str = "duomq-operator-leader";

/// On a broker pod template: a hash of its group's ConfigMap, so a change of any member's
/// `broker.yaml` (a connector added, a group added to the mesh) is a new StatefulSet revision
/// and rolls out like an image change.
pub const CONFIG_HASH_ANNOTATION: &str = "duomq.io/config-hash";

/// The file a network connector's remote password is mounted at, relative to
/// [`NETWORK_SECRET_DIR`].
pub fn connector_password_path(connector: &str) -> String {
    format!("{connector}/password")
}

/// The pod label the StatefulSet controller sets to the revision a pod was created from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// The group's arbiter Lease.
pub fn lease(group: &str) -> String {
    group.to_string()
}

/// The journal claim a StatefulSet makes for member `pod` (its volume claim template `data`).
pub fn journal_claim(pod: &str) -> String {
    format!("data-{pod}")
}

pub fn shared_claim(group: &str) -> String {
    format!("{group}-shared")
}

/// Labels every object of a BrokerGroup carries.
pub fn instance_labels(bg: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), APP_NAME.to_string()),
        (LABEL_INSTANCE.to_string(), bg.to_string()),
        (LABEL_COMPONENT.to_string(), COMPONENT_BROKER.to_string()),
        (
            LABEL_MANAGED_BY.to_string(),
            crate::names::FIELD_MANAGER.to_string(),
        ),
    ])
}

/// Labels of one group's objects and pods.
pub fn group_labels(bg: &str, group: &str) -> BTreeMap<String, String> {
    let mut labels = instance_labels(bg);
    labels.insert(LABEL_GROUP.into(), group.into());
    labels
}

/// The (immutable) selector of a group's pods.
pub fn group_selector(bg: &str, group: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_INSTANCE.to_string(), bg.to_string()),
        (LABEL_GROUP.to_string(), group.to_string()),
    ])
}
