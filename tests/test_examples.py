"""The runnable examples in ``examples/``: each trains on the embedded task and evaluates."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_custom_method_trains_with_the_standard_loop_and_beats_chance(capsys):
    accuracy = _load("custom_method").main(["steps=300"])
    assert 0.3 < accuracy <= 1.0  # ten classes: chance is 0.1
    assert f"target accuracy {accuracy:.4f}" in capsys.readouterr().out


@pytest.mark.slow
def test_own_optax_chain_and_schedule_train(capsys):
    accuracy = _load("own_optax").main(["steps=150"])
    assert 0.2 < accuracy <= 1.0
    assert "target accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_custom_backbone_trains_cgdm(capsys):
    accuracy = _load("custom_backbone").main(["steps=120", "cgdm.warmup_steps=60", "cgdm.num_k=1"])
    assert 0.2 < accuracy <= 1.0
    assert "custom backbone" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_takes_a_method_by_import_path(tmp_path):
    """``method.name=module:Class`` trains a method defined outside uda-jax, no registration."""
    env = dict(os.environ, PYTHONPATH=str(EXAMPLES))
    command = [
        sys.executable,
        "-m",
        "uda_jax.train",
        "method.name=custom_method:EntropyMinimisation",
        "entmin.weight=0.2",
        "steps=6",
        "log_every=3",
        "eval_every=0",
        "plots=false",
        "tensorboard=false",
        "progress=false",
        f"run_dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["method"] == "custom_method:EntropyMinimisation"
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "entmin:\n  weight: 0.2" in saved
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert {"train/loss_cls", "train/loss_ent", "train/learning_rate"} <= set(records[0])
