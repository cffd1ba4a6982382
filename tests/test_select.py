"""``python -m uda_jax.select``: ranks checkpoints and runs by a validator, oracle by accuracy."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from uda_jax import select, validators
from uda_jax.checkpoint import Checkpointer
from uda_jax.config import load_config
from uda_jax.evaluation import Predictor
from uda_jax.experiment import build_experiment, create_train_state
from uda_jax.train import main as train_main

ROOT = Path(__file__).resolve().parent.parent
RUN = [
    "method.name=source_only",
    "steps=4",
    "checkpoint.every=2",
    "model.classifier_widths=[16,16]",
    "data.batch_size=8",
    "plots=false",
    "tensorboard=false",
    "progress=false",
    "eval_every=0",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny source-only runs (seeds 0 and 1), checkpoints at steps 2 and 4."""
    base = tmp_path_factory.mktemp("select")
    dirs = [base / "seed0", base / "seed1"]
    for seed, run_dir in enumerate(dirs):
        assert train_main([*RUN, f"seed={seed}", f"run_dir={run_dir}"]) == 0
    return dirs


@pytest.fixture(scope="module")
def independent(runs):
    """Every validator's score and the target accuracy of every checkpoint, computed here."""
    out = {}
    for run_dir in runs:
        config = load_config(run_dir / "config.yaml")
        experiment = build_experiment(config)
        predictor, like = Predictor(experiment), create_train_state(experiment)
        with Checkpointer(run_dir / "checkpoints", config.checkpoint, read_only=True) as ckpt:
            assert ckpt.steps() == [2, 4]
            for step in ckpt.steps():
                state = ckpt.restore(step, like).state
                source_features, source_logits = predictor(state, "source", "test")
                train_features, _ = predictor(state, "source", "train")
                target_features, target_logits = predictor(state, "target", "train")
                scores = validators.validator_scores(
                    source_features,
                    source_logits,
                    experiment.source.test_labels,
                    target_features,
                    target_logits,
                    source_train_features=train_features,
                    seed=config.seed,
                )
                _, test_logits = predictor(state, "target", "test")
                labels = experiment.target.test_labels
                scores["oracle"] = float(np.mean(np.argmax(test_logits, 1) == labels))
                out[(str(run_dir), step)] = scores
    return out


def _select(capsys, *args) -> dict:
    assert select.main([*map(str, args), "json=true"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("validator", [*validators.VALIDATORS, "oracle"])
def test_a_sweep_is_ranked_by_the_validator(runs, independent, capsys, validator):
    result = _select(capsys, *runs, f"validator={validator}")
    assert result["validator"] == validator and result["oracle"] == (validator == "oracle")
    last = {k: s[validator] for k, s in independent.items() if k[1] == 4}
    ranked = [(c["run_dir"], c["step"]) for c in result["ranking"]]
    assert sorted(ranked) == sorted(last)  # the last checkpoint of each run
    for c in result["ranking"]:
        assert c["score"] == pytest.approx(last[(c["run_dir"], c["step"])], rel=1e-5, abs=1e-9)
    chosen = (result["chosen"]["run_dir"], result["chosen"]["step"])
    assert last[chosen] == pytest.approx(max(last.values()), rel=1e-5, abs=1e-9)


def test_one_run_ranks_all_its_checkpoints_and_oracle_picks_the_best_accuracy(
    runs, independent, capsys
):
    for validator in ("snd", "oracle"):
        result = _select(capsys, runs[0], f"validator={validator}")
        mine = {k[1]: s[validator] for k, s in independent.items() if k[0] == str(runs[0])}
        assert sorted(c["step"] for c in result["ranking"]) == [2, 4]
        assert mine[result["chosen"]["step"]] == pytest.approx(max(mine.values()), rel=1e-5)
    result = _select(capsys, *runs, "validator=oracle", "step=all")
    assert len(result["ranking"]) == 4
    best = max(s["oracle"] for s in independent.values())
    assert result["chosen"]["score"] == pytest.approx(best)
    assert _select(capsys, runs[0], "step=last")["ranking"][0]["step"] == 4


def test_table_names_the_choice_and_labels_the_oracle(runs, capsys):
    assert select.main([str(runs[0]), str(runs[1])]) == 0  # default: im
    out = capsys.readouterr().out
    assert out.startswith("validator im (unsupervised")
    assert out.splitlines()[-1].startswith("chosen: ")
    assert select.main([str(runs[0]), "validator=oracle"]) == 0
    assert "oracle: target test accuracy (uses target labels" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give one or more run directories"),
        (["{run}", "validator=accuracy"], "unknown validator 'accuracy'"),
        (["{run}", "step=3"], "step must be all or last"),
        (["{run}", "valdator=snd"], "unknown key 'valdator' (did you mean 'validator'?)"),
        (["{missing}"], "is not a run directory"),
        (["{run}", "{run}"], "given twice"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(runs, tmp_path, capsys, args, message):
    args = [a.format(run=runs[0], missing=tmp_path / "nope") for a in args]
    assert select.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_help_answers_before_jax_starts():
    code = (
        "import sys; from uda_jax import select; assert select.main(['--help']) == 0; "
        "assert 'jax' not in sys.modules"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "validator=im" in out.stdout
