//! Validation: a BrokerGroup plus what the operator looked up for it (its dependencies)
//! becomes a [`ValidatedBrokerGroup`], the only input rendering accepts. Pure: the lookups
//! happen before, in the controller's dereference phase (or from files in `render`).

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use thiserror::Error;

use crate::api::{BrokerGroup, BrokerGroupSpec, HaMode, LayoutKind, NetworkConnectorSpec};
use crate::certificates::Certificates;
use crate::names;
use crate::status::reason::{Problem, Reason};

mod address;

/// Why a spec cannot be rendered. The controller shows it as a `Degraded` condition and an
/// event, and waits for the spec to change instead of retrying.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum InvalidSpec {
    #[error("{message}")]
    Rule { message: String },
    #[error("the BrokerGroup has no namespace")]
    NoNamespace,
    #[error("cluster credentials Secret {secret} has no key {key}")]
    CredentialsKeyMissing { secret: String, key: &'static str },
    /// Something the spec points at is missing or unusable (the certificate Secret, the
    /// authorization ConfigMap): nothing is applied, and it is looked at again.
    #[error("{message}")]
    Dependency { reason: Reason, message: String },
}

impl InvalidSpec {
    /// The reason for the Degraded condition and the Warning event.
    pub fn reason(&self) -> Reason {
        match self {
            InvalidSpec::Rule { .. } | InvalidSpec::NoNamespace => Reason::InvalidSpec,
            InvalidSpec::CredentialsKeyMissing { .. } => Reason::InvalidCredentials,
            InvalidSpec::Dependency { reason, .. } => *reason,
        }
    }

    /// Whether it may fix itself without a change of the spec (a Secret or ConfigMap
    /// appearing): the reconcile then looks again later instead of waiting for the spec.
    pub fn retry(&self) -> bool {
        matches!(self, InvalidSpec::Dependency { .. })
    }
}

/// What the operator found in the cluster for one BrokerGroup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dependencies {
    /// The cluster-credentials Secret's data (the named one, or the generated one if it
    /// exists already); `None` when it does not exist yet.
    pub cluster_secret: Option<BTreeMap<String, String>>,
    /// A password to put in a newly generated Secret (random, chosen by the caller).
    pub new_password: String,
    /// Specs of the BrokerGroups named by network connectors that exist.
    pub connector_targets: BTreeMap<String, BrokerGroupSpec>,
    /// The Secrets network connectors authenticate with (connected BrokerGroups' cluster
    /// Secrets, `passwordSecret`s) that exist, by name. `None` when they were not looked up
    /// (offline rendering): they are then assumed to exist.
    pub connector_secrets: Option<BTreeMap<String, ConnectorSecret>>,
    /// sharedDatabase: the keys of the database URL Secret and of the CA Secret that exist,
    /// by Secret name. `None` when they were not looked up (offline rendering).
    pub database_secrets: Option<BTreeMap<String, BTreeSet<String>>>,
    /// The groups whose StatefulSet exists, by name, with the size their journal claim
    /// template asks for (`None` for a group without one: shared store or database). Empty
    /// when rendering offline.
    pub existing_groups: BTreeMap<String, Option<String>>,
    /// `spec.tls`: the certificates found or made (`crate::certificates::prepare`); `None`
    /// without `spec.tls` or when rendering offline.
    pub certificates: Option<Certificates>,
    /// `authorization.permissionsFrom`: the YAML under the referenced key, or why it could
    /// not be read. `None` when not looked up (offline rendering).
    pub authorization_source: Option<Result<String, String>>,
}

/// What the operator read of a Secret a network connector authenticates with: its keys and
/// its `user` key, never the password.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectorSecret {
    pub keys: BTreeSet<String>,
    pub user: Option<String>,
}

/// The cluster credentials the members use.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterCredentials {
    pub secret_name: String,
    pub user: String,
    /// Set when the operator owns the Secret and must render it.
    pub generated_password: Option<String>,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberModel {
    pub pod: String,
    pub ordinal: usize,
    /// Host name inside the cluster.
    pub host: String,
}

/// One live/backup group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupModel {
    pub index: usize,
    pub name: String,
    pub members: Vec<MemberModel>,
    /// The member that should be live; in a hostPairs layout the one on `primary_node`.
    pub preferred_live: String,
    /// hostPairs: the node this group's live belongs on, and both nodes of its pair.
    pub primary_node: Option<String>,
    pub pair_nodes: Vec<String>,
    /// Beyond `spec.groups` but still there: being drained into the other groups before it
    /// is deleted (safe scale-down). Rendered as before until it is empty, so that nothing
    /// about it changes while it drains.
    pub draining: bool,
    /// The journal claim size its StatefulSet's template asks for: the existing one's (a
    /// template cannot change; the claims grow and the StatefulSet is recreated instead),
    /// or `storage.size` for a new one.
    pub journal_size: String,
}

/// A connector the brokers of this BrokerGroup open to another group.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorModel {
    pub name: String,
    pub uri: String,
    /// The spec entry it comes from (one entry to a BrokerGroup gives a connector per group
    /// of it): its options.
    pub spec: NetworkConnectorSpec,
    /// The remote's cluster password, when it is not this BrokerGroup's own.
    pub password: Option<ConnectorPassword>,
}

/// A Secret key holding a remote's cluster password, mounted into the broker pods at
/// `names::connector_password_file(spec_name)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorPassword {
    /// The name of the spec entry (shared by the connectors it expands to).
    pub spec_name: String,
    pub secret: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedBrokerGroup {
    pub name: String,
    pub namespace: String,
    pub uid: Option<String>,
    pub spec: BrokerGroupSpec,
    pub groups: Vec<GroupModel>,
    pub credentials: ClusterCredentials,
    /// Connectors to outside this BrokerGroup (every member opens all of them).
    pub external_connectors: Vec<ConnectorModel>,
    /// What does not stop rendering but needs attention, for the Degraded condition:
    /// connector targets that do not exist yet, connectors left out or likely refused (a
    /// password Secret missing or lacking its key, another cluster user), a database Secret
    /// missing (the pods wait for it), a garbled annotation.
    pub problems: Vec<Problem>,
    /// Annotation `duomq.io/hibernation: on`: every StatefulSet is rendered with no pod.
    pub hibernate: bool,
    /// Annotation `duomq.io/fenced-members`: member pods to fence.
    pub fenced: BTreeSet<String>,
    /// `spec.tls`: the certificate material (`None` offline: the Secret is mounted by name).
    pub certificates: Option<Certificates>,
    /// `spec.authorization`, inline or from `permissionsFrom`, as the broker reads it.
    pub authorization: Option<Authorization>,
    /// `spec.addressSettings` as the broker reads it, checked by the broker's rules.
    pub address_settings: Vec<duomq_broker::config::AddressSettingsEntry>,
}

/// Roles, permissions and certificate users every broker of the BrokerGroup is given.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Authorization {
    pub roles: duomq_broker::config::Roles,
    pub anonymous_roles: Vec<String>,
    pub permissions: Vec<duomq_broker::config::Permission>,
    pub certificate_users: BTreeMap<String, String>,
    #[serde(skip)]
    pub admin_roles: Option<Vec<String>>,
}

/// `spec.authorization` as the broker reads it: inline, or parsed from the text of
/// `permissionsFrom` (`source`; `None` offline, where only the inline parts count).
fn authorization(
    spec: &crate::api::AuthorizationSpec,
    source: Option<&Result<String, String>>,
) -> Result<Authorization, InvalidSpec> {
    let mut out = match (&spec.permissions_from, source) {
        (Some(from), Some(Ok(text))) => {
            let what = permissions_from_name(from);
            serde_yaml::from_str::<Option<Authorization>>(text)
                .map(Option::unwrap_or_default)
                .map_err(|e| InvalidSpec::Dependency {
                    reason: Reason::AuthorizationInvalid,
                    message: format!("authorization.permissionsFrom {what}: not valid YAML with roles, anonymousRoles, permissions and certificateUsers: {e}; nothing is applied until it is fixed"),
                })?
        }
        (Some(_), Some(Err(message))) => {
            return Err(InvalidSpec::Dependency {
                reason: Reason::AuthorizationInvalid,
                message: message.clone(),
            })
        }
        _ => Authorization {
            roles: spec.roles.clone().unwrap_or_default(),
            anonymous_roles: spec.anonymous_roles.clone().unwrap_or_default(),
            permissions: spec
                .permissions
                .iter()
                .flatten()
                .map(|p| duomq_broker::config::Permission {
                    pattern: p.pattern.clone(),
                    send: p.send.clone(),
                    consume: p.consume.clone(),
                    browse: p.browse.clone(),
                    create: p.create.clone(),
                })
                .collect(),
            certificate_users: spec.certificate_users.clone().unwrap_or_default(),
            admin_roles: None,
        },
    };
    out.admin_roles = spec.admin_roles.clone();
    Ok(out)
}

/// `ConfigMap NAME key KEY` or `Secret NAME key KEY`, for messages.
pub fn permissions_from_name(from: &crate::api::PermissionsFrom) -> String {
    match (&from.config_map_key_ref, &from.secret_key_ref) {
        (Some(r), _) => format!("ConfigMap {} key {}", r.name, r.key),
        (None, Some(r)) => format!("Secret {} key {}", r.name, r.key),
        (None, None) => "(nothing)".into(),
    }
}

/// A `masterslave:(…)` list of a group's members on the cluster port.
pub fn masterslave_uri(hosts: impl IntoIterator<Item = String>, cluster_port: i32) -> String {
    let list: Vec<String> = hosts
        .into_iter()
        .map(|h| format!("tcp://{h}:{cluster_port}"))
        .collect();
    format!("masterslave:({})", list.join(","))
}

/// Models of every group of a BrokerGroup spec named `bg` in `namespace`.
pub fn group_models(bg: &str, namespace: &str, spec: &BrokerGroupSpec) -> Vec<GroupModel> {
    groups_with_existing(bg, namespace, spec, &BTreeMap::new())
}

/// [`group_models`] plus the groups beyond `spec.groups` that still exist (`draining`), each
/// with the journal size of its existing StatefulSet.
pub fn groups_with_existing(
    bg: &str,
    namespace: &str,
    spec: &BrokerGroupSpec,
    existing: &BTreeMap<String, Option<String>>,
) -> Vec<GroupModel> {
    let members_per_group = 1 + spec.backups_per_group.max(0) as usize;
    let wanted = spec.groups.max(0) as usize;
    // Removed groups are the highest-numbered ones: keep every one up to the last that exists.
    let count = (wanted..wanted + 64)
        .filter(|i| existing.contains_key(&names::group_name(bg, *i)))
        .max()
        .map_or(wanted, |last| last + 1);
    (0..count)
        .map(|index| {
            let name = names::group_name(bg, index);
            let members: Vec<MemberModel> = (0..members_per_group)
                .map(|ordinal| MemberModel {
                    pod: names::pod_name(&name, ordinal),
                    ordinal,
                    host: names::pod_host(&name, ordinal, namespace),
                })
                .collect();
            let (primary_node, pair_nodes) = match spec.layout.kind {
                LayoutKind::HostPairs => match spec.layout.host_pairs.get(index / 2) {
                    // Groups 2k and 2k+1 cross pair k: the even one is live on the first node.
                    Some(pair) if pair.nodes.len() == 2 => {
                        (Some(pair.nodes[index % 2].clone()), pair.nodes.clone())
                    }
                    _ => (None, Vec::new()),
                },
                LayoutKind::Spread => (None, Vec::new()),
            };
            let journal_size = existing
                .get(&name)
                .cloned()
                .flatten()
                .unwrap_or_else(|| spec.storage.size.clone());
            GroupModel {
                index,
                preferred_live: members[0].pod.clone(),
                name,
                members,
                primary_node,
                pair_nodes,
                draining: index >= wanted,
                journal_size,
            }
        })
        .collect()
}

/// Checks what CEL cannot (or what an old API server might not have enforced) and builds the
/// model rendering works from.
pub fn validate(
    bg: &BrokerGroup,
    deps: &Dependencies,
) -> Result<ValidatedBrokerGroup, InvalidSpec> {
    // The same rules the API server applies, evaluated here too: `render` runs offline, and
    // an API server without CEL support would let a broken spec through.
    if let Err(errors) = BrokerGroup::validate_cel(bg) {
        let message = errors
            .into_vec()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(InvalidSpec::Rule { message });
    }
    let name = bg.name_any();
    let namespace = bg.namespace().ok_or(InvalidSpec::NoNamespace)?;
    let spec = bg.spec.clone();
    let groups = groups_with_existing(&name, &namespace, &spec, &deps.existing_groups);
    let mut problems = Vec::new();
    let hibernate = match bg.annotations().get(names::HIBERNATION_ANNOTATION).map(|v| v.trim()) {
        None | Some("") => false,
        Some(v) if v == names::HIBERNATION_ON => true,
        Some(v) if v == names::HIBERNATION_OFF => false,
        Some(other) => {
            problems.push(Problem::new(
                Reason::InvalidAnnotation,
                format!("annotation {}: {other:?} is neither {} nor {}; the BrokerGroup is left running", names::HIBERNATION_ANNOTATION, names::HIBERNATION_ON, names::HIBERNATION_OFF),
            ));
            false
        }
    };
    let fenced = match fenced_members(bg, &groups) {
        Ok(fenced) => fenced,
        Err(message) => {
            problems.push(Problem::new(Reason::InvalidAnnotation, message));
            BTreeSet::new()
        }
    };

    let credentials = match (&spec.ha.cluster_credentials_secret, &deps.cluster_secret) {
        (Some(secret), Some(data)) => ClusterCredentials {
            secret_name: secret.clone(),
            user: data
                .get(names::CLUSTER_USER_KEY)
                .cloned()
                .unwrap_or_else(|| names::DEFAULT_CLUSTER_USER.into()),
            generated_password: None,
        }
        .checked(data)?,
        // A named Secret that does not exist yet: the pods wait for it (the controller reports
        // it); the default user is assumed until it appears.
        (Some(secret), None) => ClusterCredentials {
            secret_name: secret.clone(),
            user: names::DEFAULT_CLUSTER_USER.into(),
            generated_password: None,
        },
        (None, existing) => {
            let password = existing
                .as_ref()
                .and_then(|d| d.get(names::CLUSTER_PASSWORD_KEY).cloned())
                .unwrap_or_else(|| deps.new_password.clone());
            ClusterCredentials {
                secret_name: names::generated_cluster_secret(&name),
                user: names::DEFAULT_CLUSTER_USER.into(),
                generated_password: Some(password),
            }
        }
    };

    let mut external_connectors = Vec::new();
    for c in &spec.network_connectors {
        match (&c.broker_group, &c.uri) {
            (_, Some(uri)) => {
                let password = c.password_secret.as_ref().map(|s| ConnectorPassword {
                    spec_name: c.name.clone(),
                    secret: s.name.clone(),
                    key: s.key.clone(),
                });
                if let Some(problem) = password
                    .as_ref()
                    .and_then(|p| secret_problem(deps, p, None))
                {
                    problems.push(problem);
                    continue;
                }
                external_connectors.push(ConnectorModel {
                    name: c.name.clone(),
                    uri: uri.clone(),
                    spec: c.clone(),
                    password,
                });
            }
            (Some(target), None) => match deps.connector_targets.get(target) {
                Some(target_spec) if target_spec.tls.is_some() != spec.tls.is_some() => {
                    let (on, off) = if spec.tls.is_some() { (name.as_str(), target.as_str()) } else { (target.as_str(), name.as_str()) };
                    problems.push(Problem::new(
                        Reason::ConnectorTlsMismatch,
                        format!("network connector {}: BrokerGroup {on} has spec.tls and {off} has not, so their cluster ports cannot talk; the connector is left out until both or neither use TLS (with a common CA: tls.mode Secret from one issuer)", c.name),
                    ));
                }
                Some(target_spec) => {
                    let password = ConnectorPassword {
                        spec_name: c.name.clone(),
                        secret: cluster_secret_name(target, target_spec),
                        key: names::CLUSTER_PASSWORD_KEY.into(),
                    };
                    // A generated Secret is the target's operator-made one: it appears with
                    // the target's first reconcile, so pods may wait for it a moment (two
                    // BrokerGroups created together then start linked, with no rolling upgrade).
                    let generated = target_spec.ha.cluster_credentials_secret.is_none();
                    if let Some(problem) = secret_problem(deps, &password, Some(&credentials.user))
                    {
                        // A user mismatch still renders: the link's refusal then shows in the
                        // NetworkLinked condition too.
                        let left_out = problem.reason != Reason::ConnectorUserMismatch && !generated;
                        problems.push(problem);
                        if left_out {
                            continue;
                        }
                    }
                    for g in group_models(target, &namespace, target_spec) {
                        external_connectors.push(ConnectorModel {
                            name: format!("{}-{}", c.name, g.name),
                            uri: masterslave_uri(
                                g.members.into_iter().map(|m| m.host),
                                target_spec.ports.cluster,
                            ),
                            spec: c.clone(),
                            password: Some(password.clone()),
                        });
                    }
                }
                None => problems.push(Problem::new(
                    Reason::ConnectorTargetMissing,
                    format!("network connector target BrokerGroup {target} does not exist in namespace {namespace}"),
                )),
            },
            (None, None) => {} // rejected by the CEL rule above
        }
    }

    problems.extend(database_problems(&spec, deps));
    let authorization = spec
        .authorization
        .as_ref()
        .map(|a| authorization(a, deps.authorization_source.as_ref()))
        .transpose()?;
    let address_settings = address::entries(&spec.address_settings)?;
    let validated = ValidatedBrokerGroup {
        certificates: deps.certificates.clone(),
        authorization,
        address_settings,
        uid: bg.metadata.uid.clone(),
        name,
        namespace,
        spec,
        groups,
        credentials,
        external_connectors,
        problems,
        hibernate,
        fenced,
    };
    address::check(&validated)?;
    Ok(validated)
}

/// The members listed in the `duomq.io/fenced-members` annotation (a JSON list of pod
/// names, CloudNativePG's format). Names of no member (a pod of a group scaled away) are
/// left alone: they fence nothing and do not stop the others from being fenced.
fn fenced_members(bg: &BrokerGroup, groups: &[GroupModel]) -> Result<BTreeSet<String>, String> {
    let key = names::FENCED_MEMBERS_ANNOTATION;
    let Some(text) = bg.annotations().get(key).filter(|t| !t.trim().is_empty()) else {
        return Ok(BTreeSet::new());
    };
    let listed: Vec<String> = serde_json::from_str(text).map_err(|e| {
        format!("annotation {key}: {text:?} is not a JSON list of pod names ({e}); nothing is fenced until it is, e.g. [\"{}-g0-1\"]", bg.name_any())
    })?;
    let members: BTreeSet<&str> = groups
        .iter()
        .flat_map(|g| g.members.iter().map(|m| m.pod.as_str()))
        .collect();
    Ok(listed
        .into_iter()
        .filter(|p| members.contains(p.as_str()))
        .collect())
}

/// The Secrets sharedDatabase mounts that are missing or lack their key. A broker pod
/// mounts them without `optional`, so such a pod does not start until they are there.
fn database_problems(spec: &BrokerGroupSpec, deps: &Dependencies) -> Vec<Problem> {
    let (Some(found), Some(db)) = (&deps.database_secrets, &spec.ha.database) else {
        return Vec::new();
    };
    if spec.ha.mode != HaMode::SharedDatabase {
        return Vec::new();
    }
    let wanted = db
        .secret_ref
        .iter()
        .map(|r| ("database URL", &r.name, &r.key))
        .chain(
            db.ca_secret_ref
                .iter()
                .map(|r| ("database CA", &r.name, &r.key)),
        );
    wanted
        .filter_map(|(what, name, key)| match found.get(name) {
            None => Some(format!("{what} Secret {name} does not exist: the broker pods wait for it; create it with key {key} (CloudNativePG creates <cluster>-app and <cluster>-ca)")),
            Some(keys) if !keys.contains(key) => Some(format!("{what} Secret {name} has no key {key}: the broker pods wait for it; add the key or set the secretRef's key")),
            Some(_) => None,
        })
        .map(|message| Problem::new(Reason::DatabaseSecretMissing, message))
        .collect()
}

/// The Secrets a BrokerGroup's sharedDatabase mode mounts, by name: the database URL's and
/// the CA's (none in another mode).
pub fn database_secret_names(spec: &BrokerGroupSpec) -> Vec<String> {
    let Some(db) = spec
        .ha
        .database
        .as_ref()
        .filter(|_| spec.ha.mode == HaMode::SharedDatabase)
    else {
        return Vec::new();
    };
    let mut names: Vec<String> = db
        .secret_ref
        .iter()
        .map(|r| r.name.clone())
        .chain(db.ca_secret_ref.iter().map(|r| r.name.clone()))
        .filter(|n| !n.is_empty())
        .collect();
    names.dedup();
    names
}

/// The cluster-credentials Secret of a BrokerGroup named `bg` with this spec.
pub fn cluster_secret_name(bg: &str, spec: &BrokerGroupSpec) -> String {
    spec.ha
        .cluster_credentials_secret
        .clone()
        .unwrap_or_else(|| names::generated_cluster_secret(bg))
}

/// Why a connector's password Secret cannot serve, as (reason, message): it does not exist
/// or lacks the key (a named Secret's connector is then left out until it does, so a typo
/// never rolls a running group onto pods that cannot start), or its cluster user is not
/// `user` (rendered anyway; the remote refuses the link).
fn secret_problem(
    deps: &Dependencies,
    password: &ConnectorPassword,
    user: Option<&str>,
) -> Option<Problem> {
    let secrets = deps.connector_secrets.as_ref()?;
    let (name, key) = (&password.secret, &password.key);
    let Some(found) = secrets.get(name) else {
        return Some(Problem::new(
            Reason::ConnectorSecretMissing,
            format!("network connector {}: Secret {name} does not exist (a named Secret's connector is left out until it does; pods wait for a generated one)", password.spec_name),
        ));
    };
    if !found.keys.contains(key) {
        return Some(Problem::new(
            Reason::ConnectorSecretMissing,
            format!("network connector {}: Secret {name} has no key {key}; the connector is left out until it has", password.spec_name),
        ));
    }
    let theirs = found.user.as_deref().unwrap_or(names::DEFAULT_CLUSTER_USER);
    match user {
        Some(ours) if ours != theirs => Some(Problem::new(
            Reason::ConnectorUserMismatch,
            format!("network connector {}: the remote's cluster user is {theirs} but this BrokerGroup's is {ours}; a link presents this BrokerGroup's user with the remote's password, so the remote refuses it: use one cluster user in both", password.spec_name),
        )),
        _ => None,
    }
}

impl ClusterCredentials {
    fn checked(self, data: &BTreeMap<String, String>) -> Result<Self, InvalidSpec> {
        if data.contains_key(names::CLUSTER_PASSWORD_KEY) {
            Ok(self)
        } else {
            Err(InvalidSpec::CredentialsKeyMissing {
                secret: self.secret_name,
                key: names::CLUSTER_PASSWORD_KEY,
            })
        }
    }
}

impl ValidatedBrokerGroup {
    /// The members of a group share one store (a volume or a database): whoever holds its
    /// lock or lease is live, the others wait on it with nothing to copy.
    pub fn is_shared_store(&self) -> bool {
        matches!(
            self.spec.ha.mode,
            HaMode::SharedStore | HaMode::SharedDatabase
        )
    }

    /// The shared store is a ReadWriteMany volume per group (sharedStore mode).
    pub fn is_shared_volume(&self) -> bool {
        self.spec.ha.mode == HaMode::SharedStore
    }

    /// The shared store is a PostgreSQL database (sharedDatabase mode).
    pub fn is_shared_database(&self) -> bool {
        self.spec.ha.mode == HaMode::SharedDatabase
    }

    /// The port every broker listens for AMQP on, with `spec.amqp.enabled`; `None` without
    /// it (no AMQP port anywhere).
    pub fn amqp_port(&self) -> Option<i32> {
        self.spec
            .amqp
            .as_ref()
            .filter(|a| a.enabled)
            .map(|_| self.spec.ports.amqp)
    }

    /// The remote passwords the broker pods need, one per spec entry, sorted by its name.
    pub fn connector_passwords(&self) -> Vec<ConnectorPassword> {
        let unique: BTreeMap<&str, &ConnectorPassword> = self
            .external_connectors
            .iter()
            .filter_map(|c| c.password.as_ref())
            .map(|p| (p.spec_name.as_str(), p))
            .collect();
        unique.into_values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::parse_documents;
    use rstest::rstest;

    fn orders() -> BrokerGroup {
        let text = "apiVersion: duomq.io/v1alpha1\nkind: BrokerGroup\nmetadata: {name: orders}\nspec: {networkConnectors: [{name: to-billing, brokerGroup: billing}, {name: to-dc2, uri: 'tcp://dc2:61616', passwordSecret: {name: dc2, key: pw}}]}\n";
        parse_documents(text, "default").unwrap().remove(0)
    }

    fn secret(user: Option<&str>, keys: &[&str]) -> ConnectorSecret {
        ConnectorSecret {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            user: user.map(String::from),
        }
    }

    #[rstest]
    // both Secrets there: both rendered, nothing to report
    #[case(vec![("billing-cluster", secret(None, &["password", "user"])), ("dc2", secret(None, &["pw"]))], vec!["to-billing-billing-g0", "to-dc2"], vec![])]
    // billing's generated Secret not there yet: rendered (the pods wait for it), reported
    #[case(vec![("dc2", secret(None, &["pw"]))], vec!["to-billing-billing-g0", "to-dc2"], vec!["ConnectorSecretMissing"])]
    // dc2's named Secret missing: left out until it exists
    #[case(vec![("billing-cluster", secret(None, &["password"]))], vec!["to-billing-billing-g0"], vec!["ConnectorSecretMissing"])]
    // dc2's Secret lacks its key: left out
    #[case(vec![("billing-cluster", secret(None, &["password"])), ("dc2", secret(None, &["password"]))], vec!["to-billing-billing-g0"], vec!["ConnectorSecretMissing"])]
    // billing uses another cluster user: rendered, and reported (the remote will refuse it)
    #[case(vec![("billing-cluster", secret(Some("admin"), &["password"])), ("dc2", secret(None, &["pw"]))], vec!["to-billing-billing-g0", "to-dc2"], vec!["ConnectorUserMismatch"])]
    fn given_connector_secrets_should_render_those_that_can_authenticate_and_report_the_others(
        #[case] secrets: Vec<(&str, ConnectorSecret)>,
        #[case] rendered: Vec<&str>,
        #[case] reasons: Vec<&str>,
    ) {
        let billing = parse_documents(
            "apiVersion: duomq.io/v1alpha1\nkind: BrokerGroup\nmetadata: {name: billing}\nspec: {}\n",
            "default",
        )
        .unwrap()
        .remove(0);
        let deps = Dependencies {
            new_password: "p".into(),
            connector_targets: BTreeMap::from([("billing".to_string(), billing.spec)]),
            connector_secrets: Some(
                secrets
                    .into_iter()
                    .map(|(name, s)| (name.to_string(), s))
                    .collect(),
            ),
            ..Dependencies::default()
        };
        let v = validate(&orders(), &deps).unwrap();
        let names: Vec<&str> = v
            .external_connectors
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, rendered);
        let got: Vec<&str> = v
            .problems
            .iter()
            .filter(|p| p.reason != Reason::ConnectorTargetMissing)
            .map(|p| p.reason.as_str())
            .collect();
        assert_eq!(got, reasons, "{:?}", v.problems);
    }

    #[test]
    fn given_connectors_not_looked_up_should_assume_their_secrets_exist() {
        let v = validate(
            &orders(),
            &Dependencies {
                new_password: "p".into(),
                ..Dependencies::default()
            },
        )
        .unwrap();
        let passwords: Vec<(String, String, String)> = v
            .connector_passwords()
            .into_iter()
            .map(|p| (p.spec_name, p.secret, p.key))
            .collect();
        assert_eq!(
            passwords,
            vec![("to-dc2".into(), "dc2".into(), "pw".into())],
            "billing is not known offline here, so only dc2's password is mounted"
        );
    }

    #[rstest]
    // both Secrets with their keys: nothing to report
    #[case(vec![("pg-app", vec!["uri", "password"]), ("pg-ca", vec!["ca.crt"])], vec![])]
    // the URL Secret missing: the pods wait for it
    #[case(vec![("pg-ca", vec!["ca.crt"])], vec!["database URL Secret pg-app does not exist"])]
    // the URL Secret without its key, the CA Secret missing
    #[case(vec![("pg-app", vec!["jdbc-uri"])], vec!["database URL Secret pg-app has no key uri", "database CA Secret pg-ca does not exist"])]
    fn given_the_database_secrets_should_report_those_missing_or_without_their_key(
        #[case] secrets: Vec<(&str, Vec<&str>)>,
        #[case] expected: Vec<&str>,
    ) {
        let text = "apiVersion: duomq.io/v1alpha1\nkind: BrokerGroup\nmetadata: {name: db}\nspec: {ha: {mode: sharedDatabase, database: {secretRef: {name: pg-app}, sslMode: verify-ca, caSecretRef: {name: pg-ca}}}}\n";
        let bg = parse_documents(text, "default").unwrap().remove(0);
        assert_eq!(
            database_secret_names(&bg.spec),
            vec!["pg-app".to_string(), "pg-ca".to_string()]
        );
        let deps = Dependencies {
            new_password: "p".into(),
            database_secrets: Some(
                secrets
                    .into_iter()
                    .map(|(name, keys)| {
                        (
                            name.to_string(),
                            keys.into_iter().map(String::from).collect(),
                        )
                    })
                    .collect(),
            ),
            ..Dependencies::default()
        };
        let v = validate(&bg, &deps).unwrap();
        assert_eq!(v.problems.len(), expected.len(), "{:?}", v.problems);
        for (p, start) in v.problems.iter().zip(expected) {
            assert_eq!(p.reason, Reason::DatabaseSecretMissing);
            assert!(p.message.starts_with(start), "{}", p.message);
        }
        let offline = validate(
            &bg,
            &Dependencies {
                new_password: "p".into(),
                ..Dependencies::default()
            },
        )
        .unwrap();
        assert!(
            offline.problems.is_empty(),
            "not looked up: assumed to exist"
        );
    }
}
