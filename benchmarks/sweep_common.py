"""What the resumable sweeps of ``benchmarks/`` share: the JSONL of finished runs, the commit
and versions a figure was measured with, Student-t intervals, and the results page's markers."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def read_jsonl(path: Path, key: Callable[[dict], Any]) -> dict[Any, dict]:
    """The records of ``path`` (one JSON object per line) by ``key(record)``; a missing file is
    empty, and a half-written last line (a killed sweep) is ignored."""
    if not path.exists():
        return {}
    records = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[key(record)] = record
    return records


def append_jsonl(path: Path, record: dict) -> None:
    """Appends one record as one line (the sweep's unit of progress)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(record) + "\n")


# What the sweeps themselves write: a change there does not make the code differ from HEAD.
OUTPUTS = ("benchmarks/results", "docs/results.md", "configs/digits_baselines.json")


def commit() -> str:
    """The repository's commit, with ``+dirty`` when tracked files other than the sweeps' own
    outputs differ from it."""
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    excluded = [f":(exclude){path}" for path in OUTPUTS]
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *excluded)
    return head + ("+dirty" if dirty else "")


def add_compilation_cache_argument(parser: argparse.ArgumentParser) -> None:
    """``--compilation-cache``: the folder of the sweep's persistent XLA compilation cache."""
    parser.add_argument(
        "--compilation-cache",
        type=Path,
        default=ROOT / "runs/xla_cache",
        help="persistent XLA compilation cache: the runs of a setting differ only in data and "
        "seed, so their steps compile once",
    )


def start_sweep(compilation_cache: Path) -> str:
    """Prepares this process for a sweep; returns the commit its records name.

    The persistent XLA compilation cache goes to ``compilation_cache``. The commit is taken now,
    before any run imports the library: the code the sweep runs is the checkout of this moment,
    and later edits of the checkout must not relabel its records."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(compilation_cache))
    return commit()


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % Student-t interval of ``values`` (NaN for one value)."""
    from scipy import stats

    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, math.nan
    return mean, float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


def write_between_markers(document: Path, name: str, text: str) -> None:
    """Replaces what lies between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    page = document.read_text()
    if start in page and end in page:
        before, rest = page.split(start, 1)
        document.write_text(before + start + "\n" + text + end + rest.split(end, 1)[1])
