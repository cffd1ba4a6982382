"""Checkpoints prove what they are; evaluate is read-only; one training per run directory."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uda_jax import evaluate, train
from uda_jax.run_dir import exclusive

TINY = [
    "method.name=source_only",
    "model.classifier_widths=[16,16]",
    "data.batch_size=8",
    "steps=6",
    "log_every=2",
    "eval_every=0",
    "checkpoint.every=2",
    "plots=false",
    "tensorboard=false",
    "progress=false",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("integrity") / "run"
    assert train.main([*TINY, f"run_dir={run_dir}"]) == 0
    return run_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy


def _damage(checkpoint: Path) -> None:
    """Flips 64 bytes in the middle of the largest array file of a checkpoint."""
    files = glob.glob(str(checkpoint / "state" / "**" / "d" / "*"), recursive=True)
    largest = max(files, key=os.path.getsize)
    data = bytearray(Path(largest).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    Path(largest).write_bytes(bytes(data))


def _alter_one_checksum(checkpoint: Path) -> str:
    """Changes the recorded SHA-256 of one array: its data no longer matches its proof."""
    meta_file = checkpoint / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    name = sorted(meta["checksums"])[0]
    meta["checksums"][name] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    return name


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def test_evaluate_refuses_a_damaged_checkpoint(finished_run, tmp_path, capsys):
    run_dir = _copy(finished_run, tmp_path)
    _damage(run_dir / "checkpoints" / "6")
    assert evaluate.main([str(run_dir)]) == 2
    # Flipped bytes either fail to decompress or decode to other values: both are "damaged".
    assert "checkpoints/6 is damaged" in _one_line_error(capsys)
    assert evaluate.main([str(run_dir), "step=4"]) == 0  # the others are intact


def test_evaluate_names_the_array_that_differs_from_its_checksum(finished_run, tmp_path, capsys):
    run_dir = _copy(finished_run, tmp_path)
    name = _alter_one_checksum(run_dir / "checkpoints" / "6")
    assert evaluate.main([str(run_dir)]) == 2
    line = _one_line_error(capsys)
    assert f"checkpoints/6 is damaged: {name} differs from its checksum" in line


def test_resume_falls_back_from_a_damaged_newest_checkpoint(finished_run, tmp_path, capsys):
    run_dir = _copy(finished_run, tmp_path)
    (run_dir / "done").unlink()
    _damage(run_dir / "checkpoints" / "6")
    assert train.main([*TINY, f"run_dir={run_dir}"]) == 0
    err = capsys.readouterr().err
    assert "checkpoints/6 is damaged" in err and "trying an older checkpoint" in err
    assert "resumed from the checkpoint of step 4" in err
    assert evaluate.main([str(run_dir)]) == 0  # step 6 written again, intact


def test_a_checkpoint_of_another_experiment_is_refused_naming_the_fields(
    finished_run, tmp_path, capsys
):
    run_dir = tmp_path / "other"
    run_dir.mkdir()
    shutil.copytree(finished_run / "checkpoints", run_dir / "checkpoints")
    before = sorted(p.name for p in run_dir.iterdir())
    code = train.main([*TINY, "seed=3", "optimizer.learning_rate=0.02", f"run_dir={run_dir}"])
    assert code == 2
    line = _one_line_error(capsys)
    assert "belongs to another experiment" in line
    assert "seed" in line and "optimizer.learning_rate" in line
    assert sorted(p.name for p in run_dir.iterdir() if p.name != ".lock") == before


def _tree(run_dir: Path) -> dict[str, tuple[int, float]]:
    return {
        str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime)
        for p in sorted(run_dir.rglob("*"))
    }


def test_evaluate_writes_cleans_and_locks_nothing(finished_run, tmp_path):
    run_dir = _copy(finished_run, tmp_path)
    in_progress = run_dir / "checkpoints" / "8.orbax-checkpoint-tmp-1764720000000000"
    in_progress.mkdir()  # a save of a running training, as orbax names it
    (in_progress / "part").write_text("half-written")
    before = _tree(run_dir)
    time.sleep(0.01)
    assert evaluate.main([str(run_dir), "json=true"]) == 0
    assert _tree(run_dir) == before
    with exclusive(run_dir):  # evaluate works while a training holds the directory
        assert evaluate.main([str(run_dir)]) == 0


def test_a_second_training_on_a_run_directory_in_use_is_refused(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "busy"
    with exclusive(run_dir):
        assert train.main([*TINY, f"run_dir={run_dir}"]) == 2
    line = _one_line_error(capsys)
    assert "is in use by a running training" in line and f"pid {os.getpid()}" in line
    assert not (run_dir / "config.yaml").exists()


def test_a_killed_training_leaves_no_stuck_lock(tmp_path):
    run_dir = tmp_path / "killed"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from uda_jax.run_dir import exclusive\n"
            "with exclusive(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    with exclusive(run_dir):  # acquired at once: the kernel released the dead process's lock
        pass


def test_ctrl_c_during_start_up_exits_130_without_a_traceback(tmp_path):
    """SIGINT while the data loads (before the training loop's own handler) stops quietly."""
    command = [sys.executable, "-m", "uda_jax.train", *TINY, f"run_dir={tmp_path / 'run'}"]
    command = [a for a in command if a != "progress=false"]  # the status lines tell when
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    assert "loading" in first, first
    proc.send_signal(2)  # SIGINT, as Ctrl-C
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130
    assert "Traceback" not in rest and "stopped: interrupted (Ctrl-C)" in rest, rest
