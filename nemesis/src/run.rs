//! `duomq-nemesis run`, top to bottom: lay out and start the cluster, wait until every group
//! has a synced backup and every bridge is linked, start the clients, apply faults for
//! the run's duration, heal, stop the producers, drain the consumers, stop the members,
//! then check the history and write the summary and the plot. Every wait polls with a
//! named timeout.

use crate::checker::{self, Report};
use crate::cli::RunArgs;
use crate::cluster::config::Layout;
use crate::cluster::status::{self, View};
use crate::cluster::{Cluster, Member};
use crate::cluster::config::Arbiter;
use crate::faults::plan::{FaultKind, Planner};
use crate::faults::Nemesis;
use crate::history::{Clock, Event, History, MemberInfo, PhaseRecord, Recorder, RunInfo};
use crate::workload::{self, Tracker, QUEUE_PREFIX};
use crate::{plot, report};
use anyhow::{bail, Context};
use duomq_broker::admin::api::{LinkState, Role};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a member may take to start, recover and reach its role.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long bridges and grouping links may take to come up at the start.
const LINK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the cluster may take to be whole again once every fault is healed.
const HEAL_TIMEOUT: Duration = Duration::from_secs(120);
/// The drain gives up when nothing moved for this long.
const DRAIN_STALL: Duration = Duration::from_secs(60);
/// After the drain: a last look for late duplicates before the consumers stop.
const DRAIN_SETTLE: Duration = Duration::from_secs(3);
/// Between progress lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Between checks of a condition being waited for.
const WAIT_STEP: Duration = Duration::from_millis(100);

/// What a run produced.
pub struct Outcome {
    pub report: Report,
    pub summary: String,
}

/// Runs the cluster under faults and checks it.
pub async fn run(args: &RunArgs) -> anyhow::Result<Outcome> {
    if args.min_gap > args.max_gap {
        bail!("--min-gap ({:?}) is longer than --max-gap ({:?})", args.min_gap, args.max_gap);
    }
    let history_path = args.out.join("history.jsonl");
    if history_path.exists() {
        bail!("{} already holds a run's history: give another --out", args.out.display());
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("failed to create {}", args.out.display()))?;
    let binary = broker_binary(args.broker.as_deref())?;
    let faults = fault_kinds(args)?;
    let seed = args.seed.unwrap_or_else(rand::random);
    tracing::info!(seed, out = %args.out.display(), groups = args.groups, duration = ?args.duration, "starting a nemesis run");

    // Reserved for the whole run (a lock file each, as every duomq test takes its ports),
    // so nothing takes a killed member's ports before it comes back.
    let mut layout = Layout::new(&args.out.join("cluster"), usize::from(args.groups), args.arbiter, duomq_testkit::reserve_port);
    layout.fault_injection = faults.iter().any(|f| f.needs_injection());
    let cluster = Arc::new(Cluster::prepare(layout, &binary, &args.out.join("logs"))?);
    let (recorder, writer) = Recorder::create(&history_path, Clock::start())?;
    let interrupted = CancellationToken::new();
    let aborted = CancellationToken::new();
    tokio::spawn(watch_ctrl_c(interrupted.clone(), aborted.clone()));

    let mut status_task = None;
    let result = tokio::select! {
        r = drive(args, &faults, seed, &cluster, &recorder, &interrupted, &mut status_task) => r,
        _ = aborted.cancelled() => Err(anyhow::anyhow!("interrupted twice: stopped without healing, draining or checking")),
    };
    if let Some((stop, task)) = status_task {
        stop.cancel();
        let _ = task.await;
    }
    cluster.shut_down(&recorder).await;
    recorder.record(phase(&recorder, "end", ""));
    writer.finish().await?;
    result?;

    let history = History::read(&history_path)?;
    let report = checker::check(&history);
    let summary = report::markdown(history.run.as_ref(), &report);
    write(&args.out.join("summary.md"), &summary)?;
    write(&args.out.join("summary.json"), &report::json(history.run.as_ref(), &report)?)?;
    let title = format!("duomq-nemesis: {} groups, seed {seed}, {} faults, {} violations", args.groups, report.faults_applied(), report.violations());
    plot::draw(&plot::Timeline::of(&history), &title, &args.out.join("timeline.png"))?;
    Ok(Outcome { report, summary })
}

/// Everything between the members' start and their stop.
async fn drive(
    args: &RunArgs,
    faults: &[FaultKind],
    seed: u64,
    cluster: &Arc<Cluster>,
    recorder: &Recorder,
    interrupted: &CancellationToken,
    status_task: &mut Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
) -> anyhow::Result<()> {
    let version = start_cluster(cluster, recorder).await?;
    recorder.record(Event::Run(RunInfo {
        t: recorder.now(),
        seed,
        groups: cluster.layout.groups.len(),
        duration_seconds: args.duration.as_secs_f64(),
        faults: faults.iter().map(|f| f.name().to_string()).collect(),
        arbiter: cluster.layout.arbiter.name().to_string(),
        members: cluster
            .members
            .iter()
            .map(|m| MemberInfo { name: m.layout.name.clone(), group: m.layout.group.clone(), stomp: m.layout.stomp_addr(), primary: m.layout.primary })
            .collect(),
        broker_version: version,
    }));
    let view = View::default();
    let stop_status = CancellationToken::new();
    *status_task = Some((
        stop_status.clone(),
        tokio::spawn(status::poll(Arc::clone(cluster), view.clone(), recorder.clone(), QUEUE_PREFIX.to_string(), stop_status)),
    ));

    let (producers, consumers) = workload::plan(&cluster.layout, args.rate, usize::from(args.window));
    let tracker = Arc::new(Tracker::new(&producers));
    let (stop_producers, stop_consumers) = (CancellationToken::new(), CancellationToken::new());
    let mut consumer_tasks = JoinSet::new();
    for spec in consumers {
        consumer_tasks.spawn(workload::consumer::run(spec, cluster.layout.clone(), recorder.clone(), Arc::clone(&tracker), stop_consumers.clone()));
    }
    let mut producer_tasks = JoinSet::new();
    for spec in producers {
        producer_tasks.spawn(workload::producer::run(spec, cluster.layout.clone(), recorder.clone(), Arc::clone(&tracker), stop_producers.clone()));
    }
    recorder.record(phase(recorder, "workload", ""));

    let nemesis = Nemesis::new(Arc::clone(cluster), view.clone(), recorder.clone(), usize::from(args.concurrency));
    let progress = tokio::spawn(progress(Arc::clone(&tracker), nemesis.clone(), recorder.clone()));
    let end = interrupted.child_token();
    let deadline = tokio::spawn({
        let (end, duration) = (end.clone(), args.duration);
        async move {
            tokio::time::sleep(duration).await;
            end.cancel();
        }
    });
    nemesis.run(Planner::new(seed, faults, (args.min_gap, args.max_gap)), end).await;
    deadline.abort();
    recorder.record(phase(recorder, "faultsEnded", ""));
    tracing::info!("faults over, every one healed; stopping the producers");

    stop_producers.cancel();
    while producer_tasks.join_next().await.is_some() {}
    recorder.record(phase(recorder, "producersStopped", ""));

    match wait_whole(cluster, &view).await {
        Ok(()) => recorder.record(phase(recorder, "healed", "")),
        Err(state) => {
            tracing::warn!(state, "the cluster is not whole again within {HEAL_TIMEOUT:?}");
            recorder.record(phase(recorder, "notHealed", &state));
        }
    }
    tracing::info!(outstanding = tracker.outstanding(), "draining");
    match drain(&tracker, &view).await {
        Ok(()) => recorder.record(phase(recorder, "drained", "")),
        Err(why) => {
            tracing::warn!(why, "the drain stopped before every message arrived");
            recorder.record(phase(recorder, "notDrained", &why));
        }
    }
    stop_consumers.cancel();
    while consumer_tasks.join_next().await.is_some() {}
    progress.abort();
    Ok(())
}

/// Starts the primaries, then the backups, and waits until every group has a live and a
/// synced backup and every live's bridges and grouping link are up. Returns the
/// broker's version.
async fn start_cluster(cluster: &Cluster, recorder: &Recorder) -> anyhow::Result<String> {
    for primary in [true, false] {
        for m in cluster.members.iter().filter(|m| m.layout.primary == primary) {
            m.start(&cluster.logs, recorder).await?;
        }
        for m in cluster.members.iter().filter(|m| m.layout.primary == primary) {
            let want = if primary { "live" } else { "a synced backup" };
            eventually(&format!("{} is {want}", m.name()), STARTUP_TIMEOUT, || async {
                let seen = m.status().await.map(|s| status::seen_of(&s, QUEUE_PREFIX).role);
                if primary {
                    seen == Some(crate::history::MemberRole::Live)
                } else {
                    seen == Some(crate::history::MemberRole::SyncedBackup)
                }
            })
            .await
            .with_context(|| format!("see its log {}", m.log_path(&cluster.logs).display()))?;
        }
    }
    let primaries: Vec<&Member> = cluster.members.iter().filter(|m| m.layout.primary).collect();
    for m in &primaries {
        eventually(&format!("{}'s bridges and grouping link are up", m.name()), LINK_TIMEOUT, || async {
            let Some(s) = m.status().await else { return false };
            let bridges = s.network.as_ref().is_none_or(|n| n.connectors.iter().all(|c| c.links.iter().any(|l| l.state == LinkState::Linked)));
            let grouping = s.grouping.as_ref().is_none_or(|g| g.connected || m.layout.group == "g0");
            s.role == Role::Live && bridges && grouping
        })
        .await?;
    }
    let version = primaries[0].status().await.map(|s| s.version).unwrap_or_default();
    tracing::info!(members = cluster.members.len(), version, "cluster up: every group live with a synced backup, bridges linked");
    Ok(version)
}

/// Waits until every member runs and every group is healthy; `Err` says what is not.
async fn wait_whole(cluster: &Cluster, view: &View) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let mut problems = Vec::new();
        for g in 0..cluster.layout.groups.len() {
            for m in cluster.group(g) {
                if !m.is_running().await {
                    problems.push(format!("{} is not running", m.name()));
                }
            }
            if !view.healthy(&cluster.group(g).map(Member::name).collect::<Vec<_>>()) {
                let roles: Vec<String> = cluster.group(g).map(|m| format!("{} {:?}", m.name(), view.get(m.name()).map(|s| s.role))).collect();
                problems.push(format!("g{g}: {}", roles.join(", ")));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        if start.elapsed() > HEAL_TIMEOUT {
            return Err(problems.join("; "));
        }
        tokio::time::sleep(WAIT_STEP).await;
    }
}

/// Waits until every receipted message was delivered and the lives hold none of the run's
/// messages, then watches a little longer for late duplicates. Gives up when nothing
/// moved for [`DRAIN_STALL`].
async fn drain(tracker: &Tracker, view: &View) -> Result<(), String> {
    let mut last = (usize::MAX, u64::MAX, 0);
    let mut moved = Instant::now();
    loop {
        let now = (tracker.outstanding(), view.messages_on_lives(), tracker.deliveries.load(Ordering::Relaxed));
        if now.0 == 0 && now.1 == 0 {
            break;
        }
        if now != last {
            last = now;
            moved = Instant::now();
        } else if moved.elapsed() > DRAIN_STALL {
            return Err(format!("{} receipted messages undelivered and {} messages held on the lives after {DRAIN_STALL:?} without progress", now.0, now.1));
        }
        tokio::time::sleep(WAIT_STEP).await;
    }
    tokio::time::sleep(DRAIN_SETTLE).await;
    Ok(())
}

/// Polls `check` until it holds, or fails after `timeout` naming `what`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(WAIT_STEP).await;
    }
    Ok(())
}

async fn progress(tracker: Arc<Tracker>, nemesis: Nemesis, recorder: Recorder) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        tracing::info!(
            t = format!("{:.0}s", recorder.now()),
            sent = n(&tracker.sent),
            receipted = n(&tracker.receipted),
            failed = n(&tracker.failed),
            deliveries = n(&tracker.deliveries),
            undelivered = tracker.outstanding(),
            faults = nemesis.describe_active().join(", "),
            "progress"
        );
    }
}

/// The first Ctrl-C ends the fault phase early (the run then heals, drains and checks);
/// a second one stops everything at once.
async fn watch_ctrl_c(interrupted: CancellationToken, aborted: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    tracing::warn!("interrupted: ending the faults now, then healing, draining and checking (Ctrl-C again to stop at once)");
    interrupted.cancel();
    if tokio::signal::ctrl_c().await.is_ok() {
        aborted.cancel();
    }
}

fn phase(recorder: &Recorder, phase: &str, detail: &str) -> Event {
    Event::Phase(PhaseRecord { t: recorder.now(), phase: phase.into(), detail: detail.into() })
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("failed to write {}", path.display()))
}

/// `--faults`, or every kind the arbiter allows; refuses a kind that could not work.
fn fault_kinds(args: &RunArgs) -> anyhow::Result<Vec<FaultKind>> {
    let arbiter_allows = |k: &FaultKind| *k != FaultKind::PartitionArbiter || args.arbiter == Arbiter::Quorum;
    let kinds = match &args.faults {
        None => FaultKind::ALL.into_iter().filter(arbiter_allows).collect(),
        Some(kinds) => {
            if let Some(k) = kinds.iter().find(|k| !arbiter_allows(k)) {
                bail!("--faults {k} needs --arbiter quorum: a lock file has no network to cut");
            }
            kinds.clone()
        }
    };
    if args.groups < 2 && kinds.contains(&FaultKind::PartitionBridge) && args.faults.is_some() {
        bail!("--faults partition-bridge needs --groups 2 or more: one group has no bridge");
    }
    Ok(kinds.into_iter().filter(|k| *k != FaultKind::PartitionBridge || args.groups >= 2).collect())
}

/// `--broker`, else `duomq-broker` next to this program.
fn broker_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("failed to locate this program")?
            .with_file_name(format!("duomq-broker{}", std::env::consts::EXE_SUFFIX)),
    };
    if !path.is_file() {
        bail!("no duomq-broker at {}: build it (cargo build -p duomq-broker) or name it with --broker", path.display());
    }
    Ok(path)
}
