//! The `log` subresource of pods, as `kubectl logs` uses it: the container's output, read
//! from Docker, as `text/plain`; `container`, `tailLines`, `sinceSeconds`, `timestamps`,
//! `limitBytes` and `follow` (stream until the container stops or the client goes away).
//!
//! Where it differs from Kubernetes: the API server reads the log from Docker itself (the
//! container whose labels name the pod's UID and the container) instead of proxying to a
//! kubelet; `previous=true` answers that there is no previous container, because the local
//! kubelet removes a container before it restarts it, and its log with it.
//!
//! It must not hold API rules: it only reads the pod and the container's log.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bollard::query_parameters::LogsOptions;
use bytes::Bytes;
use futures::{future, StreamExt};
use http::{header, Method, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::store::Store;
use crate::cluster::{docker, names};

/// What `kubectl logs` may ask for, from the query.
#[derive(Debug, Default, PartialEq)]
struct LogQuery {
    container: Option<String>,
    follow: bool,
    previous: bool,
    timestamps: bool,
    tail_lines: Option<u64>,
    since_seconds: Option<u64>,
    limit_bytes: Option<u64>,
}

impl LogQuery {
    fn parse(query: Option<&str>) -> Result<LogQuery, ApiError> {
        let mut q = LogQuery::default();
        let number = |key: &str, value: &str| {
            value
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("{key}: invalid value {value:?}: must be a non-negative integer")))
        };
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let flag = matches!(value.as_ref(), "true" | "1");
            match key.as_ref() {
                "container" => q.container = Some(value.into_owned()).filter(|c| !c.is_empty()),
                "follow" => q.follow = flag,
                "previous" => q.previous = flag,
                "timestamps" => q.timestamps = flag,
                "tailLines" => q.tail_lines = Some(number("tailLines", &value)?),
                "sinceSeconds" => q.since_seconds = Some(number("sinceSeconds", &value)?).filter(|s| *s > 0),
                "limitBytes" => q.limit_bytes = Some(number("limitBytes", &value)?).filter(|l| *l > 0),
                _ => {}
            }
        }
        Ok(q)
    }
}

/// The container a request names (or the pod's only one), checked against the pod's spec.
fn pick_container(pod: &Value, name: &str, asked: Option<&str>) -> Result<String, ApiError> {
    let names_in = |field: &str| -> Vec<String> {
        pod.pointer(field)
            .and_then(Value::as_array)
            .map(|cs| cs.iter().filter_map(|c| c["name"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let containers = names_in("/spec/containers");
    let init = names_in("/spec/initContainers");
    match asked {
        Some(c) if containers.iter().chain(&init).any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

/// Answers `pods/{name}/log` of `namespace`.
pub(crate) async fn serve(store: Arc<Store>, cancel: CancellationToken, method: &Method, query: Option<&str>, namespace: &str, name: &str) -> Response {
    match log_response(store, cancel, method, query, namespace, name).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn log_response(store: Arc<Store>, cancel: CancellationToken, method: &Method, query: Option<&str>, namespace: &str, name: &str) -> Result<Response, ApiError> {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed(method));
    }
    let q = LogQuery::parse(query)?;
    let pod = store
        .read(|s| {
            let pods = s.registry.lookup("", "v1", "pods")?;
            s.get(&pods.storage, namespace, name)
        })
        .ok_or_else(|| ApiError::not_found_in("", "pods", name))?;
    let container = pick_container(&pod, name, q.container.as_deref())?;
    if q.previous {
        return Err(ApiError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{name}\" not found (the local control plane keeps no log of a restarted container)"
        )));
    }
    let uid = pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
    let docker = docker::connect()
        .await
        .map_err(|e| ApiError::internal(format!("failed to read the log of pod {name}: {e}")))?;
    let found = docker::list_labelled(&docker, &[(names::DOCKER_LABEL_POD_UID, uid), (names::DOCKER_LABEL_CONTAINER, &container)])
        .await
        .map_err(|e| ApiError::internal(format!("failed to find the container {container} of pod {name}: {e}")))?;
    let Some(docker_name) = found.into_iter().next() else {
        return Err(ApiError::bad_request(format!("container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating")));
    };
    let since = q.since_seconds.map(|s| jiff::Timestamp::now().as_second().saturating_sub(s as i64)).unwrap_or(0);
    let options = LogsOptions {
        follow: q.follow,
        stdout: true,
        stderr: true,
        since: i32::try_from(since).unwrap_or(0),
        until: 0,
        timestamps: q.timestamps,
        tail: q.tail_lines.map_or_else(|| "all".to_string(), |n| n.to_string()),
    };
    tracing::debug!(%namespace, pod = %name, %container, docker = %docker_name, follow = q.follow, "serving pod log");
    let stream = docker
        .logs(&docker_name, Some(options))
        .take_until(cancel.cancelled_owned())
        .take_while(|chunk| future::ready(chunk.is_ok()))
        .filter_map(|chunk| future::ready(chunk.ok().map(|output| output.into_bytes())))
        .scan(q.limit_bytes, |left, bytes: Bytes| {
            future::ready(match left.as_mut() {
                None => Some(bytes),
                Some(0) => None,
                Some(n) => {
                    let keep = bytes.len().min(usize::try_from(*n).unwrap_or(usize::MAX));
                    *n -= keep as u64;
                    Some(bytes.slice(..keep))
                }
            })
        })
        .map(Ok::<Bytes, std::io::Error>);
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], Body::from_stream(stream)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn given_kubectl_logs_query_when_parsed_should_read_every_option() {
        let q = LogQuery::parse(Some("container=broker&follow=true&tailLines=5&timestamps=true&sinceSeconds=60&limitBytes=10&previous=false")).unwrap();
        assert_eq!(
            q,
            LogQuery {
                container: Some("broker".into()),
                follow: true,
                previous: false,
                timestamps: true,
                tail_lines: Some(5),
                since_seconds: Some(60),
                limit_bytes: Some(10),
            }
        );
        assert!(LogQuery::parse(Some("tailLines=-1")).is_err());
    }

    #[test]
    fn given_pod_when_picking_container_should_default_to_the_only_one_and_refuse_unknown() {
        let one = json!({"spec": {"containers": [{"name": "broker"}], "initContainers": [{"name": "init"}]}});
        assert_eq!(pick_container(&one, "p", None).unwrap(), "broker");
        assert_eq!(pick_container(&one, "p", Some("init")).unwrap(), "init");
        let refused = pick_container(&one, "p", Some("nope")).unwrap_err();
        assert_eq!(refused.code, StatusCode::BAD_REQUEST);
        assert_eq!(refused.message, "container nope is not valid for pod p");
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(pick_container(&two, "p", None).unwrap_err().message, "a container name must be specified for pod p, choose one of: [a b]");
    }
}
