#!/usr/bin/env python3
"""Prints the failover section of bench/compare.sh side by side: one column per target,
from the 'duomq-bench failover --json' lines in FILE (failover.jsonl)."""
import json
import sys


def main(path):
    with open(path) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    if not runs:
        print("failover: no results")
        return
    def gap(r, key):
        g = r.get("gap_ms")
        return "-" if g is None else f"{g[key]:.0f}"
    rows = [
        ("kills", lambda r: f"{r['kills']}/{r['kills_requested']}"),
        ("gap p50 ms", lambda r: gap(r, "p50")),
        ("gap p99 ms", lambda r: gap(r, "p99")),
        ("gap max ms", lambda r: gap(r, "max")),
        ("confirmed", lambda r: str(r["confirmed"])),
        ("lost", lambda r: str(r["lost"])),
        ("duplicates", lambda r: str(r["duplicates"])),
        ("redeliveries", lambda r: str(r["redeliveries"])),
        ("  unflagged", lambda r: str(r["unflagged_redeliveries"])),
        ("errors", lambda r: str(len(r["errors"]))),
    ]
    names = [r["label"].removeprefix("failover/") for r in runs]
    width = max(12, *(len(n) for n in names))
    print("Failover: SIGKILL of the live member under load (gap: last receipt from the killed broker to first from its successor)")
    print(f"{'':<14}" + "".join(f"{n:>{width}}" for n in names))
    for title, cell in rows:
        print(f"{title:<14}" + "".join(f"{cell(r):>{width}}" for r in runs))
    for r in runs:
        for e in r["errors"]:
            print(f"{r['label']}: ERROR: {e}")


if __name__ == "__main__":
    main(sys.argv[1])
