//! The pod status the kubelet reports, computed from what it observed: phase, IPs,
//! conditions (keeping their transition times while unchanged) and container statuses.
//! Pure; the worker gathers the observations and writes the result.

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// One container as the kubelet saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: String,
    /// `docker://{id}` of the current container, if one exists.
    pub container_id: Option<String>,
    pub state: ContainerState,
    pub last_state: Option<ContainerStateTerminated>,
    pub ready: bool,
    pub started: bool,
    pub restart_count: i32,
}

/// The pod as the kubelet saw it.
#[derive(Debug, Clone)]
pub struct PodView<'a> {
    pub pod: &'a Pod,
    pub host_ip: String,
    pub pod_ip: Option<String>,
    pub start_time: Option<Time>,
    pub sandbox_ready: bool,
    pub init_done: bool,
    pub init: Vec<ContainerView>,
    pub app: Vec<ContainerView>,
    pub now: Time,
}

/// A waiting state with reason and message.
pub fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..ContainerState::default()
    }
}

fn parse_time(s: Option<&str>) -> Option<Time> {
    let s = s?;
    if s.starts_with("0001-") {
        return None;
    }
    s.parse().ok().map(Time)
}

/// The Kubernetes state of a Docker container: running, or terminated with its exit code
/// (reason OOMKilled, Completed or Error), or waiting when it never started.
pub fn state_from_inspect(inspect: &ContainerInspectResponse) -> ContainerState {
    let state = inspect.state.clone().unwrap_or_default();
    let container_id = inspect.id.as_ref().map(|id| format!("docker://{id}"));
    match state.status {
        Some(ContainerStateStatusEnum::RUNNING) | Some(ContainerStateStatusEnum::PAUSED) => {
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: parse_time(state.started_at.as_deref()),
                }),
                ..ContainerState::default()
            }
        }
        Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
            let exit_code = state.exit_code.unwrap_or(-1) as i32;
            let reason = if state.oom_killed == Some(true) {
                "OOMKilled"
            } else if exit_code == 0 {
                "Completed"
            } else {
                "Error"
            };
            ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code,
                    reason: Some(reason.into()),
                    started_at: parse_time(state.started_at.as_deref()),
                    finished_at: parse_time(state.finished_at.as_deref()),
                    container_id,
                    message: state.error.filter(|e| !e.is_empty()),
                    signal: None,
                }),
                ..ContainerState::default()
            }
        }
        _ => waiting("ContainerCreating", None),
    }
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// Whether a container that exited with `exit_code` is started again under the pod's
/// restart policy.
pub fn restarts(pod: &Pod, exit_code: i32) -> bool {
    match restart_policy(pod) {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

fn phase(view: &PodView<'_>) -> &'static str {
    let terminated: Vec<i32> = view
        .app
        .iter()
        .filter_map(|c| c.state.terminated.as_ref().map(|t| t.exit_code))
        .collect();
    let all_done = !view.app.is_empty()
        && terminated.len() == view.app.len()
        && terminated.iter().all(|code| !restarts(view.pod, *code));
    if all_done {
        return if terminated.iter().all(|c| *c == 0) {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    let init_failed = view.init.iter().any(|c| {
        c.state
            .terminated
            .as_ref()
            .is_some_and(|t| t.exit_code != 0 && !restarts(view.pod, t.exit_code))
    });
    if init_failed {
        return "Failed";
    }
    if !view.init_done {
        return "Pending";
    }
    let ever_ran = view.app.iter().any(|c| {
        c.state.running.is_some()
            || c.state.terminated.is_some()
            || c.last_state.is_some()
            || c.restart_count > 0
    });
    if ever_ran {
        "Running"
    } else {
        "Pending"
    }
}

fn condition(
    previous: &[PodCondition],
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: &Time,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let transition = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: if ok { None } else { reason.map(Into::into) },
        message: if ok { None } else { message },
        last_transition_time: Some(transition),
        ..PodCondition::default()
    }
}

fn container_status(c: &ContainerView) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        container_id: c.container_id.clone(),
        ready: c.ready,
        started: Some(c.started),
        restart_count: c.restart_count,
        state: Some(c.state.clone()),
        last_state: Some(ContainerState {
            terminated: c.last_state.clone(),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    }
}

/// The status to report for the pod.
pub fn pod_status(view: &PodView<'_>) -> PodStatus {
    let previous = view
        .pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = &view.now;
    let unready: Vec<&str> = view
        .app
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let unready_message = format!("containers with unready status: [{}]", unready.join(" "));
    let all_ready = unready.is_empty() && !view.app.is_empty();
    let uninitialized: Vec<&str> = view
        .init
        .iter()
        .filter(|c| c.state.terminated.as_ref().is_none_or(|t| t.exit_code != 0))
        .map(|c| c.name.as_str())
        .collect();
    let conditions = vec![
        condition(
            &previous,
            "PodReadyToStartContainers",
            view.sandbox_ready,
            None,
            None,
            now,
        ),
        condition(
            &previous,
            "Initialized",
            view.init_done,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                uninitialized.join(" ")
            )),
            now,
        ),
        condition(
            &previous,
            "Ready",
            all_ready,
            Some("ContainersNotReady"),
            Some(unready_message.clone()),
            now,
        ),
        condition(
            &previous,
            "ContainersReady",
            all_ready,
            Some("ContainersNotReady"),
            Some(unready_message),
            now,
        ),
        condition(&previous, "PodScheduled", true, None, None, now),
    ];
    PodStatus {
        phase: Some(phase(view).into()),
        host_ip: Some(view.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: view.host_ip.clone(),
        }]),
        pod_ip: view.pod_ip.clone(),
        pod_ips: view.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: view.start_time.clone(),
        conditions: Some(conditions),
        container_statuses: Some(view.app.iter().map(container_status).collect()),
        init_container_statuses: (!view.init.is_empty())
            .then(|| view.init.iter().map(container_status).collect()),
        qos_class: Some(qos_class(view.pod).into()),
        ..PodStatus::default()
    }
}

fn qos_class(pod: &Pod) -> &'static str {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let resources: Vec<_> = containers
        .iter()
        .map(|c| c.resources.clone().unwrap_or_default())
        .collect();
    let none = resources.iter().all(|r| {
        r.limits.as_ref().is_none_or(|l| l.is_empty())
            && r.requests.as_ref().is_none_or(|q| q.is_empty())
    });
    if none {
        return "BestEffort";
    }
    let guaranteed = resources.iter().all(|r| {
        let limits = r.limits.clone().unwrap_or_default();
        let requests = r.requests.clone().unwrap_or_default();
        ["cpu", "memory"].iter().all(|k| {
            limits.contains_key(*k) && requests.get(*k).is_none_or(|q| Some(q) == limits.get(*k))
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::jiff::Timestamp;
    use rstest::rstest;

    fn pod(policy: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning { started_at: None }),
            ..Default::default()
        }
    }

    fn exited(code: i32) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn view_of(state: ContainerState, ready: bool) -> ContainerView {
        ContainerView {
            name: "c".into(),
            image: "img".into(),
            image_id: "docker://sha256:1".into(),
            container_id: Some("docker://1".into()),
            state,
            last_state: None,
            ready,
            started: ready,
            restart_count: 0,
        }
    }

    fn view<'a>(p: &'a Pod, containers: Vec<ContainerView>) -> PodView<'a> {
        PodView {
            pod: p,
            host_ip: "10.213.0.1".into(),
            pod_ip: Some("10.213.0.10".into()),
            start_time: None,
            sandbox_ready: true,
            init_done: true,
            init: vec![],
            app: containers,
            now: Time(Timestamp::from_second(1000).unwrap()),
        }
    }

    #[rstest]
    #[case::creating("Always", waiting("ContainerCreating", None), "Pending")]
    #[case::running("Always", running(), "Running")]
    #[case::restarting("Always", exited(1), "Running")]
    #[case::never_failed("Never", exited(1), "Failed")]
    #[case::never_succeeded("Never", exited(0), "Succeeded")]
    #[case::on_failure_restarts("OnFailure", exited(2), "Running")]
    #[case::on_failure_done("OnFailure", exited(0), "Succeeded")]
    fn given_container_state_when_computing_phase_should_follow_restart_policy(
        #[case] policy: &str,
        #[case] state: ContainerState,
        #[case] expected: &str,
    ) {
        let p = pod(policy);
        assert_eq!(
            pod_status(&view(&p, vec![view_of(state, false)]))
                .phase
                .as_deref(),
            Some(expected)
        );
    }

    #[test]
    fn given_unready_container_when_computing_should_report_conditions_like_kubelet() {
        let p = pod("Always");
        let status = pod_status(&view(&p, vec![view_of(running(), false)]));
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [c]")
        );
        assert_eq!(status.pod_ips.unwrap()[0].ip, "10.213.0.10");
    }

    #[test]
    fn given_unchanged_condition_when_recomputing_should_keep_transition_time() {
        let mut p = pod("Always");
        let first = pod_status(&view(&p, vec![view_of(running(), true)]));
        p.status = Some(first.clone());
        let mut later = view(&p, vec![view_of(running(), true)]);
        later.now = Time(Timestamp::from_second(2000).unwrap());
        let second = pod_status(&later);
        assert_eq!(first.conditions, second.conditions);
        let mut unready = view(&p, vec![view_of(running(), false)]);
        unready.now = Time(Timestamp::from_second(3000).unwrap());
        let third = pod_status(&unready);
        let ready = third
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            ready.last_transition_time,
            Some(Time(Timestamp::from_second(3000).unwrap()))
        );
    }
}
