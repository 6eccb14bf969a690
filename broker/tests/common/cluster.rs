//! Members of replicated groups as real processes: fixed ports chosen once so peers can
//! name each other across restarts, an optional network namespace for partition tests,
//! and polling of `/status` with a named timeout.

use super::{reserve_port, http_get_admin};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use duomq_testkit::timeouts::UNDER_WAY;
use duomq_testkit::{eventually, Deadline};
use duomq_testkit::process::wait_within;
use duomq_testkit::timeouts::STOP;

/// How long a role change may take (detection, arbiter, journal recovery).
pub use duomq_testkit::timeouts::ROLE as ROLE_TIMEOUT;

/// A replicated pair of group `g1` as real processes: `node-a` live, `node-b` a synced
/// backup, their cluster password `password` in the returned directory (drop it last).
pub fn synced_pair(prefix: &str, password: &str) -> (tempfile::TempDir, Member, Member) {
    synced_pair_with(prefix, password, "")
}

/// [`synced_pair`] with `extra` (top-level YAML, as `addressSettings:\n  - ...`) in both
/// members' configs.
pub fn synced_pair_with(prefix: &str, password: &str, extra: &str) -> (tempfile::TempDir, Member, Member) {
    let root = tempfile::Builder::new().prefix(prefix).tempdir().expect("tempdir");
    std::fs::write(root.path().join("password"), format!("{password}\n")).expect("write the password file");
    let mut live = Member::new(root.path(), "node-a");
    let mut backup = Member::new(root.path(), "node-b");
    live.start(&[backup.peer()], "primary", extra, root.path(), "g1", "password");
    live.wait_live();
    backup.start(&[live.peer()], "backup", extra, root.path(), "g1", "password");
    backup.wait_synced_backup();
    (root, live, backup)
}

/// How a member is named in its peers' configs.
#[derive(Debug, Clone)]
pub struct Peer {
    pub name: String,
    pub cluster: String,
    pub stomp: String,
    /// Its AMQP address (`ha.members[].amqp`), empty when not named.
    pub amqp: String,
}

pub struct Member {
    pub name: String,
    pub dir: PathBuf,
    /// Address every listener of this member binds.
    pub ip: String,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    pub stomp: u16,
    pub admin: u16,
    pub cluster: u16,
    /// Where `amqp.listen` points.
    pub amqp: u16,
    /// Runs the AMQP listener (`amqp.enabled`) and names it to its peers.
    pub amqp_enabled: bool,
    /// The `arbiter:` block (indented for `ha:`); a shared lock file by default.
    pub arbiter: String,
    /// Extra environment of the process (`KUBECONFIG`, `POD_NAMESPACE`).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Member {
    pub fn new(root: &Path, name: &str) -> Member {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("member dir");
        Member {
            name: name.into(),
            dir,
            ip: "127.0.0.1".into(),
            netns: None,
            stomp: reserve_port(),
            admin: reserve_port(),
            cluster: reserve_port(),
            amqp: reserve_port(),
            amqp_enabled: false,
            arbiter: format!("  arbiter:\n    kind: fileLock\n    lockFile: {}\n", root.join("live.lock").display()),
            env: Vec::new(),
            child: None,
        }
    }

    pub fn peer(&self) -> Peer {
        let amqp = if self.amqp_enabled { format!("{}:{}", self.ip, self.amqp) } else { String::new() };
        Peer { name: self.name.clone(), cluster: self.cluster_addr(), stomp: self.stomp_addr(), amqp }
    }

    pub fn stomp_addr(&self) -> String {
        format!("{}:{}", self.ip, self.stomp)
    }

    pub fn cluster_addr(&self) -> String {
        format!("{}:{}", self.ip, self.cluster)
    }

    /// Writes the config (peers, password file, arbiter) and starts the process.
    pub fn start(&mut self, peers: &[Peer], role: &str, extra: &str, root: &Path, group: &str, password_file: &str) {
        let config = format!(
            "{listeners}storage:\n  dataDir: {data}\n\
             ha:\n  policy: replication\n  role: {role}\n  groupName: {group}\n  checkPeriod: 100ms\n  connectionTtl: 1s\n  cluster:\n    listen: {ip}:{cluster}\n    passwordFile: {pw}\n  members:\n{members}{arbiter}{extra}",
            listeners = self.listeners(),
            ip = self.ip,
            data = self.dir.join("data").display(),
            cluster = self.cluster,
            pw = root.join(password_file).display(),
            members = members_yaml(peers),
            arbiter = self.arbiter,
        );
        self.launch(&config);
    }

    /// Starts a shared-store member on `data_dir`, which its peers use too.
    pub fn start_shared_store(&mut self, data_dir: &Path, peers: &[Peer], role: &str, group: &str) {
        self.start_shared_store_with(data_dir, peers, role, group, "");
    }

    /// [`Member::start_shared_store`] with `extra` appended to the `ha:` section (indented
    /// two spaces, as `  cluster:\n    password: ...\n`).
    pub fn start_shared_store_with(&mut self, data_dir: &Path, peers: &[Peer], role: &str, group: &str, extra: &str) {
        let config = format!(
            "{listeners}storage:\n  dataDir: {data}\nha:\n  policy: sharedStore\n  role: {role}\n  groupName: {group}\n  arbiter:\n    retryInterval: 100ms\n  members:\n{members}{extra}",
            listeners = self.listeners(),
            data = data_dir.display(),
            members = members_yaml(peers),
        );
        self.launch(&config);
    }

    /// A signed `POST` of `body` to this member's admin `path`; `None` sends it unsigned.
    pub fn admin_post(&self, path: &str, body: &str, password: Option<&str>) -> (u16, String) {
        super::signed_post(&self.ip, self.admin, path, body, password)
    }

    /// Starts a member of a shared-database group (`storage.store: database`) on `url`,
    /// with short lease timings (duration 3s, renewal every 500ms, backups polling every
    /// 200ms). `extra_yaml` is merged over the generated config, key by key, so a test can
    /// change any of it (`storage:\n  database:\n    lease:\n      duration: 5s\n`) without
    /// repeating a key.
    pub fn start_shared_database(&mut self, url: &str, peers: &[Peer], role: &str, group: &str, extra_yaml: &str) {
        let generated = format!(
            "{listeners}storage:\n  dataDir: {data}\n  store: database\n  database:\n    url: {url}\n    \
             lease:\n      duration: 3s\n      renewInterval: 500ms\n      pollInterval: 200ms\n\
             ha:\n  policy: sharedStore\n  role: {role}\n  groupName: {group}\n  members:\n{members}",
            listeners = self.listeners(),
            data = self.dir.join("data").display(),
            url = serde_json::to_string(url).expect("quote the URL"),
            members = if peers.is_empty() { "    []\n".to_string() } else { members_yaml(peers) },
        );
        let mut config: serde_yaml::Value = serde_yaml::from_str(&generated).expect("generated config is YAML");
        if !extra_yaml.trim().is_empty() {
            let extra: serde_yaml::Value = serde_yaml::from_str(extra_yaml).expect("extra_yaml is YAML");
            merge_yaml(&mut config, extra);
        }
        self.launch(&serde_yaml::to_string(&config).expect("config to YAML"));
    }

    /// The process id, while the member runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The exit status once the process has ended (without waiting); None while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn listeners(&self) -> String {
        format!(
            "node:\n  id: {name}\nstomp:\n  listen: {ip}:{stomp}\nadmin:\n  listen: {ip}:{admin}\n{amqp}",
            name = self.name,
            ip = self.ip,
            stomp = self.stomp,
            admin = self.admin,
            amqp = if self.amqp_enabled { format!("amqp:\n  enabled: true\n  listen: {}:{}\n", self.ip, self.amqp) } else { String::new() },
        )
    }

    /// The config file the member runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("broker.yaml")
    }

    fn launch(&mut self, config: &str) {
        let path = self.config_path();
        std::fs::write(&path, config).expect("write config");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("broker.log")).expect("log");
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(env!("CARGO_BIN_EXE_duomq-broker"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_duomq-broker")),
        };
        command
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "duomq_broker=debug,info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(command.spawn().expect("spawn broker"));
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (up to [`STOP`]) for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("member running");
        // SAFETY: a signal to a child process this harness started and still owns.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        wait_within(&mut child, STOP).unwrap_or_else(|e| panic!("{} after SIGTERM: {e}; log:\n{}", self.name, self.log()))
    }

    /// `/status`, signed with the cluster password of this member's config (if any).
    pub fn status(&self) -> Option<serde_json::Value> {
        let (code, body) = http_get_admin(&self.ip, self.admin, "/status", &self.config_path()).ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// `/readyz`: the status code and the one-line reason.
    pub fn readyz(&self) -> (u16, String) {
        http_get_admin(&self.ip, self.admin, "/readyz", &self.config_path()).unwrap_or((0, "unreachable".into()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }

    /// Polls /status until `check` holds.
    /// (The member's log is printed when the failed test drops it.)
    pub fn wait_for(&self, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
        eventually(&format!("{} becoming {what}", self.name), ROLE_TIMEOUT, || self.status().is_some_and(|s| check(&s)));
    }

    /// Waits until this member has taken `count` messages into `queue` (`enqueuedTotal`): a
    /// producer well under way, so a fault lands mid-stream. After [`UNDER_WAY`] it goes on
    /// anyway.
    pub fn wait_under_way(&self, queue: &str, count: u64) {
        let patience = Deadline::after(format!("{count} messages into {queue}"), UNDER_WAY);
        self.wait_for("busy", |s| {
            let enqueued = s["queues"].as_array().and_then(|q| q.iter().find(|q| q["name"] == queue)).and_then(|q| q["enqueuedTotal"].as_u64());
            enqueued.unwrap_or(0) >= count || patience.passed()
        });
    }

    pub fn wait_live(&self) {
        self.wait_for("live", |s| s["role"] == "live");
    }

    /// Polls `/readyz` until it answers 200.
    pub fn wait_ready(&self) {
        eventually(&format!("{} answering /readyz 200", self.name), ROLE_TIMEOUT, || self.readyz().0 == 200);
    }

    /// Replaces this member's fault rules (it runs with `debug.faultInjection: true`).
    pub fn set_faults(&self, rules: &duomq_broker::faults::FaultRules) {
        super::set_faults(&self.ip, self.admin, &self.config_path(), rules);
    }

    /// Removes this member's fault rules.
    pub fn clear_faults(&self) {
        super::clear_faults(&self.ip, self.admin, &self.config_path());
    }

    /// This member's fault rules and what each did.
    pub fn fault_status(&self) -> duomq_broker::faults::FaultsStatus {
        super::fault_status(&self.ip, self.admin, &self.config_path())
    }

    pub fn wait_synced_backup(&self) {
        self.wait_for("a synced backup", |s| s["role"] == "backup" && s["ha"]["sync"]["state"] == "synced");
    }
}

fn members_yaml(peers: &[Peer]) -> String {
    peers
        .iter()
        .map(|p| {
            let amqp = if p.amqp.is_empty() { String::new() } else { format!("      amqp: {}\n", p.amqp) };
            format!("    - name: {}\n      cluster: {}\n      stomp: {}\n{amqp}", p.name, p.cluster, p.stomp)
        })
        .collect()
}

/// Merges `extra` into `base`: mappings key by key (recursively), anything else replaced.
fn merge_yaml(base: &mut serde_yaml::Value, extra: serde_yaml::Value) {
    match (base, extra) {
        (serde_yaml::Value::Mapping(base), serde_yaml::Value::Mapping(extra)) => {
            for (key, value) in extra {
                match base.get_mut(&key) {
                    Some(existing) => merge_yaml(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, extra) => *base = extra,
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log());
        }
    }
}
