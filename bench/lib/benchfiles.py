"""Reading the files a compare.sh section leaves in its output directory; shared by the
section reports (network-report.py, groups-report.py)."""
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
