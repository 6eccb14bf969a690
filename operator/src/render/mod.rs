//! Rendering: a [`ValidatedBrokerGroup`] becomes every object its brokers need. Pure
//! functions with no client: the same input gives byte-identical output (BTreeMaps, sorted
//! lists, no timestamps or random values), so re-applying an unchanged BrokerGroup changes
//! nothing.

mod config;
mod documents;
mod pod;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, PersistentVolumeClaimSpec, Secret, Service, ServiceAccount,
    ServicePort, ServiceSpec, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use k8s_openapi::Metadata;
use kube::core::ApiResource;
use serde::Serialize;

pub use config::{broker_yaml, build_broker_config, group_connectors};
pub use documents::{generated_secrets, parse_documents, render_documents, DocumentsError};

use crate::api::{GROUP, KIND, VERSION};
use crate::names;
use crate::validate::{GroupModel, ValidatedBrokerGroup};

/// Everything one BrokerGroup owns, in the order it is applied: identities and
/// configuration before the workloads that use them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rendered {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    /// The cluster-credentials Secret, when the operator generates it.
    pub secret: Option<Secret>,
    /// tls.mode OperatorManaged: the CA Secret and the member certificate Secret.
    pub tls_secrets: Vec<Secret>,
    pub config_maps: Vec<ConfigMap>,
    /// Shared-store volumes, one per group.
    pub claims: Vec<PersistentVolumeClaim>,
    pub services: Vec<Service>,
    pub pdbs: Vec<PodDisruptionBudget>,
    /// One Lease per group: the group's arbiter (replication mode; a shared store's lock or
    /// lease is its own arbiter). Rendered with metadata
    /// only, so the operator owns its existence and the brokers own its spec.
    pub leases: Vec<Lease>,
    pub statefulsets: Vec<StatefulSet>,
}

/// One rendered object, kind-erased for applying and printing.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedObject {
    pub resource: ApiResource,
    pub kind: &'static str,
    pub name: String,
    pub value: serde_json::Value,
}

fn erase<K: kube::Resource<DynamicType = ()> + Metadata<Ty = ObjectMeta> + Serialize>(
    object: &K,
) -> RenderedObject {
    RenderedObject {
        resource: ApiResource::erase::<K>(&()),
        kind: K::KIND,
        name: object.metadata().name.clone().unwrap_or_default(),
        value: serde_json::to_value(object).unwrap_or(serde_json::Value::Null),
    }
}

impl Rendered {
    /// Every object in apply order.
    pub fn objects(&self) -> Vec<RenderedObject> {
        let mut out = vec![
            erase(&self.service_account),
            erase(&self.role),
            erase(&self.role_binding),
        ];
        out.extend(self.secret.iter().map(erase));
        out.extend(self.tls_secrets.iter().map(erase));
        out.extend(self.config_maps.iter().map(erase));
        out.extend(self.claims.iter().map(erase));
        out.extend(self.services.iter().map(erase));
        out.extend(self.pdbs.iter().map(erase));
        out.extend(self.leases.iter().map(erase));
        out.extend(self.statefulsets.iter().map(erase));
        out
    }

    /// Multi-document YAML of every object, in apply order.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for o in self.objects() {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(&o.value).unwrap_or_default());
        }
        out
    }
}

/// Renders every object of a validated BrokerGroup.
pub fn render(v: &ValidatedBrokerGroup) -> Rendered {
    Rendered {
        service_account: build_service_account(v),
        role: build_role(v),
        role_binding: build_role_binding(v),
        secret: build_cluster_secret(v),
        tls_secrets: build_tls_secrets(v),
        config_maps: v.groups.iter().map(|g| build_config_map(v, g)).collect(),
        claims: if v.is_shared_volume() {
            v.groups.iter().map(|g| build_shared_claim(v, g)).collect()
        } else {
            Vec::new()
        },
        services: build_services(v),
        pdbs: v.groups.iter().map(|g| build_pdb(v, g)).collect(),
        leases: if v.is_shared_store() {
            Vec::new()
        } else {
            v.groups.iter().map(|g| build_lease(v, g)).collect()
        },
        statefulsets: v
            .groups
            .iter()
            .map(|g| pod::build_statefulset(v, g))
            .collect(),
    }
}

/// The owner reference every object carries, so deleting the BrokerGroup deletes them. Absent
/// when rendering offline a BrokerGroup that was never created (no uid).
fn owner_references(v: &ValidatedBrokerGroup) -> Option<Vec<OwnerReference>> {
    v.uid.as_ref().map(|uid| {
        vec![OwnerReference {
            api_version: format!("{GROUP}/{VERSION}"),
            kind: KIND.into(),
            name: v.name.clone(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]
    })
}

fn meta(v: &ValidatedBrokerGroup, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(v.namespace.clone()),
        labels: Some(labels),
        owner_references: owner_references(v),
        ..ObjectMeta::default()
    }
}

fn build_service_account(v: &ValidatedBrokerGroup) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(
            v,
            names::broker_service_account(&v.name),
            names::instance_labels(&v.name),
        ),
        ..ServiceAccount::default()
    }
}

/// The brokers may read and renew their own groups' Leases (the Kubernetes arbiter) and
/// nothing else.
fn build_role(v: &ValidatedBrokerGroup) -> Role {
    let leases: Vec<String> = v.groups.iter().map(|g| names::lease(&g.name)).collect();
    Role {
        metadata: meta(
            v,
            names::broker_service_account(&v.name),
            names::instance_labels(&v.name),
        ),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["coordination.k8s.io".into()]),
            resources: Some(vec!["leases".into()]),
            resource_names: Some(leases),
            verbs: vec!["get".into(), "update".into(), "patch".into()],
            ..PolicyRule::default()
        }]),
    }
}

fn build_role_binding(v: &ValidatedBrokerGroup) -> RoleBinding {
    let name = names::broker_service_account(&v.name);
    RoleBinding {
        metadata: meta(v, name.clone(), names::instance_labels(&v.name)),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(v.namespace.clone()),
            ..Subject::default()
        }]),
    }
}

fn build_cluster_secret(v: &ValidatedBrokerGroup) -> Option<Secret> {
    let password = v.credentials.generated_password.as_ref()?;
    Some(Secret {
        metadata: meta(
            v,
            v.credentials.secret_name.clone(),
            names::instance_labels(&v.name),
        ),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                names::CLUSTER_USER_KEY.to_string(),
                ByteString(v.credentials.user.clone().into_bytes()),
            ),
            (
                names::CLUSTER_PASSWORD_KEY.to_string(),
                ByteString(password.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    })
}

/// tls.mode OperatorManaged: `<name>-ca` (the CA's certificate and key, never mounted) and
/// `<name>-tls` (`tls.crt`, `tls.key`, `ca.crt`), as the controller found or made them.
fn build_tls_secrets(v: &ValidatedBrokerGroup) -> Vec<Secret> {
    let Some(c) = &v.certificates else {
        return Vec::new();
    };
    let Some(ca) = &c.authority else {
        return Vec::new();
    };
    let secret = |name: String, data: BTreeMap<String, String>| Secret {
        metadata: meta(v, name, names::instance_labels(&v.name)),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            data.into_iter()
                .map(|(k, value)| (k, ByteString(value.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    };
    vec![
        secret(
            names::ca_secret(&v.name),
            BTreeMap::from([
                (names::TLS_CERT_KEY.to_string(), ca.cert_pem.clone()),
                (names::TLS_KEY_KEY.to_string(), ca.key_pem.clone()),
            ]),
        ),
        secret(c.secret_name.clone(), c.data.clone()),
    ]
}

/// A group's ConfigMap data: a `<pod>.yaml` per member.
fn config_data(v: &ValidatedBrokerGroup, g: &GroupModel) -> BTreeMap<String, String> {
    g.members
        .iter()
        .map(|m| {
            (
                format!("{}.yaml", m.pod),
                broker_yaml(&build_broker_config(v, g, m)),
            )
        })
        .collect()
}

/// A stable hash of a group's ConfigMap data (FNV-1a, 64 bits, as hex): the same on every
/// machine and Rust version, so an unchanged config never looks changed.
fn config_hash(data: &BTreeMap<String, String>) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for (key, value) in data {
        // A separator byte that YAML text never holds keeps "ab"+"c" apart from "a"+"bc".
        for byte in key.bytes().chain([0]).chain(value.bytes()).chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    format!("{hash:016x}")
}

/// One ConfigMap per group with a `<pod>.yaml` per member; a pod picks its own by name.
fn build_config_map(v: &ValidatedBrokerGroup, g: &GroupModel) -> ConfigMap {
    let data = config_data(v, g);
    ConfigMap {
        metadata: meta(
            v,
            names::config_map(&g.name),
            names::group_labels(&v.name, &g.name),
        ),
        data: Some(data),
        ..ConfigMap::default()
    }
}

fn build_shared_claim(v: &ValidatedBrokerGroup, g: &GroupModel) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(
            v,
            names::shared_claim(&g.name),
            names::group_labels(&v.name, &g.name),
        ),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            storage_class_name: v.spec.storage.storage_class_name.clone(),
            resources: Some(storage_request(&v.spec.storage.size)),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn storage_request(size: &str) -> VolumeResourceRequirements {
    VolumeResourceRequirements {
        requests: Some(BTreeMap::from([(
            "storage".to_string(),
            Quantity(size.to_string()),
        )])),
        ..VolumeResourceRequirements::default()
    }
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// The client ports: STOMP, and AMQP with `spec.amqp.enabled`.
fn client_ports(v: &ValidatedBrokerGroup) -> Vec<ServicePort> {
    let mut out = vec![port("stomp", v.spec.ports.stomp)];
    out.extend(v.amqp_port().map(|p| port("amqp", p)));
    out
}

/// Per group: a headless Service for the members' DNS names (published before they are
/// ready: a backup must find its live while neither is ready) and a client Service that
/// follows the live. Per BrokerGroup: a client Service over the lives of all groups.
fn build_services(v: &ValidatedBrokerGroup) -> Vec<Service> {
    let ports = &v.spec.ports;
    let mut out = Vec::new();
    for g in &v.groups {
        out.push(Service {
            metadata: meta(
                v,
                names::members_service(&g.name),
                names::group_labels(&v.name, &g.name),
            ),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                publish_not_ready_addresses: Some(true),
                selector: Some(names::group_selector(&v.name, &g.name)),
                ports: Some(
                    client_ports(v)
                        .into_iter()
                        .chain([port("cluster", ports.cluster), port("admin", ports.admin)])
                        .collect(),
                ),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        });
        let mut live = names::group_selector(&v.name, &g.name);
        live.insert(names::LABEL_ROLE.into(), names::ROLE_LIVE.into());
        out.push(Service {
            metadata: meta(v, g.name.clone(), names::group_labels(&v.name, &g.name)),
            spec: Some(ServiceSpec {
                selector: Some(live),
                ports: Some(client_ports(v)),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        });
    }
    out.push(Service {
        metadata: meta(v, v.name.clone(), names::instance_labels(&v.name)),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([
                (names::LABEL_INSTANCE.to_string(), v.name.clone()),
                (names::LABEL_ROLE.to_string(), names::ROLE_LIVE.to_string()),
            ])),
            ports: Some(client_ports(v)),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    });
    out
}

fn build_lease(v: &ValidatedBrokerGroup, g: &GroupModel) -> Lease {
    Lease {
        metadata: meta(
            v,
            names::lease(&g.name),
            names::group_labels(&v.name, &g.name),
        ),
        spec: None,
    }
}

/// At most one member of a group down at a time for voluntary disruptions (drains).
fn build_pdb(v: &ValidatedBrokerGroup, g: &GroupModel) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(v, g.name.clone(), names::group_labels(&v.name, &g.name)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(names::group_selector(&v.name, &g.name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

fn statefulset_shell(
    v: &ValidatedBrokerGroup,
    g: &GroupModel,
    spec: StatefulSetSpec,
) -> StatefulSet {
    StatefulSet {
        metadata: meta(v, g.name.clone(), names::group_labels(&v.name, &g.name)),
        spec: Some(StatefulSetSpec {
            // The operator updates pods itself, in CloudNativePG's order (backups first, then
            // a switchover, then the former live): see `crate::plan`.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..Default::default()
            }),
            ..spec
        }),
        ..StatefulSet::default()
    }
}
