#!/usr/bin/env python3
"""The network section of bench/compare.sh: prints its table from a finished run's
directory (network.jsonl, network-failover.jsonl, failures.tsv, run.tsv, and the bridge's
/status in logs/), or checks one result line on stdin and prints what is wrong with it.

  network-report.py OUT_DIR          the table, the ratios and the failover gaps
  network-report.py --check-run      one 'duomq-bench run --json' line on stdin: prints
                                     its problems (not drained, duplicates, errors), or nothing
  network-report.py --check-failover one 'duomq-bench failover --json' line on stdin

It reads results only; it measures nothing. Python standard library only.
"""
import json
import os
import sys

from benchfiles import read_jsonl, read_tsv, run_problems

CELLS = [
    ("network/duomq-local", "duomq, one broker"),
    ("network/duomq-bridged", "duomq, bridged A -> B"),
    ("network/activemq", "ActiveMQ, network 1 -> 2"),
]
# The goals: bridged >= 0.5x local, >= 5x ActiveMQ's network; failover gap p50 < 1 s.
GOAL_LOCAL = 0.5
GOAL_ACTIVEMQ = 5.0
GOAL_GAP_MS = 1000.0


def failover_problems(r):
    p = []
    if r["lost"]:
        p.append(f"LOST {r['lost']} of {r['confirmed']} receipted messages")
    if r["kills"] < r["kills_requested"]:
        p.append(f"only {r['kills']} of {r['kills_requested']} kills")
    if r["gap_ms"] is None:
        p.append("no kill had a gap: the flow never resumed")
    if r["errors"]:
        p.append("errors: " + "; ".join(r["errors"]))
    return p


def forwarded_out(out_dir):
    """Messages A's connector had forwarded and B had confirmed, from A's /status after the cell."""
    try:
        with open(os.path.join(out_dir, "logs", "network-bridged-a-status.json")) as f:
            status = json.load(f)
        return sum(l["forwardedOut"] for c in status["network"]["connectors"] for l in c["links"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_line(load, meta):
    """The 1-minute load average before the section and before each cell. Only the first
    tells of other work: each later one also holds the previous cell's own load (broker
    and load generator keep both CPUs busy)."""
    if not load:
        return "  load: not recorded"
    cpus = meta.get("nproc", "?")
    start = load.get("start", "?")
    cells = ", ".join(f"{k.removeprefix('network/')} {v}" for k, v in load.items() if k != "start")
    busy = ""
    try:
        if float(start) > float(cpus) / 2:
            busy = "  (other work was using the CPUs: repeat before quoting)"
    except ValueError:
        pass
    return (
        f"  1-minute load before the section {start} on {cpus} CPUs{busy}\n"
        f"  before each cell (including the previous cell's own): {cells}"
    )


def ms(x):
    return "-" if x is None else f"{x:.1f}"


def report(out_dir):
    runs = {r["label"]: r for r in read_jsonl(os.path.join(out_dir, "network.jsonl"))}
    failovers = read_jsonl(os.path.join(out_dir, "network-failover.jsonl"))
    failures = [(k, v) for k, v in read_tsv(os.path.join(out_dir, "failures.tsv")) if k.startswith("network/")]
    meta = dict(read_tsv(os.path.join(out_dir, "run.tsv")))
    load = dict(read_tsv(os.path.join(out_dir, "network-load.tsv")))
    any_run = next(iter(runs.values()), None)
    shape = "1 KiB persistent, 1 producer + 1 consumer, 64 receipts in flight"
    if any_run:
        shape += f", {any_run['ack']} acks, prefetch {any_run['prefetch']}"
    print(f"Network of brokers: {shape}; {meta.get('duration', '?')} measured after {meta.get('warmup', '?')} per cell")
    print(f"  {'cell':<26}{'msg/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'confirmed':>11}{'lost':>7}{'dup':>6}")
    for label, title in CELLS:
        r = runs.get(label)
        if r is None:
            reason = next((v for k, v in failures if k == label), "not run: not in --only")
            print(f"  {title:<26}{'-':>10}  ({reason})")
            continue
        flag = " !" if run_problems(r) else ""
        lat = r["latency_ms"]
        print(
            f"  {title:<26}{r['receive_rate']:>10,.0f}{ms(lat['p50']):>9}{ms(lat['p99']):>9}"
            f"{r['confirmed']:>11}{r['lost']:>7}{r['duplicates']:>6}{flag}"
        )
    local, bridged, amq = (runs.get(label) for label, _ in CELLS)

    def ratio(a, b, goal, name):
        if a is None or b is None or not b["receive_rate"]:
            return f"  {name:<22} -"
        x = a["receive_rate"] / b["receive_rate"]
        verdict = "meets" if x >= goal else "MISSES"
        return f"  {name:<22} {x:5.2f}x   (goal >= {goal:g}x: {verdict})"

    print(ratio(bridged, local, GOAL_LOCAL, "bridged / local"))
    print(ratio(bridged, amq, GOAL_ACTIVEMQ, "bridged / ActiveMQ"))
    fwd = forwarded_out(out_dir)
    if bridged is not None and fwd is not None:
        print(f"  A's connector forwarded {fwd} messages that B confirmed; the consumer on B got {bridged['confirmed'] - bridged['lost']} of the {bridged['confirmed']} receipted at A")
    print("  msg/s: messages the consumer received per second of the measured interval (on B, for the bridged cells)")
    print(load_line(load, meta))
    for label, _ in CELLS:
        r = runs.get(label)
        for problem in run_problems(r) if r else []:
            print(f"  {label}: {problem}")

    print()
    for r in failovers:
        g = r["gap_ms"]
        kills = f"{r['kills']}/{r['kills_requested']}"
        print(f"Failover of the bridge's target: SIGKILL of the pair's live under the flow above ({kills} kills)")
        if g is None:
            print("  gap: none measured")
        else:
            verdict = "meets" if g["p50"] < GOAL_GAP_MS else "MISSES"
            print(f"  gap at the consumer  p50 {g['p50']:.0f} ms  max {g['max']:.0f} ms   (goal p50 < 1 s: {verdict})")
        per_kill = ", ".join("-" if k["gap_ms"] is None else f"{k['gap_ms']:.0f}" for k in r["per_kill"])
        print(f"  per kill (ms): {per_kill}")
        print(
            f"  receipted at the source {r['confirmed']}, lost {r['lost']}, duplicates {r['duplicates']},"
            f" redeliveries {r['redeliveries']} (+{r['unflagged_redeliveries']} unflagged),"
            f" consumer reconnects {r.get('consumer_failovers', '?')}"
        )
        print("  gap: longest pause between two new messages at the consumer from a kill to the next")
        for problem in failover_problems(r):
            print(f"  {r['label']}: {problem}")
    if not failovers and any(k == "network/failover" for k, _ in failures):
        print("Failover of the bridge's target: no result")
    for k, v in failures:
        print(f"{k}: FAILED: {v}")


def main(argv):
    if argv[1:] == ["--check-run"]:
        print(", ".join(run_problems(json.loads(sys.stdin.read()))))
    elif argv[1:] == ["--check-failover"]:
        print(", ".join(failover_problems(json.loads(sys.stdin.read()))))
    elif len(argv) == 2 and not argv[1].startswith("-"):
        report(argv[1])
    else:
        sys.exit("usage: network-report.py OUT_DIR | --check-run | --check-failover")


if __name__ == "__main__":
    main(sys.argv)
