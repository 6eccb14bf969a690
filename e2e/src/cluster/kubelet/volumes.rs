//! Pod volumes on the host: what each volume holds is decided purely (`plan_volume`:
//! configMap, secret, downwardAPI and projected files with items and modes; emptyDir;
//! persistentVolumeClaim; hostPath), then `prepare` writes it under the cluster's state
//! dir, with the ownership the pod's securityContext asks for, and `mounts` turns a
//! container's volumeMounts into Docker bind mounts.
//!
//! Layout: `{state_dir}/pods/{uid}/volumes/{volume}` for per-pod volumes (removed with the
//! pod), `{state_dir}/claims/{namespace}/{claim}` for claims (kept when the pod goes).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bollard::models::{Mount, MountType};
use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Volume};

use super::container::{field_value, ConfigError, ObjectLookup, PodContext};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("configmap \"{name}\" not found")]
    ConfigMapNotFound { name: String },
    #[error("secret \"{name}\" not found")]
    SecretNotFound { name: String },
    #[error("configmap references non-existent config key: {key}")]
    ConfigMapKey { key: String },
    #[error("secret references non-existent secret key: {key}")]
    SecretKey { key: String },
    #[error("persistentvolumeclaim \"{name}\" not found")]
    ClaimNotFound { name: String },
    #[error("failed to resolve downward API field")]
    Field(#[source] ConfigError),
    #[error("failed to write volume {volume} at {path}")]
    Write {
        volume: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container {container} mounts volume {volume}, which the pod does not define")]
    UnknownVolume { container: String, volume: String },
}

/// One file of a configMap, secret, downwardAPI or projected volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFile {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// What a volume is on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumePlan {
    /// A directory of files, mounted read-only.
    Files(Vec<VolumeFile>),
    /// A fresh directory for the pod's lifetime (medium Memory: a tmpfs).
    EmptyDir {
        memory: bool,
    },
    Claim {
        claim: String,
        read_only: bool,
    },
    HostPath(String),
    /// A kind this kubelet does not provide: an empty directory, logged.
    Unsupported(&'static str),
}

const DEFAULT_MODE: u32 = 0o644;

/// Decides what `volume` of the pod holds.
pub fn plan_volume(
    ctx: &PodContext<'_>,
    volume: &Volume,
    lookup: &dyn ObjectLookup,
    claim_exists: &dyn Fn(&str) -> bool,
) -> Result<VolumePlan, VolumeError> {
    let namespace = ctx.pod.metadata.namespace.as_deref().unwrap_or("default");
    if let Some(cm) = &volume.config_map {
        let mode = mode_of(cm.default_mode);
        return match lookup.config_map(namespace, &cm.name) {
            None if cm.optional == Some(true) => Ok(VolumePlan::Files(vec![])),
            None => Err(VolumeError::ConfigMapNotFound {
                name: cm.name.clone(),
            }),
            Some(map) => {
                let data = string_and_binary(map.data, map.binary_data.map(unwrap_bytes));
                select_items(data, cm.items.as_deref(), mode, cm.optional == Some(true))
                    .map(VolumePlan::Files)
                    .map_err(|key| VolumeError::ConfigMapKey { key })
            }
        };
    }
    if let Some(sec) = &volume.secret {
        let mode = mode_of(sec.default_mode);
        let name = sec.secret_name.clone().unwrap_or_default();
        return match lookup.secret(namespace, &name) {
            None if sec.optional == Some(true) => Ok(VolumePlan::Files(vec![])),
            None => Err(VolumeError::SecretNotFound { name }),
            Some(s) => {
                let mut data = unwrap_bytes(s.data.unwrap_or_default());
                for (k, v) in s.string_data.unwrap_or_default() {
                    data.insert(k, v.into_bytes());
                }
                select_items(data, sec.items.as_deref(), mode, sec.optional == Some(true))
                    .map(VolumePlan::Files)
                    .map_err(|key| VolumeError::SecretKey { key })
            }
        };
    }
    if let Some(d) = &volume.downward_api {
        let mode = mode_of(d.default_mode);
        return downward_files(ctx, d.items.as_deref().unwrap_or_default(), mode)
            .map(VolumePlan::Files);
    }
    if let Some(p) = &volume.projected {
        return projected_files(ctx, p, lookup).map(VolumePlan::Files);
    }
    if let Some(e) = &volume.empty_dir {
        return Ok(VolumePlan::EmptyDir {
            memory: e.medium.as_deref() == Some("Memory"),
        });
    }
    if let Some(c) = &volume.persistent_volume_claim {
        if !claim_exists(&c.claim_name) {
            return Err(VolumeError::ClaimNotFound {
                name: c.claim_name.clone(),
            });
        }
        return Ok(VolumePlan::Claim {
            claim: c.claim_name.clone(),
            read_only: c.read_only == Some(true),
        });
    }
    if let Some(h) = &volume.host_path {
        return Ok(VolumePlan::HostPath(h.path.clone()));
    }
    Ok(VolumePlan::Unsupported("volume source"))
}

fn mode_of(mode: Option<i32>) -> u32 {
    mode.map_or(DEFAULT_MODE, |m| (m as u32) & 0o7777)
}

fn unwrap_bytes(map: BTreeMap<String, k8s_openapi::ByteString>) -> BTreeMap<String, Vec<u8>> {
    map.into_iter().map(|(k, v)| (k, v.0)).collect()
}

fn string_and_binary(
    data: Option<BTreeMap<String, String>>,
    binary: Option<BTreeMap<String, Vec<u8>>>,
) -> BTreeMap<String, Vec<u8>> {
    let mut all: BTreeMap<String, Vec<u8>> = data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    all.extend(binary.unwrap_or_default());
    all
}

/// All keys as files, or only `items` (key → path, own mode); a missing item key is an
/// error unless the source is optional. Err carries the missing key.
fn select_items(
    mut data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: u32,
    optional: bool,
) -> Result<Vec<VolumeFile>, String> {
    match items {
        None => Ok(data
            .into_iter()
            .map(|(path, data)| VolumeFile { path, data, mode })
            .collect()),
        Some(items) => {
            let mut files = Vec::new();
            for item in items {
                match data.remove(&item.key) {
                    Some(bytes) => files.push(VolumeFile {
                        path: item.path.clone(),
                        data: bytes,
                        mode: item.mode.map_or(mode, |m| (m as u32) & 0o7777),
                    }),
                    None if optional => {}
                    None => return Err(item.key.clone()),
                }
            }
            Ok(files)
        }
    }
}

fn downward_files(
    ctx: &PodContext<'_>,
    items: &[DownwardAPIVolumeFile],
    mode: u32,
) -> Result<Vec<VolumeFile>, VolumeError> {
    let meta = &ctx.pod.metadata;
    let as_lines = |map: &Option<BTreeMap<String, String>>| {
        map.iter()
            .flatten()
            .map(|(k, v)| format!("{k}=\"{v}\"\n"))
            .collect::<String>()
    };
    items
        .iter()
        .filter_map(|item| {
            let path = item.field_ref.as_ref()?.field_path.clone();
            let value = match path.as_str() {
                "metadata.labels" => Ok(as_lines(&meta.labels)),
                "metadata.annotations" => Ok(as_lines(&meta.annotations)),
                other => field_value(ctx, other).map_err(VolumeError::Field),
            };
            Some(value.map(|v| VolumeFile {
                path: item.path.clone(),
                data: v.into_bytes(),
                mode: item.mode.map_or(mode, |m| (m as u32) & 0o7777),
            }))
        })
        .collect()
}

fn projected_files(
    ctx: &PodContext<'_>,
    projected: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    lookup: &dyn ObjectLookup,
) -> Result<Vec<VolumeFile>, VolumeError> {
    let mode = mode_of(projected.default_mode);
    let namespace = ctx.pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut files = Vec::new();
    for source in projected.sources.iter().flatten() {
        if let Some(cm) = &source.config_map {
            let optional = cm.optional == Some(true);
            match lookup.config_map(namespace, &cm.name) {
                Some(map) => files.extend(
                    select_items(
                        string_and_binary(map.data, map.binary_data.map(unwrap_bytes)),
                        cm.items.as_deref(),
                        mode,
                        optional,
                    )
                    .map_err(|key| VolumeError::ConfigMapKey { key })?,
                ),
                // The cluster CA bundle of the service-account volume: there is no CA here.
                None if optional || cm.name == "kube-root-ca.crt" => {}
                None => {
                    return Err(VolumeError::ConfigMapNotFound {
                        name: cm.name.clone(),
                    })
                }
            }
        }
        if let Some(sec) = &source.secret {
            let optional = sec.optional == Some(true);
            match lookup.secret(namespace, &sec.name) {
                Some(s) => files.extend(
                    select_items(
                        unwrap_bytes(s.data.unwrap_or_default()),
                        sec.items.as_deref(),
                        mode,
                        optional,
                    )
                    .map_err(|key| VolumeError::SecretKey { key })?,
                ),
                None if optional => {}
                None => {
                    return Err(VolumeError::SecretNotFound {
                        name: sec.name.clone(),
                    })
                }
            }
        }
        if let Some(d) = &source.downward_api {
            files.extend(downward_files(
                ctx,
                d.items.as_deref().unwrap_or_default(),
                mode,
            )?);
        }
        if let Some(token) = &source.service_account_token {
            // In-cluster programs here reach the API server through the mounted kubeconfig;
            // the token file only has to exist.
            files.push(VolumeFile {
                path: token.path.clone(),
                data: b"duomq-e2e-no-token".to_vec(),
                mode,
            });
        }
    }
    Ok(files)
}

/// A volume made ready on the host.
#[derive(Debug, Clone)]
pub struct HostVolume {
    pub path: PathBuf,
    pub read_only: bool,
    pub tmpfs: bool,
}

/// Where a pod's own volumes live on the host.
pub fn pod_dir(state_dir: &Path, uid: &str) -> PathBuf {
    state_dir.join("pods").join(uid)
}

/// Where the data of claim `namespace/claim` lives on the host.
pub fn claim_dir(state_dir: &Path, namespace: &str, claim: &str) -> PathBuf {
    state_dir.join("claims").join(namespace).join(claim)
}

/// Writes every volume of the pod under `state_dir` (rewriting changed files, so ConfigMap
/// and Secret updates reach running pods) and returns where each is.
pub fn prepare(
    state_dir: &Path,
    ctx: &PodContext<'_>,
    lookup: &dyn ObjectLookup,
    claim_exists: &dyn Fn(&str) -> bool,
) -> Result<BTreeMap<String, HostVolume>, VolumeError> {
    let pod = ctx.pod;
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let fs_group = sc.fs_group.map(|g| g as u32);
    let mut prepared = BTreeMap::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let own_dir = pod_dir(state_dir, uid).join("volumes").join(&volume.name);
        let err = |path: &Path| {
            let volume = volume.name.clone();
            let path = path.to_path_buf();
            move |source| VolumeError::Write {
                volume,
                path,
                source,
            }
        };
        let host = match plan_volume(ctx, volume, lookup, claim_exists)? {
            VolumePlan::Files(files) => {
                write_files(&own_dir, &files, fs_group).map_err(err(&own_dir))?;
                HostVolume {
                    path: own_dir,
                    read_only: true,
                    tmpfs: false,
                }
            }
            VolumePlan::EmptyDir { memory } => {
                std::fs::create_dir_all(&own_dir).map_err(err(&own_dir))?;
                std::fs::set_permissions(&own_dir, std::fs::Permissions::from_mode(0o777))
                    .map_err(err(&own_dir))?;
                HostVolume {
                    path: own_dir,
                    read_only: false,
                    tmpfs: memory,
                }
            }
            VolumePlan::Claim { claim, read_only } => {
                let dir = claim_dir(state_dir, namespace, &claim);
                prepare_claim_dir(&dir, sc.run_as_user, sc.run_as_group, sc.fs_group)
                    .map_err(err(&dir))?;
                HostVolume {
                    path: dir,
                    read_only,
                    tmpfs: false,
                }
            }
            VolumePlan::HostPath(path) => HostVolume {
                path: PathBuf::from(path),
                read_only: false,
                tmpfs: false,
            },
            VolumePlan::Unsupported(kind) => {
                tracing::warn!(volume = %volume.name, kind, "unsupported volume kind; mounting an empty directory");
                std::fs::create_dir_all(&own_dir).map_err(err(&own_dir))?;
                HostVolume {
                    path: own_dir,
                    read_only: false,
                    tmpfs: false,
                }
            }
        };
        prepared.insert(volume.name.clone(), host);
    }
    Ok(prepared)
}

fn write_files(dir: &Path, files: &[VolumeFile], fs_group: Option<u32>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let keep: Vec<&str> = files
        .iter()
        .filter_map(|f| f.path.split('/').next())
        .collect();
    // Files gone from the source go; directories stay: one may be the mount point of a
    // volume nested in this one, in use by a running container.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir()
            && !keep.contains(&entry.file_name().to_string_lossy().as_ref())
        {
            std::fs::remove_file(entry.path())?;
        }
    }
    for file in files {
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Kubernetes makes these files group-readable by the fsGroup.
        let mode = if fs_group.is_some() {
            file.mode | 0o440
        } else {
            file.mode
        };
        if std::fs::read(&path).ok().as_deref() != Some(&file.data[..]) {
            let tmp = path.with_extension("duomq-e2e-tmp");
            std::fs::write(&tmp, &file.data)?;
            std::fs::rename(&tmp, &path)?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = fs_group {
            std::os::unix::fs::chown(&path, None, Some(gid))?;
        }
    }
    Ok(())
}

/// Creates the claim's directory (kept across pods) and gives it to the pod's user: with
/// an fsGroup, group-owned, group-writable and setgid as Kubernetes does; otherwise owned
/// by runAsUser.
fn prepare_claim_dir(
    dir: &Path,
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
    fs_group: Option<i64>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let uid = run_as_user.map(|u| u as u32);
    match fs_group {
        Some(gid) => {
            std::os::unix::fs::chown(dir, uid, Some(gid as u32))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o2775))?;
        }
        None if uid.is_some() => {
            std::os::unix::fs::chown(dir, uid, run_as_group.map(|g| g as u32))?;
        }
        None => {}
    }
    Ok(())
}

/// The container's volumeMounts as Docker mounts (subPath below the volume, created when
/// missing as Kubernetes does), plus the kubeconfig when there is one.
pub fn mounts(
    container: &Container,
    prepared: &BTreeMap<String, HostVolume>,
    kubeconfig: Option<&Path>,
) -> Result<Vec<Mount>, VolumeError> {
    let mut out = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let host = prepared
            .get(&vm.name)
            .ok_or_else(|| VolumeError::UnknownVolume {
                container: container.name.clone(),
                volume: vm.name.clone(),
            })?;
        let read_only = host.read_only || vm.read_only == Some(true);
        if host.tmpfs && vm.sub_path.as_deref().unwrap_or_default().is_empty() {
            out.push(Mount {
                target: Some(vm.mount_path.clone()),
                typ: Some(MountType::TMPFS),
                read_only: Some(read_only),
                ..Mount::default()
            });
            continue;
        }
        let source = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let path = host.path.join(sub);
                if !path.exists() {
                    std::fs::create_dir_all(&path).map_err(|source| VolumeError::Write {
                        volume: vm.name.clone(),
                        path: path.clone(),
                        source,
                    })?;
                }
                path
            }
            None => host.path.clone(),
        };
        out.push(Mount {
            target: Some(vm.mount_path.clone()),
            source: Some(source.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(read_only),
            ..Mount::default()
        });
    }
    if let Some(path) = kubeconfig {
        out.push(Mount {
            target: Some(crate::cluster::names::KUBECONFIG_MOUNT_PATH.into()),
            source: Some(path.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Mount::default()
        });
    }
    create_nested_mount_points(&out).map_err(|(path, source)| VolumeError::Write {
        volume: container.name.clone(),
        path,
        source,
    })?;
    Ok(out)
}

/// Creates, inside the host dir of each bind mount, the mount points of the mounts nested
/// in it (a Secret at /etc/app/secret inside a ConfigMap at /etc/app), as the kubelet
/// does: the runtime cannot create them once the outer volume is mounted read-only.
fn create_nested_mount_points(mounts: &[Mount]) -> Result<(), (PathBuf, std::io::Error)> {
    for inner in mounts {
        let Some(target) = inner.target.as_deref() else {
            continue;
        };
        let outer = mounts
            .iter()
            .filter(|m| m.typ == Some(MountType::BIND))
            .filter_map(|m| {
                let rest = Path::new(target).strip_prefix(m.target.as_deref()?).ok()?;
                (!rest.as_os_str().is_empty()).then_some((m, rest))
            })
            .min_by_key(|(_, rest)| rest.components().count());
        if let Some((outer, rest)) = outer {
            let Some(source) = outer.source.as_deref() else {
                continue;
            };
            let host = Path::new(source);
            if host.is_dir() {
                let point = host.join(rest);
                let made = if inner.typ == Some(MountType::BIND)
                    && Path::new(inner.source.as_deref().unwrap_or_default()).is_file()
                {
                    point
                        .parent()
                        .map_or(Ok(()), std::fs::create_dir_all)
                        .and_then(|()| {
                            if point.exists() {
                                Ok(())
                            } else {
                                std::fs::write(&point, b"")
                            }
                        })
                } else {
                    std::fs::create_dir_all(&point)
                };
                made.map_err(|e| (point, e))?;
            }
        }
    }
    Ok(())
}

/// Removes the pod's own volumes (claims stay).
pub fn remove_pod_dir(state_dir: &Path, uid: &str) {
    let dir = pod_dir(state_dir, uid);
    if let Err(error) = std::fs::remove_dir_all(&dir) {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %dir.display(), %error, "failed to remove pod volumes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapVolumeSource, DownwardAPIVolumeSource, ObjectFieldSelector,
        PersistentVolumeClaimVolumeSource, SecretVolumeSource,
    };

    use crate::cluster::fixtures::{web_pod, Objects};

    fn plan(volume: Volume) -> Result<VolumePlan, VolumeError> {
        let p = web_pod();
        let ctx = PodContext {
            pod: &p,
            pod_ip: None,
            host_ip: "10.213.0.1",
        };
        plan_volume(&ctx, &volume, &Objects, &|claim| claim == "data-web-0")
    }

    #[test]
    fn given_configmap_volume_when_planning_should_write_every_key_with_default_mode() {
        let v = Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "config".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let VolumePlan::Files(files) = plan(v).unwrap() else {
            panic!("files expected")
        };
        assert_eq!(
            files
                .iter()
                .map(|f| (f.path.as_str(), f.mode))
                .collect::<Vec<_>>(),
            vec![("web-0.yaml", 0o644), ("web-1.yaml", 0o644)]
        );
    }

    #[test]
    fn given_secret_items_when_planning_should_map_key_to_path_with_mode() {
        let v = Volume {
            name: "creds".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("creds".into()),
                default_mode: Some(0o440),
                items: Some(vec![KeyToPath {
                    key: "password".into(),
                    path: "cluster/password".into(),
                    mode: None,
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            plan(v).unwrap(),
            VolumePlan::Files(vec![VolumeFile {
                path: "cluster/password".into(),
                data: b"s3cret".to_vec(),
                mode: 0o440
            }])
        );
    }

    #[test]
    fn given_missing_item_key_when_planning_should_fail() {
        let v = Volume {
            name: "creds".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("creds".into()),
                items: Some(vec![KeyToPath {
                    key: "nope".into(),
                    path: "x".into(),
                    mode: None,
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(plan(v), Err(VolumeError::SecretKey { key }) if key == "nope"));
    }

    #[test]
    fn given_missing_secret_when_planning_should_fail_unless_optional() {
        let mut source = SecretVolumeSource {
            secret_name: Some("other".into()),
            ..Default::default()
        };
        let v = |s: SecretVolumeSource| Volume {
            name: "s".into(),
            secret: Some(s),
            ..Default::default()
        };
        assert!(matches!(
            plan(v(source.clone())),
            Err(VolumeError::SecretNotFound { .. })
        ));
        source.optional = Some(true);
        assert_eq!(plan(v(source)).unwrap(), VolumePlan::Files(vec![]));
    }

    #[test]
    fn given_downward_api_when_planning_should_render_fields() {
        let item = |path: &str, field: &str| DownwardAPIVolumeFile {
            path: path.into(),
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = Volume {
            name: "info".into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![
                    item("name", "metadata.name"),
                    item("labels", "metadata.labels"),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let VolumePlan::Files(files) = plan(v).unwrap() else {
            panic!("files expected")
        };
        assert_eq!(files[0].data, b"web-0");
        assert_eq!(files[1].data, b"app=\"web\"\n");
    }

    #[test]
    fn given_claim_when_planning_should_require_it_to_exist() {
        let v = |claim: &str| Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.into(),
                read_only: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            plan(v("data-web-0")).unwrap(),
            VolumePlan::Claim {
                claim: "data-web-0".into(),
                read_only: false
            }
        );
        assert!(matches!(
            plan(v("data-web-9")),
            Err(VolumeError::ClaimNotFound { .. })
        ));
    }

    #[test]
    fn given_prepared_volumes_when_mounting_should_honour_read_only_and_sub_path() {
        let dir = tempfile::tempdir().unwrap();
        let prepared = BTreeMap::from([
            (
                "data".to_string(),
                HostVolume {
                    path: dir.path().join("data"),
                    read_only: false,
                    tmpfs: false,
                },
            ),
            (
                "config".to_string(),
                HostVolume {
                    path: dir.path().join("config"),
                    read_only: true,
                    tmpfs: false,
                },
            ),
        ]);
        let c = Container {
            name: "c".into(),
            volume_mounts: Some(vec![
                k8s_openapi::api::core::v1::VolumeMount {
                    name: "data".into(),
                    mount_path: "/data".into(),
                    sub_path: Some("journal".into()),
                    ..Default::default()
                },
                k8s_openapi::api::core::v1::VolumeMount {
                    name: "config".into(),
                    mount_path: "/etc/x".into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let m = mounts(&c, &prepared, Some(Path::new("/kubeconfig"))).unwrap();
        assert_eq!(
            m[0].source.as_deref(),
            Some(dir.path().join("data/journal").to_str().unwrap())
        );
        assert!(dir.path().join("data/journal").is_dir());
        assert_eq!(
            (m[0].read_only, m[1].read_only, m[2].read_only),
            (Some(false), Some(true), Some(true))
        );
        assert_eq!(
            m[2].target.as_deref(),
            Some(crate::cluster::names::KUBECONFIG_MOUNT_PATH)
        );
    }

    #[test]
    fn given_volume_nested_in_read_only_volume_when_mounting_should_create_its_mount_point() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let secret = dir.path().join("secret");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::create_dir_all(&secret).unwrap();
        let prepared = BTreeMap::from([
            (
                "config".to_string(),
                HostVolume {
                    path: config.clone(),
                    read_only: true,
                    tmpfs: false,
                },
            ),
            (
                "secret".to_string(),
                HostVolume {
                    path: secret,
                    read_only: true,
                    tmpfs: false,
                },
            ),
        ]);
        let mount = |name: &str, path: &str| k8s_openapi::api::core::v1::VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            ..Default::default()
        };
        let c = Container {
            name: "c".into(),
            volume_mounts: Some(vec![
                mount("config", "/etc/app"),
                mount("secret", "/etc/app/cluster/creds"),
            ]),
            ..Default::default()
        };
        mounts(&c, &prepared, None).unwrap();
        assert!(config.join("cluster/creds").is_dir());
        // Rewriting the outer volume keeps the mount point.
        write_files(
            &config,
            &[VolumeFile {
                path: "a".into(),
                data: b"1".to_vec(),
                mode: 0o644,
            }],
            None,
        )
        .unwrap();
        assert!(config.join("cluster/creds").is_dir());
    }
}
