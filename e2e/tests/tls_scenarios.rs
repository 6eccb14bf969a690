//! `spec.tls` end to end on the local control plane, with the operator installed from
//! `manifests/install.yaml`:
//!
//! - A BrokerGroup with `tls.mode: OperatorManaged` comes up Available and Replicated: the
//!   backup synced over the cluster port, which now speaks mutual TLS with the member
//!   certificate the operator issued; the probes and the operator's `/status` reads go over
//!   HTTPS.
//! - A client trusting only the `ca.crt` of the `<bg>-tls` Secret connects over
//!   `stomp+ssl://` through the client Service (checking the Service's DNS name while
//!   dialling the plane's proxy) and sends receipted persistent messages; plaintext STOMP
//!   to the same port is refused.
//! - Renewal: a member certificate near its expiry, issued from the group's own CA (as if
//!   `renewBefore` had come), is written into `<bg>-tls`. The operator issues a new one from
//!   the same CA (Event CertificateRenewed), the pod template's checksum changes, the members
//!   roll one by one (a switchover, no failover), while a producer keeps sending over
//!   `failover:(stomp+ssl://…)`; afterwards every receipted message is consumed.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::{condition, Env, GROUP_AVAILABLE};
use duomq_broker::client::{AckMode, Client, ClientOptions, SendOptions, SubscribeOptions, TlsOptions};
use duomq_broker::tls::pki::{Authority, Leaf};
use duomq_e2e::env::wait_for;
use duomq_testkit::{eventually_ok_every, timeouts, Deadline};
use duomq_operator::api::BrokerGroup;
use duomq_operator::names;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

const NS: &str = "tls";
const BG: &str = "pair";
const QUEUE: &str = "/queue/tls.orders";
/// Receipted before the renewal, and sent during it.
const BEFORE: usize = 50;
/// From the expiring certificate written to the operator's new certificate in the pod
/// template: alone ~1 s; beside the rest of the suite it once took over 60 s.
const RENEWED: Duration = Duration::from_secs(180);
/// From the renewed Secret to every member restarted onto it, Available and Replicated.
const ROLLED: Duration = Duration::from_secs(300);
/// For every receipted message to be consumed.
const DRAINED: Duration = Duration::from_secs(90);
/// For the CertificateRenewed Event, published after the apply that changed the template.
const EVENT_SEEN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_operator_managed_tls_should_serve_stomp_ssl_replicate_and_roll_a_renewal_without_loss() -> Result<()> {
    let env = Env::start().await?;
    let result = scenario(&env).await;
    if result.is_err() {
        env.dump(NS, BG);
        let logs = env.kubectl(&["-n", "duomq-system", "logs", "deployment/duomq-operator", "--tail=60"]);
        eprintln!("$ kubectl -n duomq-system logs deployment/duomq-operator --tail=60\n{}", logs.unwrap_or_else(|e| e.to_string()));
    }
    env.shutdown().await;
    result
}

fn secret_text(secret: &Secret, key: &str) -> Result<String> {
    let bytes = secret.data.as_ref().and_then(|d| d.get(key)).with_context(|| format!("no {key} in the Secret"))?;
    Ok(String::from_utf8(bytes.0.clone())?)
}

async fn scenario(env: &Env) -> Result<()> {
    env.install_operator()?;
    env.kubectl(&["create", "namespace", NS])?;
    let client = env.kube_client().await?;
    let mut bg: BrokerGroup = serde_yaml::from_str(&std::fs::read_to_string(duomq_e2e::env::repo_root().join("manifests/examples/pair.yaml"))?)?;
    bg.spec.tls = Some(serde_json::from_value(serde_json::json!({"mode": "OperatorManaged"}))?);
    let groups: Api<BrokerGroup> = Api::namespaced(client.clone(), NS);
    groups.create(&PostParams::default(), &bg).await.context("create the BrokerGroup")?;
    let started = Instant::now();
    wait_ready(env, GROUP_AVAILABLE).await?;
    eprintln!("TLS pair Available and Replicated (backup synced over mutual TLS) after {:?}", started.elapsed());

    // The client trusts the CA of the Secret, nothing else.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let tls_secret = secrets.get(&names::tls_secret(BG)).await?;
    let dir = tempfile::tempdir()?;
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, secret_text(&tls_secret, names::TLS_CA_KEY)?)?;
    let address = env.stomp_address(NS, BG).await?;
    let options = ClientOptions {
        tls: TlsOptions { ca_file: Some(ca_file.clone()), server_name: Some(format!("{BG}.{NS}.svc")), ..TlsOptions::default() },
        receipt_timeout: Duration::from_secs(60),
        ..ClientOptions::default()
    };
    let plain = Client::connect(&format!("stomp://{address}"), ClientOptions { connect_timeout: Duration::from_secs(5), ..ClientOptions::default() }).await;
    ensure!(plain.is_err(), "plaintext STOMP to the TLS listener must be refused");
    let url = format!("stomp+ssl://{address}");
    let producer = connect_retrying(&url, &options).await?;
    let mut receipted = BTreeSet::new();
    for n in 0..BEFORE {
        let body = format!("before-{n}");
        producer.send(QUEUE, body.clone(), SendOptions { persistent: true, receipt: true, ..SendOptions::default() }).await.with_context(|| format!("send {body}"))?;
        receipted.insert(body);
    }
    producer.disconnect().await?;
    eprintln!("{BEFORE} receipted messages sent over stomp+ssl:// to {url} (checked as {BG}.{NS}.svc)");

    // Renewal: a certificate from the group's CA that expires in ten minutes, well within
    // the default renewBefore (720h).
    let ca_secret = secrets.get(&names::ca_secret(BG)).await?;
    let authority = Authority::from_pem(&secret_text(&ca_secret, names::TLS_CERT_KEY)?, &secret_text(&ca_secret, names::TLS_KEY_KEY)?)?;
    let members = duomq_operator::validate::group_models(BG, NS, &bg.spec);
    let mut leaf = Leaf::new(BG, Duration::from_secs(600));
    for name in duomq_operator::certificates::dns_names(BG, NS, &members) {
        leaf = leaf.dns(name);
    }
    let expiring = authority.issue(&leaf)?;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let checksum = |s: &StatefulSet| {
        s.spec.as_ref().and_then(|sp| sp.template.metadata.as_ref()).and_then(|m| m.annotations.as_ref()).and_then(|a| a.get(names::TLS_CHECKSUM_ANNOTATION).cloned())
    };
    let before = checksum(&sets.get("pair-g0").await?).context("the pod template carries the certificate checksum")?;
    let failovers_before = groups.get(BG).await?.status.map_or(0, |s| s.failovers);

    // Traffic across the roll, on a failover URL over TLS.
    let stop = CancellationToken::new();
    let flowing = tokio::spawn(produce(format!("failover:({url})?initialReconnectDelay=50ms&maxReconnectDelay=1s&maxReconnectAttempts=-1"), options.clone(), stop.clone()));

    let patch = serde_json::json!({"stringData": {names::TLS_CERT_KEY: expiring.cert_pem, names::TLS_KEY_KEY: expiring.key_pem}});
    let renewal = Instant::now();
    secrets.patch(&names::tls_secret(BG), &PatchParams::default(), &Patch::Merge(&patch)).await.context("write the expiring certificate")?;
    let renewed = wait_for("the operator to renew the certificate (a new pod-template checksum)", RENEWED, || {
        let text = env.kubectl(&["-n", NS, "get", "statefulset", "pair-g0", "-o", "jsonpath={.spec.template.metadata.annotations.duomq\\.io/tls-checksum}"]).ok()?;
        let now = text.trim().to_string();
        (!now.is_empty() && now != before).then_some(now)
    })
    .await?;
    eprintln!("renewed after {:?}: checksum {before} -> {renewed}", renewal.elapsed());
    // The Event is published after the apply that changed the template: look a few times.
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let deadline = Deadline::after("a CertificateRenewed Event", EVENT_SEEN);
    let notes = loop {
        let notes: Vec<String> = events.list(&ListParams::default()).await?.items.into_iter().filter(|e| e.reason.as_deref() == Some("CertificateRenewed")).filter_map(|e| e.note).collect();
        if !notes.is_empty() || deadline.passed() {
            break notes;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    ensure!(notes.len() == 1 && notes[0].contains("within renewBefore"), "one CertificateRenewed Event saying why: {notes:?}");
    eprintln!("Event CertificateRenewed: {}", notes[0]);
    let renewed_secret = secrets.get(&names::tls_secret(BG)).await?;
    ensure!(secret_text(&renewed_secret, names::TLS_CERT_KEY)? != expiring.cert_pem, "the Secret holds a new certificate");
    ensure!(secret_text(&renewed_secret, names::TLS_CA_KEY)? == authority.pem().cert_pem, "from the same CA");
    let renewed_cert = secret_text(&renewed_secret, names::TLS_CERT_KEY)?;

    // Every member restarts onto it; Available and Replicated again, with no failover.
    // The StatefulSet updates on delete (the operator deletes the pods in its order), so its
    // currentRevision stays behind, as Kubernetes' does: the pods' revisions tell.
    wait_for("every member restarted onto the renewed certificate", ROLLED, || {
        let s = env.json(&["-n", NS, "get", "statefulset", "pair-g0"]).ok()?;
        let update = s["status"]["updateRevision"].as_str()?.to_string();
        let pods = env.json(&["-n", NS, "get", "pods", "-l", "duomq.io/group=pair-g0"]).ok()?;
        let items = pods["items"].as_array()?;
        let rolled = items.len() == 2
            && items.iter().all(|p| {
                p["metadata"]["labels"]["controller-revision-hash"] == update.as_str()
                    && p["metadata"]["deletionTimestamp"].is_null()
                    && p["status"]["containerStatuses"][0]["ready"] == true
            });
        rolled.then_some(())
    })
    .await?;
    wait_ready(env, ROLLED).await?;
    let now_in_use = secret_text(&secrets.get(&names::tls_secret(BG)).await?, names::TLS_CERT_KEY)?;
    ensure!(now_in_use == renewed_cert, "renewed once: the certificate issued for the expiring one is still the one in use");
    eprintln!("rolled onto the renewed certificate {:?} after it was written", renewal.elapsed());
    stop.cancel();
    let (sent_during, failed) = flowing.await??;
    ensure!(failed == 0, "{failed} sends failed during the roll");
    let status = groups.get(BG).await?.status.context("a status")?;
    ensure!(status.failovers == failovers_before, "no failover: {} before, {} after", failovers_before, status.failovers);
    ensure!(status.tls.as_ref().and_then(|t| t.renewed_at.as_ref()).is_some(), "status.tls.renewedAt set: {:?}", status.tls);
    eprintln!("{} messages receipted during the roll; failovers {}, switchovers {}", sent_during.len(), status.failovers, status.switchovers);
    receipted.extend(sent_during);

    // Every receipted message is still there, over TLS with the same CA file.
    let consumer = connect_retrying(&url, &options).await?;
    let mut sub = consumer.subscribe_with(QUEUE, SubscribeOptions { ack: AckMode::ClientIndividual, prefetch: None, headers: Vec::new() }).await?;
    let mut got = BTreeSet::new();
    let deadline = Deadline::after("every receipted message consumed", DRAINED);
    while !receipted.is_subset(&got) {
        let Ok(Some(m)) = tokio::time::timeout(deadline.left(), sub.recv()).await else {
            bail!("{} of {} receipted messages consumed; missing e.g. {:?}", got.len(), receipted.len(), receipted.difference(&got).next());
        };
        consumer.ack(&m).await?;
        got.insert(String::from_utf8_lossy(&m.body).to_string());
    }
    eprintln!("all {} receipted messages consumed after the renewal", receipted.len());
    consumer.disconnect().await?;
    Ok(())
}

async fn wait_ready(env: &Env, timeout: Duration) -> Result<()> {
    common::wait_for_brokergroup(env, NS, BG, "the TLS pair Available and Replicated", timeout, |bg| {
        condition(bg, "Available").as_deref() == Some("True") && condition(bg, "Replicated").as_deref() == Some("True")
    })
    .await?;
    Ok(())
}

async fn connect_retrying(url: &str, options: &ClientOptions) -> Result<Client> {
    let client = eventually_ok_every(&format!("a connection to {url}"), timeouts::CONNECT, Duration::from_millis(500), || {
        let options = options.clone();
        async move {
            let connected = Client::connect(url, options).await;
            if let Err(e) = &connected {
                eprintln!("connect {url}: {e:#} (retrying)");
            }
            connected
        }
    })
    .await?;
    Ok(client)
}

/// Sends receipted persistent messages `during-N` until stopped; the receipted ones and the
/// count of failed sends.
async fn produce(url: String, options: ClientOptions, stop: CancellationToken) -> Result<(BTreeSet<String>, usize)> {
    let client = connect_retrying(&url, &options).await?;
    let mut receipted = BTreeSet::new();
    let mut failed = 0;
    let mut n = 0;
    while !stop.is_cancelled() {
        let body = format!("during-{n}");
        n += 1;
        match client.send(QUEUE, body.clone(), SendOptions { persistent: true, receipt: true, ..SendOptions::default() }).await {
            Ok(()) => {
                receipted.insert(body);
            }
            Err(e) => {
                eprintln!("send {body}: {e:#}");
                failed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = client.disconnect().await;
    Ok((receipted, failed))
}
