"""The model-selection study: its statistics against hand computations, and its resumption."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # as when the script runs: its folder first
spec = importlib.util.spec_from_file_location(
    "selection_study", ROOT / "benchmarks/selection_study.py"
)
study = sys.modules["selection_study"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)
import sweep_common  # noqa: E402


def _record(run, step, accuracy, snd, method="cgdm", seed=0, steps=10):
    scores = {v: 0.0 for v in ("source_accuracy", "entropy", "im", "bnm", "dev")}
    return {
        "run": run, "method": method, "setting": [], "seed": seed, "step": step, "steps": steps,
        "scores": scores | {"snd": snd, "oracle": accuracy}, "train_wall_s": 1.0,
        "commit": "abc", "date": "2026-12-03 08:00 UTC",
    }  # fmt: skip


def test_regret_and_rank_correlation_of_a_validator():
    accuracy = [0.50, 0.70, 0.65, 0.60]
    snd = [0.1, 0.3, 0.4, 0.2]  # picks the 0.65 candidate; the oracle picks 0.70
    records = [_record("r", i, a, s) for i, (a, s) in enumerate(zip(accuracy, snd, strict=True))]
    rho, regret = study.selection_metrics(records, "snd")
    assert regret == pytest.approx(5.0)
    assert rho == pytest.approx(stats.spearmanr(snd, accuracy).statistic)
    assert rho == pytest.approx(0.8)


def test_report_pools_method_seed_pairs():
    records = {}
    for seed, chosen in ((0, 0.70), (1, 0.60)):
        for i, (a, s) in enumerate(((0.70, 0.2), (0.60, 0.1))):
            records[(seed, i)] = _record(f"r{seed}", i, a, s if chosen == 0.70 else -s, seed=seed)
    text = study.report(records, 10)
    mean, half = (
        np.mean([0.0, 10.0]),
        stats.t.ppf(0.975, 1) * np.std([0, 10.0], ddof=1) / np.sqrt(2),
    )
    assert (
        f"| snd | 0.00 [-1.00, 1.00] | {mean:.1f} [{mean - half:.1f}, {mean + half:.1f}] | 2 |"
        in text
    )


def test_a_finished_run_is_neither_trained_nor_scored_again(tmp_path, monkeypatch):
    calls = []

    def fake(run, work_dir, done, results, code):
        assert code == "abc1234"  # the commit taken when the sweep started
        calls.append(run.name)
        for step in run.checkpoint_steps:
            if (run.name, step) not in done:
                study.append_jsonl(
                    results, _record(run.name, step, 0.5, step, method=run.method, steps=run.steps)
                )

    monkeypatch.setattr(study, "train_and_score", fake)
    monkeypatch.setattr(sweep_common, "commit", lambda: "abc1234")
    args = ["--steps", "4", "--every", "2", "--seeds", "1", "--methods", "mcd",
            "--results", str(tmp_path / "s.jsonl"), "--table", str(tmp_path / "s.md"),
            "--document", str(tmp_path / "doc.md"),
            "--compilation-cache", os.environ["JAX_COMPILATION_CACHE_DIR"]]  # fmt: skip
    (tmp_path / "doc.md").write_text(
        "<!-- selection-study:start -->\n<!-- selection-study:end -->\n"
    )
    assert study.main(args) == 0
    assert len(calls) == 2 and len((tmp_path / "s.jsonl").read_text().splitlines()) == 4
    with (tmp_path / "s.jsonl").open("a") as out:
        out.write('{"run": "half-writ')  # a sweep killed while writing: the line is ignored
    assert study.main(args) == 0
    assert len(calls) == 2  # nothing left to do
    assert "| snd |" in (tmp_path / "doc.md").read_text()
