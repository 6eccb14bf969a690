//! A pod spec's container turned into a Docker container definition: env (values,
//! fieldRef, resourceFieldRef, configMap/secret keys, envFrom) with Kubernetes' `$(VAR)`
//! expansion, command and args, security context, resource limits. Pure: the caller looks
//! up ConfigMaps and Secrets and passes the mounts in.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, Mount};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, SecurityContext};

use crate::cluster::names;
use crate::cluster::quantity;

/// Why a container cannot be created from its spec (the kubelet's
/// CreateContainerConfigError); the texts are the real kubelet's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("configmap \"{name}\" not found")]
    ConfigMapNotFound { name: String },
    #[error("secret \"{name}\" not found")]
    SecretNotFound { name: String },
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyNotFound {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyNotFound {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("unsupported fieldPath {path}")]
    UnsupportedFieldPath { path: String },
    #[error("container has runAsNonRoot and image will run as root (pod: \"{pod}\", container: {container})")]
    RunAsRoot { pod: String, container: String },
    #[error("container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root (pod: \"{pod}\", container: {container})")]
    NonNumericUser {
        user: String,
        pod: String,
        container: String,
    },
}

/// Where the kubelet finds the ConfigMaps and Secrets a pod refers to.
pub trait ObjectLookup {
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap>;
    fn secret(&self, namespace: &str, name: &str) -> Option<Secret>;
}

/// What the kubelet knows about the pod beyond its spec.
#[derive(Debug, Clone, Copy)]
pub struct PodContext<'a> {
    pub pod: &'a Pod,
    pub pod_ip: Option<&'a str>,
    pub host_ip: &'a str,
}

impl PodContext<'_> {
    fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    fn pod_name(&self) -> String {
        format!(
            "{}_{}({})",
            self.pod.metadata.name.as_deref().unwrap_or_default(),
            self.namespace(),
            self.pod.metadata.uid.as_deref().unwrap_or_default()
        )
    }
}

/// Kubernetes' `$(VAR)` expansion: `$(NAME)` becomes the value of NAME when `lookup` knows
/// it and stays as written otherwise; `$$` is an escaped `$`.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let bytes = input.as_bytes();
    let mut i = 0;
    let mut checkpoint = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            out.push_str(&input[checkpoint..i]);
            let rest = &input[i + 1..];
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                }
                b'(' => match rest.find(')') {
                    Some(end) => {
                        let name = &rest[1..end];
                        match lookup(name) {
                            Some(value) => out.push_str(&value),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        i += end + 2;
                    }
                    None => {
                        out.push('$');
                        out.push_str(rest);
                        i = bytes.len();
                    }
                },
                _ => {
                    // `$x` is literal: keep both and go on after them.
                    let ch_len = rest.chars().next().map_or(1, char::len_utf8);
                    out.push_str(&input[i..i + 1 + ch_len]);
                    i += 1 + ch_len;
                }
            }
            checkpoint = i;
        } else {
            i += 1;
        }
    }
    if checkpoint < input.len() {
        out.push_str(&input[checkpoint..]);
    }
    out
}

/// The container's environment in order: envFrom sources, then env entries (each value
/// expanded against what came before it), later names replacing earlier ones.
pub fn resolve_env(
    ctx: &PodContext<'_>,
    container: &Container,
    lookup: &dyn ObjectLookup,
) -> Result<Vec<(String, String)>, ConfigError> {
    let namespace = ctx.namespace().to_string();
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| match env
        .iter_mut()
        .find(|(n, _)| *n == name)
    {
        Some(slot) => slot.1 = value,
        None => env.push((name, value)),
    };
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(r) = &source.config_map_ref {
            match lookup.config_map(&namespace, &r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => {
                    return Err(ConfigError::ConfigMapNotFound {
                        name: r.name.clone(),
                    })
                }
            }
        }
        if let Some(r) = &source.secret_ref {
            match lookup.secret(&namespace, &r.name) {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => {
                    return Err(ConfigError::SecretNotFound {
                        name: r.name.clone(),
                    })
                }
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => {
                let known = env.clone();
                let lookup_var = move |name: &str| {
                    known
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                };
                Some(expand(v, &lookup_var))
            }
            (None, Some(from)) => env_from_source(ctx, container, from, &namespace, lookup)?,
            (None, None) => Some(String::new()),
        };
        if let Some(value) = value {
            set(&mut env, var.name.clone(), value);
        }
    }
    Ok(env)
}

fn env_from_source(
    ctx: &PodContext<'_>,
    container: &Container,
    from: &k8s_openapi::api::core::v1::EnvVarSource,
    namespace: &str,
    lookup: &dyn ObjectLookup,
) -> Result<Option<String>, ConfigError> {
    if let Some(field) = &from.field_ref {
        return field_value(ctx, &field.field_path).map(Some);
    }
    if let Some(res) = &from.resource_field_ref {
        let limits = container
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        let requests = container
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .unwrap_or_default();
        let (kind, source) = match res.resource.split_once('.') {
            Some(("limits", k)) => (k, &limits),
            Some(("requests", k)) => (k, &requests),
            _ => return Ok(Some(String::new())),
        };
        let divisor = res
            .divisor
            .as_ref()
            .and_then(|d| quantity::parse(&d.0))
            .filter(|d| *d > 0.0)
            .unwrap_or(1.0);
        let value = source
            .get(kind)
            .and_then(|q| quantity::parse(&q.0))
            .unwrap_or(0.0);
        return Ok(Some(((value / divisor).ceil() as i64).to_string()));
    }
    if let Some(key) = &from.config_map_key_ref {
        let optional = key.optional == Some(true);
        return match lookup.config_map(namespace, &key.name) {
            None if optional => Ok(None),
            None => Err(ConfigError::ConfigMapNotFound {
                name: key.name.clone(),
            }),
            Some(cm) => match cm.data.unwrap_or_default().remove(&key.key) {
                Some(v) => Ok(Some(v)),
                None if optional => Ok(None),
                None => Err(ConfigError::ConfigMapKeyNotFound {
                    namespace: namespace.into(),
                    name: key.name.clone(),
                    key: key.key.clone(),
                }),
            },
        };
    }
    if let Some(key) = &from.secret_key_ref {
        let optional = key.optional == Some(true);
        return match lookup.secret(namespace, &key.name) {
            None if optional => Ok(None),
            None => Err(ConfigError::SecretNotFound {
                name: key.name.clone(),
            }),
            Some(s) => match s.data.unwrap_or_default().remove(&key.key) {
                Some(v) => Ok(Some(String::from_utf8_lossy(&v.0).into_owned())),
                None if optional => Ok(None),
                None => Err(ConfigError::SecretKeyNotFound {
                    namespace: namespace.into(),
                    name: key.name.clone(),
                    key: key.key.clone(),
                }),
            },
        };
    }
    Ok(Some(String::new()))
}

/// The value of a downward-API field path.
pub fn field_value(ctx: &PodContext<'_>, path: &str) -> Result<String, ConfigError> {
    let pod = ctx.pod;
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let keyed = |prefix: &str, map: &Option<std::collections::BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    if let Some(v) = keyed("metadata.labels['", &meta.labels) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", &meta.annotations) {
        return Ok(v);
    }
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => Some(ctx.namespace().to_string()),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.node_name,
        "spec.serviceAccountName" => spec.service_account_name.or(Some("default".into())),
        "status.podIP" | "status.podIPs" => ctx.pod_ip.map(str::to_string),
        "status.hostIP" | "status.hostIPs" => Some(ctx.host_ip.to_string()),
        _ => return Err(ConfigError::UnsupportedFieldPath { path: path.into() }),
    };
    Ok(value.unwrap_or_default())
}

/// The container's security context over the pod's, for the fields both have.
fn effective_security(pod: &Pod, container: &Container) -> (SecurityContext, Vec<i64>) {
    let pod_sc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let mut sc = container.security_context.clone().unwrap_or_default();
    sc.run_as_user = sc.run_as_user.or(pod_sc.run_as_user);
    sc.run_as_group = sc.run_as_group.or(pod_sc.run_as_group);
    sc.run_as_non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root);
    let mut groups: Vec<i64> = pod_sc.fs_group.into_iter().collect();
    groups.extend(pod_sc.supplemental_groups.unwrap_or_default());
    (sc, groups)
}

/// Everything `build_container` needs besides the spec.
pub struct ContainerInputs<'a> {
    pub ctx: PodContext<'a>,
    pub container: &'a Container,
    pub env: Vec<(String, String)>,
    /// The image's own `USER`, to check runAsNonRoot.
    pub image_user: &'a str,
    /// The pod sandbox container whose network namespace the container joins.
    pub sandbox: &'a str,
    pub mounts: Vec<Mount>,
    pub labels: HashMap<String, String>,
    /// Whether the kubeconfig is mounted (then `KUBECONFIG` points at it).
    pub kubeconfig: bool,
}

/// The Docker definition of one container of a pod.
pub fn build_container(inputs: ContainerInputs<'_>) -> Result<ContainerCreateBody, ConfigError> {
    let ContainerInputs {
        ctx,
        container,
        mut env,
        image_user,
        sandbox,
        mounts,
        labels,
        kubeconfig,
    } = inputs;
    let (sc, groups) = effective_security(ctx.pod, container);
    if sc.run_as_non_root == Some(true) {
        check_non_root(&sc, image_user, &ctx.pod_name(), &container.name)?;
    }
    if kubeconfig {
        env.push(("KUBECONFIG".into(), names::KUBECONFIG_MOUNT_PATH.into()));
    }
    let lookup_env = {
        let env = env.clone();
        move |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    };
    let expand_all = |list: &Option<Vec<String>>| {
        list.as_ref()
            .map(|l| l.iter().map(|s| expand(s, &lookup_env)).collect::<Vec<_>>())
    };
    let user = sc.run_as_user.map(|uid| match sc.run_as_group {
        Some(gid) => format!("{uid}:{gid}"),
        None => uid.to_string(),
    });
    let caps = sc.capabilities.clone().unwrap_or_default();
    let limits = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    let memory = limits
        .get("memory")
        .and_then(|q| quantity::parse(&q.0))
        .map(|b| b as i64);
    let nano_cpus = limits
        .get("cpu")
        .and_then(|q| quantity::parse(&q.0))
        .map(|c| (c * 1e9) as i64);
    let mut security_opt = Vec::new();
    if sc.allow_privilege_escalation == Some(false) {
        security_opt.push("no-new-privileges".to_string());
    }
    Ok(ContainerCreateBody {
        image: container.image.clone(),
        entrypoint: expand_all(&container.command),
        cmd: expand_all(&container.args),
        env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: container.working_dir.clone(),
        user,
        tty: container.tty,
        open_stdin: container.stdin,
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some(format!("container:{sandbox}")),
            mounts: Some(mounts),
            readonly_rootfs: sc.read_only_root_filesystem,
            cap_add: caps.add.filter(|c| !c.is_empty()),
            cap_drop: caps.drop.filter(|c| !c.is_empty()),
            privileged: sc.privileged,
            security_opt: (!security_opt.is_empty()).then_some(security_opt),
            group_add: (!groups.is_empty()).then(|| groups.iter().map(i64::to_string).collect()),
            memory,
            nano_cpus,
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    })
}

fn check_non_root(
    sc: &SecurityContext,
    image_user: &str,
    pod: &str,
    container: &str,
) -> Result<(), ConfigError> {
    let uid = match sc.run_as_user {
        Some(uid) => uid,
        None => {
            let user = image_user.split(':').next().unwrap_or_default();
            if user.is_empty() {
                0
            } else {
                user.parse().map_err(|_| ConfigError::NonNumericUser {
                    user: user.into(),
                    pod: pod.into(),
                    container: container.into(),
                })?
            }
        }
    };
    if uid == 0 {
        return Err(ConfigError::RunAsRoot {
            pod: pod.into(),
            container: container.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Capabilities, ConfigMapKeySelector, EnvVar, EnvVarSource, ObjectFieldSelector,
        PodSecurityContext, ResourceRequirements, SecretKeySelector,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use crate::cluster::fixtures::{web_pod, Objects};
    use rstest::rstest;
    use std::collections::BTreeMap;

    fn pod() -> Pod {
        let mut p = web_pod();
        p.spec.as_mut().unwrap().node_name = Some("node-b".into());
        p
    }

    fn ctx(pod: &Pod) -> PodContext<'_> {
        PodContext {
            pod,
            pod_ip: Some("10.213.0.10"),
            host_ip: "10.213.0.1",
        }
    }

    fn value(name: &str, v: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(v.into()),
            ..Default::default()
        }
    }

    fn from(name: &str, source: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(source),
            ..Default::default()
        }
    }

    fn field(path: &str) -> EnvVarSource {
        EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[rstest]
    #[case("$(A)/x", "1/x")]
    #[case("$(A)$(B)", "12")]
    #[case("$(MISSING)", "$(MISSING)")]
    #[case("$$(A)", "$(A)")]
    #[case("$$", "$")]
    #[case("a$b", "a$b")]
    #[case("$(A", "$(A")]
    #[case("cost: 5$", "cost: 5$")]
    #[case("ünï$(A)ç", "ünï1ç")]
    fn given_reference_when_expanding_should_follow_kubernetes(
        #[case] input: &str,
        #[case] expected: &str,
    ) {
        let lookup = |n: &str| match n {
            "A" => Some("1".to_string()),
            "B" => Some("2".to_string()),
            _ => None,
        };
        assert_eq!(expand(input, &lookup), expected);
    }

    #[test]
    fn given_env_sources_when_resolving_should_fill_fields_keys_and_references() {
        let p = pod();
        let c = Container {
            name: "c".into(),
            env: Some(vec![
                from("POD_NAME", field("metadata.name")),
                from("POD_NAMESPACE", field("metadata.namespace")),
                from("NODE", field("spec.nodeName")),
                from("IP", field("status.podIP")),
                from("UID", field("metadata.uid")),
                from("SA", field("spec.serviceAccountName")),
                from("APP", field("metadata.labels['app']")),
                from(
                    "LEVEL",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cm".into(),
                            key: "level".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "PASSWORD",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "creds".into(),
                            key: "password".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                value("CONFIG", "/etc/$(POD_NAME).yaml"),
            ]),
            ..Default::default()
        };
        let env: BTreeMap<String, String> = resolve_env(&ctx(&p), &c, &Objects)
            .unwrap()
            .into_iter()
            .collect();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("POD_NAME"), Some("web-0"));
        assert_eq!(get("POD_NAMESPACE"), Some("ns"));
        assert_eq!(get("NODE"), Some("node-b"));
        assert_eq!(get("IP"), Some("10.213.0.10"));
        assert_eq!(get("UID"), Some("u-1"));
        assert_eq!(get("SA"), Some("default"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("LEVEL"), Some("debug"));
        assert_eq!(get("PASSWORD"), Some("s3cret"));
        assert_eq!(get("CONFIG"), Some("/etc/web-0.yaml"));
    }

    #[rstest]
    #[case::missing_configmap("other", "level", false, Some(ConfigError::ConfigMapNotFound { name: "other".into() }))]
    #[case::missing_key("cm", "nope", false, Some(ConfigError::ConfigMapKeyNotFound { namespace: "ns".into(), name: "cm".into(), key: "nope".into() }))]
    #[case::optional_missing("other", "level", true, None)]
    fn given_missing_reference_when_resolving_env_should_fail_like_kubelet(
        #[case] name: &str,
        #[case] key: &str,
        #[case] optional: bool,
        #[case] expected: Option<ConfigError>,
    ) {
        let p = pod();
        let c = Container {
            name: "c".into(),
            env: Some(vec![from(
                "X",
                EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: name.into(),
                        key: key.into(),
                        optional: Some(optional),
                    }),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        assert_eq!(resolve_env(&ctx(&p), &c, &Objects).err(), expected);
    }

    fn inputs<'a>(p: &'a Pod, c: &'a Container, image_user: &'a str) -> ContainerInputs<'a> {
        ContainerInputs {
            ctx: ctx(p),
            container: c,
            env: vec![("POD_NAME".into(), "web-0".into())],
            image_user,
            sandbox: "sb",
            mounts: vec![],
            labels: HashMap::new(),
            kubeconfig: true,
        }
    }

    #[test]
    fn given_secured_container_when_building_should_map_to_docker_options() {
        let mut p = pod();
        p.spec.as_mut().unwrap().security_context = Some(PodSecurityContext {
            run_as_user: Some(10001),
            run_as_group: Some(10002),
            fs_group: Some(10003),
            run_as_non_root: Some(true),
            ..Default::default()
        });
        let c = Container {
            name: "broker".into(),
            image: Some("duomq/broker:test".into()),
            command: Some(vec!["/bin/b".into()]),
            args: Some(vec![
                "run".into(),
                "--config".into(),
                "/etc/duomq/$(POD_NAME).yaml".into(),
            ]),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: None,
                }),
                ..Default::default()
            }),
            resources: Some(ResourceRequirements {
                limits: Some(BTreeMap::from([
                    ("memory".to_string(), Quantity("512Mi".into())),
                    ("cpu".to_string(), Quantity("500m".into())),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let body = build_container(inputs(&p, &c, "")).unwrap();
        assert_eq!(body.entrypoint, Some(vec!["/bin/b".to_string()]));
        assert_eq!(body.cmd.unwrap()[2], "/etc/duomq/web-0.yaml");
        assert_eq!(body.user.as_deref(), Some("10001:10002"));
        assert!(body
            .env
            .unwrap()
            .contains(&format!("KUBECONFIG={}", names::KUBECONFIG_MOUNT_PATH)));
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("container:sb"));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_string()])
        );
        assert_eq!(host.group_add, Some(vec!["10003".to_string()]));
        assert_eq!(host.memory, Some(536_870_912));
        assert_eq!(host.nano_cpus, Some(500_000_000));
    }

    #[rstest]
    #[case::image_root("", true)]
    #[case::image_root_explicit("0:0", true)]
    #[case::image_non_root("10001:10001", false)]
    fn given_run_as_non_root_when_building_should_check_image_user(
        #[case] image_user: &str,
        #[case] rejected: bool,
    ) {
        let p = pod();
        let c = Container {
            name: "c".into(),
            security_context: Some(SecurityContext {
                run_as_non_root: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            build_container(inputs(&p, &c, image_user)).is_err(),
            rejected
        );
    }
}
