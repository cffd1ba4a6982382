"""Model-selection study: how well each unsupervised validator picks a model on the digits task.

For each method, a small hyper-parameter grid and several seeds, one run per (method, setting,
seed) saves a checkpoint every ``--every`` steps. Every checkpoint is scored by every validator
of :mod:`uda_jax.validators` and by its target test accuracy (the oracle). Then, per method and
seed, over the candidates (every setting × every checkpoint):

- the Spearman rank correlation between the validator and the target accuracy;
- the regret: the target accuracy of the oracle's choice minus that of the validator's choice
  (in points; 0 is perfect, the oracle itself).

Both are reported as mean with a 95 % Student-t interval over the (method, seed) pairs, and the
regret per method. Resumable: each scored checkpoint is one JSON line of ``--results``; a run
whose checkpoints are all scored is skipped, a killed run resumes from its last checkpoint.

    python benchmarks/selection_study.py              # run what is missing, then report
    python benchmarks/selection_study.py --report     # the tables from what has finished
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from sweep_common import (
    ROOT,
    add_compilation_cache_argument,
    append_jsonl,
    read_jsonl,
    start_sweep,
    t_interval,
    write_between_markers,
)

MARKERS = "selection-study"
SOURCE, TARGET = "mnist5k", "ucidigits"
# method → (packaged config, the grid: one list of overrides per setting)
GRID = {
    "cgdm": ("digits_cgdm", (("cgdm.gd_weight=0.01",), ("cgdm.gd_weight=0.1",))),
    "mcd": ("digits_mcd", (("mcd.num_k=2",), ("mcd.num_k=4",))),
    "dann": ("digits_dann", (("dann.trade_off=0.3",), ("dann.trade_off=1.0",))),
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the study."""

    method: str
    setting: tuple[str, ...]
    seed: int
    steps: int
    every: int

    @property
    def name(self) -> str:
        setting = "_".join(o.replace("=", "-") for o in self.setting)
        return f"{self.method}_{setting}_s{self.seed}_{self.steps}"

    @property
    def checkpoint_steps(self) -> list[int]:
        return list(range(self.every, self.steps + 1, self.every))


def runs(steps: int, every: int, seeds: int, methods: list[str]) -> list[Run]:
    """Seeds outermost, so a partial study is balanced."""
    return [
        Run(method, setting, seed, steps, every)
        for seed in range(seeds)
        for method in methods
        for setting in GRID[method][1]
    ]


def train_and_score(
    run: Run, work_dir: Path, done: set[tuple[str, int]], results: Path, code: str
) -> None:
    """Trains ``run`` (resuming it) unless finished, then scores its unscored checkpoints;
    ``code`` is the commit the sweep started from."""
    from uda_jax.checkpoint import Checkpointer
    from uda_jax.config import load_config
    from uda_jax.evaluation import Predictor
    from uda_jax.experiment import build_experiment, create_train_state
    from uda_jax.run_dir import training_fields
    from uda_jax.train import train_and_evaluate
    from uda_jax.validators import ORACLE, VALIDATORS, state_scores

    run_dir = work_dir / run.name
    overrides = [
        *run.setting,
        f"data.source={SOURCE}",
        f"data.target={TARGET}",
        f"steps={run.steps}",
        f"seed={run.seed}",
        "eval_every=0",
        f"checkpoint.every={run.every}",
        f"checkpoint.keep={len(run.checkpoint_steps)}",
        "progress=false",
        "plots=false",
        "tensorboard=false",
        f"run_dir={run_dir}",
    ]
    config = load_config(GRID[run.method][0], overrides)
    started = time.time()
    if not (run_dir / "results.json").exists():
        train_and_evaluate(config, run_dir)
    trained_s = time.time() - started
    experiment = build_experiment(config)
    predictor, like = Predictor(experiment), create_train_state(experiment)
    identity = training_fields(config)
    with Checkpointer(
        run_dir / "checkpoints", config.checkpoint, identity=identity, read_only=True
    ) as checkpointer:
        for step in run.checkpoint_steps:
            if (run.name, step) in done:
                continue
            state = predictor.evaluated(checkpointer.restore(step, like).state)
            scores = state_scores(predictor, state, (*VALIDATORS, ORACLE), seed=run.seed)
            append_jsonl(
                results,
                {
                    "run": run.name,
                    "method": run.method,
                    "setting": list(run.setting),
                    "seed": run.seed,
                    "step": step,
                    "steps": run.steps,
                    "scores": scores,
                    "train_wall_s": round(trained_s, 1),
                    "commit": code,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                },
            )


def selection_metrics(records: list[dict], validator: str) -> tuple[float, float]:
    """``(Spearman ρ with the target accuracy, regret in points)`` of ``validator`` over the
    candidates ``records`` (one method, one seed)."""
    from scipy import stats

    from uda_jax.validators import DEFINITIONS, ORACLE

    sign = 1.0 if DEFINITIONS[validator].higher_is_better else -1.0
    score = np.array([sign * r["scores"][validator] for r in records], dtype=float)
    accuracy = np.array([r["scores"][ORACLE] for r in records], dtype=float)
    usable = ~np.isnan(score)
    if usable.sum() < 2:
        return float("nan"), float("nan")
    score, accuracy = score[usable], accuracy[usable]
    constant = np.ptp(score) == 0 or np.ptp(accuracy) == 0  # no ranking to correlate
    rho = float("nan") if constant else float(stats.spearmanr(score, accuracy).statistic)
    chosen = accuracy[int(np.argmax(score))]
    return rho, 100.0 * float(accuracy.max() - chosen)


def report(records: dict, steps: int) -> str:
    """The study's tables from the scored checkpoints of runs of ``steps`` steps."""
    from uda_jax.validators import VALIDATORS

    groups: dict[tuple[str, int], list[dict]] = {}
    for r in records.values():
        if r["steps"] == steps:
            groups.setdefault((r["method"], r["seed"]), []).append(r)
    if not groups:
        return "(no scored checkpoints yet)\n"
    lines = [
        f"{SOURCE} → {TARGET}, {steps} steps; candidates per (method, seed): every setting of the",
        "grid × every checkpoint. ρ: Spearman rank correlation with the target accuracy (1 is",
        "perfect); regret: target accuracy of the oracle's choice minus the validator's, in points",
        "(0 is perfect). Mean [95 % t-interval] over the (method, seed) pairs.",
        "",
        "| validator | ρ | regret (points) | n |",
        "|---|---|---|---|",
    ]
    per_method: dict[str, dict[str, list[float]]] = {}
    for validator in VALIDATORS:
        rhos, regrets = [], []
        for (method, _), candidates in sorted(groups.items()):
            rho, regret = selection_metrics(candidates, validator)
            if not np.isnan(regret):
                rhos += [] if np.isnan(rho) else [rho]
                regrets.append(regret)
                per_method.setdefault(method, {}).setdefault(validator, []).append(regret)
        if regrets:
            rho = _interval(rhos, ".2f", (-1.0, 1.0))
            lines.append(f"| {validator} | {rho} | {_interval(regrets, '.1f')} | {len(regrets)} |")
    lines += ["", "Regret per method (points, mean over seeds):", ""]
    lines += ["| method | " + " | ".join(VALIDATORS) + " |", "|---" * (len(VALIDATORS) + 1) + "|"]
    for method, by_validator in sorted(per_method.items()):
        cells = [
            f"{np.mean(by_validator[v]):.1f}" if v in by_validator else "–" for v in VALIDATORS
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    chosen = [r for r in records.values() if r["steps"] == steps]
    settings = "; ".join(
        f"{m}: " + " / ".join(",".join(s) for s in grid) for m, (_, grid) in GRID.items()
    )
    lines += [
        "",
        f"Grid: {settings}. Checkpoints scored: {len(chosen)}; runs "
        f"{len({r['run'] for r in chosen})}, seeds {sorted({r['seed'] for r in chosen})}; "
        f"commits {', '.join(sorted({r['commit'] for r in chosen}))}; dates "
        f"{min(r['date'] for r in chosen)} to {max(r['date'] for r in chosen)}; "
        f"{sum({r['run']: r['train_wall_s'] for r in chosen}.values()) / 3600:.1f} h of training. "
        f"Command: `python benchmarks/selection_study.py --steps {steps}`.",
    ]
    return "\n".join(lines) + "\n"


def _interval(values: list[float], fmt: str, bounds=(-np.inf, np.inf)) -> str:
    """``mean [low, high]``, the interval clipped to ``bounds`` (a correlation's [−1, 1])."""
    if not values:
        return "–"
    mean, half = t_interval(values)
    if np.isnan(half):
        return f"{mean:{fmt}}"
    low, high = max(mean - half, bounds[0]), min(mean + half, bounds[1])
    return f"{mean:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=200, help="checkpoint every this many steps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", choices=list(GRID), default=list(GRID))
    parser.add_argument(
        "--results", type=Path, default=ROOT / "benchmarks/results/selection_study.jsonl"
    )
    parser.add_argument(
        "--table", type=Path, default=ROOT / "benchmarks/results/selection_study.md"
    )
    parser.add_argument("--document", type=Path, default=ROOT / "docs/results.md")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs/selection_study")
    add_compilation_cache_argument(parser)
    parser.add_argument("--report", action="store_true", help="write the tables, run nothing")
    args = parser.parse_args(argv)

    def key(record: dict) -> tuple[str, int]:
        return (record["run"], record["step"])

    todo = runs(args.steps, args.every, args.seeds, args.methods)
    if not args.report:
        code = start_sweep(args.compilation_cache)
        for index, run in enumerate(todo):
            done = set(read_jsonl(args.results, key))
            if all((run.name, s) in done for s in run.checkpoint_steps):
                continue
            print(f"[{index + 1}/{len(todo)}] {run.name}", flush=True)
            train_and_score(run, args.work_dir, done, args.results, code)
    text = report(read_jsonl(args.results, key), args.steps)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(text)
    write_between_markers(args.document, MARKERS, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
