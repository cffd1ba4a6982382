"""Command line: ``python -m uda_jax.select RUN_DIR... [validator=im] [step=...] [json=true]``.

Chooses a model without target labels: ranks the checkpoints of one run, or the runs of a sweep
(several run directories), by an unsupervised validator (:mod:`uda_jax.validators`) and reports
the chosen run and step. Read-only: it never writes, cleans or locks a run directory.

Keys:
  validator=im     im (default), snd, bnm, entropy, dev, source_accuracy; or oracle: the target
                   test accuracy, which needs the target labels (a reference, never a choice
                   open to real domain adaptation)
  step=all|last    all checkpoints of every run, or the last of each (default: all for one run
                   directory, last for several)
  json=true        print the ranking as one JSON object instead of a table

What each validator sees: the target's training split without labels (the data adaptation
trains on), the source's test split with labels (held-out source validation) and, for DEV's
domain classifier, the source's training split. ``oracle`` reads the target's test labels.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uda_jax import validators
from uda_jax.errors import UserError, did_you_mean

# The modules that start JAX are imported where they are used, so --help answers without them.
USAGE = "usage: python -m uda_jax.select RUN_DIR [RUN_DIR ...] [key=value ...]"
ORACLE = validators.ORACLE
CHOICES = (*validators.VALIDATORS, ORACLE)
DEFAULT_VALIDATOR = "im"  # the best on the digits selection study (docs/results.md)
KEYS = ("validator", "step", "json")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One ranked checkpoint."""

    run_dir: str
    step: int
    score: float


def parse_args(argv: Sequence[str]) -> tuple[list[Path], dict[str, Any]]:
    """``(run directories, options)``; every mistake is a :class:`UserError`."""
    paths = [Path(a) for a in argv if "=" not in a]
    options: dict[str, Any] = {"validator": DEFAULT_VALIDATOR, "step": None, "json": False}
    for arg in argv:
        if "=" not in arg:
            continue
        key, _, text = arg.partition("=")
        if key not in KEYS:
            raise UserError(
                f"unknown key {key!r}{did_you_mean(key, KEYS)}; valid: {', '.join(KEYS)}"
            )
        if key == "validator":
            if text not in CHOICES:
                hint = did_you_mean(text, CHOICES)
                raise UserError(f"unknown validator {text!r}{hint}; valid: {', '.join(CHOICES)}")
            options[key] = text
        elif key == "step":
            if text not in ("all", "last"):
                raise UserError(f"step must be all or last, got {text!r}")
            options[key] = text
        else:
            if text.lower() not in ("true", "false"):
                raise UserError(f"json must be true or false, got {text!r}")
            options[key] = text.lower() == "true"
    if not paths:
        raise UserError(f"give one or more run directories; {USAGE}")
    for path in paths:
        if not (path / "config.yaml").is_file():
            raise UserError(f"{path} is not a run directory (it has no config.yaml)")
    if len(set(p.resolve() for p in paths)) != len(paths):
        raise UserError("a run directory is given twice")
    if options["step"] is None:
        options["step"] = "all" if len(paths) == 1 else "last"
    return paths, options


def score_state(predictor: Any, state: Any, validator: str, seed: int = 0) -> float:
    """The score of ``validator`` for one restored state, from the
    predictions of ``predictor`` (:class:`uda_jax.evaluation.Predictor`); see
    :func:`uda_jax.validators.state_scores`."""
    reads_source = validators.SOURCE_TEST in validators.DEFINITIONS[validator].reads
    if reads_source and len(predictor.experiment.source.test_labels) == 0:
        raise UserError(
            f"validator={validator} needs the source's test split, which is empty "
            "(data.test_fraction=0?)"
        )
    return validators.state_scores(predictor, state, (validator,), seed=seed)[validator]


def rank(paths: Sequence[Path], validator: str, which: str) -> list[Candidate]:
    """The checkpoints of ``paths`` (all, or the last of each run), best first."""
    from uda_jax.checkpoint import Checkpointer
    from uda_jax.config import load_config
    from uda_jax.evaluation import Predictor
    from uda_jax.experiment import build_experiment, create_train_state
    from uda_jax.run_dir import training_fields

    built: dict[str, tuple[Any, Any]] = {}
    candidates = []
    for run_dir in paths:
        config = load_config(run_dir / "config.yaml")
        identity = training_fields(config)
        key = json.dumps(identity, sort_keys=True, default=str)
        if key not in built:
            experiment = build_experiment(config)
            built[key] = (Predictor(experiment), create_train_state(experiment))
        predictor, like = built[key]
        if not (run_dir / "checkpoints").is_dir():
            raise UserError(f"run {run_dir} has no checkpoints")
        with Checkpointer(
            run_dir / "checkpoints", config.checkpoint, identity=identity, read_only=True
        ) as checkpointer:
            steps = checkpointer.steps()
            if not steps:
                raise UserError(f"run {run_dir} has no complete checkpoint")
            for step in steps if which == "all" else steps[-1:]:
                state = predictor.evaluated(checkpointer.restore(step, like).state)
                score = score_state(predictor, state, validator, seed=config.seed)
                candidates.append(Candidate(str(run_dir), step, float(score)))
    # best first (which way is better: the validator's definition); a NaN score (nothing to
    # measure) ranks last; ties keep the given order
    sign = -1 if validators.DEFINITIONS[validator].higher_is_better else 1
    return sorted(candidates, key=lambda c: sign * c.score if not math.isnan(c.score) else math.inf)


def format_table(ranking: Sequence[Candidate], validator: str) -> str:
    """The ranking as a text table, the chosen checkpoint first and named below it."""
    label = (
        "oracle: target test accuracy (uses target labels; a reference, not a valid choice)"
        if validator == ORACLE
        else f"{validator} (unsupervised; {_better(validator)} is better)"
    )
    runs = len({c.run_dir for c in ranking})
    lines = [
        f"validator {label}: {len(ranking)} checkpoints of {runs} run(s)",
        f"  {'rank':>4}  {'score':>12}  {'step':>8}  run",
    ]
    for index, c in enumerate(ranking, 1):
        lines.append(f"  {index:>4}  {c.score:>12.6g}  {c.step:>8}  {c.run_dir}")
    best = ranking[0]
    lines.append(f"chosen: {best.run_dir} step {best.step} ({validator} {best.score:.6g})")
    return "\n".join(lines)


def _better(validator: str) -> str:
    return "higher" if validators.DEFINITIONS[validator].higher_is_better else "lower"


def _as_json(candidate: Candidate) -> dict[str, Any]:
    data = dataclasses.asdict(candidate)
    return data | {"score": None if math.isnan(candidate.score) else candidate.score}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for any user mistake)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE + "\n\n" + __doc__.split("\n\n", 1)[1], end="")
        return 0
    try:
        paths, options = parse_args(argv)
        ranking = rank(paths, options["validator"], options["step"])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped: interrupted (Ctrl-C); select writes nothing", file=sys.stderr)
        return 130
    validator = options["validator"]
    if options["json"]:
        result = {
            "validator": validator,
            "oracle": validator == ORACLE,
            "chosen": _as_json(ranking[0]),
            "ranking": [_as_json(c) for c in ranking],
        }
        print(json.dumps(result))
    else:
        print(format_table(ranking, validator))
    return 0


if __name__ == "__main__":
    sys.exit(main())
