//! Runs `bench/compare.sh --database-only` in its quickest form (1 s cells, one round, one kill per
//! system) against the debug builds of duomq-broker and duomq-bench and a PostgreSQL
//! server the script starts itself, so the shared-database section's scripts, ActiveMQ's
//! JDBC config and the report keep working: duomq's database pair must serve both cells
//! and fail over once without losing a receipted message, and PostgreSQL must be stopped
//! at the end. The ActiveMQ pair runs too when ActiveMQ is installed (the Debian
//! package's layout), and is left out otherwise. On failure the script's output and
//! every log of the run are printed.

mod common;

use anyhow::bail;
use common::{activemq_installed, read_jsonl, CompareRun};
use std::time::Duration;

/// The whole section: PostgreSQL's initdb and start, two pairs' start-ups, four short
/// cells, one kill per pair with its lease expiry and restart; generous for a loaded
/// machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

#[test]
fn given_quick_database_section_when_run_should_measure_both_pairs_and_lossless_failovers() -> anyhow::Result<()> {
    let with_activemq = activemq_installed();
    let only = if with_activemq { "duomq,activemq" } else { "duomq" };
    let run = CompareRun::run(
        "duomq-bench-database-",
        &["--database-only", "--duration", "1s", "--warmup", "1s", "--database-rounds", "1", "--database-kills", "1", "--only", only],
        &[("BENCH_FAILOVER_EVERY", "1s")],
        RUN_TIMEOUT,
    )?;
    let logs = || run.logs(60);
    if !run.status.success() {
        bail!("compare.sh --database-only exited with {}:\n{}", run.status, logs());
    }

    let cells = read_jsonl(&run.out("database.jsonl"))?;
    let labels: Vec<&str> = cells.iter().filter_map(|c| c["label"].as_str()).collect();
    let mut want = vec!["database/duomq-w1", "database/duomq-w64"];
    if with_activemq {
        want.extend(["database/activemq-w1", "database/activemq-w64"]);
    }
    assert_eq!(labels, want, "{}", logs());
    for cell in &cells {
        assert!(cell["receive_rate"].as_f64().is_some_and(|r| r > 0.0), "{cell}\n{}", logs());
        assert_eq!((cell["lost"].as_u64(), cell["duplicates"].as_u64()), (Some(0), Some(0)), "{cell}");
    }

    let failovers = read_jsonl(&run.out("database-failover.jsonl"))?;
    let labels: Vec<&str> = failovers.iter().filter_map(|f| f["label"].as_str()).collect();
    let mut want = vec!["database-failover/duomq"];
    if with_activemq {
        want.push("database-failover/activemq");
    }
    assert_eq!(labels, want, "{}", logs());
    for failover in &failovers {
        assert_eq!(failover["kills"], 1, "{failover}\n{}", logs());
        let resumed = failover["per_kill"][0]["kill_to_resume_ms"].as_f64();
        assert!(resumed.is_some_and(|ms| ms > 0.0), "the load resumed on the new live: {failover}");
        assert!(failover["confirmed"].as_u64().is_some_and(|n| n > 0), "{failover}");
        assert_eq!(failover["lost"], 0, "{failover}\n{}", logs());
    }

    let table = std::fs::read_to_string(run.out("database.txt"))?;
    assert!(table.contains("duomq/ActiveMQ") && table.contains("kill to first receipt p50"), "{table}");
    let postgres_log = std::fs::read_to_string(run.out("logs/postgres.log"))?;
    assert!(postgres_log.contains("database system is shut down"), "PostgreSQL was stopped:\n{postgres_log}");
    Ok(())
}
