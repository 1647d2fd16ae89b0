"""Shared by the benchmark scripts: their marked sections of a Markdown file, and their worker processes.

A section is the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``. A script replaces its
own section (or appends it) and leaves the rest of the file alone; ``make bench-peers``, which rewrites
docs/performance.md whole, carries the other scripts' sections over.
"""
from __future__ import annotations

import re
from pathlib import Path

_SECTION = re.compile(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", re.S)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(path: Path, section: str) -> None:
    """Replace the section that ``section`` (a marked block) names in ``path``, or append it."""
    match = _SECTION.search(section)
    if not match:
        raise ValueError("the section must start and end with its <!-- NAME:begin/end --> markers")
    begin, end = markers(match.group(1))
    text = path.read_text() if path.exists() else ""
    block = match.group(0)
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)


def sections(text: str) -> dict[str, str]:
    """Every marked section of a text, by name."""
    return {m.group(1): m.group(0) for m in _SECTION.finditer(text)}


def run_worker(cmd: list[str]) -> dict | None:
    """Run a benchmark worker in a fresh process; its last stdout line is its JSON result. On failure,
    print the tail of its output and return None."""
    import json
    import subprocess
    import sys

    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def publish(section: str, output: str | None, json_path: str | None, results) -> None:
    """Print a rendered section, write it into ``output`` (unless None or 'none') and the raw
    results into ``json_path``."""
    import json

    print(section)
    if output and output != "none":
        write_section(Path(output), section)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1))


def mean_std_se(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation (0 for one value) and standard error of a metric over seeds."""
    import math
    import statistics

    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values), std, std / math.sqrt(len(values))


def merge_seed_entries(done: dict, results: dict) -> dict:
    """``{dataset: {model: [entry with "seed", ...]}}`` of an earlier call with this call's on top, per
    dataset, model and seed: an earlier entry this call has not reached (or did not ask for) is kept."""
    out = {d: {m: list(rows) for m, rows in by_model.items()} for d, by_model in done.items()}
    for d, by_model in results.items():
        for m, rows in by_model.items():
            mine = {r["seed"] for r in rows}
            out.setdefault(d, {})[m] = sorted([r for r in out.get(d, {}).get(m, []) if r["seed"] not in mine] + rows,
                                              key=lambda r: r["seed"])
    return out
