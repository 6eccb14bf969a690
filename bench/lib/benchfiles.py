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
