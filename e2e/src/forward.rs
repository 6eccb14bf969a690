//! Reaching pods and Services of any cluster from this machine with `kubectl port-forward`
//! only: [`PortForward`] is one kubectl child forwarding a free loopback port, and
//! [`Forwarder`] a loopback address that stays the same while what it forwards to changes:
//! it starts kubectl again when the last one stopped (kubectl ends its forwarding at the
//! first error, e.g. once the pod is gone) and, for a Service, when the Service's ready pod
//! is another one (kubectl resolves a Service to one pod, once).
//!
//! It must not reach pods any other way (no pod IPs, no Docker): it is what scenarios use on
//! a cluster they know nothing about but its kubeconfig.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// From starting kubectl to its "Forwarding from" line: it reads the pod and upgrades a
/// connection to the API server first.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Least time between two starts of kubectl for one [`Forwarder`]: a pod that is gone makes
/// each start fail, and clients retry fast.
const RESTART_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, Error)]
pub enum ForwardError {
    #[error("failed to run {command}")]
    Spawn { command: String, source: std::io::Error },
    #[error("kubectl port-forward {target} stopped before forwarding: {output}")]
    Exited { target: String, output: String },
    #[error("kubectl port-forward {target} printed no \"Forwarding from\" line within {after:?}")]
    Timeout { target: String, after: Duration },
    #[error("failed to read the output of kubectl port-forward {target}")]
    Output { target: String, source: std::io::Error },
    #[error("failed to listen on a loopback port")]
    Listen(#[source] std::io::Error),
    #[error("failed to find the pods of service {service}: {output}")]
    Service { service: String, output: String },
}

/// A running `kubectl port-forward` of one port, on a loopback port kubectl picked. Dropping
/// it kills kubectl.
pub struct PortForward {
    child: Child,
    local: SocketAddr,
    target: String,
}

impl PortForward {
    /// Starts `kubectl port-forward <target> :<port>` in `namespace` (`target` as kubectl
    /// takes it: `pod/name`, `service/name`) and waits until it forwards.
    pub async fn start(kubeconfig: &Path, namespace: &str, target: &str, port: u16) -> Result<PortForward, ForwardError> {
        Self::spawn(Self::command(kubeconfig, namespace, target, port), target).await
    }

    /// The kubectl command [`PortForward::start`] runs, to add to (e.g. an environment
    /// variable) before [`PortForward::spawn`].
    pub fn command(kubeconfig: &Path, namespace: &str, target: &str, port: u16) -> Command {
        let mut command = Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["-n", namespace, "port-forward", "--address", "127.0.0.1", target, &format!(":{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs a kubectl port-forward `command` and waits until it forwards.
    pub async fn spawn(mut command: Command, target: &str) -> Result<PortForward, ForwardError> {
        let shown = format!("{:?}", command.as_std());
        let mut child = command.spawn().map_err(|source| ForwardError::Spawn { command: shown, source })?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(ForwardError::Exited { target: target.to_string(), output: "no output pipes".into() });
        };
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(local) = forwarding_from(&line) {
                    return Ok(Some(local));
                }
            }
            Ok(None)
        })
        .await;
        let local = match found {
            Ok(Ok(Some(local))) => local,
            Ok(Ok(None)) => {
                let mut output = String::new();
                BufReader::new(stderr).read_to_string(&mut output).await.ok();
                return Err(ForwardError::Exited { target: target.to_string(), output: output.trim().to_string() });
            }
            Ok(Err(source)) => return Err(ForwardError::Output { target: target.to_string(), source }),
            Err(_) => return Err(ForwardError::Timeout { target: target.to_string(), after: START_TIMEOUT }),
        };
        // kubectl prints a line per connection and its errors: read them so it never
        // blocks on a full pipe, and keep them for the debug log.
        tokio::spawn(log_lines(target.to_string(), lines));
        tokio::spawn(log_lines(target.to_string(), BufReader::new(stderr).lines()));
        debug!(%target, %local, "kubectl port-forward started");
        Ok(PortForward { child, local, target: target.to_string() })
    }

    /// Where this machine connects to reach the forwarded port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether kubectl has stopped forwarding (it exits at the first error).
    pub fn stopped(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        if self.child.start_kill().is_ok() {
            debug!(target = %self.target, "kubectl port-forward stopped");
        }
    }
}

/// The local address of kubectl's `Forwarding from 127.0.0.1:40123 -> 61613` line.
fn forwarding_from(line: &str) -> Option<SocketAddr> {
    let rest = line.strip_prefix("Forwarding from ")?;
    rest.split(" -> ").next()?.parse().ok()
}

async fn log_lines<R: tokio::io::AsyncBufRead + Unpin>(target: String, mut lines: tokio::io::Lines<R>) {
    while let Ok(Some(line)) = lines.next_line().await {
        debug!(%target, %line, "kubectl port-forward");
    }
}

/// What a [`Forwarder`] forwards to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A pod by name (a StatefulSet's pod comes back under the same name).
    Pod(String),
    /// A Service: one of its ready pods, looked up again for each new connection.
    Service(String),
}

/// A loopback address that forwards each connection, through `kubectl port-forward`, to
/// the current pod of a [`Target`]. A connection that cannot be forwarded is closed, as a
/// Service without endpoints would refuse it. Dropping it stops kubectl.
pub struct Forwarder {
    local: SocketAddr,
    stop: CancellationToken,
}

struct Upstream {
    kubeconfig: PathBuf,
    namespace: String,
    target: Target,
    port: u16,
    /// The Service's selector, read once.
    selector: Option<String>,
    current: Option<(String, PortForward)>,
    last_start: Option<Instant>,
}

impl Forwarder {
    pub async fn start(kubeconfig: &Path, namespace: &str, target: Target, port: u16) -> Result<Forwarder, ForwardError> {
        let selector = match &target {
            Target::Service(name) => Some(service_selector(kubeconfig, namespace, name).await?),
            Target::Pod(_) => None,
        };
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.map_err(ForwardError::Listen)?;
        let local = listener.local_addr().map_err(ForwardError::Listen)?;
        info!(%namespace, ?target, port, %local, "forwarding through kubectl port-forward");
        let upstream = Arc::new(Mutex::new(Upstream {
            kubeconfig: kubeconfig.to_path_buf(),
            namespace: namespace.to_string(),
            target,
            port,
            selector,
            current: None,
            last_start: None,
        }));
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, upstream, stop.clone()));
        Ok(Forwarder { local, stop })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(listener: TcpListener, upstream: Arc<Mutex<Upstream>>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let Ok((mut client, _)) = accepted else { continue };
        let upstream = upstream.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let Some(mut server) = upstream.lock().await.connect().await else {
                return;
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            }
        });
    }
    // Ends kubectl with the last reference.
    upstream.lock().await.current = None;
}

impl Upstream {
    /// A connection to the forwarded port of the target's current pod, starting kubectl
    /// when none runs for that pod.
    async fn connect(&mut self) -> Option<TcpStream> {
        let pod = match (&self.target, &self.selector) {
            (Target::Service(service), Some(selector)) => match ready_pod(&self.kubeconfig, &self.namespace, selector).await {
                Some(pod) => pod,
                None => {
                    debug!(namespace = %self.namespace, %service, "no ready pod behind the service");
                    return None;
                }
            },
            (Target::Pod(pod), _) | (Target::Service(pod), None) => pod.clone(),
        };
        if let Some((current, forward)) = &mut self.current {
            if *current != pod || forward.stopped() {
                self.current = None;
            }
        }
        if self.current.is_none() {
            if let Some(pause) = self.last_start.and_then(|at| RESTART_PAUSE.checked_sub(at.elapsed())) {
                tokio::time::sleep(pause).await;
            }
            self.last_start = Some(Instant::now());
            match PortForward::start(&self.kubeconfig, &self.namespace, &format!("pod/{pod}"), self.port).await {
                Ok(forward) => self.current = Some((pod, forward)),
                Err(error) => {
                    debug!(namespace = %self.namespace, %pod, %error, "kubectl port-forward did not start");
                    return None;
                }
            }
        }
        let (_, forward) = self.current.as_ref()?;
        match TcpStream::connect(forward.local_addr()).await {
            Ok(stream) => Some(stream),
            Err(_) => {
                self.current = None;
                None
            }
        }
    }
}

async fn kubectl_json(kubeconfig: &Path, args: &[&str]) -> Result<Value, String> {
    let output = Command::new("kubectl").arg("--kubeconfig").arg(kubeconfig).args(args).args(["-o", "json"]).output().await.map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
}

/// `app=x,role=live`: the Service's selector as a label selector.
async fn service_selector(kubeconfig: &Path, namespace: &str, service: &str) -> Result<String, ForwardError> {
    let fail = |output: String| ForwardError::Service { service: format!("{namespace}/{service}"), output };
    let svc = kubectl_json(kubeconfig, &["-n", namespace, "get", "service", service]).await.map_err(fail)?;
    let selector = svc["spec"]["selector"].as_object().filter(|s| !s.is_empty()).ok_or_else(|| fail("it has no selector".into()))?;
    Ok(selector.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
}

/// The first (by name) pod matching `selector` that is ready and not being deleted: what a
/// Service's endpoints hold.
async fn ready_pod(kubeconfig: &Path, namespace: &str, selector: &str) -> Option<String> {
    let pods = kubectl_json(kubeconfig, &["-n", namespace, "get", "pods", "-l", selector]).await.ok()?;
    let mut ready: Vec<String> = pods["items"]
        .as_array()?
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| p["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")))
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect();
    ready.sort();
    ready.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_kubectl_output_should_find_the_local_address_of_the_forwarding_line() {
        assert_eq!(forwarding_from("Forwarding from 127.0.0.1:40123 -> 61613"), Some("127.0.0.1:40123".parse().expect("address")));
        assert_eq!(forwarding_from("Forwarding from [::1]:40123 -> 61613"), Some("[::1]:40123".parse().expect("address")));
        assert_eq!(forwarding_from("Handling connection for 61613"), None);
    }
}
