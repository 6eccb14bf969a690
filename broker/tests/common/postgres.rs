//! A real PostgreSQL server per test, for the database store: Debian's binaries
//! (`/usr/lib/postgresql/<newest>/bin`), a fresh cluster in a temp dir, listening on
//! loopback on a free port with its unix socket in its own dir, and one database with a
//! password (SCRAM) user for duomq. Running as root (CI), the server runs as the
//! `postgres` system user the Debian package creates; otherwise as the current user.
//! Faults: [`Postgres::kill9`] is an immediate stop (no checkpoint: crash recovery on the
//! next start), [`Postgres::start_again`] brings the same cluster back on the same port.
//! The server is stopped immediately on drop; the log tail is printed when a test panics.

use super::{reserve_port, output_within};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// How long initdb, a start or a stop may take.
pub use duomq_testkit::timeouts::DATABASE as PG_TIMEOUT;
/// The superuser, reachable over the unix socket without a password.
const SUPERUSER: &str = "postgres";
/// The system user that runs the server when the test runs as root.
const SYSTEM_USER: &str = "postgres";

pub struct Postgres {
    pub name: String,
    /// The temp dir holding everything below.
    pub dir: PathBuf,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    /// duomq's login, its password and its database.
    pub user: String,
    pub password: String,
    pub database: String,
    bin: PathBuf,
    /// `Some("postgres")` when the test runs as root.
    run_as: Option<String>,
    running: bool,
    _temp: tempfile::TempDir,
}

impl Postgres {
    /// Creates a cluster, starts it and creates duomq's user and database; panics with the
    /// server log's tail when any step fails.
    pub fn start(name: &str) -> Postgres {
        let bin = bin_dir();
        let temp = tempfile::Builder::new().prefix(&format!("duomq-pg-{name}-")).tempdir().expect("tempdir");
        let dir = temp.path().to_path_buf();
        let run_as = running_as_root().then(|| SYSTEM_USER.to_string());
        let mut pg = Postgres {
            name: name.to_string(),
            data: dir.join("data"),
            socket_dir: dir.join("socket"),
            log: dir.join("postgres.log"),
            dir,
            port: 0,
            user: "duomq".into(),
            password: format!("duomq-pw-{}", std::process::id()),
            database: "duomq".into(),
            bin,
            run_as,
            running: false,
            _temp: temp,
        };
        std::fs::create_dir_all(&pg.socket_dir).expect("socket dir");
        if pg.run_as.is_some() {
            pg.chown_to_system_user(&pg.dir.clone());
        }
        pg.initdb();
        // A fresh port per attempt: another test may have taken the one we checked.
        for _attempt in 0..5 {
            pg.port = reserve_port();
            pg.write_port();
            if pg.try_pg_ctl(&["start", "-w", "-t", &PG_TIMEOUT.as_secs().to_string(), "-l"], true) {
                pg.running = true;
                break;
            }
            if !pg.log_text().contains("could not bind") {
                break;
            }
        }
        if !pg.running {
            panic!("PostgreSQL {} did not start; log tail:\n{}", pg.name, pg.log_tail());
        }
        let create = format!(
            "CREATE ROLE {user} LOGIN PASSWORD '{password}'; CREATE DATABASE {db} OWNER {user};",
            user = pg.user,
            password = pg.password,
            db = pg.database
        );
        for statement in create.split_inclusive(';') {
            // CREATE DATABASE cannot run inside the implicit transaction of a multi-statement -c.
            pg.psql_in("postgres", statement.trim());
        }
        pg
    }

    /// `postgresql://duomq:…@127.0.0.1:<port>/duomq?sslmode=disable`
    pub fn url(&self) -> String {
        self.url_with_password(&self.password)
    }

    /// The URL with another password (to test a refused login).
    pub fn url_with_password(&self, password: &str) -> String {
        format!("postgresql://{}:{password}@127.0.0.1:{}/{}?sslmode=disable", self.user, self.port, self.database)
    }

    /// Runs `sql` in duomq's database as the superuser (over the unix socket) and returns
    /// psql's unaligned, tuples-only output, trimmed. Panics when psql fails.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in(&self.database, sql)
    }

    /// Like [`Postgres::psql`], but an error is returned instead of a panic (for polls
    /// while the server may be down).
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = self.psql_output(&self.database, sql);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn psql_in(&self, database: &str, sql: &str) -> String {
        let out = self.psql_output(database, sql);
        assert!(
            out.status.success(),
            "psql failed on PostgreSQL {}: {sql}\n{}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn psql_output(&self, database: &str, sql: &str) -> Output {
        let port = self.port.to_string();
        let socket = self.socket_dir.display().to_string();
        let args = ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", &socket, "-p", &port, "-U", SUPERUSER, "-d", database, "-c", sql];
        let mut command = self.command("psql", &args);
        command.env("PGCONNECT_TIMEOUT", "5");
        run(command, PG_TIMEOUT).unwrap_or_else(|e| panic!("psql on PostgreSQL {}: {e}", self.name))
    }

    /// A clean stop (`pg_ctl stop -m fast`): a checkpoint, connections closed.
    pub fn stop(&mut self) {
        self.pg_ctl(&["stop", "-w", "-m", "fast", "-t", &PG_TIMEOUT.as_secs().to_string()]);
        self.running = false;
    }

    /// An immediate stop (`pg_ctl stop -m immediate`): every server process quits at
    /// once, without a checkpoint, as in a crash; the next start runs crash recovery.
    pub fn kill9(&mut self) {
        self.pg_ctl(&["stop", "-w", "-m", "immediate", "-t", &PG_TIMEOUT.as_secs().to_string()]);
        self.running = false;
    }

    /// Starts the stopped cluster again on the same port; waits until it accepts connections.
    pub fn start_again(&mut self) {
        assert!(!self.running, "PostgreSQL {} is already running", self.name);
        self.pg_ctl(&["start", "-w", "-t", &PG_TIMEOUT.as_secs().to_string(), "-l"]);
        self.running = true;
    }

    /// `pg_ctl restart -m fast`: stop cleanly and start on the same port.
    pub fn restart(&mut self) {
        self.pg_ctl(&["restart", "-w", "-m", "fast", "-t", &PG_TIMEOUT.as_secs().to_string(), "-l"]);
        self.running = true;
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 40 lines of the server log.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn initdb(&self) {
        let data = self.data.display().to_string();
        let args = [
            "-D",
            &data,
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            // The cluster's files need no fsync at creation; the running server fsyncs.
            "--no-sync",
            "--no-instructions",
        ];
        let out = run(self.command("initdb", &args), PG_TIMEOUT).unwrap_or_else(|e| panic!("initdb for {}: {e}", self.name));
        assert!(
            out.status.success(),
            "initdb failed for PostgreSQL {}:\n{}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes the port and the rest of the server settings to `postgresql.auto.conf`.
    /// Crash recovery syncs the data directory with one syncfs instead of an fsync per
    /// file (seconds on a busy disk); either way it is durable.
    fn write_port(&self) {
        let settings = format!(
            "\n# duomq tests\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{socket}'\n\
             fsync = on\nsynchronous_commit = on\nfull_page_writes = on\nmax_connections = 50\nshared_buffers = 16MB\n\
             recovery_init_sync_method = syncfs\n",
            port = self.port,
            socket = self.socket_dir.display(),
        );
        // postgresql.auto.conf is read last, so a second attempt's port wins over the first.
        std::fs::write(self.data.join("postgresql.auto.conf"), settings).expect("write postgresql.auto.conf");
        if self.run_as.is_some() {
            self.chown_to_system_user(&self.data.join("postgresql.auto.conf"));
        }
    }

    /// Runs `pg_ctl <args> [log]` (a trailing `-l` gets the log path); panics with the log tail.
    fn pg_ctl(&self, args: &[&str]) {
        if !self.try_pg_ctl(args, false) {
            panic!("pg_ctl {} failed for PostgreSQL {}; log tail:\n{}", args[0], self.name, self.log_tail());
        }
    }

    fn try_pg_ctl(&self, args: &[&str], quiet: bool) -> bool {
        let data = self.data.display().to_string();
        let log = self.log.display().to_string();
        let mut all: Vec<&str> = vec!["-D", &data];
        all.extend_from_slice(args);
        if args.last() == Some(&"-l") {
            all.push(&log);
        }
        // The server inherits pg_ctl's stdout/stderr until it opens its log; null keeps
        // the test's output pipes from being held open by the server.
        let mut command = self.command("pg_ctl", &all);
        command.stdin(Stdio::null());
        match run(command, PG_TIMEOUT + Duration::from_secs(10)) {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                if !quiet {
                    eprintln!(
                        "pg_ctl {} for PostgreSQL {}: {}{}",
                        args[0],
                        self.name,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                false
            }
            Err(e) => {
                eprintln!("pg_ctl {} for PostgreSQL {}: {e}", args[0], self.name);
                false
            }
        }
    }

    /// A PostgreSQL program, run as the server's user.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let path = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        // The server's user may not be allowed into the test's working directory.
        command.args(args).current_dir(&self.dir).env_remove("PGPASSWORD").env("LC_ALL", "C");
        command
    }

    fn chown_to_system_user(&self, path: &Path) {
        let out = Command::new("chown")
            .args(["-R", &format!("{SYSTEM_USER}:")])
            .arg(path)
            .output()
            .expect("run chown");
        assert!(out.status.success(), "chown {} to {SYSTEM_USER}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.try_pg_ctl(&["stop", "-w", "-m", "immediate", "-t", "30"], true);
        }
        if std::thread::panicking() {
            eprintln!("--- PostgreSQL {} log ({}) ---\n{}", self.name, self.log.display(), self.log_tail());
        }
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` in it.
fn bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no {}/<version>/bin/initdb): run scripts/test --install-only, or apt-get install postgresql",
            root.display()
        ),
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `command` to completion, killing it after `timeout`.
fn run(mut command: Command, timeout: Duration) -> Result<Output, String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("failed to start {program}: {e}"))?;
    output_within(child, timeout).map_err(|e| format!("{program}: {e}"))
}
