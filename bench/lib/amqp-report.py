#!/usr/bin/env python3
"""The AMQP 1.0 section of bench/compare.sh: prints its table and ratios from a finished
run's directory (amqp.jsonl, failures.tsv, run.tsv, amqp-load.tsv).

  amqp-report.py OUT_DIR

Per cell (1 KiB persistent, 1P+1C and 4P+4C at credit 1 and 64) and system (duomq,
RabbitMQ, ActiveMQ), the median over the rounds of msg/s, p50 and p99 send-to-receive
latency and the broker's CPU time per message; a system that was not measured prints '-'
with the reason (ActiveMQ: what compare.sh found of its AMQP transport). Then one ratio
line per cell:
  ratio duomq/best peer CELL   duomq's median msg/s over the best measured peer's, goal >= 2
It reads results only; it measures nothing. Python standard library only.
"""
import json
import os
import sys

import benchfiles
from benchfiles import read_jsonl, read_tsv

CELLS = [
    ("p-1k-1x1-c1", "1 KiB persistent 1P+1C credit 1"),
    ("p-1k-1x1-c64", "1 KiB persistent 1P+1C credit 64"),
    ("p-1k-4x4-c1", "1 KiB persistent 4P+4C credit 1"),
    ("p-1k-4x4-c64", "1 KiB persistent 4P+4C credit 64"),
]
SYSTEMS = [("duomq", "duomq"), ("rabbitmq", "RabbitMQ"), ("activemq", "ActiveMQ")]
PEERS = ["rabbitmq", "activemq"]
# The goal: duomq at least twice the best peer.
GOAL = 2.0


def group(results):
    """{(system, cell): Rounds} from labels amqp/SYSTEM/CELL/rROUND."""
    runs = {}
    for r in results:
        parts = r["label"].split("/")
        if len(parts) == 4 and parts[0] == "amqp":
            runs.setdefault((parts[1], parts[2]), []).append(r)
    return {key: benchfiles.Rounds(rs) for key, rs in runs.items()}


def num(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def main(out):
    results = read_jsonl(os.path.join(out, "amqp.jsonl"))
    failures = read_tsv(os.path.join(out, "failures.tsv"))
    meta = dict(read_tsv(os.path.join(out, "run.tsv")))
    targets = meta.get("targets", "duomq").split(",")
    # Either RabbitMQ target of --only puts RabbitMQ in this section.
    if any(t.startswith("rabbitmq-") for t in targets):
        targets.append("rabbitmq")
    cells = group(results)

    def missing(system, cell):
        if system == "activemq" and meta.get("amqp.activemq"):
            return meta["amqp.activemq"]
        return benchfiles.why_missing(f"amqp/{system}/{cell}/", failures, dict(SYSTEMS)[system], system, targets)

    print(
        f"AMQP 1.0: 1 KiB messages with header durable=true, one load client for every broker "
        f"(duomq-bench amqp, fe2o3-amqp), {meta.get('duration', '?')} after {meta.get('warmup', '?')} per cell; "
        f"median of {meta.get('amqp.rounds', '?')} rounds"
    )
    print("  (credit C: each producer keeps up to C transfers unsettled, each consumer grants C link credit")
    print("  and settles every delivery accepted as it takes it; every broker starts afresh each round;")
    print("  a durable message counts once the broker settled it accepted: on disk)")
    if meta.get("amqp.backlog"):
        print(f"  ({meta['amqp.backlog']}; msg/s counts messages received)")
    print()
    print(f"  {'cell':<33} {'system':<9} {'msg/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/msg':>11}  rounds (msg/s)")
    for cell, title in CELLS:
        for i, (system, name) in enumerate(SYSTEMS):
            label = title if i == 0 else ""
            c = cells.get((system, cell))
            if c is None:
                print(f"  {label:<33} {name:<9} {'-':>9}  {missing(system, cell)}")
                continue
            each = " ".join(num(r["receive_rate"]) for r in c.runs)
            print(
                f"  {label:<33} {name:<9} {num(c.rate):>9} {num(c.p50, 2):>8} {num(c.p99, 2):>8} "
                f"{num(c.cpu, 1):>11}  {each}"
            )
    print("  CPU us/msg: the broker's CPU time per message received")
    print()

    for cell, title in CELLS:
        duomq = cells.get(("duomq", cell))
        peers = [(s, cells[(s, cell)]) for s in PEERS if cells.get((s, cell)) and cells[(s, cell)].rate]
        why = None
        if duomq is None or not duomq.rate:
            why = missing("duomq", cell) if duomq is None else "duomq received nothing"
        elif not peers:
            why = "; ".join(f"{dict(SYSTEMS)[s]}: {missing(s, cell)}" for s in PEERS)
        if why:
            print(f"ratio duomq/best peer {title}: -  ({why})")
            continue
        best, peer = max(peers, key=lambda p: p[1].rate)
        x = duomq.rate / peer.rate
        said = [f"best peer {dict(SYSTEMS)[best]}", f"goal >= {GOAL:g}: {'meets' if x >= GOAL else 'MISSES'}"]
        if duomq.p99 and peer.p99:
            said.append(f"p99 latency x{duomq.p99 / peer.p99:.2f}")
        if duomq.cpu and peer.cpu:
            said.append(f"broker CPU per message x{duomq.cpu / peer.cpu:.2f}")
        print(f"ratio duomq/best peer {title}: {x:.3f}  ({'; '.join(said)})")
    rates = []
    for n in range(1, 100):
        path = os.path.join(out, f"fsync-amqp-r{n}.json")
        if not os.path.exists(path):
            break
        with open(path) as f:
            rates.append(json.load(f).get("fsync_rate"))
    if any(r is not None for r in rates):
        print()
        print(
            "disk fsync rate before each round (1 KiB append + fdatasync): "
            + ", ".join(num(r) for r in rates)
            + " fsyncs/s; duomq settles a durable transfer accepted only after its fdatasync, so one"
        )
        print("producer at credit 1 cannot pass that rate")
    problems = [p for c in cells.values() for p in c.problems]
    benchfiles.print_footer(problems, os.path.join(out, "amqp-load.tsv"), meta.get("nproc", "?"))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: amqp-report.py OUT_DIR")
    main(sys.argv[1])
