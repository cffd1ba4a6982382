"""The resumable digits table: cells, resumption and the paired statistics of its report."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # as when the script runs: its folder first
spec = importlib.util.spec_from_file_location("digits_table", ROOT / "benchmarks/digits_table.py")
table = sys.modules["digits_table"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table)
import sweep_common  # noqa: E402


def _record(row, seed, accuracy, source="mnist5k", target="ucidigits", steps=10):
    return {
        "row": row, "source": source, "target": target, "seed": seed, "steps": steps,
        "target_accuracy": accuracy, "wall_s": 1.0, "commit": "abc", "jax": "0", "backend": "1 cpu",
        "date": "2026-12-03 07:00 UTC",
    }  # fmt: skip


def test_cells_are_balanced_by_seed_and_respect_each_rows_seed_count():
    rows = (table.BY_KEY["cgdm"], table.BY_KEY["dann"])  # 5 and 3 seeds
    cells = list(table.cells(rows, 100, None))
    assert len(cells) == 2 * (5 + 3)
    seeds = [c.seed for c in cells]
    assert seeds == sorted(seeds)  # seeds outermost
    assert {c.seed for c in cells if c.row.key == "dann"} == {0, 1, 2}
    assert len(list(table.cells(rows, 100, 1))) == 4


def test_the_oracle_trains_on_the_targets_labelled_split(tmp_path):
    cell = table.Cell(table.BY_KEY["oracle"], "mnist5k", "ucidigits", 0, 10)
    overrides = cell.overrides(tmp_path)
    assert "data.source=ucidigits" in overrides and "data.target=ucidigits" in overrides


def test_paired_interval_is_the_student_t_interval():
    differences = [1.0, 3.0, 2.5, 0.5, 2.0]
    mean, half = sweep_common.t_interval(differences)
    expected = stats.t.ppf(0.975, 4) * np.std(differences, ddof=1) / math.sqrt(5)
    assert mean == pytest.approx(1.8) and half == pytest.approx(expected)


def test_report_has_means_spreads_and_paired_differences():
    records = [_record("cgdm", s, a) for s, a in enumerate([0.70, 0.72, 0.74])]
    records += [_record("mcd", s, a) for s, a in enumerate([0.69, 0.73, 0.72])]
    text = table.report({i: r for i, r in enumerate(records)}, 10)
    assert "| CGDM | 32 | 72.0 ± 2.0 | 3 |" in text
    mean, half = sweep_common.t_interval([1.0, -1.0, 2.0])
    interval = f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}] (within noise)"
    assert f"| CGDM − MCD (Saito et al.) | {interval} | 3 |" in text


def test_a_sweep_appends_runs_and_skips_the_finished_ones(tmp_path, capsys, monkeypatch):
    # the checkout's commit changes while the sweep runs; its records name the one it started at
    commits = iter(["started-at", "edited-later", "edited-again"])
    monkeypatch.setattr(sweep_common, "commit", lambda: next(commits))
    document = tmp_path / "results.md"
    document.write_text(
        "before\n<!-- digits-table-2:start -->\nold\n<!-- digits-table-2:end -->\nafter\n"
    )
    args = [
        "--steps", "2", "--rows", "source_only", "--max-seeds", "1",
        "--results", str(tmp_path / "runs.jsonl"), "--table", str(tmp_path / "table.md"),
        "--document", str(document), "--work-dir", str(tmp_path / "work"),
        "--baselines", str(tmp_path / "baselines.json"),
        "--compilation-cache", os.environ["JAX_COMPILATION_CACHE_DIR"],  # the test session's
    ]  # fmt: skip
    assert table.main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [r["target"] for r in records] == ["ucidigits", "mnist5k"]
    assert [r["commit"] for r in records] == ["started-at", "started-at"]
    assert "old" not in document.read_text() and "source only" in document.read_text()
    capsys.readouterr()
    assert table.main(args) == 0  # everything done: nothing is trained again
    assert "2 of 2 cells done" in capsys.readouterr().out
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 2


def test_baselines_export_feeds_the_comparison_under_a_runs_summary(tmp_path):
    from uda_jax import baselines
    from uda_jax.config import load_config

    records = [_record("source_only_adabn", s, a, steps=400) for s, a in enumerate([0.5, 0.6, 0.7])]
    records.append(_record("oracle", 0, 0.97, steps=400))  # one seed: not exported
    path = tmp_path / "baselines.json"
    table.export_baselines(dict(enumerate(records)), path)
    exported = baselines.load(path)
    assert exported == {
        "mnist5k->ucidigits/400steps/batch32": {
            "source_only_adabn": {"mean": 0.6, "std": 0.1, "n": 3},
            "commit": "abc",
        }
    }
    cgdm = load_config("digits_cgdm", ["steps=400"])
    line = baselines.comparison_line(cgdm, exported)
    assert "source only + AdaBN 0.6000 ± 0.1000 (3 seeds)" in line and "at abc;" in line
    assert baselines.comparison_line(load_config("digits_cgdm", ["steps=401"]), exported) is None
    assert (
        baselines.comparison_line(load_config("digits_source_only_adabn", ["steps=400"]), exported)
        is None
    )


def test_a_checkout_without_the_wheels_configs_package_reads_the_repositorys_baselines(
    monkeypatch,
):
    """Run from the repository root after ``pip install .`` (the README's demo), Python imports
    ``uda_jax`` from the checkout, which has no ``uda_jax.configs``: the baselines come from its
    ``configs/`` folder, as the configs themselves do (the demo once crashed here)."""
    import importlib.resources

    from uda_jax import baselines
    from uda_jax.config import configs_dir

    real_files = importlib.resources.files

    def files_without_configs(package):
        if package == "uda_jax.configs":
            raise ModuleNotFoundError(f"No module named {package!r}")
        return real_files(package)

    monkeypatch.setattr(importlib.resources, "files", files_without_configs)
    assert configs_dir() == ROOT / "configs"
    expected = json.loads((ROOT / "configs" / baselines.FILE_NAME).read_text())
    assert baselines.load() == expected and expected  # the demo's entries, not an empty dict


def test_a_diverged_run_is_recorded_named_and_left_out_of_means_and_pairs(tmp_path):
    """A run whose loss turns NaN does not stop the sweep: its record says so, and the report
    counts it without averaging it."""
    exploding = table.Row(
        "exploding", "exploding", "digits_source_only", ("optimizer.learning_rate=1e30",)
    )
    cell = table.Cell(exploding, "mnist5k", "ucidigits", 0, 3)
    record = table.run_cell(cell, tmp_path, "abc")
    assert record["target_accuracy"] is None
    assert "step 2: train/loss_cls is nan" in record["diverged"]

    records = [_record("cgdm", s, a) for s, a in enumerate([0.70, None, 0.74])]
    records += [_record("mcd", s, a) for s, a in enumerate([0.69, 0.73, 0.72])]
    records += [_record("cgdm_beta0", s, None) for s in range(2)]
    text = table.report(dict(enumerate(records)), 10)
    assert "| CGDM | 32 | 72.0 ± 2.8 (1 of 3 diverged, left out) | 3 |" in text
    assert "| CGDM, β = 0 (no gradient discrepancy) | 32 | diverged (2 of 2) | 2 |" in text
    mean, half = sweep_common.t_interval([1.0, 2.0])  # seeds 0 and 2 only
    assert f"| CGDM − MCD (Saito et al.) | {mean:+.1f} [{mean - half:+.1f}" in text
    assert (
        "| CGDM − CGDM, β = 0 (no gradient discrepancy) | none: fewer than 2 seeds where both "
        "finished (CGDM diverged in 1 of 2, CGDM, β = 0 (no gradient discrepancy) diverged in "
        "2 of 2) | 0 |" in text
    )
    assert "| CGDM − CGDM, α = 0" not in text  # not run yet: no line


def test_a_run_at_chance_level_is_averaged_but_named():
    """A finite run that collapsed to about one class stays in the mean (it finished), but the
    cell says how many did, so a low mean is not read as ordinary spread."""
    records = [_record("cgdm", s, a) for s, a in enumerate([0.70, 0.12, None])]
    records += [_record("mcd", s, a) for s, a in enumerate([0.69, 0.73])]
    text = table.report(dict(enumerate(records)), 10)
    mean, std = np.mean([70.0, 12.0]), np.std([70.0, 12.0], ddof=1)
    assert (
        f"| CGDM | 32 | {mean:.1f} ± {std:.1f} (1 of 3 diverged, left out; 1 of 2 at chance "
        "level, ≤ 15 %) | 3 |" in text
    )
    assert "| MCD (Saito et al.) | 32 | 71.0 ± 2.8 | 2 |" in text  # 69 and 73: no note


def test_workers_split_the_missing_cells_and_the_parent_writes_one_report(tmp_path):
    """``--workers 2``: two processes train disjoint halves of the missing cells (every second
    one each), the records of all land in one JSONL, and the table is written once."""
    document = tmp_path / "results.md"
    document.write_text("<!-- digits-table-2:start -->\n<!-- digits-table-2:end -->\n")
    args = [
        "--steps", "2", "--rows", "source_only", "oracle", "--max-seeds", "1", "--workers", "2",
        "--results", str(tmp_path / "runs.jsonl"), "--table", str(tmp_path / "table.md"),
        "--document", str(document), "--work-dir", str(tmp_path / "work"),
        "--baselines", str(tmp_path / "baselines.json"),
        "--compilation-cache", os.environ["JAX_COMPILATION_CACHE_DIR"],
    ]  # fmt: skip
    assert table.main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    cells = sorted((r["row"], r["source"]) for r in records)
    assert cells == [("oracle", "mnist5k"), ("oracle", "ucidigits"),
                     ("source_only", "mnist5k"), ("source_only", "ucidigits")]  # fmt: skip
    assert "| target oracle (upper bound) |" in document.read_text()
    with pytest.raises(SystemExit):
        table.main(["--shard", "2/2"])  # i must be below n


def test_a_shard_is_i_of_n_and_workers_a_positive_count():
    assert table.shard("1/3") == (1, 3)
    for bad in ("3/3", "-1/3", "1", "a/b"):
        with pytest.raises(argparse.ArgumentTypeError):
            table.shard(bad)
    assert table.positive("8") == 8
    for bad in ("0", "-2", "two"):
        with pytest.raises(argparse.ArgumentTypeError):
            table.positive(bad)
