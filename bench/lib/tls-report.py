#!/usr/bin/env python3
"""The TLS section of bench/compare.sh: prints its table and ratios from a finished run's
directory (tls.jsonl, failures.tsv, run.tsv, tls-load.tsv).

  tls-report.py OUT_DIR

Per cell (1 KiB persistent 1P+1C w64 and 4P+4C w64), the median over the rounds of each
setup's msg/s, p99 send-to-receive latency and broker CPU time per message; then the
ratio lines:
  ratio duomq TLS/plaintext CELL            msg/s, goal >= 0.85 (TLS costs below 15%)
  ratio ActiveMQ TLS/plaintext CELL         ActiveMQ's own TLS cost, for reference
  ratio duomq TLS/ActiveMQ stomp+ssl CELL   both over TLS
A setup that was not measured prints '-' with the reason. It reads results only; it
measures nothing. Python standard library only.
"""
import os
import statistics
import sys

import benchfiles
from benchfiles import read_jsonl, read_tsv

CELLS = [
    ("p-1k-w64", "1 KiB persistent 1P+1C w64"),
    ("p-1k-4x4-w64", "1 KiB persistent 4P+4C w64"),
]
SETUPS = ["duomq-plain", "duomq-tls", "activemq-plain", "activemq-tls"]
SETUP_NAMES = {
    "duomq-plain": "duomq plain",
    "duomq-tls": "duomq TLS",
    "activemq-plain": "ActiveMQ plain",
    "activemq-tls": "ActiveMQ TLS",
}
# The goal: TLS costs duomq less than 15% of its plaintext throughput.
GOAL = 0.85


def cpu_us_per_message(r, keys=("cpu_percent",)):
    """CPU time per received message, in microseconds, of the broker (cpu_percent) or of
    the broker and the load generator together (None without a sample)."""
    values = [r.get(k) for k in keys]
    if any(v is None for v in values) or not r["receive_rate"]:
        return None
    return sum(values) / 100.0 / r["receive_rate"] * 1e6


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class Setup:
    """One setup's rounds of one cell, and their medians."""

    def __init__(self, runs):
        self.runs = runs
        self.rate = median(r["receive_rate"] for r in runs)
        self.p50 = median((r.get("latency_ms") or {}).get("p50") for r in runs)
        self.p99 = median((r.get("latency_ms") or {}).get("p99") for r in runs)
        self.cpu = median(cpu_us_per_message(r) for r in runs)
        self.total_cpu = median(cpu_us_per_message(r, ("cpu_percent", "bench_cpu_percent")) for r in runs)
        self.by_round = {r["label"].rsplit("/", 1)[-1]: r["receive_rate"] for r in runs}
        self.problems = [f"{r['label']}: {p}" for r in runs for p in benchfiles.run_problems(r, "the consumers")]


def group(results):
    """{(setup, cell): Setup} from labels tls/SETUP/CELL/rROUND."""
    runs = {}
    for r in results:
        parts = r["label"].split("/")
        if len(parts) == 4 and parts[0] == "tls":
            runs.setdefault((parts[1], parts[2]), []).append(r)
    return {key: Setup(rs) for key, rs in runs.items()}


def num(x, digits=0):
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def why_missing(setup, cell, failures, targets):
    label = f"tls/{setup}/{cell}/"
    found = [v for k, v in failures if k.startswith(label)]
    if found:
        return found[0]
    if any(k == "tls" for k, _ in failures):
        return next(v for k, v in failures if k == "tls")
    system = setup.split("-")[0]
    if system not in targets:
        return f"{SETUP_NAMES[setup].split()[0]} not measured (not in --only)"
    return "no result"


def ratio_lines(setups, name, top, bottom, missing, goal=None, paired=False):
    """One line per cell: TOP's msg/s over BOTTOM's, with the p99 latency and CPU per
    message ratios; '-' and the reason when either was not measured. PAIRED: the ratio is
    the median of each round's ratio (the two ran back to back), the ratio of the medians
    beside it; otherwise the ratio of the medians. With GOAL, the ratio as a cost against it."""
    for cell, title in CELLS:
        a, b = setups.get((top, cell)), setups.get((bottom, cell))
        x = ratio(a and a.rate, b and b.rate)
        if x is None:
            print(f"ratio {name} {title}: -  ({missing(bottom if b is None else top, cell)})")
            continue
        said = []
        if paired:
            rounds = [a.by_round[k] / b.by_round[k] for k in a.by_round if b.by_round.get(k)]
            plural = "" if len(rounds) == 1 else "s"
            said.append(f"median of {len(rounds)} paired round{plural}; ratio of the medians {x:.3f}")
            x = median(rounds) if rounds else x
        if goal:
            said.append(f"cost {1 - x:.1%}, goal below {1 - goal:.0%}: {'meets' if x >= goal else 'MISSES'}")
        for what, value in [
            ("p99 latency", ratio(a.p99, b.p99)),
            ("broker CPU per message", ratio(a.cpu, b.cpu)),
            ("broker+client CPU per message", ratio(a.total_cpu, b.total_cpu)),
        ]:
            if value is not None:
                said.append(f"{what} x{value:.2f}" if value >= 0.1 else f"{what} x{value:.3f}")
        print(f"ratio {name} {title}: {x:.3f}  ({'; '.join(said)})")


def main(out):
    results = read_jsonl(os.path.join(out, "tls.jsonl"))
    failures = read_tsv(os.path.join(out, "failures.tsv"))
    meta = dict(read_tsv(os.path.join(out, "run.tsv")))
    targets = meta.get("targets", "duomq").split(",")
    setups = group(results)
    rounds = meta.get("tls_rounds", "?")

    print(
        f"TLS: persistent messages with receipts, client-individual acks, prefetch {meta.get('prefetch', '?')}, "
        f"{meta.get('duration', '?')} after {meta.get('warmup', '?')} per cell; median of {rounds} rounds"
    )
    print("  (each round starts every broker afresh and runs each cell on plaintext and TLS back to back,")
    print("  TLS first every other round; brokers, load generator and disk share this machine;")
    print("  certificate ECDSA P-256 from duomq's test CA, TLS 1.3 unless a side stops at 1.2)")
    print()
    head = (
        f"  {'cell':<28} {'setup':<15} {'msg/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/msg':>11} "
        f"{'+client':>8}  rounds (msg/s)"
    )
    print(head)
    for cell, title in CELLS:
        for setup in SETUPS:
            s = setups.get((setup, cell))
            name = title if setup == SETUPS[0] else ""
            if s is None:
                print(f"  {name:<28} {SETUP_NAMES[setup]:<15} {'-':>9}  {why_missing(setup, cell, failures, targets)}")
                continue
            each = " ".join(num(r["receive_rate"]) for r in s.runs)
            print(
                f"  {name:<28} {SETUP_NAMES[setup]:<15} {num(s.rate):>9} {num(s.p50, 2):>8} {num(s.p99, 2):>8} "
                f"{num(s.cpu, 1):>11} {num(s.total_cpu, 1):>8}  {each}"
            )
    print("  CPU us/msg: the broker's CPU time per message received; +client: the broker's and the")
    print("  load generator's together (both ends of every connection pay for TLS)")
    print()

    problems = [p for s in setups.values() for p in s.problems]

    def missing(setup, cell):
        return why_missing(setup, cell, failures, targets)

    ratio_lines(setups, "duomq TLS/plaintext", "duomq-tls", "duomq-plain", missing, goal=GOAL, paired=True)
    ratio_lines(setups, "ActiveMQ TLS/plaintext", "activemq-tls", "activemq-plain", missing, paired=True)
    ratio_lines(setups, "duomq TLS/ActiveMQ stomp+ssl", "duomq-tls", "activemq-tls", missing)
    benchfiles.print_footer(problems, os.path.join(out, "tls-load.tsv"), meta.get("nproc", "?"))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tls-report.py OUT_DIR")
    main(sys.argv[1])
