#!/usr/bin/env python3
"""The message groups section of bench/compare.sh: prints its tables from a finished run's
directory (groups.jsonl, failures.tsv, run.tsv), or checks one result line on stdin and
prints what is wrong with it.

  groups-report.py OUT_DIR      grouped vs ungrouped throughput, duomq vs ActiveMQ, and
                                the first-of-group receipt latency on the two-broker cluster
  groups-report.py --check-run  one 'duomq-bench run --json' line on stdin: prints its
                                problems (group violations, losses, errors), or nothing

It reads results only; it measures nothing. Python standard library only.
"""
import json
import os
import re
import sys

import benchfiles
from benchfiles import read_jsonl, read_tsv

THROUGHPUT = [
    ("groups/duomq-ungrouped", "duomq, ungrouped"),
    ("groups/duomq-grouped", "duomq, grouped"),
    ("groups/activemq-ungrouped", "ActiveMQ, ungrouped"),
    ("groups/activemq-grouped", "ActiveMQ, grouped"),
]
LATENCY = [
    ("groups/cluster-remote", "R (asks L)"),
    ("groups/cluster-local", "L (decides)"),
]
# The goal: grouped >= 0.8x ungrouped on one broker.
GOAL_GROUPED = 0.8


def run_problems(r):
    p = []
    g = r.get("groups")
    if g and g["violations"]:
        p.append(
            f"GROUP VIOLATIONS: {g['split_groups']} groups reached more than one consumer, "
            f"{g['out_of_order']} deliveries out of order"
        )
    return p + benchfiles.run_problems(r, "the consumers")


def ms(x):
    return "-" if x is None else f"{x:.2f}"


def ratio_line(name, a, b, goal=None):
    if a is None or b is None or not b["receive_rate"]:
        return f"  {name:<34} -"
    x = a["receive_rate"] / b["receive_rate"]
    verdict = "" if goal is None else f"   (goal >= {goal:g}x: {'meets' if x >= goal else 'MISSES'})"
    return f"  {name:<34} {x:5.2f}x{verdict}"


def reason(label, failures, targets):
    found = next((v for k, v in failures if k == label), None)
    if found:
        return found
    target = label.split("/")[1].split("-")[0]
    if target == "cluster":
        target = "duomq"
    return "not run: not in --only" if target not in targets else "no result"


def cell_of(label):
    """groups/duomq-grouped-r2 -> groups/duomq-grouped: the cell a round belongs to."""
    return re.sub(r"-r[0-9]+$", "", label)


def merge_rounds(results):
    """Per cell, its first round with msg/s the mean over its rounds (lost and dup their
    sums), and every round's msg/s in run order. groups.sh turns the order round every other round, so a
    steady slow-down weighs on both kinds alike in the mean."""
    rounds = {}
    for r in results:
        rounds.setdefault(cell_of(r["label"]), []).append(r)
    merged = {}
    for cell, rs in rounds.items():
        merged[cell] = dict(
            rs[0],
            receive_rate=sum(r["receive_rate"] for r in rs) / len(rs),
            lost=sum(r["lost"] for r in rs),
            duplicates=sum(r["duplicates"] for r in rs),
        )
    rates = {cell: [r["receive_rate"] for r in rs] for cell, rs in rounds.items()}
    return merged, rates


def throughput_table(runs, failures, meta, targets, rates):
    shape = "1 KiB persistent"
    any_run = next((runs[k] for k, _ in THROUGHPUT if k in runs), None)
    groups = next((runs[k]["groups"]["groups"] for k, _ in THROUGHPUT if k in runs and runs[k].get("groups")), None)
    if any_run:
        shape += (
            f", {any_run['producers']} producers + {any_run['consumers']} consumers, {any_run['window']} receipts in"
            f" flight, {any_run['ack']} acks, prefetch {any_run['prefetch']}"
        )
    if groups:
        shape += f"; grouped: {groups} groups (JMSXGroupID g<i % {groups}>)"
    rounds = meta.get("groups_rounds", "1")
    per = f"; msg/s the mean of {rounds} rounds (p50, p99: first round)" if rounds != "1" else ""
    print(f"Message groups on one broker: {shape}; {meta.get('duration', '?')} measured after {meta.get('warmup', '?')}{per}")
    print(
        f"  {'cell':<22}{'msg/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'groups':>8}{'per consumer':>14}"
        f"{'violations':>12}{'lost':>6}{'dup':>5}"
    )
    for label, title in THROUGHPUT:
        r = runs.get(label)
        if r is None:
            print(f"  {title:<22}{'-':>10}  ({reason(label, failures, targets)})")
            continue
        g = r.get("groups")
        seen = spread = violations = "-"
        if g:
            seen = str(g["groups_seen"])
            spread = f"{g['groups_per_consumer_min']}..{g['groups_per_consumer_max']}"
            violations = str(g["violations"])
        lat = r["latency_ms"]
        flag = " !" if run_problems(r) else ""
        print(
            f"  {title:<22}{r['receive_rate']:>10,.0f}{ms(lat['p50']):>9}{ms(lat['p99']):>9}{seen:>8}{spread:>14}"
            f"{violations:>12}{r['lost']:>6}{r['duplicates']:>5}{flag}"
        )
    if any(len(v) > 1 for v in rates.values()):
        for label, title in THROUGHPUT:
            if len(rates.get(label, [])) > 1:
                print(f"  {title:<22}rounds: " + ", ".join(f"{x:,.0f}" for x in rates[label]) + " msg/s")
    print("  RabbitMQ: no message groups (JMSXGroupID means nothing to it): not measured")
    du, dg, au, ag = (runs.get(label) for label, _ in THROUGHPUT)
    print(ratio_line("duomq grouped / ungrouped", dg, du, GOAL_GROUPED))
    print(ratio_line("duomq grouped / ActiveMQ grouped", dg, ag))
    print(ratio_line("ActiveMQ grouped / ungrouped", ag, au))
    print("  msg/s: messages the consumers received per second; p50/p99: send to receive;")
    print("  per consumer: fewest..most groups a consumer owned; violations: groups split over")
    print("  consumers plus deliveries out of order per producer (the cell fails on any)")


def handler_status(out_dir, name):
    """The grouping section of L's or R's /status after the cells, or None."""
    try:
        with open(os.path.join(out_dir, "logs", f"groups-{name}-status.json")) as f:
            return json.load(f).get("grouping")
    except (OSError, ValueError, AttributeError):
        return None


def latency_table(runs, failures, targets, out_dir):
    any_run = next((runs[k] for k, _ in LATENCY if k in runs), None)
    shape = "1 KiB persistent, 1 producer + 1 consumer on the same broker, 1 receipt in flight"
    if any_run and any_run.get("groups"):
        g = any_run["groups"]
        shape += f", {g['groups']} groups alive, each replaced after {g['group_size']} messages"
    print("Grouping decision latency: duomq brokers L (grouping.handler local) and R (remote, asks L),")
    print(f"  network connectors both ways; {shape}")
    print(
        f"  {'producer on':<14}{'msg/s':>8}{'first of group p50/p99 ms':>28}{'others p50/p99 ms':>20}"
        f"{'first sends':>13}{'violations':>12}"
    )
    for label, title in LATENCY:
        r = runs.get(label)
        if r is None or not r.get("groups"):
            print(f"  {title:<14}{'-':>8}  ({reason(label, failures, targets)})")
            continue
        g = r["groups"]
        first = f"{ms(g['receipt_ms_first']['p50'])}/{ms(g['receipt_ms_first']['p99'])}"
        later = f"{ms(g['receipt_ms_later']['p50'])}/{ms(g['receipt_ms_later']['p99'])}"
        flag = " !" if run_problems(r) else ""
        print(
            f"  {title:<14}{r['receive_rate']:>8,.0f}{first:>28}{later:>20}{g['first_sends']:>13}"
            f"{g['violations']:>12}{flag}"
        )
    for label, title in LATENCY:
        r = runs.get(label)
        g = r and r.get("groups")
        if not g or g["receipt_ms_first"]["p50"] is None or g["receipt_ms_later"]["p50"] is None:
            continue
        extra = g["receipt_ms_first"]["p50"] - g["receipt_ms_later"]["p50"]
        extra99 = (g["receipt_ms_first"]["p99"] or 0) - (g["receipt_ms_later"]["p99"] or 0)
        print(f"  {title}: a new group's first SEND costs {extra:+.2f} ms at p50, {extra99:+.2f} ms at p99")
    l, r = handler_status(out_dir, "l"), handler_status(out_dir, "r")
    if l and r:
        print(
            f"  after both cells: L ({l.get('handler')}) decided {l.get('proposalsTotal')} proposals and holds"
            f" {l.get('bindings')} bindings; R ({r.get('handler')}) asked {r.get('proposalsTotal')} times, learnt"
            f" {r.get('bindings')} bindings; timeouts L {l.get('timeoutsTotal')}, R {r.get('timeoutsTotal')}"
        )
    print("  receipt latency: SEND written to RECEIPT read, for sends of the measured interval")


def load_line(load, meta):
    """The 1-minute load average before the section and before each cell; only the first
    tells of other work (each later one also holds the previous cell's own load)."""
    if not load:
        return "  load: not recorded"
    cpus = meta.get("nproc", "?")
    start = load.get("start", "?")
    cells = ", ".join(f"{k.removeprefix('groups/')} {v}" for k, v in load.items() if k != "start")
    busy = ""
    try:
        if float(start) > float(cpus) / 2:
            busy = "  (other work was using the CPUs: repeat before quoting)"
    except ValueError:
        pass
    return (
        f"1-minute load before the section {start} on {cpus} CPUs{busy}\n"
        f"  before each cell (including the previous cell's own): {cells}"
    )


def report(out_dir):
    results = read_jsonl(os.path.join(out_dir, "groups.jsonl"))
    runs, rates = merge_rounds(results)
    failures = [(k, v) for k, v in read_tsv(os.path.join(out_dir, "failures.tsv")) if k.startswith("groups/")]
    meta = dict(read_tsv(os.path.join(out_dir, "run.tsv")))
    targets = meta.get("targets", "duomq,activemq").split(",")
    throughput_table(runs, failures, meta, targets, rates)
    print()
    latency_table(runs, failures, targets, out_dir)
    print()
    print(load_line(dict(read_tsv(os.path.join(out_dir, "groups-load.tsv"))), meta))
    failed = dict(failures)
    by_label = {r["label"]: r for r in results}
    for r in results:
        if r["label"] not in failed:
            for problem in run_problems(r):
                print(f"{r['label']}: {problem}")
    for k, v in failures:
        print(f"{k}: FAILED: {v}")
        r = by_label.get(k)
        for example in (r.get("groups") or {}).get("examples", []) if r else []:
            print(f"    {example}")


def main(argv):
    if argv[1:] == ["--check-run"]:
        print(", ".join(run_problems(json.loads(sys.stdin.read()))))
    elif len(argv) == 2 and not argv[1].startswith("-"):
        report(argv[1])
    else:
        sys.exit("usage: groups-report.py OUT_DIR | --check-run")


if __name__ == "__main__":
    main(sys.argv)
