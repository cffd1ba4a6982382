"""A run you can trust: killed, interrupted or damaged runs resume to bitwise the same result.

The reference is one uninterrupted run; the others are training subprocesses stopped with
``kill -9`` or SIGTERM at a random step and resumed with the same command.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from uda_jax.checkpoint import Checkpointer
from uda_jax.config import load_config
from uda_jax.evaluate import main as evaluate_main
from uda_jax.experiment import build_experiment, create_train_state
from uda_jax.train import main

ROOT = Path(__file__).resolve().parent.parent
STEPS = 40
RUN = [
    f"steps={STEPS}",
    "log_every=1",
    "eval_every=12",
    "checkpoint.every=4",
    "method.num_k=1",
    "method.warmup_steps=8",
    "method.pseudo_interval=8",
    "model.classifier_widths=[32,32]",
    "data.batch_size=8",
    "progress=false",
]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _final_state(run_dir: Path):
    config = load_config(run_dir / "config.yaml")
    with Checkpointer(run_dir / "checkpoints", config.checkpoint) as checkpointer:
        return checkpointer.restore_latest(create_train_state(build_experiment(config)))


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    assert (run_dir / "done").exists()
    assert _records(run_dir) == _records(reference)
    mine, theirs = _final_state(run_dir), _final_state(reference)
    assert mine.step == theirs.step == STEPS
    for a, b in zip(jax.tree.leaves(mine.state), jax.tree.leaves(theirs.state), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    results, expected = (json.loads((d / "results.json").read_text()) for d in (run_dir, reference))
    assert results["target_accuracy"] == expected["target_accuracy"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, with plots."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert main([*RUN, f"run_dir={run_dir}"]) == 0
    return run_dir


def _start(run_dir: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    args = [*RUN, "plots=false", f"run_dir={run_dir}"]
    return subprocess.Popen(
        [sys.executable, "-m", "uda_jax.train", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int) -> None:
    """Returns once the subprocess has logged ``step`` (it must not finish first)."""
    deadline = time.monotonic() + 300
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        if metrics.exists():
            lines = metrics.read_text().splitlines()
            logged = [json.loads(line)["step"] for line in lines if line.endswith("}")]
            if logged and max(logged) >= step:
                return
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"the training subprocess did not reach step {step}")


def test_uninterrupted_run_writes_plots_tensorboard_and_evaluate_reproduces_it(reference, capsys):
    for name in ("curves.png", "features_tsne.png"):
        assert (reference / name).stat().st_size > 10_000
    (events,) = (reference / "tensorboard").iterdir()
    assert events.name.startswith("events.out.tfevents") and events.stat().st_size > 1000
    capsys.readouterr()
    assert evaluate_main([str(reference), "json=true"]) == 0
    result = json.loads(capsys.readouterr().out)
    final = json.loads((reference / "results.json").read_text())
    assert result["step"] == STEPS
    assert result["accuracy"] == final["target_accuracy"]
    assert result["mean_class_accuracy"] == final["target_mean_class_accuracy"]


def test_kill_9_at_a_random_step_then_resume_gives_the_same_run(reference, tmp_path):
    run_dir = tmp_path / "killed"
    kill_at = random.Random().randint(6, STEPS - 12)
    proc = _start(run_dir)
    _wait_for_step(proc, run_dir, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (run_dir / "done").exists()
    assert main([*RUN, "plots=false", f"run_dir={run_dir}"]) == 0
    _assert_same_run(run_dir, reference)


def test_sigterm_saves_a_checkpoint_then_resume_gives_the_same_run(reference, tmp_path, capsys):
    run_dir = tmp_path / "terminated"
    proc = _start(run_dir)
    _wait_for_step(proc, run_dir, 9)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM at step" in err and "checkpoint saved" in err and "Traceback" not in err
    stopped_at = int(err.split("SIGTERM at step ")[1].split(":")[0])
    config = load_config(run_dir / "config.yaml")
    with Checkpointer(run_dir / "checkpoints", config.checkpoint) as checkpointer:
        assert max(checkpointer.steps()) == stopped_at < STEPS
    assert main([*RUN, "plots=false", f"run_dir={run_dir}"]) == 0
    assert "resumed from the checkpoint of step" in capsys.readouterr().err
    _assert_same_run(run_dir, reference)


def test_half_written_and_damaged_latest_checkpoints_are_skipped(reference, tmp_path, capsys):
    run_dir = tmp_path / "damaged"
    shutil.copytree(reference, run_dir)
    (run_dir / "done").unlink()
    checkpoints = run_dir / "checkpoints"
    steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    for step in steps[-2:]:  # the run is back at its third latest checkpoint
        shutil.rmtree(checkpoints / str(step))
    good = steps[-3]
    # a save killed half-way: orbax's temporary directory of a newer step
    half = checkpoints / f"{good + 4}.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(checkpoints / str(good), half)
    shutil.rmtree(half / "state")
    # a listed but damaged newer step whose array files are gone
    damaged = checkpoints / str(good + 2)
    shutil.copytree(checkpoints / str(good), damaged)
    for path in (damaged / "state").rglob("*"):
        if path.is_file() and "metadata" not in path.name:
            path.write_bytes(b"")
    assert main([*RUN, "plots=false", f"run_dir={run_dir}"]) == 0
    err = capsys.readouterr().err
    assert f"resumed from the checkpoint of step {good}" in err
    assert "trying an older checkpoint" in err
    _assert_same_run(run_dir, reference)
