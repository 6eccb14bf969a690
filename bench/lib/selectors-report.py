#!/usr/bin/env python3
"""The selectors section of bench/compare.sh: prints its table and ratios from a finished
run's directory (selectors.jsonl, failures.tsv, run.tsv, selectors-load.tsv).

  selectors-report.py OUT_DIR

Per system (duomq, ActiveMQ) and kind (plain consumers, consumers with complementary
selectors), the median over the rounds of msg/s, p50 and p99 send-to-receive latency and
the broker's CPU time per message; then the ratio lines:
  ratio duomq selector/plain              median of the rounds' ratios (same broker, back to back)
  ratio ActiveMQ selector/plain           the same for ActiveMQ
  ratio duomq selector/ActiveMQ selector  ratio of the medians
A cell that was not measured prints '-' with the reason (a broker that ignores selectors
fails its selector cell: its consumers get messages their selector does not match). It
reads results only; it measures nothing. Python standard library only.
"""
import os
import sys

import benchfiles
from benchfiles import by_label, median_of, read_jsonl, read_tsv

SYSTEMS = [("duomq", "duomq"), ("activemq", "ActiveMQ")]
KINDS = ["plain", "selector"]


class Cell(benchfiles.Rounds):
    """One system and kind's rounds, and their medians."""

    def __init__(self, runs):
        super().__init__(runs)
        self.by_round = {r["label"].rsplit("/", 1)[-1]: r["receive_rate"] for r in runs}
        self.problems += [
            f"{r['label']}: {r['selector_mismatches']} selector mismatches" for r in runs if r.get("selector_mismatches")
        ]


def num(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def main(out):
    results = read_jsonl(os.path.join(out, "selectors.jsonl"))
    failures = read_tsv(os.path.join(out, "failures.tsv"))
    meta = dict(read_tsv(os.path.join(out, "run.tsv")))
    targets = meta.get("targets", "duomq").split(",")
    cells = {k: Cell(v) for k, v in by_label(results, "selectors").items()}

    def missing(key):
        system = key.split("-")[0]
        return benchfiles.why_missing(f"selectors/{key}/", failures, dict(SYSTEMS)[system], system, targets)

    print(
        f"Selectors: 1 KiB persistent messages, {meta.get('selectors.producers', '?')} producers with 64 receipts "
        f"in flight each, 2 consumers (client-individual acks, prefetch {meta.get('prefetch', '?')}), "
        f"{meta.get('duration', '?')} after {meta.get('warmup', '?')} per cell; median of "
        f"{meta.get('selectors.rounds', '?')} rounds"
    )
    print("  (every message carries colour: red or blue in turn; plain: no selector; selector: consumer 0")
    print("  \"colour = 'red'\", consumer 1 \"colour = 'blue'\", half the messages each, every delivery checked)")
    print()
    print(f"  {'system':<9} {'kind':<9} {'msg/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/msg':>11}  rounds (msg/s)")
    for system, name in SYSTEMS:
        for kind in KINDS:
            c = cells.get(f"{system}-{kind}")
            label = name if kind == KINDS[0] else ""
            if c is None:
                print(f"  {label:<9} {kind:<9} {'-':>9}  {missing(f'{system}-{kind}')}")
                continue
            each = " ".join(num(r["receive_rate"]) for r in c.runs)
            print(
                f"  {label:<9} {kind:<9} {num(c.rate):>9} {num(c.p50, 2):>8} {num(c.p99, 2):>8} "
                f"{num(c.cpu, 1):>11}  {each}"
            )
    print("  CPU us/msg: the broker's CPU time per message received")
    print()

    def ratio_line(title, top, bottom, paired):
        a, b = cells.get(top), cells.get(bottom)
        if a is None or b is None or not a.rate or not b.rate:
            why = missing(bottom if b is None else top) if (a is None or b is None) else "received nothing"
            print(f"ratio {title}: -  ({why})")
            return
        x = a.rate / b.rate
        said = []
        if paired:
            rounds = [a.by_round[k] / b.by_round[k] for k in a.by_round if b.by_round.get(k)]
            plural = "" if len(rounds) == 1 else "s"
            said.append(f"median of {len(rounds)} paired round{plural}; ratio of the medians {x:.3f}")
            x = median_of(rounds) or x
        if a.p99 and b.p99:
            said.append(f"p99 latency x{a.p99 / b.p99:.2f}")
        if a.cpu and b.cpu:
            said.append(f"broker CPU per message x{a.cpu / b.cpu:.2f}")
        print(f"ratio {title}: {x:.3f}  ({'; '.join(said)})")

    ratio_line("duomq selector/plain", "duomq-selector", "duomq-plain", paired=True)
    ratio_line("ActiveMQ selector/plain", "activemq-selector", "activemq-plain", paired=True)
    ratio_line("duomq selector/ActiveMQ selector", "duomq-selector", "activemq-selector", paired=False)
    problems = [p for c in cells.values() for p in c.problems]
    benchfiles.print_footer(problems, os.path.join(out, "selectors-load.tsv"), meta.get("nproc", "?"))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: selectors-report.py OUT_DIR")
    main(sys.argv[1])
