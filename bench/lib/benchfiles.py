"""Reading the files a compare.sh section leaves in its output directory, and what is
wrong with one 1P+1C result; shared by the section reports (network-report.py,
groups-report.py, database-report.py)."""
import json


def read_jsonl(path):
    """One JSON value per non-empty line; none when the file is missing."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def read_tsv(path):
    """KEY<TAB>VALUE lines as [key, value] pairs; none when the file is missing."""
    try:
        with open(path) as f:
            return [line.rstrip("\n").split("\t", 1) for line in f if "\t" in line]
    except FileNotFoundError:
        return []


def run_problems(r, consumers="the consumer"):
    """What is wrong with one 'duomq-bench run --json' result: messages not drained,
    duplicates, nothing received, errors. CONSUMERS names them in the text."""
    p = []
    if r["lost"]:
        p.append(f"NOT DRAINED: {r['lost']} of {r['confirmed']} receipted messages never reached {consumers}")
    if r["duplicates"]:
        p.append(f"{r['duplicates']} duplicate deliveries")
    if r["received"] == 0:
        p.append(f"{consumers} received nothing in the measured interval")
    if r["errors"]:
        p.append("errors: " + "; ".join(r["errors"]))
    return p


def median_of(values):
    """The median of the values that are not None; None when there are none."""
    import statistics

    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


class Rounds:
    """Several rounds' results of one cell on one system, and their medians: msg/s, p50 and
    p99 latency, the broker's CPU time per message in microseconds; with what is wrong with
    each round (run_problems)."""

    def __init__(self, runs):
        self.runs = runs
        self.rate = median_of(r["receive_rate"] for r in runs)
        self.p50 = median_of((r.get("latency_ms") or {}).get("p50") for r in runs)
        self.p99 = median_of((r.get("latency_ms") or {}).get("p99") for r in runs)
        self.cpu = median_of(
            r["cpu_percent"] / 100.0 / r["receive_rate"] * 1e6
            for r in runs
            if r.get("cpu_percent") is not None and r["receive_rate"]
        )
        self.problems = [f"{r['label']}: {p}" for r in runs for p in run_problems(r, "the consumers")]


def by_label(results, section):
    """{setup: [result, ...]} of one section's results, labelled SECTION/SETUP/rROUND."""
    runs = {}
    for r in results:
        parts = r["label"].split("/")
        if len(parts) == 3 and parts[0] == section:
            runs.setdefault(parts[1], []).append(r)
    return runs


def why_missing(label_prefix, failures, setup_name, system, targets):
    """Why no result carries LABEL_PREFIX: the failures recorded for it (joined), else
    that SYSTEM was left out by --only, else 'no result'."""
    found = [v for k, v in failures if k.startswith(label_prefix)]
    if found:
        return "; ".join(dict.fromkeys(found))
    if system not in targets:
        return f"{setup_name} not measured (not in --only)"
    return "no result"


def load_line(rows, nproc):
    """The highest 1-minute load before a section's cells, as one line."""
    if not rows:
        return None
    highest = max(float(v) for _, v in rows)
    note = " (cells run beside other work are worth repeating)" if highest > 1.0 else ""
    return f"1-minute load before the cells: up to {highest:.2f} on {nproc} CPUs{note}"


def print_footer(problems, load_tsv, nproc):
    """What ends a section's report: the problems of its cells (a ratio over such a cell
    means little), then the highest load before its cells (from LOAD_TSV)."""
    if problems:
        print()
        print("Problems (a ratio over such a cell means little):")
        for p in problems:
            print(f"  {p}")
    load = load_line(read_tsv(load_tsv), nproc)
    if load:
        print()
        print(load)
