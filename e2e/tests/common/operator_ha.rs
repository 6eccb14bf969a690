//! What the operator high-availability tests share: `duomq-operator run` as a real process
//! (its bound health/metrics address read from its log, its role read from its metrics),
//! and a TCP proxy between one process and the API server that can be cut, as a network
//! partition between one replica and the control plane would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use duomq_testkit::Deadline;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// From spawning `duomq-operator run` to its "duomq-operator starting" log line.
const STARTED_TIMEOUT: Duration = Duration::from_secs(30);
/// One scrape of a process's metrics.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// One `duomq-operator run` process, logging to a file.
pub struct OperatorProcess {
    pub identity: String,
    child: Child,
    log: PathBuf,
    /// Its health and metrics endpoint.
    pub http: SocketAddr,
}

impl OperatorProcess {
    /// Starts `duomq-operator run --listen 127.0.0.1:0 <args>` with `POD_NAME=identity` and
    /// `envs` against the cluster of `kubeconfig`, and waits until it serves its endpoint.
    pub async fn start(binary: &Path, kubeconfig: &Path, identity: &str, args: &[&str], envs: &[(&str, &str)], log: &Path) -> Result<OperatorProcess> {
        let file = std::fs::File::create(log).with_context(|| format!("failed to create {}", log.display()))?;
        let err = file.try_clone()?;
        let child = Command::new(binary)
            .args(["run", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info,kube=warn,duomq_operator::controller=warn")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .with_context(|| format!("failed to run {}", binary.display()))?;
        let mut process = OperatorProcess { identity: identity.to_string(), child, log: log.to_path_buf(), http: "0.0.0.0:0".parse()? };
        let deadline = Deadline::after(format!("{identity} serving its endpoint"), STARTED_TIMEOUT);
        loop {
            if let Some(addr) = process.log_text().lines().filter(|l| l.contains("duomq-operator starting")).find_map(listen_field) {
                process.http = addr;
                return Ok(process);
            }
            if let Some(status) = process.child.try_wait()? {
                bail!("{identity} exited ({status}) before serving:\n{}", process.log_text());
            }
            if deadline.passed() {
                bail!("{identity} did not start within {:?}:\n{}", deadline.timeout(), process.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the process reports itself leader (`duomq_operator_leader 1`); false when
    /// it reports 0, does not answer or has exited: it does not act then.
    pub async fn leads(&self) -> bool {
        leads_at(self.http).await
    }

    /// The body of `/readyz`.
    pub async fn readyz(&self) -> Result<String> {
        let body = get(self.http, "/readyz").await?;
        Ok(body.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_string())
    }

    /// `kill -9`.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill().context("failed to kill the operator")?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, as the kubelet stops a container.
    pub fn terminate(&self) -> Result<()> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().context("failed to run kill")?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.child.id());
        Ok(())
    }

    /// The exit status, once the process exited by itself within `timeout`.
    pub async fn exited_within(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Deadline::after(format!("{} exiting", self.identity), timeout);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if deadline.passed() {
                bail!("{} still runs after {:?}:\n{}", self.identity, deadline.timeout(), self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// [`OperatorProcess::leads`] of the process serving `addr`.
pub async fn leads_at(addr: SocketAddr) -> bool {
    match get(addr, "/metrics").await {
        Ok(body) => body.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["duomq_operator_leader", "1"]),
        Err(_) => false,
    }
}

/// `listen=127.0.0.1:4711` in a log line.
fn listen_field(line: &str) -> Option<SocketAddr> {
    line.split_whitespace().find_map(|w| w.strip_prefix("listen=")).and_then(|a| a.parse().ok())
}

/// One HTTP/1.1 GET; the whole response, headers included.
async fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        anyhow::Ok(body)
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, exchange).await.context("no answer")?
}

/// A loopback TCP proxy to `upstream`. While cut, it forwards nothing in either direction
/// and holds every connection open (the client sees its own timeouts, as with dropped
/// packets); restored, it forwards again.
pub struct CutProxy {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    stop: CancellationToken,
}

impl CutProxy {
    pub async fn start(upstream: SocketAddr) -> Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = watch::Sender::new(false);
        let stop = CancellationToken::new();
        let (cut_rx, stop2) = (cut.subscribe(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop2.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                tokio::spawn(forward(client, upstream, cut_rx.clone(), stop2.clone()));
            }
        });
        Ok(CutProxy { addr, cut, stop })
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, cut: watch::Receiver<bool>, stop: CancellationToken) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = pump(&mut cr, &mut sw, cut.clone()) => {}
        _ = pump(&mut sr, &mut cw, cut) => {}
    }
}

/// Copies `from` to `to`, waiting while cut before reading and before writing.
async fn pump(from: &mut (impl AsyncReadExt + Unpin), to: &mut (impl AsyncWriteExt + Unpin), mut cut: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if cut.wait_for(|c| !c).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.wait_for(|c| !c).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
