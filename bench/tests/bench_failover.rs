//! Runs `duomq-bench failover` as a process against a real duomq live/backup pair
//! (replication, fileLock arbiter) in a temp dir on free loopback ports: the bench kills
//! the live member twice and restarts it with the member's start script. Member logs and
//! the bench's stderr are printed when the test fails.

mod common;

use anyhow::{bail, Context};
use common::{bench_json, broker_binary, reserve_port};
use duomq_broker::admin::client::AdminClient;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use duomq_testkit::timeouts::ROLE as ROLE_TIMEOUT;

struct Member {
    name: &'static str,
    dir: PathBuf,
    stomp: u16,
    admin: u16,
    cluster: u16,
}

impl Member {
    fn new(root: &Path, name: &'static str) -> anyhow::Result<Member> {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("data"))?;
        Ok(Member { name, dir, stomp: reserve_port(), admin: reserve_port(), cluster: reserve_port() })
    }

    /// Writes broker.yaml and start.sh (the restart command the bench runs too).
    fn write_files(&self, role: &str, root: &Path, peers: &[&Member]) -> anyhow::Result<()> {
        let members: String = peers
            .iter()
            .map(|p| {
                format!("    - name: {}\n      cluster: 127.0.0.1:{}\n      stomp: 127.0.0.1:{}\n", p.name, p.cluster, p.stomp)
            })
            .collect();
        let config = format!(
            "node:\n  id: {name}\nstomp:\n  listen: 127.0.0.1:{stomp}\nadmin:\n  listen: 127.0.0.1:{admin}\n\
             storage:\n  dataDir: {data}\nha:\n  policy: replication\n  role: {role}\n  groupName: bench\n  \
             checkPeriod: 100ms\n  connectionTtl: 1s\n  cluster:\n    listen: 127.0.0.1:{cluster}\n    \
             passwordFile: {pw}\n  members:\n{members}  arbiter:\n    kind: fileLock\n    lockFile: {lock}\n",
            name = self.name,
            stomp = self.stomp,
            admin = self.admin,
            cluster = self.cluster,
            data = self.dir.join("data").display(),
            pw = root.join("password").display(),
            lock = root.join("live.lock").display(),
        );
        std::fs::write(self.dir.join("broker.yaml"), config)?;
        let script = format!(
            "#!/bin/sh\n'{broker}' run --config '{dir}/broker.yaml' </dev/null >>'{dir}/broker.log' 2>&1 &\necho $! >'{dir}/pid'\n",
            broker = broker_binary()?.display(),
            dir = self.dir.display(),
        );
        std::fs::write(self.start_script(), script)?;
        std::fs::set_permissions(self.start_script(), std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    fn start_script(&self) -> PathBuf {
        self.dir.join("start.sh")
    }

    fn start(&self) -> anyhow::Result<()> {
        let status = Command::new("sh").arg(self.start_script()).status()?;
        if !status.success() {
            bail!("start.sh of {} exited with {status}", self.name);
        }
        Ok(())
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("pid")).ok()?.trim().parse().ok()
    }

    fn wait_for(&self, what: &str, check: impl Fn(&serde_json::Value) -> bool) -> anyhow::Result<()> {
        // The members have a cluster password: /status is signed with it.
        let client = AdminClient::new(&format!("127.0.0.1:{}", self.admin))?.with_password_file(&self.password_file())?;
        let admin = duomq_testkit::admin::Admin::with_client(client);
        duomq_testkit::eventually(&format!("{} {what}", self.name), ROLE_TIMEOUT, || admin.status_json().ok().as_ref().is_some_and(&check));
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }

    /// The pair's cluster password file, next to the members' directories.
    fn password_file(&self) -> PathBuf {
        self.dir.parent().map_or_else(|| PathBuf::from("password"), |root| root.join("password"))
    }

    fn member_args(&self) -> [String; 4] {
        [
            "--member".into(),
            format!("{}={}:{}", self.name, self.dir.join("pid").display(), self.start_script().display()),
            "--member-admin".into(),
            format!("{}=http://127.0.0.1:{}", self.name, self.admin),
        ]
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(pid) = self.pid().filter(|&p| p > 0) {
            // SAFETY: kill(2) on the pid this test's start script wrote.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if std::thread::panicking() {
            eprintln!("--- member {} log ---\n{}", self.name, self.log());
        }
    }
}

#[test]
fn given_duomq_pair_when_live_killed_twice_should_report_gaps_and_lose_nothing() -> anyhow::Result<()> {
    let root = tempfile::Builder::new().prefix("duomq-bench-failover-").tempdir()?;
    std::fs::write(root.path().join("password"), "a-long-random-bench-password\n")?;
    let a = Member::new(root.path(), "a")?;
    let b = Member::new(root.path(), "b")?;
    a.write_files("primary", root.path(), &[&a, &b])?;
    b.write_files("backup", root.path(), &[&a, &b])?;
    a.start()?;
    a.wait_for("live", |s| s["role"] == "live")?;
    b.start()?;
    b.wait_for("a synced backup", |s| s["role"] == "backup" && s["ha"]["sync"]["state"] == "synced")?;

    let url = format!(
        "failover:(stomp://127.0.0.1:{},stomp://127.0.0.1:{})?initialReconnectDelay=10ms&maxReconnectDelay=200ms&maxReconnectAttempts=-1",
        a.stomp, b.stomp
    );
    let mut args: Vec<String> =
        ["failover", "--url", &url, "--kills", "2", "--kill-every", "1s", "--size", "256", "--json"]
            .map(String::from)
            .into();
    args.extend(a.member_args());
    args.extend(b.member_args());
    args.extend(["--admin-password-file".to_string(), a.password_file().display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = bench_json(&args)?;

    assert_eq!(report["kills"], 2, "{report}");
    let killed: Vec<&str> = report["per_kill"].as_array().context("no per_kill")?.iter().filter_map(|k| k["member"].as_str()).collect();
    assert_eq!(killed, ["a", "b"], "the live moves to the other member and back: {report}");
    assert!(report["gap_ms"]["max"].as_f64().is_some_and(|ms| ms > 0.0), "{report}");
    assert!(report["confirmed"].as_u64().is_some_and(|n| n > 0), "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["errors"].as_array().map(Vec::len), Some(0), "{report}");
    Ok(())
}
