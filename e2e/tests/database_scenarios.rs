//! Shared-database master/slave end to end (`ha.mode: sharedDatabase`), as a user meets it:
//! a PostgreSQL pod and the Secret CloudNativePG would create for its application user
//! (`uri`, `host`, `port`, `dbname`, `user`, `password`, …), then a BrokerGroup whose one
//! group's two members share that database. A producer and a consumer run through the
//! client Service and a probe writes to both members directly, through two faults:
//!
//! 1. `kill -9` of the live broker's container (a forced pod deletion through kubectl
//!    only). Its restart takes its own lease back under a new epoch when the lease has not
//!    run out (the status says `LeaseRetaken`, no failover); on a slow machine the slave
//!    takes it first (a failover).
//! 2. `kubectl delete pod` of the live: it releases the lease as it stops, the slave takes
//!    over at its next poll, and the status records the failover (`LiveLost`). The
//!    recreated pod waits as the slave.
//!
//! Throughout, every receipted message is received and the two members never accepted
//! sends at once. Then, on the local control plane only, PostgreSQL is frozen (`docker
//! pause`): the status says `Degraded`, reason `DatabaseUnreachable`; thawed, the group
//! has a live again.
//!
//! PostgreSQL runs from `duomq/postgres:15`, which `images/build-postgres.sh` builds from
//! Debian's postgresql-15 on the local base image (no registry). With `E2E_KUBECONFIG`
//! nothing is built: the image must be pullable there, or name another one in
//! `E2E_POSTGRES_IMAGE` (the official `postgres` image has the same contract).

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::traffic::GroupTraffic;
use common::{condition, group_status, wait_for_brokergroup, Env, GROUP_AVAILABLE};
use duomq_e2e::env::{ensure_postgres_image, repo_root, POSTGRES_IMAGE};
use serde_json::Value;

const NAMESPACE: &str = "shared-database";
const NAME: &str = "jdbc";
const GROUP: &str = "jdbc-g0";
/// The application user's password, in the Secret and in the PostgreSQL pod's environment.
const PASSWORD: &str = "e2e-app-password";
/// From `kubectl apply` of the PostgreSQL pod to it accepting connections (initdb included).
const DATABASE_READY: Duration = Duration::from_secs(120);
/// From the kill to the status naming the slave live: the lease (4 s) runs out, the slave
/// polls (0.5 s) and takes it, the operator looks; generous for slow CI.
const FAILOVER_SEEN: Duration = Duration::from_secs(60);
/// From freezing or thawing PostgreSQL to the status saying so: the members notice within
/// the lease (4 s), the operator at its next look.
const OUTAGE_SEEN: Duration = Duration::from_secs(60);
/// Receipts the producer must get after the failover before it stops.
const RECEIPTS_AFTER: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_shared_database_pair_when_the_live_is_killed_should_fail_over_to_the_slave_without_losing_receipted_messages() -> Result<()> {
    let env = Env::start().await?;
    let result = kill_the_live(&env).await;
    if let Err(e) = &result {
        eprintln!("shared-database scenario failed: {e:#}");
        env.dump(NAMESPACE, NAME);
    }
    env.shutdown().await;
    result
}

async fn kill_the_live(env: &Env) -> Result<()> {
    let started = Instant::now();
    let image = postgres_image(env)?;
    env.install_operator()?;
    env.kubectl(&["create", "namespace", NAMESPACE])?;
    let manifests = tempfile::Builder::new().prefix("duomq-e2e-postgres-").tempdir()?;
    let postgres = manifests.path().join("postgres.yaml");
    std::fs::write(&postgres, postgres_manifest(&image))?;
    env.kubectl(&["-n", NAMESPACE, "apply", "-f", &postgres.to_string_lossy()])?;
    env.kubectl(&["-n", NAMESPACE, "wait", "--for=condition=Ready", "pod/pg", &format!("--timeout={}s", DATABASE_READY.as_secs())])?;
    println!("shared-database: PostgreSQL ({image}) ready after {:.0}s", started.elapsed().as_secs_f64());

    let brokergroup = repo_root().join("e2e/tests/manifests/shared-database.yaml");
    env.kubectl(&["-n", NAMESPACE, "apply", "-f", &brokergroup.to_string_lossy()])?;
    let timeout = format!("--timeout={}s", GROUP_AVAILABLE.as_secs());
    for condition in ["Available", "Replicated"] {
        env.kubectl(&["-n", NAMESPACE, "wait", &format!("--for=condition={condition}"), &format!("brokergroup/{NAME}"), &timeout])?;
    }
    let bg = env.json(&["-n", NAMESPACE, "get", "brokergroup", NAME])?;
    let old = group_status(&bg, 0)["live"].as_str().context("no live in the status")?.to_string();
    let members: Vec<String> = (0..2).map(|i| format!("{GROUP}-{i}")).collect();
    let new = members.iter().find(|m| **m != old).context("no slave")?.clone();
    println!("shared-database: {NAME} available with {old} live after {:.0}s", started.elapsed().as_secs_f64());

    let traffic = GroupTraffic::start(env, NAMESPACE, GROUP, &members, &old).await?;

    // kill -9 of the live's broker: the kubelet restarts the container at once, and the
    // restarted broker takes its own lease back under a new epoch when it has not run out
    // yet (the broker's rule); on a slow machine the slave may have taken it first.
    let epoch = group_status(&bg, 0)["epoch"].as_i64().context("no epoch in the status")?;
    let killed = Instant::now();
    let how = env.kill_pod(NAMESPACE, &old)?;
    let bg = wait_for_brokergroup(env, NAMESPACE, NAME, "a live under a new epoch", FAILOVER_SEEN, |bg| {
        let g = group_status(bg, 0);
        g["epoch"].as_i64().is_some_and(|e| e > epoch) && g["live"].is_string()
    })
    .await?;
    let g = group_status(&bg, 0);
    let live = g["live"].as_str().unwrap_or_default().to_string();
    traffic.wait_accepting(&live, killed, FAILOVER_SEEN).await?;
    println!("shared-database: after {how} of {old}: live {live}, epoch {}, failovers {}", g["epoch"], g["failovers"]);
    let failovers = if live == old {
        ensure!(g["failovers"] == 0 && g["lastFailover"].is_null(), "the live took its own lease back: no failover: {g}");
        0
    } else {
        ensure_failover(g, &old, &live, 1)?;
        1
    };
    let (old, new) = if live == old { (old, new) } else { (live, old) };

    // `kubectl delete pod` of the live: it releases the lease as it stops, the slave takes
    // it at its next poll; the recreated pod finds the lease taken and waits as the slave.
    let fault = Instant::now();
    env.kubectl(&["-n", NAMESPACE, "delete", "pod", &old, "--wait=false"])?;
    traffic.wait_accepting(&new, fault, FAILOVER_SEEN).await?;
    let bg = wait_for_brokergroup(env, NAMESPACE, NAME, &format!("{new} live in the status"), FAILOVER_SEEN, |bg| group_status(bg, 0)["live"] == new.as_str()).await?;
    let g = group_status(&bg, 0);
    println!("shared-database: status after deleting {old}: live {}, epoch {}, failovers {}, lastFailover {}", g["live"], g["epoch"], g["failovers"], g["lastFailover"]);
    ensure_failover(g, &old, &new, failovers + 1)?;
    let report = traffic.finish(&old, fault, RECEIPTS_AFTER).await?;
    println!("shared-database: {report}");
    ensure!(report.shared_slots == 0, "two members receipted within one 100 ms slot: {}", report.timeline);

    // The deleted member is back as the slave of the new live, and both reach the database.
    let bg = wait_for_brokergroup(env, NAMESPACE, NAME, &format!("{old} back as an in-sync slave"), GROUP_AVAILABLE, |bg| condition(bg, "Replicated").as_deref() == Some("True")).await?;
    let g = group_status(&bg, 0);
    ensure!(g["live"] == new.as_str(), "the live stayed {new}: {g}");
    ensure!(g["databaseUnreachable"].is_null(), "every member reaches the database: {g}");
    ensure!(condition(&bg, "Degraded").as_deref() == Some("False"), "not degraded: {}", bg["status"]["conditions"]);
    freeze_the_database(env).await?;
    env.kubectl(&["-n", NAMESPACE, "delete", "brokergroup", NAME, "--wait=false"])?;
    println!("shared-database: passed in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// PostgreSQL frozen (`docker pause` of its container, the local plane only): the members
/// cannot reach the database, and the status says so (`Degraded`, reason
/// `DatabaseUnreachable`, naming them); thawed, a member takes the lease and the
/// BrokerGroup is whole again.
async fn freeze_the_database(env: &Env) -> Result<()> {
    let Some(local) = &env.local else {
        println!("shared-database: database outage skipped: it freezes the PostgreSQL container (docker pause), which a cluster reached through kubectl only does not offer");
        return Ok(());
    };
    let container = local.cluster.container_of(NAMESPACE, "pg").context("no container for pod pg")?;
    let frozen = Instant::now();
    docker(&["pause", &container])?;
    let seen = wait_for_brokergroup(env, NAMESPACE, NAME, "Degraded with reason DatabaseUnreachable", OUTAGE_SEEN, |bg| condition_of(bg, "Degraded")["reason"] == "DatabaseUnreachable").await;
    let thawed = docker(&["unpause", &container]);
    let bg = seen?;
    thawed?;
    let degraded = condition_of(&bg, "Degraded");
    println!("shared-database: PostgreSQL frozen: seen after {:.1}s: {}; live {}", frozen.elapsed().as_secs_f64(), degraded["message"], group_status(&bg, 0)["live"]);
    let bg = wait_for_brokergroup(env, NAMESPACE, NAME, "a live and nothing degraded after the thaw", OUTAGE_SEEN, |bg| {
        condition(bg, "Available").as_deref() == Some("True") && condition(bg, "Degraded").as_deref() == Some("False")
    })
    .await?;
    println!("shared-database: PostgreSQL thawed: live {} at epoch {} after {:.1}s", group_status(&bg, 0)["live"], group_status(&bg, 0)["epoch"], frozen.elapsed().as_secs_f64());
    Ok(())
}

/// A condition of a BrokerGroup, `null` when it has none of that type.
fn condition_of<'a>(bg: &'a Value, kind: &str) -> &'a Value {
    bg["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == kind)).unwrap_or(&Value::Null)
}

fn docker(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("docker").args(args).output().with_context(|| format!("failed to run docker {}", args.join(" ")))?;
    ensure!(out.status.success(), "docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// The PostgreSQL image: built here for a local control plane; on the cluster of
/// `E2E_KUBECONFIG`, `E2E_POSTGRES_IMAGE` or the tag the build gives, pulled there.
fn postgres_image(env: &Env) -> Result<String> {
    if std::env::var_os("E2E_KUBECONFIG").is_some() {
        return Ok(std::env::var("E2E_POSTGRES_IMAGE").unwrap_or_else(|_| POSTGRES_IMAGE.to_string()));
    }
    let logs = common::binaries_dir()?.join("e2e-image-logs");
    let image = ensure_postgres_image(&logs).with_context(|| format!("for the local plane at {}", env.kubeconfig.display()))?;
    Ok(image)
}

/// The group's status records `count` failovers, the last from `from` to `to` because the
/// live was lost (there is no Kubernetes Lease for the operator to release).
fn ensure_failover(g: &Value, from: &str, to: &str, count: i64) -> Result<()> {
    ensure!(g["failovers"] == count, "{count} failover(s) counted: {g}");
    let last = &g["lastFailover"];
    ensure!(last["from"] == from && last["to"] == to && last["reason"] == "LiveLost", "lastFailover from {from} to {to}, LiveLost: {g}");
    Ok(())
}

/// A PostgreSQL pod with its data on an emptyDir (it survives a container restart), the
/// Service `pg-rw` in front of it, and the Secret `pg-app` as CloudNativePG writes it for
/// the application user of a cluster named `pg` (its `-rw` Service is the primary).
fn postgres_manifest(image: &str) -> String {
    let host = format!("pg-rw.{NAMESPACE}");
    format!(
        r#"apiVersion: v1
kind: Secret
metadata:
  name: pg-app
type: kubernetes.io/basic-auth
stringData:
  username: app
  user: app
  password: {PASSWORD}
  dbname: app
  host: pg-rw
  port: "5432"
  uri: postgresql://app:{PASSWORD}@{host}:5432/app
  jdbc-uri: jdbc:postgresql://{host}:5432/app?password={PASSWORD}&user=app
  pgpass: "{host}:5432:app:app:{PASSWORD}\n"
---
apiVersion: v1
kind: Service
metadata:
  name: pg-rw
spec:
  selector:
    app: pg
  ports:
  - name: postgres
    port: 5432
    targetPort: postgres
---
apiVersion: v1
kind: Pod
metadata:
  name: pg
  labels:
    app: pg
spec:
  containers:
  - name: postgres
    image: {image}
    imagePullPolicy: IfNotPresent
    env:
    - name: POSTGRES_USER
      value: app
    - name: POSTGRES_DB
      value: app
    - name: POSTGRES_PASSWORD
      valueFrom:
        secretKeyRef:
          name: pg-app
          key: password
    ports:
    - name: postgres
      containerPort: 5432
    readinessProbe:
      tcpSocket:
        port: postgres
      periodSeconds: 1
    volumeMounts:
    - name: data
      mountPath: /var/lib/postgresql/data
  volumes:
  - name: data
    emptyDir: {{}}
"#
    )
}
