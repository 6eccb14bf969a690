//! The `kubernetes` arbiter on its own, against the in-process Kubernetes API for Leases:
//! a race for a released Lease has one winner; a live's "a backup left" resolves only once
//! the Lease no longer lists it; a live cut off from the API, or released by someone
//! else, learns that its claim is lost in time.

mod common;

use common::kube_api::{Fault, KubeApi};
use duomq_broker::config::LeaseTarget;
use duomq_broker::ha::arbiter::{ActivationRequest, Arbiter, Decision};
use duomq_broker::ha::epoch::Epoch;
use duomq_broker::ha::lease::{KubernetesArbiter, LeaseMetrics, LeaseSettings, IN_SYNC_ANNOTATION};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAMESPACE: &str = "ns";
const GROUP: &str = "g1";
const SETTINGS: (Duration, Duration, Duration) = (Duration::from_secs(2), Duration::from_millis(1200), Duration::from_millis(300));
/// How long past its deadline a claim may be reported lost (a loaded machine).
const LOST_SLACK: Duration = Duration::from_millis(500);
/// How long a Lease write may take to show up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

struct Member {
    arbiter: KubernetesArbiter,
    in_sync: Arc<Mutex<Vec<String>>>,
}

async fn member(api: &KubeApi, dir: &std::path::Path, node: &str) -> Member {
    let path = api.kubeconfig(dir, node);
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("kube config");
    let client = kube::Client::try_from(config).expect("kube client");
    let (duration, renew_deadline, renew_interval) = SETTINGS;
    let settings = LeaseSettings {
        target: LeaseTarget { name: GROUP.into(), namespace: NAMESPACE.into() },
        duration,
        renew_deadline,
        renew_interval,
    };
    let in_sync = Arc::new(Mutex::new(Vec::new()));
    let listed = Arc::clone(&in_sync);
    let arbiter =
        KubernetesArbiter::new(client, settings, node.into(), Arc::new(move || listed.lock().clone()), LeaseMetrics::default());
    Member { arbiter, in_sync }
}

/// The API and member `a`, live: it created the group's Lease.
async fn live_a() -> (KubeApi, tempfile::TempDir, Member) {
    let api = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let a = member(&api, dir.path(), "a").await;
    assert_eq!(a.arbiter.hold_as_live(Epoch(0), false).await.unwrap(), Some(Epoch(1)), "a new group's primary creates the Lease");
    (api, dir, a)
}

fn request(epoch: u64) -> ActivationRequest {
    ActivationRequest { group: GROUP.into(), live_node: "a".into(), live_addr: String::new(), epoch, complete_copy: true }
}

fn listed(api: &KubeApi) -> String {
    api.lease(NAMESPACE, GROUP).and_then(|l| l["metadata"]["annotations"][IN_SYNC_ANNOTATION].as_str().map(str::to_string)).unwrap_or_default()
}

async fn wait_listed(api: &KubeApi, nodes: &str) {
    duomq_testkit::eventually_async(&format!("the Lease listing {nodes:?}"), WRITE_TIMEOUT, || async move { (listed(api) == nodes).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_released_lease_when_two_listed_backups_race_should_grant_exactly_one() {
    let (api, dir, a) = live_a().await;
    *a.in_sync.lock() = vec!["b".into(), "c".into()];
    wait_listed(&api, "b,c").await;
    a.arbiter.release().await;
    assert_eq!(listed(&api), "a,b,c", "the releasing live lists itself too");
    let (b, c) = (member(&api, dir.path(), "b").await, member(&api, dir.path(), "c").await);
    let (rb, rc) = (request(1), request(1));
    let (db, dc) = tokio::join!(b.arbiter.may_activate(&rb), c.arbiter.may_activate(&rc));
    let granted: Vec<_> = [db.unwrap(), dc.unwrap()].into_iter().filter(|d| matches!(d, Decision::Granted { .. })).collect();
    assert_eq!(granted.len(), 1, "{granted:?}");
    assert!(matches!(granted[0], Decision::Granted { epoch: Some(Epoch(2)), .. }), "{granted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_lease_held_by_a_live_when_another_starts_as_primary_should_refuse_it() {
    let (api, dir, a) = live_a().await;
    *a.in_sync.lock() = vec!["b".into()];
    wait_listed(&api, "b").await;
    let b = member(&api, dir.path(), "b").await;
    let refused = b.arbiter.hold_as_live(Epoch(1), true).await.expect_err("the claim of a stands");
    assert!(refused.to_string().contains("a holds the Lease"), "{refused}");
    assert_eq!(api.lease(NAMESPACE, GROUP).unwrap()["spec"]["holderIdentity"], "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_live_when_a_backup_leaves_should_resolve_only_once_the_lease_no_longer_lists_it() {
    let (api, _dir, a) = live_a().await;
    *a.in_sync.lock() = vec!["b".into()];
    wait_listed(&api, "b").await;
    a.in_sync.lock().clear();
    let asked = Instant::now();
    a.arbiter.in_sync_changed().await.expect("published");
    assert_eq!(listed(&api), "", "resolved before the Lease dropped the backup");
    assert!(asked.elapsed() < SETTINGS.2, "published at once, not at the next renewal: {:?}", asked.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_live_cut_off_from_the_api_should_lose_its_claim_within_renew_deadline() {
    let (api, _dir, a) = live_a().await;
    let lost = a.arbiter.lost();
    api.fail("a", Fault::ServerError);
    let cut = Instant::now();
    let reason = tokio::time::timeout(SETTINGS.1 + LOST_SLACK, lost).await.expect("claim lost in time");
    assert!(reason.contains("no renewal"), "{reason}");
    println!("lost {:?} after the cut: {reason}", cut.elapsed());
    assert!(a.arbiter.in_sync_changed().await.is_err(), "a member without a claim confirms nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_live_whose_lease_was_released_by_someone_else_should_lose_its_claim_at_the_next_renewal() {
    let (api, _dir, a) = live_a().await;
    let lost = a.arbiter.lost();
    api.edit(NAMESPACE, GROUP, |l| l["spec"]["holderIdentity"] = serde_json::Value::Null);
    let reason = tokio::time::timeout(SETTINGS.2 + LOST_SLACK, lost).await.expect("claim lost at the next renewal");
    assert!(reason.contains("released by someone else"), "{reason}");
}
