//! The operator's own high availability: replicas of `duomq-operator run` elect one leader
//! on the `duomq-operator-leader` Lease, and never two act at once.
//!
//! - `election`: three real operator processes against the local API server (no cluster
//!   controllers), each through its own cuttable TCP proxy, with short Lease timings. A
//!   sampler reads every process's `duomq_operator_leader` gauge every 50 ms and fails on a
//!   sample with two leaders. The leader's Lease is stolen by a test write (it stops at its
//!   next renewal; nobody takes over before the thief's claim lapsed), the next leader is
//!   cut off the API server (it exits before its claim could lapse, then a standby takes
//!   over), the next one is killed with SIGKILL (a standby takes over once the claim
//!   lapsed), the next one stopped with SIGTERM (it releases the Lease: a standby takes
//!   over at once).
//! - `failover`: the installed operator scaled to two replicas on the local control plane;
//!   its leader's pod is deleted (grace 0, forced) at the moment a group's live broker is
//!   killed; the standby takes the Lease and finishes the failover: the status names the
//!   new live and nothing receipted is lost.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::operator_ha::{CutProxy, OperatorProcess};
use common::traffic::GroupTraffic;
use common::{binaries_dir, group_status, wait_for_brokergroup, Env, GROUP_AVAILABLE};
use duomq_e2e::apiserver::{self, ApiServerHandle, ApiServerOptions};
use duomq_e2e::env::{repo_root, wait_for};
use duomq_operator::api::BrokerGroup;
use duomq_operator::names::OPERATOR_LEASE;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::CustomResourceExt;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// The operators' namespace in `election`, where their Lease is.
const OPERATOR_NAMESPACE: &str = "duomq-system";
/// Short Lease timings for `election`: the leader fences itself 3 s after the last renewal
/// that got through was sent; a standby takes over after seeing the Lease unchanged 6 s.
const LEASE_DURATION: Duration = Duration::from_secs(6);
const TIMINGS: [&str; 8] = [
    "--leader-lease-duration",
    "6s",
    "--leader-renew-deadline",
    "3s",
    "--leader-renew-interval",
    "1s",
    "--leader-retry-interval",
    "500ms",
];
/// From a fault to a new leader: the Lease duration and a few retries; generous for CI.
const TAKEOVER: Duration = Duration::from_secs(40);
/// From losing the claim to the process's exit.
const EXIT: Duration = Duration::from_secs(20);
/// Between two samples of every process's role.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Which processes reported themselves leader in one round of scrapes, started `at`.
struct Sample {
    at: Instant,
    leaders: Vec<String>,
}

/// Every process's leader gauge, sampled: fails the test on a sample with two leaders.
struct Sampler {
    targets: Arc<Mutex<BTreeMap<String, SocketAddr>>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: CancellationToken,
}

impl Sampler {
    fn start() -> Sampler {
        let sampler = Sampler { targets: Arc::default(), samples: Arc::default(), stop: CancellationToken::new() };
        let (targets, samples, stop) = (sampler.targets.clone(), sampler.samples.clone(), sampler.stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let at = Instant::now();
                let now: Vec<(String, SocketAddr)> = targets.lock().iter().map(|(k, v)| (k.clone(), *v)).collect();
                let mut leaders = Vec::new();
                for (identity, addr) in now {
                    if common::operator_ha::leads_at(addr).await {
                        leaders.push(identity);
                    }
                }
                samples.lock().push(Sample { at, leaders });
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        });
        sampler
    }

    fn watch(&self, p: &OperatorProcess) {
        self.targets.lock().insert(p.identity.clone(), p.http);
    }

    /// Fails when any sample so far saw two leaders.
    fn check(&self) -> Result<usize> {
        let samples = self.samples.lock();
        if let Some(two) = samples.iter().find(|s| s.leaders.len() > 1) {
            bail!("two operators led at once ({:?}), {:?} after the first sample", two.leaders, two.at.duration_since(samples[0].at));
        }
        Ok(samples.len())
    }

    /// The one leader of the samples taken after `since` and when it was first seen, once
    /// there is one that is not `not`.
    async fn new_leader(&self, since: Instant, not: &str, timeout: Duration) -> Result<(String, Instant)> {
        let found = wait_for(&format!("a leader other than {not}"), timeout, || {
            let samples = self.samples.lock();
            samples.iter().filter(|s| s.at >= since).find(|s| s.leaders.len() == 1 && s.leaders[0] != not).map(|s| (s.leaders[0].clone(), s.at))
        })
        .await?;
        self.check()?;
        Ok(found)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One replica: its process and the proxy it reaches the API server through.
struct Replica {
    process: OperatorProcess,
    proxy: CutProxy,
    kubeconfig: std::path::PathBuf,
}

async fn start_replica(api: &ApiServerHandle, dir: &Path, identity: &str, runs: &mut usize) -> Result<Replica> {
    let upstream: SocketAddr = api.url().trim_start_matches("http://").parse()?;
    let proxy = CutProxy::start(upstream).await?;
    let kubeconfig = dir.join(format!("{identity}.kubeconfig"));
    api.write_kubeconfig(&kubeconfig, &format!("http://{}", proxy.addr))?;
    let process = restart(&kubeconfig, dir, identity, runs).await?;
    Ok(Replica { process, proxy, kubeconfig })
}

/// (Re)starts a replica's process, as the Deployment restarts a container that exited.
async fn restart(kubeconfig: &Path, dir: &Path, identity: &str, runs: &mut usize) -> Result<OperatorProcess> {
    *runs += 1;
    let mut args = vec!["--namespace", "watched"];
    args.extend(TIMINGS);
    let log = dir.join(format!("{identity}-{runs}.log"));
    OperatorProcess::start(&binaries_dir()?.join("duomq-operator"), kubeconfig, identity, &args, &[("POD_NAMESPACE", OPERATOR_NAMESPACE)], &log).await
}

async fn holder(leases: &Api<Lease>) -> Result<Option<String>> {
    Ok(leases.get(OPERATOR_LEASE).await?.spec.and_then(|s| s.holder_identity))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_three_operators_when_the_leader_loses_its_lease_is_cut_off_or_killed_should_hand_over_and_never_let_two_act() -> Result<()> {
    let _ = tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())).with_test_writer().try_init();
    let api = apiserver::start(ApiServerOptions { listen: vec!["127.0.0.1:0".parse()?], kubeconfig: None, watch_history: 1000 }).await?;
    let result = election(&api).await;
    api.shutdown().await;
    result
}

async fn election(api: &ApiServerHandle) -> Result<()> {
    let client = api.client();
    Api::<CustomResourceDefinition>::all(client.clone()).create(&PostParams::default(), &BrokerGroup::crd()).await?;
    for ns in [OPERATOR_NAMESPACE, "watched"] {
        let namespace = Namespace { metadata: ObjectMeta { name: Some(ns.into()), ..ObjectMeta::default() }, ..Namespace::default() };
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await?;
    }
    let leases: Api<Lease> = Api::namespaced(client, OPERATOR_NAMESPACE);
    let dir = tempfile::Builder::new().prefix("duomq-operator-ha-").tempdir()?;
    let mut runs = 0;
    let mut replicas = BTreeMap::new();
    for identity in ["op-a", "op-b", "op-c"] {
        replicas.insert(identity.to_string(), start_replica(api, dir.path(), identity, &mut runs).await?);
    }
    let sampler = Sampler::start();
    for r in replicas.values() {
        sampler.watch(&r.process);
    }

    // One leader, named by the Lease; the others stand by, Ready, and say whom they wait for.
    let (first, _) = sampler.new_leader(Instant::now(), "", TAKEOVER).await?;
    ensure!(holder(&leases).await?.as_deref() == Some(first.as_str()), "the Lease names the leader {first}");
    for (identity, r) in &replicas {
        let ready = r.process.readyz().await?;
        let expected = if *identity == first { "ready: leader".to_string() } else { format!("ready: standby (leader: {first})") };
        ensure!(ready == expected, "/readyz of {identity}: {ready:?}, expected {expected:?}");
    }
    println!("election: {first} leads; the others stand by");

    // The Lease stolen by another writer: the leader stops at its next renewal; nobody takes
    // over until the thief's claim has stood unrenewed for the Lease duration.
    let stolen_at = Instant::now();
    let mut lease = leases.get(OPERATOR_LEASE).await?;
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some("thief".into());
    spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    leases.replace(OPERATOR_LEASE, &PostParams::default(), &lease).await?;
    let r = replicas.get_mut(&first).context("the first leader")?;
    let status = r.process.exited_within(EXIT).await?;
    ensure!(!status.success(), "{first} exits non-zero once its Lease is taken: {status}");
    ensure!(r.process.log_text().contains("lost the leadership"), "{first} logs why it stopped:\n{}", r.process.log_text());
    println!("stolen Lease: {first} stopped {:.1}s after the theft ({status})", stolen_at.elapsed().as_secs_f64());
    let (second, led_at) = sampler.new_leader(stolen_at, &first, TAKEOVER).await?;
    let waited = led_at.duration_since(stolen_at);
    ensure!(waited >= LEASE_DURATION, "{second} took the thief's Lease after {waited:?}, before it lapsed ({LEASE_DURATION:?})");
    println!("stolen Lease: {second} leads {:.1}s after the theft", waited.as_secs_f64());
    r.process = restart(&r.kubeconfig, dir.path(), &first, &mut runs).await?;
    sampler.watch(&r.process);

    // The leader cut off the API server: it exits before its claim could lapse, and only
    // then does a standby lead.
    let r = replicas.get_mut(&second).context("the second leader")?;
    let cut_at = Instant::now();
    r.proxy.cut();
    let status = r.process.exited_within(EXIT).await?;
    let stopped = cut_at.elapsed();
    ensure!(!status.success(), "{second} exits non-zero when it cannot renew: {status}");
    // Its last renewal got through at most one renew interval (1 s) before the cut; a
    // standby may take over no sooner than the Lease duration after that.
    ensure!(stopped < LEASE_DURATION - Duration::from_secs(1), "{second} stopped {stopped:?} after the cut: too late");
    let (third, led_at) = sampler.new_leader(cut_at, &second, TAKEOVER).await?;
    ensure!(led_at.duration_since(cut_at) > stopped, "{third} led before {second} stopped");
    println!(
        "cut off: {second} stopped after {:.1}s ({status}); {third} leads {:.1}s after the cut",
        stopped.as_secs_f64(),
        led_at.duration_since(cut_at).as_secs_f64()
    );
    r.proxy.restore();
    r.process = restart(&r.kubeconfig, dir.path(), &second, &mut runs).await?;
    sampler.watch(&r.process);

    // The leader killed (SIGKILL): a standby takes over once the claim lapsed.
    let killed_at = Instant::now();
    replicas.get_mut(&third).context("the third leader")?.process.kill()?;
    let (fourth, led_at) = sampler.new_leader(killed_at, &third, TAKEOVER).await?;
    println!("killed: {fourth} leads {:.1}s after {third} was killed", led_at.duration_since(killed_at).as_secs_f64());
    ensure!(holder(&leases).await?.as_deref() == Some(fourth.as_str()), "the Lease names {fourth}");

    // The leader stopped (SIGTERM, as in a rolling update): it releases the Lease on its
    // way out and a standby leads long before the claim would have lapsed.
    let r = replicas.get_mut(&fourth).context("the fourth leader")?;
    let stopped_at = Instant::now();
    r.process.terminate()?;
    let status = r.process.exited_within(EXIT).await?;
    ensure!(status.success(), "{fourth} exits 0 on SIGTERM: {status}");
    ensure!(r.process.log_text().contains("released the leader Lease"), "{fourth} released the Lease:\n{}", r.process.log_text());
    let (fifth, led_at) = sampler.new_leader(stopped_at, &fourth, TAKEOVER).await?;
    let took = led_at.duration_since(stopped_at);
    ensure!(took < LEASE_DURATION, "{fifth} led {took:?} after {fourth} stopped: the Lease was not released");
    println!("stopped: {fifth} leads {:.1}s after {fourth} got SIGTERM", took.as_secs_f64());

    let samples = sampler.check()?;
    println!("election: {samples} samples, never two leaders");
    Ok(())
}

/// From the faults to the status naming the new live: the operator's Lease (15 s) and the
/// group's (15 s) lapse in parallel; generous for slow CI.
const FAILOVER_SEEN: Duration = Duration::from_secs(120);
/// The operator's namespace in the install bundle.
const INSTALLED_NAMESPACE: &str = "duomq-system";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_two_operator_replicas_when_the_leader_dies_during_a_failover_should_let_another_replica_finish_it() -> Result<()> {
    let env = Env::start().await?;
    let result = failover(&env).await;
    if result.is_err() {
        env.dump("operator-ha", "pair");
        eprintln!("{}", env.kubectl(&["-n", INSTALLED_NAMESPACE, "get", "pods,lease", "-o", "wide"]).unwrap_or_else(|e| e.to_string()));
    }
    env.shutdown().await;
    result
}

/// The operator pods that are Running, by name.
fn operator_pods(env: &Env) -> Result<Vec<String>> {
    let pods = env.json(&["-n", INSTALLED_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/name=duomq-operator"])?;
    Ok(pods["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
                .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// The operator pod the Lease names (its identity is the pod name, or the pod's host name
/// with a suffix when POD_NAME is not set).
fn leader_pod(env: &Env) -> Option<String> {
    let holder = env.kubectl(&["-n", INSTALLED_NAMESPACE, "get", "lease", OPERATOR_LEASE, "-o", "jsonpath={.spec.holderIdentity}"]).ok()?;
    let holder = holder.trim();
    operator_pods(env).ok()?.into_iter().find(|p| holder == p || holder.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('-')))
}

async fn failover(env: &Env) -> Result<()> {
    let started = Instant::now();
    env.install_operator()?;
    env.kubectl(&["-n", INSTALLED_NAMESPACE, "scale", "deployment/duomq-operator", "--replicas=2"])?;
    let (leader, standby) = wait_for("two operator pods, one of them the leader", common::OPERATOR_READY, || {
        let pods = operator_pods(env).ok()?;
        let leader = leader_pod(env)?;
        let standby = pods.iter().find(|p| **p != leader)?.clone();
        (pods.len() == 2).then_some((leader, standby))
    })
    .await?;
    println!("operator: {leader} leads, {standby} stands by");

    let ns = "operator-ha";
    env.kubectl(&["create", "namespace", ns])?;
    let manifest = repo_root().join("e2e/tests/manifests/pair-no-failback.yaml");
    env.kubectl(&["-n", ns, "apply", "-f", &manifest.to_string_lossy()])?;
    let timeout = format!("--timeout={}s", GROUP_AVAILABLE.as_secs());
    for condition in ["Available", "Replicated"] {
        env.kubectl(&["-n", ns, "wait", &format!("--for=condition={condition}"), "brokergroup/pair", &timeout])?;
    }
    let bg = env.json(&["-n", ns, "get", "brokergroup", "pair"])?;
    let old = group_status(&bg, 0)["live"].as_str().context("no live in the status")?.to_string();
    let members: Vec<String> = (0..2).map(|i| format!("pair-g0-{i}")).collect();
    let new = members.iter().find(|m| **m != old).context("no backup")?.clone();
    let traffic = GroupTraffic::start(env, ns, "pair-g0", &members, &old).await?;

    // Both at once: the operator's leader pod goes (its container is stopped with no grace)
    // and the group's live broker is killed.
    let fault = Instant::now();
    env.kubectl(&["-n", INSTALLED_NAMESPACE, "delete", "pod", &leader, "--grace-period=0", "--force", "--wait=false"])?;
    let how = env.kill_pod(ns, &old)?;

    // The standby, or the replica the Deployment starts in the dead leader's place: whichever
    // looks first once the dead leader's claim has lapsed (both wait the whole lease).
    let (took_over, successor) = wait_for(&format!("a replica other than {leader} holding the operator's Lease"), FAILOVER_SEEN, || {
        let holder = leader_pod(env)?;
        (holder != leader).then(|| (Instant::now(), holder))
    })
    .await?;
    traffic.wait_accepting(&new, fault, FAILOVER_SEEN).await?;
    let bg = wait_for_brokergroup(env, ns, "pair", &format!("{new} live in the status"), FAILOVER_SEEN, |bg| group_status(bg, 0)["live"] == new.as_str()).await?;
    let seen = fault.elapsed();
    let g = group_status(&bg, 0);
    ensure!(g["failovers"] == 1, "one failover counted: {g}");
    ensure!(g["lastFailover"]["from"] == old.as_str() && g["lastFailover"]["to"] == new.as_str(), "lastFailover from {old} to {new}: {g}");
    let report = traffic.finish(&old, fault, 20).await?;
    println!("operator-ha: {report}");
    println!(
        "operator-ha: {leader} deleted and {how} of {old}: {successor} led after {:.1}s (standby was {standby}), the status named {new} (reason {}) after {:.1}s; total {:.0}s",
        took_over.duration_since(fault).as_secs_f64(),
        g["lastFailover"]["reason"],
        seen.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    env.kubectl(&["-n", ns, "delete", "brokergroup", "pair", "--wait=false"])?;
    Ok(())
}
