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
from uda_jax.experiment import build_experiment, create_train_state, make_step_fn
from uda_jax.train import main

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "steps=4",
    "log_every=1",
    "eval_every=2",
    "method.num_k=1",
    "method.warmup_steps=2",
    "method.pseudo_interval=2",  # a refresh at step 2, none at 3
    "model.classifier_widths=[16,16]",
    "data.batch_size=8",
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
    step_fns = []  # the loop's step function of each run
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            train, "make_step_fn", lambda e: step_fns.append(make_step_fn(e)) or step_fns[-1]
        )
        for name, seed in (("a", 0), ("b", 0), ("c", 1)):
            dirs[name] = base / name
            assert main([*TINY, f"seed={seed}", f"run_dir={dirs[name]}"]) == 0
    dirs["step_fn_a"] = step_fns[0]
    return dirs


def test_run_writes_config_metrics_results_and_done(cgdm_runs):
    run_dir = cgdm_runs["a"]
    assert (run_dir / "config.yaml").read_text().startswith("method:")
    assert (run_dir / "done").exists()
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("target_accuracy", "target_mean_class_accuracy", "steps", "wall_time_s"):
        assert key in results
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


def test_run_compiles_each_cgdm_step_variant_once(cgdm_runs):
    """Warm-up and full variant, each compiled once: the pseudo-label refresh (step 2) and the
    step after it (3) see the state placed alike, so the step is not compiled again."""
    compiled = {role: fn._cache_size() for role, fn in cgdm_runs["step_fn_a"]._fns.items()}
    assert compiled == {False: 1, True: 1}


def test_loop_step_runs_cgdm_warmup_variant_then_the_full_one_compiling_each_once():
    """The loop's step function picks CGDM's variant on the host (off before ``warmup_steps``)
    and says which calls compile, so the run's steps/s leaves them out."""
    experiment = build_experiment(load_config(None, ["method.warmup_steps=2"]))
    step_fn = make_step_fn(experiment)
    ran = []
    step_fn._fns = {  # stand-ins for the compiled functions: record the role that runs
        role: lambda state, batch, role=role: (ran.append(role), (state, {}))[1]
        for role in step_fn._fns
    }
    compiles = []
    for step in range(5):
        compiles.append(step_fn.compiles(step))
        step_fn(None, None, step)
    assert ran == [False, False, True, True, True]
    assert compiles == [True, False, True, False, False]


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


def test_nan_loss_stops_with_the_step_and_loss_named(tmp_path, capsys):
    run_dir = tmp_path / "nan"
    assert main([*NAN_RUN, "progress=false", f"run_dir={run_dir}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: step ") and "train/loss_cls is nan" in err
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
    args = [str(ROOT / "configs/digits_gvb_metaalign.yaml"), "steps=3", "log_every=1"]
    small = ["model.discriminator_hidden=16", "data.batch_size=8", "eval_every=0"]
    assert main([*args, *small, "progress=false", f"run_dir={run_dir}"]) == 0
    roles = [r["train/meta_align_first"] for r in _metrics(run_dir) if "train/loss_cls" in r]
    assert roles == [0.0, 1.0, 0.0]
    assert json.loads((run_dir / "results.json").read_text())["method"] == "gvb"


def test_metaalign_on_a_non_adversarial_method_is_refused(tmp_path, capsys):
    code = main(["metaalign.enabled=true", f"run_dir={tmp_path / 'r'}"])
    assert code == 2
    assert "metaalign.enabled needs an adversarial method" in capsys.readouterr().err
