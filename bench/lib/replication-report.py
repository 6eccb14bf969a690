#!/usr/bin/env python3
"""Prints the replication-cost section of bench/compare.sh: every round of one duomq
broker and of a live/backup pair (per ha.backupAck) at window 64, their medians, and what
the pair costs against one broker, from the 'duomq-bench run --json' lines in FILE
(replication.jsonl)."""
import json
import statistics
import sys


def main(path):
    with open(path) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    setups = {}
    for r in runs:
        setups.setdefault(r["label"].removeprefix("replication/"), []).append(r)
    if "single" not in setups:
        print("replication: no single-broker result to compare with")
        return
    print("Replication cost: 1 KiB persistent 1P+1C w64, rounds alternating one broker and a live/backup pair")
    single = statistics.median(r["receive_rate"] for r in setups["single"])
    width = max(len(name) for name in setups)
    for name, rs in setups.items():
        rates = [r["receive_rate"] for r in rs]
        median = statistics.median(rates)
        lost = sum(r["lost"] for r in rs)
        dup = sum(r["duplicates"] for r in rs)
        cost = "" if name == "single" else f"  cost {1 - median / single:6.1%}"
        each = " ".join(f"{x:,.0f}" for x in rates)
        print(f"  {name:<{width}}  median {median:>9,.0f} msg/s{cost:<13}  lost {lost} dup {dup}  rounds: {each}")
    print("  cost = 1 - median(pair) / median(single); live, backup and load generator share this machine's CPUs and disk")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: replication-report.py REPLICATION_JSONL")
    main(sys.argv[1])
