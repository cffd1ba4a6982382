"""Measured baselines a finished run is shown next to: what adaptation bought.

``configs/digits_baselines.json`` (shipped as ``uda_jax/configs``) holds, per embedded digits
task and number of steps, the source-only + AdaBN and target-oracle accuracies over several
seeds, written by ``benchmarks/digits_table.py`` from its runs. After training, a run whose task,
steps and batch size match an entry gets one more line under its summary, saying where the
figures came from. No entry, no line: nothing is extrapolated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from uda_jax.config import Config, configs_dir

FILE_NAME = "digits_baselines.json"
LABELS = {"source_only_adabn": "source only + AdaBN", "oracle": "target oracle"}


def entry_key(source: str, target: str, steps: int, batch_size: int) -> str:
    """The key of one task and budget in the baselines file."""
    return f"{source}->{target}/{steps}steps/batch{batch_size}"


def load(path: Path | None = None) -> dict[str, Any]:
    """The packaged baselines (or those of ``path``); empty when the file is absent."""
    if path is None:
        folder = configs_dir()  # the wheel's uda_jax/configs, or a checkout's configs/
        if folder is None:
            return {}
        path = folder / FILE_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def comparison_line(config: Config, baselines: dict[str, Any] | None = None) -> str | None:
    """``for comparison, on the same task and steps: ...`` or None when nothing matches (or
    the run is itself a baseline)."""
    if config.method.name == "source_only":
        return None
    data = config.data
    key = entry_key(data.source, data.target, config.steps, data.batch_size)
    entry = (load() if baselines is None else baselines).get(key)
    if not entry:
        return None
    parts = []
    for name, label in LABELS.items():
        if name in entry:
            row = entry[name]
            parts.append(f"{label} {row['mean']:.4f} ± {row['std']:.4f} ({row['n']} seeds)")
    if not parts:
        return None
    return (
        f"  for comparison, the same task and steps: {'; '.join(parts)} "
        f"(benchmarks/digits_table.py at {entry['commit']}; docs/results.md)"
    )
