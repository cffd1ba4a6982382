"""A run you can trust: killed, interrupted or damaged runs resume to bitwise the same result.

The reference is one uninterrupted run; the others are stopped and resumed with the same
command: a training subprocess killed with ``kill -9`` at a random step, and runs that receive
SIGTERM right after a chosen iteration (CGDM before its warm-up ends, so the resumed run crosses
it; MetaAlign after an *align first* iteration, whose fast discriminator weights the next
iteration reads from the checkpoint).
"""

import functools
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

from uda_jax import plots, train
from uda_jax.checkpoint import Checkpointer
from uda_jax.config import build_config, load_config
from uda_jax.evaluate import main as evaluate_main
from uda_jax.experiment import build_experiment, create_train_state
from uda_jax.run_dir import training_fields
from uda_jax.train import main

ROOT = Path(__file__).resolve().parent.parent
STEPS = 40
WARMUP = 8
RUN = [
    f"steps={STEPS}",
    "log_every=1",
    "eval_every=12",
    "checkpoint.every=4",
    "cgdm.num_k=1",
    f"cgdm.warmup_steps={WARMUP}",
    "cgdm.pseudo_interval=8",
    "model.classifier_widths=[32,32]",
    "data.batch_size=8",
    "progress=false",
]
METAALIGN_STEPS = 6
METAALIGN_RUN = [
    str(ROOT / "configs/digits_gvb_metaalign.yaml"),
    f"steps={METAALIGN_STEPS}",
    "log_every=1",
    "eval_every=3",
    "checkpoint.every=0",
    "model.discriminator_hidden=32",
    "data.batch_size=8",
    "progress=false",
    "plots=false",
    "tensorboard=false",
]
TSNE_POINTS = 100  # per domain: the t-SNE is most of a tiny run's time; the test only draws it


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@functools.cache
def _restore_target(fields: str):
    """A state shaped like those of the runs whose number-changing config fields are
    ``fields`` (JSON): what a restore fills in, built once per experiment."""
    config = build_config(json.loads(fields))
    return create_train_state(build_experiment(config))


def _final_state(run_dir: Path):
    config = load_config(run_dir / "config.yaml")
    like = _restore_target(json.dumps(training_fields(config), sort_keys=True))
    with Checkpointer(run_dir / "checkpoints", config.checkpoint) as checkpointer:
        return checkpointer.restore_latest(like)


def _assert_same_run(run_dir: Path, reference: Path, steps: int = STEPS) -> None:
    assert (run_dir / "done").exists()
    assert _records(run_dir) == _records(reference)
    mine, theirs = _final_state(run_dir), _final_state(reference)
    assert mine.step == theirs.step == steps
    assert jax.tree.structure(mine.state) == jax.tree.structure(theirs.state)
    for a, b in zip(jax.tree.leaves(mine.state), jax.tree.leaves(theirs.state), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    results, expected = (json.loads((d / "results.json").read_text()) for d in (run_dir, reference))
    assert results["target_accuracy"] == expected["target_accuracy"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted CGDM run, with plots and the t-SNE."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "TSNE_POINTS_PER_DOMAIN", TSNE_POINTS)
        assert main([*RUN, "tsne=true", f"run_dir={run_dir}"]) == 0
    return run_dir


@pytest.fixture(scope="module")
def metaalign_reference(tmp_path_factory):
    """One uninterrupted MetaAlign (GVB) run."""
    run_dir = tmp_path_factory.mktemp("metaalign") / "run"
    assert main([*METAALIGN_RUN, f"run_dir={run_dir}"]) == 0
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


def _sigterm_after(monkeypatch, step: int) -> None:
    """Sends this process a real SIGTERM right after iteration ``step`` (before the loop checks
    for signals), so the run stops there deterministically."""
    eval_due = train.eval_due

    def eval_due_then_signal(config, done):
        if done == step:
            signal.raise_signal(signal.SIGTERM)  # the handler runs before this returns
        return eval_due(config, done)

    monkeypatch.setattr(train, "eval_due", eval_due_then_signal)


@pytest.mark.parametrize(
    "method, stop_at",
    [
        # before the warm-up ends and off the checkpoint.every grid: the resumed run switches
        # the pseudo-label and L_GD terms on and makes the first pseudo-label refresh
        ("cgdm", WARMUP - 2),
        # after iteration 1 (align first): iteration 2 (cls first) runs the discriminator with
        # the fast weights restored from the checkpoint's extras
        ("metaalign", 2),
    ],
)
def test_sigterm_saves_a_checkpoint_then_resume_gives_the_same_run(
    method, stop_at, request, tmp_path, monkeypatch, capsys
):
    if method == "cgdm":
        run, steps, reference = RUN, STEPS, request.getfixturevalue("reference")
        run = [*run, "plots=false"]
    else:
        run, steps = METAALIGN_RUN, METAALIGN_STEPS
        reference = request.getfixturevalue("metaalign_reference")
    run_dir = tmp_path / "terminated"
    with monkeypatch.context() as patch:
        _sigterm_after(patch, stop_at)
        assert main([*run, f"run_dir={run_dir}"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert f"stopped: SIGTERM at step {stop_at}: checkpoint saved" in err
    assert not (run_dir / "done").exists() and not (run_dir / "results.json").exists()
    config = load_config(run_dir / "config.yaml")
    with Checkpointer(run_dir / "checkpoints", config.checkpoint) as checkpointer:
        assert max(checkpointer.steps()) == stop_at
    assert max(r["step"] for r in _records(run_dir)) == stop_at
    assert main([*run, f"run_dir={run_dir}"]) == 0
    assert f"resumed from the checkpoint of step {stop_at}" in capsys.readouterr().err
    _assert_same_run(run_dir, reference, steps)


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
