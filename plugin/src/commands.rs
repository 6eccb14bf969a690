//! The plugin's commands against the Kubernetes API: read a BrokerGroup and its pods, set
//! the annotations the operator acts on, wait for the status to show the result, stream a
//! pod's log. Everything decided without a client lives in `view` and `fenced`.

use std::time::Duration;

use anyhow::{bail, Context as _};
use futures::{AsyncBufReadExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use kube::ResourceExt;
use serde_json::json;

use duomq_operator::api::{condition, BrokerGroup, BrokerGroupStatus};
use duomq_operator::names::{
    self, FENCED_MEMBERS_ANNOTATION, HIBERNATION_ANNOTATION, HIBERNATION_OFF, HIBERNATION_ON,
    LABEL_COMPONENT, LABEL_GROUP, LABEL_INSTANCE, LABEL_ROLE, SWITCHOVER_ANNOTATION,
};

use crate::{fenced, view};

/// The broker's container in every member pod (as the operator renders it).
/// Tries of a fence edit that lost a race with another writer of the BrokerGroup.
const FENCE_TRIES: usize = 5;

/// The cluster and namespace the commands work in.
pub struct Target {
    pub client: kube::Client,
    pub namespace: String,
}

impl Target {
    fn brokergroups(&self) -> Api<BrokerGroup> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The BrokerGroup, or one line saying it is not there and how to list them.
    async fn brokergroup(&self, name: &str) -> anyhow::Result<BrokerGroup> {
        match self.brokergroups().get(name).await {
            Ok(bg) => Ok(bg),
            Err(kube::Error::Api(e)) if e.code == 404 => bail!(
                "BrokerGroup {ns}/{name} not found (`kubectl get brokergroups -n {ns}` lists them)",
                ns = self.namespace
            ),
            Err(e) => Err(e)
                .with_context(|| format!("failed to read BrokerGroup {}/{name}", self.namespace)),
        }
    }

    /// Sets annotations of the BrokerGroup with a merge patch (others are kept).
    async fn annotate(&self, name: &str, patch: serde_json::Value) -> Result<(), kube::Error> {
        self.brokergroups()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
    }

    /// Waits until `done` accepts the BrokerGroup, watching it; after `limit` fails with
    /// `why_not` of the last state read.
    async fn wait_for(
        &self,
        name: &str,
        limit: Duration,
        what: &str,
        done: impl Fn(&BrokerGroup) -> bool,
        why_not: impl Fn(&BrokerGroup) -> String,
    ) -> anyhow::Result<BrokerGroup> {
        let watched = await_condition(self.brokergroups(), name, |bg: Option<&BrokerGroup>| {
            bg.is_some_and(&done)
        });
        match tokio::time::timeout(limit, watched).await {
            Ok(Ok(Some(bg))) => Ok(bg),
            Ok(Ok(None)) => bail!("BrokerGroup {}/{name} was deleted", self.namespace),
            Ok(Err(e)) => Err(e)
                .with_context(|| format!("failed to watch BrokerGroup {}/{name}", self.namespace)),
            Err(_) => {
                let bg = self.brokergroup(name).await?;
                bail!(
                    "{what} not seen after {} ({})",
                    humantime::format_duration(limit),
                    why_not(&bg)
                )
            }
        }
    }
}

/// The `--wait` limit; without one, tells where to see the operator's progress.
fn wait_or_say_how_to_follow(wait: Option<Duration>, name: &str) -> Option<Duration> {
    if wait.is_none() {
        println!("the operator carries it out; `kubectl duomq status {name}` shows it");
    }
    wait
}

fn status_of(bg: &BrokerGroup) -> BrokerGroupStatus {
    bg.status.clone().unwrap_or_default()
}

/// The BrokerGroup and its broker pods, as one view.
pub async fn status(target: &Target, name: &str) -> anyhow::Result<view::StatusView> {
    let bg = target.brokergroup(name).await?;
    let selector = format!(
        "{LABEL_INSTANCE}={name},{LABEL_COMPONENT}={}",
        names::COMPONENT_BROKER
    );
    let pods = target
        .pods()
        .list(&ListParams::default().labels(&selector))
        .await
        .with_context(|| {
            format!(
                "failed to list the pods of BrokerGroup {}/{name}",
                target.namespace
            )
        })?;
    Ok(view::build(&bg, &pods.items))
}

pub async fn switchover(
    target: &Target,
    name: &str,
    group: &str,
    to: &str,
    wait: Option<Duration>,
) -> anyhow::Result<()> {
    let bg = target.brokergroup(name).await?;
    let text =
        duomq_operator::controller::request_switchover(&target.brokergroups(), &bg, group, to)
            .await?;
    println!("asked for a switchover of {group} to {to} ({SWITCHOVER_ANNOTATION}={text})");
    let Some(limit) = wait_or_say_how_to_follow(wait, name) else {
        return Ok(());
    };
    let live_of = |bg: &BrokerGroup| {
        status_of(bg)
            .groups
            .into_iter()
            .find(|g| g.name == group)
            .and_then(|g| g.live)
    };
    let why_not = |bg: &BrokerGroup| {
        let status = status_of(bg);
        let refused = status
            .conditions
            .iter()
            .find(|c| c.reason == "SwitchoverFailed" && c.status == "True")
            .map(|c| format!("; {}", c.message))
            .unwrap_or_default();
        format!(
            "live: {}{refused}",
            live_of(bg).as_deref().unwrap_or("none")
        )
    };
    target
        .wait_for(
            name,
            limit,
            &format!("{to} live"),
            |bg| live_of(bg).as_deref() == Some(to),
            why_not,
        )
        .await?;
    println!("{to} is live");
    Ok(())
}

/// Adds `pod` to (or removes it from) the fenced-members annotation, keeping the other
/// entries: the edit carries the resourceVersion it was made from, and is made again from a
/// fresh read when another writer got there first.
pub async fn fence(
    target: &Target,
    name: &str,
    pod: &str,
    on: bool,
    wait: Option<Duration>,
) -> anyhow::Result<()> {
    let ns = &target.namespace;
    let mut tries = 0;
    let edited = loop {
        tries += 1;
        let bg = target.brokergroup(name).await?;
        let member = member_group(&bg, pod);
        if member.is_none() && on {
            let members: Vec<String> = all_members(&bg).into_iter().map(|(_, p)| p).collect();
            bail!(
                "{pod} is not a member of BrokerGroup {ns}/{name} (members: {})",
                members.join(", ")
            );
        }
        let current = bg
            .annotations()
            .get(FENCED_MEMBERS_ANNOTATION)
            .map(String::as_str);
        let edited = fenced::edit(current, pod, on)
            .with_context(|| format!("cannot edit BrokerGroup {ns}/{name}"))?;
        if edited.unchanged {
            break edited;
        }
        let patch = json!({"metadata": {
            "resourceVersion": bg.resource_version(),
            "annotations": {FENCED_MEMBERS_ANNOTATION: edited.value},
        }});
        match target.annotate(name, patch).await {
            Ok(()) => break edited,
            Err(kube::Error::Api(e)) if e.code == 409 && tries < FENCE_TRIES => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("failed to annotate BrokerGroup {ns}/{name}"))
            }
        }
    };
    let (verb, done) = if on {
        ("fence", "fenced")
    } else {
        ("unfence", "unfenced")
    };
    let list = edited.value.as_deref().unwrap_or("(none)");
    if edited.unchanged {
        println!(
            "{pod} was already {} ({FENCED_MEMBERS_ANNOTATION}: {list})",
            if on { "listed" } else { "not listed" }
        );
    } else {
        println!("asked to {verb} {pod} ({FENCED_MEMBERS_ANNOTATION}: {list})");
    }
    let Some(limit) = wait_or_say_how_to_follow(wait, name) else {
        return Ok(());
    };
    let shown = |bg: &BrokerGroup| {
        status_of(bg)
            .groups
            .iter()
            .any(|g| g.fenced.iter().any(|f| f == pod))
    };
    let what = format!("{pod} {done} in the status");
    let why_not = |bg: &BrokerGroup| {
        let fenced: Vec<String> = status_of(bg)
            .groups
            .into_iter()
            .flat_map(|g| g.fenced)
            .collect();
        format!(
            "fenced: {}",
            if fenced.is_empty() {
                "none".to_string()
            } else {
                fenced.join(", ")
            }
        )
    };
    target
        .wait_for(name, limit, &what, |bg| shown(bg) == on, why_not)
        .await?;
    println!("{pod} is {done}");
    Ok(())
}

/// Every member of the BrokerGroup as `(group, pod)`: the spec's, and those of groups the
/// status still shows (a group being drained after `spec.groups` was lowered).
fn all_members(bg: &BrokerGroup) -> Vec<(String, String)> {
    let name = bg.name_any();
    let namespace = bg.namespace().unwrap_or_default();
    let mut members: Vec<(String, String)> =
        duomq_operator::validate::group_models(&name, &namespace, &bg.spec)
            .into_iter()
            .flat_map(|g| g.members.into_iter().map(move |m| (g.name.clone(), m.pod)))
            .collect();
    for g in status_of(bg).groups {
        let pods = g
            .live
            .into_iter()
            .chain(g.backups.into_iter().map(|b| b.pod));
        for pod in pods {
            if !members.iter().any(|(_, p)| *p == pod) {
                members.push((g.name.clone(), pod));
            }
        }
    }
    members
}

/// The group `pod` is a member of.
fn member_group(bg: &BrokerGroup, pod: &str) -> Option<String> {
    all_members(bg)
        .into_iter()
        .find(|(_, p)| p == pod)
        .map(|(g, _)| g)
}

pub async fn hibernate(
    target: &Target,
    name: &str,
    on: bool,
    wait: Option<Duration>,
) -> anyhow::Result<()> {
    let ns = &target.namespace;
    target.brokergroup(name).await?;
    let value = if on { HIBERNATION_ON } else { HIBERNATION_OFF };
    target
        .annotate(
            name,
            json!({"metadata": {"annotations": {HIBERNATION_ANNOTATION: value}}}),
        )
        .await
        .with_context(|| format!("failed to annotate BrokerGroup {ns}/{name}"))?;
    if on {
        println!("asked to hibernate BrokerGroup {ns}/{name} ({HIBERNATION_ANNOTATION}={value}): its pods stop, lives last; volumes and Secrets stay");
    } else {
        println!("asked to resume BrokerGroup {ns}/{name} ({HIBERNATION_ANNOTATION}={value})");
    }
    let Some(limit) = wait_or_say_how_to_follow(wait, name) else {
        return Ok(());
    };
    let hibernated = |bg: &BrokerGroup| {
        status_of(bg)
            .conditions
            .into_iter()
            .find(|c| c.type_ == condition::HIBERNATED)
    };
    let done = |bg: &BrokerGroup| match hibernated(bg) {
        Some(c) if on => c.status == "True" && c.reason != "Resuming",
        Some(c) => c.status != "True",
        None => !on,
    };
    let why_not = |bg: &BrokerGroup| match hibernated(bg) {
        Some(c) => format!(
            "condition Hibernated is {} ({}: {})",
            c.status, c.reason, c.message
        ),
        None => "no Hibernated condition".to_string(),
    };
    let what = if on {
        "condition Hibernated True"
    } else {
        "condition Hibernated False"
    };
    target.wait_for(name, limit, what, done, why_not).await?;
    println!(
        "BrokerGroup {ns}/{name} is {}",
        if on { "hibernated" } else { "resumed" }
    );
    Ok(())
}

/// What `logs` prints.
pub struct LogRequest {
    pub follow: bool,
    pub tail: Option<i64>,
    /// A member instead of the live.
    pub member: Option<String>,
}

pub async fn logs(
    target: &Target,
    name: &str,
    group: &str,
    request: &LogRequest,
) -> anyhow::Result<()> {
    let ns = &target.namespace;
    let bg = target.brokergroup(name).await?;
    let members = all_members(&bg);
    if !members.iter().any(|(g, _)| g == group) {
        let mut groups: Vec<&str> = members.iter().map(|(g, _)| g.as_str()).collect();
        groups.dedup();
        bail!(
            "{group} is not a group of BrokerGroup {ns}/{name} (groups: {})",
            groups.join(", ")
        );
    }
    let pod = match &request.member {
        Some(member) => {
            if !members.iter().any(|(g, p)| g == group && p == member) {
                let of_group: Vec<&str> = members
                    .iter()
                    .filter(|(g, _)| g == group)
                    .map(|(_, p)| p.as_str())
                    .collect();
                bail!(
                    "{member} is not a member of {group} (members: {})",
                    of_group.join(", ")
                );
            }
            member.clone()
        }
        None => live_pod(target, &bg, group).await?,
    };
    eprintln!(
        "logs of {pod} ({})",
        if request.member.is_some() {
            "member"
        } else {
            "live"
        }
    );
    let params = LogParams {
        container: Some(duomq_operator::names::BROKER_CONTAINER.to_string()),
        follow: request.follow,
        tail_lines: request.tail,
        ..LogParams::default()
    };
    let stream = target
        .pods()
        .log_stream(&pod, &params)
        .await
        .with_context(|| format!("failed to read the log of pod {ns}/{pod}"))?;
    let mut lines = stream.lines();
    let mut out = std::io::stdout().lock();
    while let Some(line) = lines
        .try_next()
        .await
        .with_context(|| format!("failed to read the log of pod {ns}/{pod}"))?
    {
        use std::io::Write as _;
        // A closed pipe (`| head`) ends the command quietly.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    Ok(())
}

/// The group's live: from the status, else the pod the operator labelled live.
async fn live_pod(target: &Target, bg: &BrokerGroup, group: &str) -> anyhow::Result<String> {
    if let Some(live) = status_of(bg)
        .groups
        .into_iter()
        .find(|g| g.name == group)
        .and_then(|g| g.live)
    {
        return Ok(live);
    }
    let selector = format!(
        "{LABEL_INSTANCE}={},{LABEL_GROUP}={group},{LABEL_ROLE}={}",
        bg.name_any(),
        names::ROLE_LIVE
    );
    let pods = target
        .pods()
        .list(&ListParams::default().labels(&selector))
        .await
        .with_context(|| format!("failed to list the pods of {group}"))?;
    match pods.items.first() {
        Some(p) => Ok(p.name_any()),
        None => bail!("{group} has no live now (`kubectl duomq status {}` shows its members; --member POD reads one of them)", bg.name_any()),
    }
}
