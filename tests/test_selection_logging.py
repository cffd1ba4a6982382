"""Validators beyond ``select``: printed by ``evaluate``, logged at each evaluation of a training
run as ``eval/validator/<name>``, and the criterion of ``checkpoint.keep_best``
(``checkpoint.best_by``), each checked against an independent computation or metrics.jsonl."""

import dataclasses
import json
import math
import re
import typing
from pathlib import Path

import pytest

from uda_jax import evaluate, validators
from uda_jax.checkpoint import Checkpointer
from uda_jax.config import CheckpointConfig, Config, load_config
from uda_jax.evaluation import Predictor
from uda_jax.experiment import build_experiment, create_train_state
from uda_jax.train import main as train_main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RUN = [
    "method.name=source_only",
    "model.classifier_widths=[16,16]",
    "data.batch_size=8",
    "optimizer.learning_rate=0.3",  # the best accuracy and SND are not the last (teeth)
    "steps=8",
    "log_every=2",
    "eval_every=2",
    "checkpoint.every=2",
    "checkpoint.keep=1",
    "checkpoint.keep_best=true",
    "plots=false",
    "tensorboard=false",
    "progress=false",
]
EVAL_STEPS = [2, 4, 6, 8]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs keeping the best checkpoint: by SND (not in ``validators``: logged because
    keep_best ranks by it) and by oracle (no validator logged)."""
    base = tmp_path_factory.mktemp("selection")
    settings = {
        "snd": ["validators=[entropy,im]", "checkpoint.best_by=snd"],
        "oracle": ["validators=[]", "checkpoint.best_by=oracle"],
    }
    for name, extra in settings.items():
        assert train_main([*RUN, *extra, f"run_dir={base / name}"]) == 0
    return {name: base / name for name in settings}


def _evaluations(run_dir: Path) -> dict[int, dict]:
    """The evaluation records of metrics.jsonl by step."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "eval/target_accuracy" in r}


def _independent(run_dir: Path, step: int) -> dict[str, float]:
    """Every validator of checkpoint ``step``, from its predictions and the array functions."""
    config = load_config(run_dir / "config.yaml")
    experiment = build_experiment(config)
    predictor = Predictor(experiment)
    with Checkpointer(run_dir / "checkpoints", config.checkpoint, read_only=True) as ckpt:
        state = ckpt.restore(step, create_train_state(experiment)).state
    source_features, source_logits = predictor(state, "source", "test")
    source_labels = experiment.source.test_labels
    train_features, _ = predictor(state, "source", "train")
    target_features, target_logits = predictor(state, "target", "train")
    return {
        "source_accuracy": validators.source_accuracy(source_logits, source_labels),
        "entropy": validators.target_entropy(target_logits),
        "im": validators.information_maximization(target_logits),
        "bnm": validators.batch_nuclear_norm(target_logits),
        "snd": validators.soft_neighborhood_density(target_logits),
        "dev": validators.deep_embedded_validation(
            train_features,
            source_features,
            source_logits,
            source_labels,
            target_features,
            seed=config.seed,
        ),
    }


def _expected_best(values: dict[int, float], higher_is_better: bool = True) -> int:
    """The step keep_best keeps: the best value, the newest of equals."""
    sign = 1 if higher_is_better else -1
    return max(values, key=lambda step: (sign * values[step], step))


# ----------------------------------------------------------------------------- training log


def test_each_evaluation_logs_the_configured_validators_and_best_by(runs):
    evals = _evaluations(runs["snd"])
    assert sorted(evals) == EVAL_STEPS
    for record in evals.values():
        logged = {k for k in record if k.startswith("eval/validator/")}
        assert logged == {"eval/validator/entropy", "eval/validator/im", "eval/validator/snd"}
    # the last evaluation is of the state the final checkpoint holds
    expected = _independent(runs["snd"], 8)
    for name in ("entropy", "im", "snd"):
        assert evals[8][f"eval/validator/{name}"] == pytest.approx(expected[name], rel=1e-6)
    for record in _evaluations(runs["oracle"]).values():  # validators=[]: none logged
        assert not [k for k in record if k.startswith("eval/validator/")]


# ----------------------------------------------------------------------------- keep_best


@pytest.mark.parametrize(
    "run, metric", [("snd", "eval/validator/snd"), ("oracle", "eval/target_accuracy")]
)
def test_keep_best_keeps_the_checkpoint_with_the_best_logged_value(runs, run, metric):
    run_dir = runs[run]
    evals = _evaluations(run_dir)
    best = _expected_best({step: evals[step][metric] for step in EVAL_STEPS})
    config = load_config(run_dir / "config.yaml")
    assert config.checkpoint.best_by == run
    assert best != 8  # this run's best is an earlier checkpoint
    with Checkpointer(run_dir / "checkpoints", config.checkpoint, read_only=True) as ckpt:
        assert ckpt.steps() == [best, 8]  # the best and the latest (keep=1)
        assert ckpt.best_step() == best
        meta = ckpt.restore(best, create_train_state(build_experiment(config))).meta
    assert meta["keep_best"] == {"by": run, "metric": metric, "higher_is_better": True}
    assert meta["eval"][metric] == evals[best][metric]


def test_keep_best_survives_a_restart_and_follows_the_definition(runs, tmp_path, monkeypatch):
    """The best step of before a restart stays (orbax reads the metrics back), and a criterion
    whose definition says lower is better keeps its lowest value."""
    config = load_config(runs["snd"] / "config.yaml")
    with Checkpointer(runs["snd"] / "checkpoints", config.checkpoint, read_only=True) as ckpt:
        state = ckpt.restore(8, create_train_state(build_experiment(config))).state
    values = {1: 0.5, 2: 0.9, 3: 0.2, 4: 0.3, 5: 0.1, 6: math.nan}

    def save(ckpt, step):
        metrics = {"eval/target_accuracy": 0.5, "eval/validator/im": values[step]}
        ckpt.save(step, state, {}, {"eval": metrics})

    keep = CheckpointConfig(keep=1, keep_best=True, best_by="im")
    with Checkpointer(tmp_path / "higher", keep) as ckpt:
        for step in (1, 2, 3):
            save(ckpt, step)
        assert ckpt.steps() == [2, 3]
    with Checkpointer(tmp_path / "higher", keep) as ckpt:  # a resumed run
        for step in (4, 5, 6):
            save(ckpt, step)
        assert ckpt.steps() == [2, 6] and ckpt.best_step() == 2  # NaN ranks last
    lower = dataclasses.replace(validators.DEFINITIONS["im"], higher_is_better=False)
    monkeypatch.setitem(validators.DEFINITIONS, "im", lower)
    with Checkpointer(tmp_path / "lower", keep) as ckpt:
        for step in (1, 2, 3, 4):
            save(ckpt, step)
    with Checkpointer(tmp_path / "lower", keep) as ckpt:
        for step in (5, 6):
            save(ckpt, step)
        assert ckpt.steps() == [5, 6] and ckpt.best_step() == 5
    with Checkpointer(tmp_path / "lower", keep, read_only=True) as ckpt:
        meta = ckpt.restore(6, state).meta
    assert meta["keep_best"]["higher_is_better"] is False
    with Checkpointer(tmp_path / "lower", CheckpointConfig(keep=1), read_only=True) as ckpt:
        assert ckpt.best_step() is None  # keep_best off


# ----------------------------------------------------------------------------- evaluate

LINE = re.compile(r"^    (\w+) +(-?\d+\.\d+|nan)  (higher|lower) is better$")


def test_evaluate_prints_every_validator_of_the_checkpoint(runs, capsys):
    run_dir = runs["oracle"]  # a run that logged none: evaluate computes them itself
    kept = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert kept[-1] == 8
    for step in (kept[0], kept[-1]):  # an earlier checkpoint, and the last (the default)
        expected = _independent(run_dir, step)
        assert evaluate.main([str(run_dir), f"step={step}"]) == 0
        out = capsys.readouterr().out.splitlines()
        header = out.index(
            "  validators (no target labels: target train, source test and train splits):"
        )
        block = out[header + 1 :]
        assert [LINE.match(line).group(1) for line in block] == list(validators.VALIDATORS)
        for line in block:
            name, value, better = LINE.match(line).groups()
            assert float(value) == pytest.approx(expected[name], abs=6e-5), name
            assert better == "higher"
        assert evaluate.main([str(run_dir), f"step={step}", "json=true"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert list(result["validators"]) == list(validators.VALIDATORS)
        for name, entry in result["validators"].items():
            assert entry["value"] == pytest.approx(expected[name], rel=1e-9), name
            assert entry["higher_is_better"] is True
    # a validator does not depend on the evaluated domain or split
    assert evaluate.main([str(run_dir), "domain=mnist5k", "split=train", "json=true"]) == 0
    other = json.loads(capsys.readouterr().out)
    assert other["domain"] == "mnist5k"
    assert other["validators"] == result["validators"]


# ----------------------------------------------------------------------------- configs


def test_best_by_offers_every_validator_and_oracle_but_defaults_to_a_validator():
    hints = typing.get_type_hints(CheckpointConfig)
    assert set(typing.get_args(hints["best_by"])) == {*validators.VALIDATORS, validators.ORACLE}
    assert CheckpointConfig().best_by in validators.VALIDATORS
    assert CheckpointConfig().best_by in Config().validators  # keep_best costs nothing more
    assert set(Config().validators) <= set(validators.VALIDATORS)
    cheap = {"entropy", "im", "bnm"}  # one pass over the target's training split, O(N·C²)
    assert set(Config().validators) <= cheap


def test_paper_configs_that_keep_the_best_say_oracle_explicitly():
    keeping = [p for p in sorted(CONFIGS.glob("*.yaml")) if "keep_best: true" in p.read_text()]
    assert len(keeping) >= 18  # every MetaAlign paper config
    for path in keeping:
        assert re.search(r"^  best_by: oracle\b", path.read_text(), re.MULTILINE), path.name
        assert load_config(path).checkpoint.best_by == "oracle"
