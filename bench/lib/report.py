#!/usr/bin/env python3
"""Turn one bench/compare.sh output directory into the comparison table.

Reads, from the directory given:
  run.tsv        KEY<TAB>VALUE lines: machine, versions, durations, idle RSS per target
  cells.tsv      CELL<TAB>TITLE lines: the matrix, in order
  results.jsonl  one `duomq-bench run --json` line per cell, labelled TARGET/CELL
  failures.tsv   TARGET/CELL<TAB>REASON lines for cells that produced no result
  fsync.json     `duomq-bench fsync-rate --json`
prints the table for people to stdout and writes summary.md beside the inputs.
Python standard library only; it can be rerun on an old output directory.
"""

import json
import os
import sys

TARGET_NAMES = {
    "duomq": "duomq",
    "activemq": "ActiveMQ",
    "rabbitmq-classic": "RabbitMQ classic",
    "rabbitmq-quorum": "RabbitMQ quorum",
}
PEERS = ["activemq", "rabbitmq-classic", "rabbitmq-quorum"]


def read_tsv(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if line and not line.startswith("#"):
                    key, _, value = line.partition("\t")
                    rows.append((key, value))
    return rows


def read_results(path):
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    result = json.loads(line)
                except json.JSONDecodeError as err:
                    print(f"report: {path}:{number}: not JSON ({err})", file=sys.stderr)
                    continue
                results[result.get("label", "")] = result
    return results


def fmt_rate(value):
    return "-" if value is None else f"{value:,.0f}"


def fmt_ms(value):
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def fmt_mib(value):
    return "-" if value is None else f"{value:,.0f}"


def fmt_ratio(num, den):
    if num is None or not den:
        return "-"
    return f"{num / den:.2f}x"


def read_fsync(path):
    """(append rate, preallocated rate) from a 'duomq-bench fsync-rate --json' file;
    None for what is missing or unreadable."""
    if not os.path.exists(path):
        return None, None
    with open(path) as f:
        try:
            report = json.load(f)
            return report.get("fsync_rate"), (report.get("preallocated") or {}).get("fsync_rate")
        except (json.JSONDecodeError, AttributeError):
            return None, None


class Run:
    def __init__(self, out_dir):
        self.meta = dict(read_tsv(os.path.join(out_dir, "run.tsv")))
        self.cells = read_tsv(os.path.join(out_dir, "cells.tsv"))
        self.results = read_results(os.path.join(out_dir, "results.jsonl"))
        self.failures = dict(read_tsv(os.path.join(out_dir, "failures.tsv")))
        self.targets = [t for t in self.meta.get("targets", "").split(",") if t]
        # Appending (each fdatasync commits a new size) and into preallocated space (data
        # only, as duomq's journal writes): the faster one is the disk's limit.
        self.fsync_before = read_fsync(os.path.join(out_dir, "fsync.json"))
        self.fsync, self.fsync_prealloc = self.fsync_before
        # The same right after duomq's window-1 cell: the ratio uses the mean of both.
        after = read_fsync(os.path.join(out_dir, "fsync-duomq-after-w1.json"))
        self.fsync_after = after if self.fsync and after[0] else None
        if self.fsync_after:
            self.fsync = (self.fsync + after[0]) / 2
            if self.fsync_prealloc and after[1]:
                self.fsync_prealloc = (self.fsync_prealloc + after[1]) / 2
        # The same measured before each target's cells: how far the disk drifted.
        self.fsync_by_target = {}
        for target in self.targets:
            rate, _ = read_fsync(os.path.join(out_dir, f"fsync-{target}.json"))
            if rate is not None:
                self.fsync_by_target[target] = rate

    def result(self, target, cell):
        return self.results.get(f"{target}/{cell}")

    def rate(self, target, cell):
        """Messages per second end to end: what the consumers received."""
        r = self.result(target, cell)
        return None if r is None else r.get("receive_rate")

    def p99(self, target, cell):
        r = self.result(target, cell)
        return None if r is None else (r.get("latency_ms") or {}).get("p99")

    def cell_text(self, target, cell, value, fmt):
        if self.result(target, cell) is None:
            return "fail" if f"{target}/{cell}" in self.failures else "-"
        text = fmt(value)
        if self.suspicious(target, cell):
            text += "!"
        return text

    def suspicious(self, target, cell):
        r = self.result(target, cell) or {}
        return bool(r.get("lost") or r.get("duplicates") or r.get("errors"))

    def best_peer(self, cell):
        rates = [self.rate(t, cell) for t in PEERS if t in self.targets]
        rates = [r for r in rates if r is not None]
        return max(rates) if rates else None

    def rss(self, target):
        idle = self.meta.get(f"rss_idle.{target}")
        peaks = [
            (self.result(target, cell) or {}).get("rss_peak_mib") for cell, _ in self.cells
        ]
        peaks = [p for p in peaks if p is not None]
        return (float(idle) if idle else None), (max(peaks) if peaks else None)

    # --- the main table, as rows of strings ---------------------------------------

    def table(self):
        groups = [(TARGET_NAMES.get(t, t), ["msg/s", "p99 ms"]) for t in self.targets]
        ratios = []
        if "duomq" in self.targets and any(t in self.targets for t in PEERS):
            ratios.append(("duomq/", ["best peer"]))
        if "duomq" in self.targets and "activemq" in self.targets:
            ratios.append(("duomq/", ["ActiveMQ"]))
        header = [("", ["cell"])] + groups + ratios
        rows = []
        for cell, title in self.cells:
            row = [title]
            for t in self.targets:
                row.append(self.cell_text(t, cell, self.rate(t, cell), fmt_rate))
                row.append(self.cell_text(t, cell, self.p99(t, cell), fmt_ms))
            duomq = self.rate("duomq", cell) if "duomq" in self.targets else None
            if ratios and ratios[0][1] == ["best peer"]:
                row.append(fmt_ratio(duomq, self.best_peer(cell)))
            if "duomq" in self.targets and "activemq" in self.targets:
                row.append(fmt_ratio(duomq, self.rate("activemq", cell)))
            rows.append(row)
        return header, rows

    def notes(self):
        notes = []
        for t in self.targets:
            for cell, title in self.cells:
                label = f"{t}/{cell}"
                r = self.result(t, cell)
                if r is None:
                    if label in self.failures:
                        notes.append(f"{label}: no result: {self.failures[label]}")
                    continue
                if r.get("lost"):
                    notes.append(f"{label}: LOST {r['lost']} receipted messages")
                if r.get("duplicates"):
                    notes.append(f"{label}: {r['duplicates']} duplicate deliveries")
                for error in r.get("errors") or []:
                    notes.append(f"{label}: {error}")
        return notes


def render_text(header, rows):
    """Two header lines (group names over column names), right-aligned numbers."""
    flat_names = [name for _, names in header for name in names]
    widths = [len(n) for n in flat_names]
    for row in rows:
        widths = [max(w, len(v)) for w, v in zip(widths, row)]
    # Widen a group's last column when its name is wider than its columns.
    col = 0
    for group, names in header:
        span = sum(widths[col : col + len(names)]) + 2 * (len(names) - 1)
        if len(group) > span:
            widths[col + len(names) - 1] += len(group) - span
        col += len(names)
    lines = []
    top, col = [], 0
    for group, names in header:
        span = sum(widths[col : col + len(names)]) + 2 * (len(names) - 1)
        top.append(group.center(span) if group else " " * span)
        col += len(names)
    lines.append("  ".join(top).rstrip())

    def line(values):
        cells = [values[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(values[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    lines.append(line(flat_names))
    lines.extend(line(row) for row in rows)
    return lines


def render_markdown_table(header, rows):
    names = []
    for group, cols in header:
        sep = "" if group.endswith("/") else " "
        names.extend(f"{group}{sep}{c}".strip() for c in cols)
    out = ["| " + " | ".join(names) + " |", "|" + "|".join([":---"] + ["---:"] * (len(names) - 1)) + "|"]
    out.extend("| " + " | ".join(row) + " |" for row in rows)
    return out


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = sys.argv[1]
    run = Run(out_dir)
    meta = run.meta
    header, rows = run.table()

    text = []
    text.append(
        f"duomq vs ActiveMQ vs RabbitMQ over STOMP, {meta.get('duration', '?')} measured after "
        f"{meta.get('warmup', '?')} warm-up per cell, {meta.get('started', '')}"
    )
    text.append(
        "msg/s: messages consumed per second; p99: send-to-receive latency; "
        "persistent = on disk (fsync) before the broker's receipt"
    )
    text.append("")
    text.extend(render_text(header, rows))
    if "duomq" in run.targets and len(run.targets) > 1:
        text.append("duomq/best peer: duomq's msg/s over the fastest other broker (or RabbitMQ queue type) in that row")
    notes = run.notes()
    if notes:
        text.append("")
        text.append("! or fail:")
        text.extend(f"  {n}" for n in notes)

    text.append("")
    rss_rows = []
    for t in run.targets:
        idle, peak = run.rss(t)
        rss_rows.append([TARGET_NAMES.get(t, t), fmt_mib(idle), fmt_mib(peak)])
    text.extend(render_text([("", ["broker RSS (MiB)"]), ("", ["idle"]), ("", ["peak"])], rss_rows)[1:])

    text.append("")
    fsync_line = "disk fsync rate: " + (f"{run.fsync:,.0f} fsyncs/s" if run.fsync else "not measured")
    fsync_line += f" (1 KiB append + fdatasync, {meta.get('workdir_fs', '?')}"
    if run.fsync_after:
        fsync_line += ", mean of right before and right after duomq's window-1 cell)"
    else:
        fsync_line += ", just before duomq's cells)" if "duomq" in run.fsync_by_target else ")"
    if run.fsync_prealloc:
        fsync_line += f"; {run.fsync_prealloc:,.0f} fsyncs/s into preallocated space"
    if run.fsync_after:
        (b, bp), (a, ap) = run.fsync_before, run.fsync_after
        fsync_line += f"\n  before the cell {b:,.0f} append, {bp or 0:,.0f} preallocated; after it {a:,.0f}, {ap or 0:,.0f}"
    text.append(fsync_line)
    if len(run.fsync_by_target) > 1:
        drift = ", ".join(f"{t} {r:,.0f}" for t, r in run.fsync_by_target.items() if r)
        text.append(f"  append fsync rate measured before each broker's cells: {drift}")
    w1 = run.rate("duomq", run.cells[0][0]) if run.cells and "duomq" in run.targets else None
    w1_line = None
    if w1 is not None and run.fsync:
        w1_line = f"duomq {run.cells[0][1]}: {w1:,.0f} msg/s = {w1 / run.fsync:.2f} x the append fsync rate"
        if run.fsync_prealloc:
            w1_line += f", {w1 / run.fsync_prealloc:.2f} x the preallocated one"
        text.append(
            w1_line + "\n"
            "  (one send in flight waits for its own fsync: 1.00 would mean the disk is the only limit)"
        )
    machine = [
        f"machine: {meta.get('nproc', '?')} CPUs ({meta.get('cpu_model', '?')}), "
        f"{meta.get('memory', '?')} memory, Linux {meta.get('kernel', '?')}, "
        f"data on {meta.get('workdir_fs', '?')}",
        "versions: " + "; ".join(
            meta[k] for k in ("version.duomq", "version.activemq", "version.rabbitmq") if meta.get(k)
        ),
    ]
    text.extend(machine)

    print("\n".join(text))

    md = [f"# Broker comparison, {meta.get('started', '')}", ""]
    md.append(
        f"Each cell ran {meta.get('duration', '?')} (after {meta.get('warmup', '?')} of warm-up) "
        "with `duomq-bench run` on one machine, one broker at a time. msg/s is what the consumers "
        "received per second; p99 is the send-to-receive latency. Persistent messages are on disk "
        "(fsync) before the broker's receipt on every broker (a RabbitMQ classic queue may instead "
        "confirm a message already consumed and acknowledged); consumers ack each message "
        f"(client-individual) with a prefetch of {meta.get('prefetch', '?')}."
    )
    md.append("")
    md.extend(render_markdown_table(header, rows))
    if notes:
        md += ["", "Marked `!` or `fail`:", ""] + [f"- {n}" for n in notes]
    md += ["", "| broker | RSS idle MiB | RSS peak MiB |", "|:---|---:|---:|"]
    md.extend(f"| {name} | {idle} | {peak} |" for name, idle, peak in rss_rows)
    md += ["", f"- {fsync_line}"]
    if w1_line:
        md.append(f"- {w1_line}")
    md.extend(f"- {m}" for m in machine)
    md += ["", "## Every number", ""]
    md.append(
        "| target | cell | sent/s | recv/s | p50 ms | p99 ms | p99.9 ms | max ms | broker CPU % "
        "| RSS peak MiB | lost | dup |"
    )
    md.append("|:---|:---|" + "---:|" * 10)
    for t in run.targets:
        for cell, title in run.cells:
            r = run.result(t, cell)
            if r is None:
                continue
            lat = r.get("latency_ms") or {}
            cpu = r.get("cpu_percent")
            md.append(
                f"| {TARGET_NAMES.get(t, t)} | {title} | {fmt_rate(r.get('send_rate'))} "
                f"| {fmt_rate(r.get('receive_rate'))} | {fmt_ms(lat.get('p50'))} | {fmt_ms(lat.get('p99'))} "
                f"| {fmt_ms(lat.get('p999'))} | {fmt_ms(lat.get('max'))} "
                f"| {'-' if cpu is None else f'{cpu:.0f}'} | {fmt_mib(r.get('rss_peak_mib'))} "
                f"| {r.get('lost', '-')} | {r.get('duplicates', '-')} |"
            )
    md += ["", "Raw results: `results.jsonl` (one `duomq-bench run --json` line per cell), broker logs in `logs/`.", ""]
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
