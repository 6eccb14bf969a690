#!/usr/bin/env python3
"""The shared-database section of bench/compare.sh: prints its tables from a finished
run's directory (database.jsonl, database-failover.jsonl, failures.tsv, run.tsv).

  database-report.py OUT_DIR          throughput of duomq's database pair beside ActiveMQ's
                                      JDBC pair (window 1 and 64) with the ratio, then the
                                      failover gaps after SIGKILLs of the live member, and
                                      the goals
  database-report.py --check-run      one 'duomq-bench run --json' line on stdin: prints
                                      its problems (not drained, duplicates, errors), or
                                      nothing
  database-report.py --check-failover one 'duomq-bench failover --json' line on stdin:
                                      prints what fails it (lost messages, kills short,
                                      errors), or nothing

It reads results only; it measures nothing. Python standard library only.
"""
import json
import os
import re
import statistics
import sys

from benchfiles import read_jsonl, read_tsv, run_problems

SYSTEMS = [("duomq", "duomq"), ("activemq", "ActiveMQ")]
WINDOWS = [1, 64]
# The goals: duomq >= 3x ActiveMQ's throughput; a failover gap p50 below ActiveMQ's.
GOAL_RATIO = 3.0


def failover_problems(r):
    """What fails a failover run. Duplicates do not: a producer resends the SENDs whose
    receipt the kill cut off, and a broker without duplicate detection stores them twice;
    the table shows them."""
    p = []
    if r["lost"]:
        p.append(f"LOST {r['lost']} of {r['confirmed']} receipted messages")
    if r["kills"] < r["kills_requested"]:
        p.append(f"only {r['kills']} of {r['kills_requested']} kills")
    if r["errors"]:
        p.append("errors: " + "; ".join(r["errors"]))
    return p


def from_kill(r):
    """Each kill's time from the SIGKILL to the first receipt from the new live (ms)."""
    return [k["kill_to_resume_ms"] for k in r["per_kill"] if k.get("kill_to_resume_ms") is not None]


def p50(xs):
    return statistics.median(xs) if xs else None


def num(x, fmt="{:,.0f}"):
    return "-" if x is None else fmt.format(x)


def reason(label, failures, meta):
    found = next((v for k, v in failures if re.fullmatch(re.escape(label) + r"(-r[0-9]+)?", k)), None)
    if found:
        return found
    system = label.split("/")[1].split("-")[0]
    return "not in --only" if system not in meta.get("targets", "").split(",") else "no result"


def commit_totals(path):
    """(sum, count) of duomq_database_commit_seconds in a saved /metrics, or None."""
    total = count = None
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.strip().partition(" ")
                if key == "duomq_database_commit_seconds_sum":
                    total = float(value)
                elif key == "duomq_database_commit_seconds_count":
                    count = float(value)
    except (OSError, ValueError):
        return None
    return None if total is None or count is None else (total, count)


def duomq_commit_ms(out_dir, window, rounds):
    """duomq's mean commit time (ms) during its window-W cells: the live's /metrics saved
    after each cell count from the pair's start, so a cell's share is the difference from
    the round's cell before it."""
    total = count = 0.0
    for suffix in rounds:
        at = [commit_totals(os.path.join(out_dir, "logs", f"database-duomq-w{w}{suffix}.metrics")) for w in WINDOWS]
        i = WINDOWS.index(window)
        if at[i] is None or (i > 0 and at[i - 1] is None):
            continue
        before = at[i - 1] if i > 0 else (0.0, 0.0)
        total += at[i][0] - before[0]
        count += at[i][1] - before[1]
    return total / count * 1e3 if count else None


def rounds_of(runs, label):
    """The results of LABEL's rounds, in order: LABEL, LABEL-r2, LABEL-r3, ..."""
    out = []
    for key, r in runs.items():
        if key == label or re.fullmatch(re.escape(label) + r"-r[0-9]+", key):
            out.append(r)
    return out


def commits_per_message(rs, commits):
    done = [(commits.get(r["label"]), r["confirmed"]) for r in rs]
    done = [(c, n) for c, n in done if c is not None and n]
    return sum(c for c, _ in done) / sum(n for _, n in done) if done else None


def throughput(out_dir, runs, commits, probe, failures, meta):
    print(
        f"Throughput: 1 KiB persistent, 1 producer + 1 consumer on the live member, client-individual acks;"
        f" median of {meta.get('database.rounds', '?')} rounds"
    )
    print(
        f"  {'':<10}{'duomq msg/s':>12}{'p99 ms':>8}{'commits/msg':>13}"
        f"{'ActiveMQ msg/s':>16}{'p99 ms':>8}{'commits/msg':>13}{'duomq/ActiveMQ':>16}"
    )
    verdicts = []
    for w in WINDOWS:
        labels = [f"database/{system}-w{w}" for system, _ in SYSTEMS]
        rounds = [rounds_of(runs, label) for label in labels]
        medians = [p50([r["receive_rate"] for r in rs]) for rs in rounds]
        line = f"  {f'window {w}':<10}"
        for i, rs in enumerate(rounds):
            flag = " !" if any(run_problems(r) for r in rs) else ""
            p99 = p50([r["latency_ms"]["p99"] for r in rs])
            width = 12 if i == 0 else 16
            line += f"{num(medians[i]) + flag:>{width}}{num(p99, '{:.1f}'):>8}"
            line += f"{num(commits_per_message(rs, commits), '{:.2f}'):>13}"
        ratio = medians[0] / medians[1] if medians[0] is not None and medians[1] else None
        print(line + f"{num(ratio, '{:.2f}x'):>16}")
        if ratio is not None:
            verdicts.append(f"w{w} {ratio:.2f}x {'meets' if ratio >= GOAL_RATIO else 'MISSES'}")
        pairs = list(zip(*rounds))
        if len(pairs) > 1:
            each = ", ".join(
                f"{d['receive_rate']:,.0f}/{a['receive_rate']:,.0f}"
                + (f" ({d['receive_rate'] / a['receive_rate']:.2f}x)" if a["receive_rate"] else "")
                for d, a in pairs
            )
            print(f"    per round, duomq/ActiveMQ msg/s: {each}")
        for label, rs in zip(labels, rounds):
            if not rs:
                print(f"    {label}: no result ({reason(label, failures, meta)})")
            for r in rs:
                for problem in run_problems(r):
                    print(f"    {r['label']}: {problem}")
    print(f"  goal duomq >= {GOAL_RATIO:g}x ActiveMQ: {'; '.join(verdicts) if verdicts else '-'}")
    if probe:
        rates = [float(v) for _, v in probe]
        print(
            f"  PostgreSQL alone, one 1 KiB INSERT per transaction on one connection: {num(p50(rates))} commits/s"
            f" (median; before each round: {', '.join(num(x) for x in rates)}): the window-1 ceiling of one"
            f" commit per message"
        )
    suffixes = [r["label"].removeprefix(f"database/duomq-w{WINDOWS[0]}") for r in rounds_of(runs, f"database/duomq-w{WINDOWS[0]}")]
    commit_ms = [(w, duomq_commit_ms(out_dir, w, suffixes)) for w in WINDOWS]
    if any(ms is not None for _, ms in commit_ms):
        print(
            "  duomq's commits (duomq_database_commit_seconds, statement sent to result read), mean: "
            + ", ".join(f"window {w} {num(ms, '{:.2f}')} ms" for w, ms in commit_ms)
        )
    loads = [v for k, v in sorted(meta.items()) if k.startswith("database.load.round")]
    if loads:
        print(f"  1-minute load before each round: {', '.join(loads)} on {meta.get('nproc', '?')} CPUs")
    print(
        "  msg/s: messages the consumer received per second of the measured interval; p99: send to receive;"
        " commits/msg: transactions PostgreSQL committed in the system's database during its cells"
        " (warm-up and drain included) per receipted message"
    )


def failover(fails, failures, meta):
    print(
        f"Failover: SIGKILL of the live member under load (1 producer, 16 receipts in flight,"
        f" 1 consumer), {meta.get('database.kills', '?')} kills per system"
    )
    rows = [
        ("kills", lambda r: f"{r['kills']}/{r['kills_requested']}"),
        ("kill to first receipt p50 ms", lambda r: num(p50(from_kill(r)))),
        ("kill to first receipt max ms", lambda r: num(max(from_kill(r), default=None))),
        ("last to first receipt p50 ms", lambda r: num(r["gap_ms"] and r["gap_ms"]["p50"])),
        ("new live found p50 ms", lambda r: num(p50([k["promoted_ms"] for k in r["per_kill"]]))),
        ("confirmed", lambda r: str(r["confirmed"])),
        ("lost", lambda r: str(r["lost"])),
        ("duplicates", lambda r: str(r["duplicates"])),
        ("redeliveries", lambda r: f"{r['redeliveries']} (+{r['unflagged_redeliveries']})"),
        ("errors", lambda r: str(len(r["errors"]))),
    ]
    print(f"  {'':<30}" + "".join(f"{title:>14}" for _, title in SYSTEMS))
    for title, cell in rows:
        line = f"  {title:<30}"
        for system, _ in SYSTEMS:
            r = fails.get(f"database-failover/{system}")
            line += f"{cell(r) if r else '-':>14}"
        print(line)
    for system, title in SYSTEMS:
        r = fails.get(f"database-failover/{system}")
        if r is None:
            label = f"database-failover/{system}"
            print(f"    {label}: no result ({reason(label, failures, meta)})")
            continue
        per_kill = ", ".join(num(k.get("kill_to_resume_ms")) for k in r["per_kill"])
        print(f"  {title} per kill, kill to first receipt (ms): {per_kill}")
        for problem in failover_problems(r):
            print(f"    {r['label']}: {problem}")
    d, a = (fails.get(f"database-failover/{s}") for s, _ in SYSTEMS)
    dp, ap = (p50(from_kill(r)) if r else None for r in (d, a))
    if dp is not None and ap is not None:
        verdict = f"{dp:,.0f} ms vs {ap:,.0f} ms: {'meets' if dp < ap else 'MISSES'}"
    else:
        verdict = "-"
    print(f"  goal duomq's p50 below ActiveMQ's: {verdict}")
    print("  kill to first receipt: from the SIGKILL to the first receipt from the new live;"
          " last to first: from the killed live's last receipt (compare.sh --failover's gap)")


def fsync_rate(out_dir):
    try:
        with open(os.path.join(out_dir, "fsync-database.json")) as f:
            return json.load(f).get("fsync_rate")
    except (OSError, ValueError):
        return None


def report(out_dir):
    runs = {r["label"]: r for r in read_jsonl(os.path.join(out_dir, "database.jsonl"))}
    commits = {k: int(v) for k, v in read_tsv(os.path.join(out_dir, "database-commits.tsv")) if v.isdigit()}
    fails = {r["label"]: r for r in read_jsonl(os.path.join(out_dir, "database-failover.jsonl"))}
    failures = [(k, v) for k, v in read_tsv(os.path.join(out_dir, "failures.tsv")) if k.startswith("database")]
    meta = dict(read_tsv(os.path.join(out_dir, "run.tsv")))
    print(
        f"Shared database: {meta.get('database.postgres', 'PostgreSQL ?')} on loopback"
        f" ({meta.get('database.settings', '?')}); {meta.get('duration', '?')} measured after"
        f" {meta.get('warmup', '?')} per cell"
    )
    print(f"  lease {meta.get('database.lease', '?')}")
    rate = fsync_rate(out_dir)
    print(
        f"  disk fsync rate {num(rate)} fsyncs/s (1 KiB append + fdatasync where PostgreSQL keeps its data,"
        f" {meta.get('workdir_fs', '?')}): the most commits/s one connection can make"
    )
    print("  duomq: two duomq-broker, ha.policy sharedStore, storage.store database")
    print(f"  ActiveMQ: {meta.get('version.activemq', 'ActiveMQ ?')}, JDBC persistence adapter"
          f" ({meta.get('database.jdbc', '?')}, commons-dbcp pool), lease database locker")
    print()
    probe = [(k, v) for k, v in read_tsv(os.path.join(out_dir, "database-probe.tsv")) if re.fullmatch(r"[0-9.]+", v)]
    throughput(out_dir, runs, commits, probe, failures, meta)
    print()
    failover(fails, failures, meta)
    for k, v in failures:
        print(f"{k}: FAILED: {v}")


CHECKS = {"--check-run": run_problems, "--check-failover": failover_problems}


def main(argv):
    if len(argv) != 2:
        sys.exit("usage: database-report.py OUT_DIR | --check-run | --check-failover")
    check = CHECKS.get(argv[1])
    if check:
        print(", ".join(check(json.loads(sys.stdin.read()))))
    else:
        report(argv[1])


if __name__ == "__main__":
    main(sys.argv)
