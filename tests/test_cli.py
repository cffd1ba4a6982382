"""``python -m uda_jax.train`` end to end on a tiny budget, and every bad-input case."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from uda_jax import train
from uda_jax.checkpoint import Checkpointer
from uda_jax.config import load_config
from uda_jax.experiment import build_experiment, compile_train_step, create_train_state
from uda_jax.loop import TrainingError
from uda_jax.methods import build_method
from uda_jax.train import main

ROOT = Path(__file__).resolve().parent.parent
LR0, GAMMA, POWER = 0.01, 1.0, 0.75  # an inv schedule that moves within 4 steps
TINY = [
    "steps=4",
    "log_every=1",
    "eval_every=2",
    "cgdm.num_k=1",
    "cgdm.warmup_steps=2",
    "cgdm.pseudo_interval=2",  # a refresh at step 2, none at 3
    "model.classifier_widths=[16,16]",
    "data.batch_size=8",
    f"optimizer.learning_rate={LR0}",
    "optimizer.schedule.name=inv",
    f"optimizer.schedule.kwargs.gamma={GAMMA}",
    f"optimizer.schedule.kwargs.power={POWER}",
    "progress=false",
    "plots=false",
]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cgdm_runs(tmp_path_factory):
    """Three tiny CGDM runs in one process: seed 0 twice and seed 1."""
    base = tmp_path_factory.mktemp("runs")
    dirs = {}
    train_steps = []  # the loop's compiled train step of each run
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            train,
            "compile_train_step",
            lambda e: train_steps.append(compile_train_step(e)) or train_steps[-1],
        )
        for name, seed in (("a", 0), ("b", 0), ("c", 1)):
            dirs[name] = base / name
            assert main([*TINY, f"seed={seed}", f"run_dir={dirs[name]}"]) == 0
    dirs["train_step_a"] = train_steps[0]
    return dirs


def test_run_writes_config_metrics_results_and_done(cgdm_runs):
    run_dir = cgdm_runs["a"]
    assert (run_dir / "config.yaml").read_text().startswith("method:")
    assert load_config(run_dir / "config.yaml").cgdm.warmup_steps == 2
    assert (run_dir / "done").exists()
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("target_accuracy", "target_mean_class_accuracy", "steps", "wall_time_s"):
        assert key in results
    assert results["method"] == "cgdm"
    assert 0.0 <= results["target_accuracy"] <= 1.0
    assert results["steps"] == 4
    assert results["steps_per_s"] > 0
    records = _metrics(run_dir)
    assert [r["step"] for r in records if "train/loss_cls" in r] == [1, 2, 3, 4]
    evals = [r for r in records if "eval/target_accuracy" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert evals[-1]["eval/target_accuracy"] == results["target_accuracy"]
    # the pseudo-label and gradient-discrepancy terms switch on at warmup_steps=2
    gd = {r["step"]: r["train/loss_gd"] for r in records if "train/loss_gd" in r}
    assert gd[1] == 0.0 and gd[2] == 0.0 and gd[3] > 0.0


def test_run_logs_the_learning_rate_of_the_schedule(cgdm_runs):
    """The record of step s (after s iterations) holds lr(s − 1), the rate iteration s − 1
    stepped with: lr0·(1 + γt)^(−p)."""
    logged = {
        r["step"]: r["train/learning_rate"]
        for r in _metrics(cgdm_runs["a"])
        if "train/learning_rate" in r
    }
    assert sorted(logged) == [1, 2, 3, 4]
    for step, value in logged.items():
        expected = LR0 * (1 + GAMMA * (step - 1)) ** -POWER
        np.testing.assert_allclose(value, expected, rtol=1e-6, err_msg=f"step {step}")


def test_run_compiles_the_cgdm_step_once(cgdm_runs):
    """One compiled step across the warm-up switch (data, not a variant) and across the
    pseudo-label refresh of step 2, whose new state is placed as the step's own output."""
    assert cgdm_runs["train_step_a"]._cache_size() == 1


def test_same_seed_gives_identical_metrics_and_another_seed_does_not(cgdm_runs):
    assert _metrics(cgdm_runs["a"]) == _metrics(cgdm_runs["b"])
    assert _metrics(cgdm_runs["a"]) != _metrics(cgdm_runs["c"])


def test_finished_run_dir_is_refused_and_left_alone(cgdm_runs, capsys):
    before = (cgdm_runs["a"] / "metrics.jsonl").read_text()
    assert main([*TINY, f"run_dir={cgdm_runs['a']}"]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (cgdm_runs["a"] / "metrics.jsonl").read_text() == before


def test_module_entry_point_exit_code_and_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "uda_jax.train", "stepz=3", f"run_dir={tmp_path / 'r'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: unknown config key 'stepz' (did you mean 'steps'?); valid keys")


NAN_RUN = ["method.name=source_only", "optimizer.learning_rate=1e12", "steps=30", "log_every=1"]


def test_nan_loss_stops_with_the_step_and_loss_named(tmp_path):
    """The library entry point raises TrainingError (main turns it into exit code 1)."""
    run_dir = tmp_path / "nan"
    config = load_config(None, [*NAN_RUN, "progress=false", f"run_dir={run_dir}"])
    with pytest.raises(TrainingError) as info:
        train.train_and_evaluate(config, run_dir)
    message = str(info.value)
    assert message.startswith("step ") and "train/loss_cls is nan" in message
    assert "\n" not in message
    assert not (run_dir / "done").exists() and not (run_dir / "results.json").exists()


def test_nan_parameters_stop_before_a_checkpoint_and_the_last_good_one_stays(tmp_path, capsys):
    run_dir = tmp_path / "nan"
    assert main([*NAN_RUN, "checkpoint.every=1", "progress=false", f"run_dir={run_dir}"]) == 1
    err = capsys.readouterr().err.strip()
    # checkpoints check the parameters too: the update of step 2 overflows before its loss does
    assert err.startswith("error: step ") and "the parameters hold NaN or inf" in err
    assert "\n" not in err
    nan_step = int(err.removeprefix("error: step ").split(":")[0])
    assert not (run_dir / "done").exists() and not (run_dir / "results.json").exists()
    config = load_config(run_dir / "config.yaml")
    with Checkpointer(run_dir / "checkpoints", config.checkpoint) as checkpointer:
        assert checkpointer.steps() and max(checkpointer.steps()) < nan_step
        last = checkpointer.restore_latest(create_train_state(build_experiment(config)))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(last.state.params))


def test_metaalign_config_runs_end_to_end_alternating_roles(tmp_path):
    run_dir = tmp_path / "ma"
    path = ROOT / "configs/digits_gvb_metaalign.yaml"
    args = [str(path), "steps=3", "log_every=1"]
    small = ["model.discriminator_hidden=16", "data.batch_size=8", "eval_every=0"]
    assert main([*args, *small, "progress=false", f"run_dir={run_dir}"]) == 0
    records = [r for r in _metrics(run_dir) if "train/loss_cls" in r]
    assert [r["train/meta_align_first"] for r in records] == [0.0, 1.0, 0.0]
    assert all(np.isfinite(r["train/meta_grad_norm"]) for r in records)
    optimizer = load_config(path).optimizer  # lr0 1e-3, inv with gamma 0.001, power 0.75
    gamma, power = optimizer.schedule.kwargs["gamma"], optimizer.schedule.kwargs["power"]
    for r in records:
        expected = optimizer.learning_rate * (1 + gamma * (r["step"] - 1)) ** -power
        np.testing.assert_allclose(r["train/learning_rate"], expected, rtol=1e-6)
    assert json.loads((run_dir / "results.json").read_text())["method"] == "metaalign"


def test_metaalign_on_a_non_adversarial_method_is_refused(tmp_path, capsys):
    code = main(["method.name=metaalign", "metaalign.base=cgdm", f"run_dir={tmp_path / 'r'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: metaalign.base must be an adversarial method")
    assert err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_a_warm_up_as_long_as_the_run_is_a_warning_at_the_start(tmp_path, capsys):
    run_dir = tmp_path / "w"
    assert main([*TINY, "cgdm.warmup_steps=4", f"run_dir={run_dir}", "progress=false"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warnings) == 1
    assert "cgdm's warm-up (4 steps) is not shorter than the run (steps=4)" in warnings[0]


def test_what_never_acts_in_a_run_of_that_length_is_named():
    def warnings(*overrides, steps=100):
        return build_method(load_config(None, list(overrides))).warnings(steps)

    assert warnings("cgdm.warmup_steps=99") == ()
    assert "warm-up (100 steps)" in warnings("cgdm.warmup_steps=100")[0]
    metaalign = ["method.name=metaalign", "metaalign.base=dann"]
    assert warnings(*metaalign, "metaalign.period=99") == ()
    (only,) = warnings(*metaalign, "metaalign.period=100")
    assert only.startswith("metaalign.period=100 is not shorter than the run (steps=100)")
    assert warnings(*metaalign, "metaalign.period=100", "metaalign.roles=cls_first") == ()
