#!/usr/bin/env python3
"""The backlog section of bench/compare.sh: prints its table and ratios from a finished
run's directory (backlog.jsonl, failures.tsv, run.tsv, backlog-load.tsv).

  backlog-report.py OUT_DIR

Per setup (duomq in memory, duomq paged, ActiveMQ), the median over the rounds of the fill
rate, the drain rate, the drain's length, the broker's peak RSS and its CPU during the
drain; then the ratio lines:
  ratio duomq paged/in-memory drain   goal >= 0.5
  ratio duomq paged/ActiveMQ drain
  ratio duomq in-memory/ActiveMQ drain
A setup that was not measured prints '-' with the reason. It reads results only; it
measures nothing. Python standard library only.
"""
import os
import sys

import benchfiles
from benchfiles import by_label, median_of, read_jsonl, read_tsv

SETUPS = [
    ("duomq-memory", "duomq in memory", "duomq"),
    ("duomq-paged", "duomq paged", "duomq"),
    ("activemq", "ActiveMQ", "activemq"),
]
# The goal: a paged backlog drains at least half as fast as one held in memory.
GOAL = 0.5


class Setup:
    """One setup's rounds, and their medians."""

    def __init__(self, runs):
        self.runs = runs
        backlog = [r.get("backlog") or {} for r in runs]
        self.fill = median_of(b.get("fill_rate") for b in backlog)
        self.drain = median_of(b.get("drain_rate") for b in backlog)
        self.drain_s = median_of(b.get("drain_s") for b in backlog)
        self.rss = median_of(r.get("rss_peak_mib") for r in runs)
        self.cpu = median_of(r.get("cpu_percent") for r in runs)
        self.problems = [f"{r['label']}: {p}" for r in runs for p in benchfiles.run_problems(r, "the consumer")]


def num(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def main(out):
    results = read_jsonl(os.path.join(out, "backlog.jsonl"))
    failures = read_tsv(os.path.join(out, "failures.tsv"))
    meta = dict(read_tsv(os.path.join(out, "run.tsv")))
    targets = meta.get("targets", "duomq").split(",")
    setups = {k: Setup(v) for k, v in by_label(results, "backlog").items()}

    def missing(setup):
        name, system = next((n, s) for k, n, s in SETUPS if k == setup)
        return benchfiles.why_missing(f"backlog/{setup}/", failures, name, system, targets)

    print(
        f"Backlog: {num(int(meta.get('backlog.messages', 0)))} persistent messages of "
        f"{meta.get('backlog.size', '?')} bytes; fill by {meta.get('backlog.producers', '?')} producers "
        f"(64 receipts in flight each) with no consumer, then drained by {meta.get('backlog.consumers', '?')} "
        f"consumer (client-individual acks, prefetch {meta.get('prefetch', '?')}); median of "
        f"{meta.get('backlog.rounds', '?')} round(s), every broker fresh for each cell"
    )
    print(
        f"  (duomq paged: addressSettings '>' maxSizeBytes {meta.get('backlog.page_bytes', '?')}, "
        "addressFullPolicy page; duomq in memory: memory limits above the backlog;"
    )
    print("  ActiveMQ: KahaDB with journal syncs, default memory limits and store cursor)")
    print()
    print(
        f"  {'setup':<16} {'fill msg/s':>10} {'drain msg/s':>11} {'drain s':>8} {'peak RSS MiB':>12} "
        f"{'CPU % drain':>11}  rounds (drain msg/s)"
    )
    for key, name, _ in SETUPS:
        s = setups.get(key)
        if s is None:
            print(f"  {name:<16} {'-':>10}  {missing(key)}")
            continue
        each = " ".join(num((r.get("backlog") or {}).get("drain_rate")) for r in s.runs)
        print(
            f"  {name:<16} {num(s.fill):>10} {num(s.drain):>11} {num(s.drain_s, 2):>8} {num(s.rss):>12} "
            f"{num(s.cpu):>11}  {each}"
        )
    print("  drain: from the consumer's SUBSCRIBE until the last receipted message arrived;")
    print("  peak RSS over fill and drain (what holding the backlog cost); CPU 100 = one core")
    print()

    def ratio_line(title, top, bottom, goal=None):
        a, b = setups.get(top), setups.get(bottom)
        if a is None or b is None or not a.drain or not b.drain:
            why = missing(bottom if b is None else top) if (a is None or b is None) else "no drain rate"
            print(f"ratio {title}: -  ({why})")
            return
        x = a.drain / b.drain
        said = []
        if goal:
            said.append(f"goal >= {goal}: {'meets' if x >= goal else 'MISSES'}")
        if a.fill and b.fill:
            said.append(f"fill x{a.fill / b.fill:.2f}")
        if a.rss and b.rss:
            said.append(f"peak RSS x{a.rss / b.rss:.2f}")
        print(f"ratio {title}: {x:.3f}  ({'; '.join(said)})")

    ratio_line("duomq paged/in-memory drain", "duomq-paged", "duomq-memory", goal=GOAL)
    ratio_line("duomq paged/ActiveMQ drain", "duomq-paged", "activemq")
    ratio_line("duomq in-memory/ActiveMQ drain", "duomq-memory", "activemq")
    problems = [p for s in setups.values() for p in s.problems]
    benchfiles.print_footer(problems, os.path.join(out, "backlog-load.tsv"), meta.get("nproc", "?"))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: backlog-report.py OUT_DIR")
    main(sys.argv[1])
