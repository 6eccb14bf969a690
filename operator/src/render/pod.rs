//! A group's StatefulSet and its pod template: the bundled broker, non-root on a read-only
//! root filesystem, probes on the admin port, placement by layout.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecretProjection, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{config_data, config_hash, statefulset_shell, storage_request};
use crate::api::LayoutKind;
use crate::names;
use crate::validate::{GroupModel, ValidatedBrokerGroup};

/// Enough for a broker's shutdown: it finishes in-flight work and hands the live role over
/// (the broker gives a hand-over 30 s).
const TERMINATION_GRACE_SECONDS: i64 = 45;

pub fn build_statefulset(v: &ValidatedBrokerGroup, g: &GroupModel) -> StatefulSet {
    let selector = names::group_selector(&v.name, &g.name);
    let mut pod_labels = names::group_labels(&v.name, &g.name);
    let overrides = v.spec.pod_template.clone().unwrap_or_default();
    for (k, value) in &overrides.labels {
        pod_labels.entry(k.clone()).or_insert_with(|| value.clone());
    }
    let claims = if v.is_shared_store() {
        None
    } else {
        Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: v.spec.storage.storage_class_name.clone(),
                resources: Some(storage_request(&g.journal_size)),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }])
    };
    statefulset_shell(
        v,
        g,
        StatefulSetSpec {
            // Hibernated: no pod (Parallel: all stop at once; each live hands nothing over,
            // it releases its claim listing itself in sync, so it is the one to come back).
            replicas: Some(if v.hibernate { 0 } else { g.members.len() as i32 }),
            service_name: Some(names::members_service(&g.name)),
            // Members start together: a backup must be up to sync while the primary waits
            // to find out whether a live of its group already exists.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations(v, g, &overrides.annotations)),
                    ..ObjectMeta::default()
                }),
                spec: Some(build_pod_spec(v, g)),
            },
            volume_claim_templates: claims,
            ..StatefulSetSpec::default()
        },
    )
}

/// The spec's extra annotations plus the config hash (which they cannot replace): a changed
/// `broker.yaml` changes the template, so the members restart onto it in the rolling-upgrade
/// order.
fn pod_annotations(
    v: &ValidatedBrokerGroup,
    g: &GroupModel,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut annotations = extra.clone();
    annotations.insert(
        names::CONFIG_HASH_ANNOTATION.into(),
        config_hash(&config_data(v, g)),
    );
    // A new certificate (a renewal, a changed Secret) rolls the members onto it, in the
    // rolling-upgrade order; the brokers would pick it up by themselves, but a restart
    // proves every member works with it before the old one expires.
    if let Some(certificates) = &v.certificates {
        annotations.insert(
            names::TLS_CHECKSUM_ANNOTATION.into(),
            certificates.checksum(),
        );
    }
    annotations
}

const TLS_VOLUME: &str = "tls";

/// `spec.tls`: the certificate Secret's three keys. Not optional: a pod waits for a
/// Secret that is not there yet.
fn tls_volume(v: &ValidatedBrokerGroup) -> Option<Volume> {
    let tls = v.spec.tls.as_ref()?;
    let secret = match tls.mode {
        crate::api::TlsMode::OperatorManaged => names::tls_secret(&v.name),
        crate::api::TlsMode::Secret => tls.secret_name.clone().unwrap_or_default(),
    };
    let items = [names::TLS_CERT_KEY, names::TLS_KEY_KEY, names::TLS_CA_KEY]
        .iter()
        .map(|key| KeyToPath {
            key: (*key).into(),
            path: (*key).into(),
            mode: None,
        })
        .collect();
    Some(Volume {
        name: TLS_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            items: Some(items),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    })
}

/// The remote cluster passwords of the network connectors, one file per connector entry in
/// one projected volume; `None` when no connector needs one.
fn network_credentials_volume(v: &ValidatedBrokerGroup) -> Option<Volume> {
    let passwords = v.connector_passwords();
    if passwords.is_empty() {
        return None;
    }
    let sources = passwords
        .into_iter()
        .map(|p| VolumeProjection {
            secret: Some(SecretProjection {
                name: p.secret,
                items: Some(vec![KeyToPath {
                    key: p.key,
                    path: names::connector_password_path(&p.spec_name),
                    mode: None,
                }]),
                // A remote's Secret that is not there (yet) never keeps a pod from starting:
                // the broker reads the file at every attempt and shows that link refused.
                optional: Some(true),
            }),
            ..VolumeProjection::default()
        })
        .collect();
    Some(Volume {
        name: NETWORK_CREDENTIALS_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            default_mode: Some(0o440),
        }),
        ..Volume::default()
    })
}

const NETWORK_CREDENTIALS_VOLUME: &str = "network-credentials";
/// sharedDatabase: the database URL and CA Secrets.
const DATABASE_VOLUME: &str = "database";
const DATABASE_CA_VOLUME: &str = "database-ca";

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// A probe of the admin port: HTTPS with `spec.tls` (the kubelet does not check the
/// certificate).
fn http_probe(v: &ValidatedBrokerGroup, path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            scheme: v.spec.tls.as_ref().map(|_| "HTTPS".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".into())),
            ("memory".to_string(), Quantity("128Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("512Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn secret_volume(name: &str, secret: &str, key: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: key.into(),
                mode: None,
            }]),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn build_pod_spec(v: &ValidatedBrokerGroup, g: &GroupModel) -> PodSpec {
    let spec = &v.spec;
    let overrides = spec.pod_template.clone().unwrap_or_default();
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::config_map(&g.name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        secret_volume(
            "cluster-credentials",
            &v.credentials.secret_name,
            names::CLUSTER_PASSWORD_KEY,
        ),
    ];
    let mut mounts = vec![
        mount("config", names::CONFIG_DIR),
        mount("cluster-credentials", names::CLUSTER_SECRET_DIR),
    ];
    if let Some(users) = &spec.users_secret {
        volumes.push(secret_volume("users", users, names::USERS_KEY));
        mounts.push(mount("users", names::USERS_SECRET_DIR));
    }
    if let Some(tls) = tls_volume(v) {
        volumes.push(tls);
        mounts.push(mount(TLS_VOLUME, names::TLS_DIR));
    }
    if let Some(network) = network_credentials_volume(v) {
        volumes.push(network);
        mounts.push(mount(NETWORK_CREDENTIALS_VOLUME, names::NETWORK_SECRET_DIR));
    }
    if v.is_shared_volume() {
        volumes.push(Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: names::shared_claim(&g.name),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    if let Some(db) = spec.ha.database.as_ref().filter(|_| v.is_shared_database()) {
        // The messages live in the database: dataDir holds only the node id, so a volume
        // that goes with the pod will do.
        volumes.push(Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        if let Some(url) = &db.secret_ref {
            volumes.push(secret_volume(DATABASE_VOLUME, &url.name, &url.key));
            mounts.push(mount(DATABASE_VOLUME, names::DATABASE_SECRET_DIR));
        }
        if let Some(ca) = &db.ca_secret_ref {
            volumes.push(secret_volume(DATABASE_CA_VOLUME, &ca.name, &ca.key));
            mounts.push(mount(DATABASE_CA_VOLUME, names::DATABASE_CA_DIR));
        }
    }
    mounts.push(VolumeMount {
        name: "data".into(),
        mount_path: names::DATA_DIR.into(),
        ..VolumeMount::default()
    });

    let container = Container {
        name: names::BROKER_CONTAINER.into(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(spec.image_pull_policy.as_str().into()),
        // Each member reads its own file from the group's ConfigMap.
        args: Some(vec![
            "run".into(),
            "--config".into(),
            format!("{}/$(POD_NAME).yaml", names::CONFIG_DIR),
        ]),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("NODE_NAME", "spec.nodeName"),
        ]),
        ports: Some(
            [
                Some(container_port("stomp", spec.ports.stomp)),
                v.amqp_port().map(|p| container_port("amqp", p)),
                Some(container_port("cluster", spec.ports.cluster)),
                Some(container_port("admin", spec.ports.admin)),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
        // Journal recovery may take a while on a large journal: the startup probe gives it
        // five minutes before liveness starts counting.
        startup_probe: Some(http_probe(v, duomq_broker::admin::api::HEALTHZ, 5, 60)),
        liveness_probe: Some(http_probe(v, duomq_broker::admin::api::HEALTHZ, 10, 3)),
        readiness_probe: Some(http_probe(v, duomq_broker::admin::api::READYZ, 2, 1)),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    PodSpec {
        service_account_name: Some(names::broker_service_account(&v.name)),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(names::BROKER_UID),
            run_as_group: Some(names::BROKER_UID),
            fs_group: Some(names::BROKER_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        affinity: Some(build_affinity(v, g)),
        containers: vec![container],
        volumes: Some(volumes),
        tolerations: (!overrides.tolerations.is_empty()).then(|| overrides.tolerations.clone()),
        node_selector: (!overrides.node_selector.is_empty())
            .then(|| overrides.node_selector.clone()),
        priority_class_name: overrides.priority_class_name.clone(),
        ..PodSpec::default()
    }
}

/// Members of a group never share a node (losing one node loses at most one member); in a
/// host-pair layout they are also held to the pair's two nodes.
fn build_affinity(v: &ValidatedBrokerGroup, g: &GroupModel) -> Affinity {
    let anti = PodAntiAffinity {
        required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some(names::group_selector(&v.name, &g.name)),
                ..LabelSelector::default()
            }),
            topology_key: "kubernetes.io/hostname".into(),
            ..PodAffinityTerm::default()
        }]),
        ..PodAntiAffinity::default()
    };
    let node =
        (v.spec.layout.kind == LayoutKind::HostPairs && !g.pair_nodes.is_empty()).then(|| {
            NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "kubernetes.io/hostname".into(),
                            operator: "In".into(),
                            values: Some(g.pair_nodes.clone()),
                        }]),
                        ..NodeSelectorTerm::default()
                    }],
                }),
                ..NodeAffinity::default()
            }
        });
    Affinity {
        pod_anti_affinity: Some(anti),
        node_affinity: node,
        ..Affinity::default()
    }
}
