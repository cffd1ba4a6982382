"""``uda_jax.cpu.memory``: XLA's per-call CPU buffers stop page-faulting, and
``cpu.prepare_process`` (which the CLI calls before JAX starts) applies it where the config's
``cpu_tuning`` wants it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from uda_jax import cpu
from uda_jax.config import load_config
from uda_jax.cpu import memory
from uda_jax.errors import UserError
from uda_jax.run_dir import config_hash, resolve_run_dir, write_config

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_BYTES = 4096 * 4096 * 4
glibc = pytest.mark.skipif(
    memory._glibc_mallopt() is None, reason="reuse_cpu_buffers acts on Linux with glibc only"
)


def _probe(mode: str) -> tuple[str, str, int]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "cpu_memory_probe.py"), mode],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"),
        timeout=300,
        check=True,
    )
    applied, async_dispatch, faulted = proc.stdout.split()
    return applied, async_dispatch, int(faulted)


@glibc
def test_reused_buffers_stop_page_faulting_where_jax_defaults_fault_every_call():
    applied, async_dispatch, faulted = _probe("reuse")
    assert (applied, async_dispatch) == ("True", "False")
    assert faulted < OUTPUT_BYTES // 4  # measured: 0, or one call in ten mapping a new block
    applied, async_dispatch, faulted = _probe("release")
    assert (applied, async_dispatch) == ("None", "True")
    assert faulted > OUTPUT_BYTES // 2  # the call's output mapped afresh, page by page


@glibc
def test_too_late_changes_nothing_and_says_so():
    applied, async_dispatch, faulted = _probe("late")
    assert (applied, async_dispatch) == ("False", "True")
    assert faulted > OUTPUT_BYTES // 2


def test_prepare_process_reuses_where_the_setting_wants_it_without_starting_jax():
    code = (
        "from uda_jax import cpu\n"
        "from uda_jax.cpu import memory\n"
        "memory.reuse_cpu_buffers = lambda: print('reuse') or True\n"
        "cpu.tuning('auto', 'lenet', 'cpu')\n"
        "for setting, backbone in [('on', 'lenet'), ('auto', 'resnet50'), ('auto', 'lenet'),\n"
        "                          ('off', 'resnet50')]:\n"
        "    print(setting, backbone, cpu.prepare_process(setting, backbone))\n"
        "from jax._src import xla_bridge\n"
        "print('started', xla_bridge.backends_are_initialized())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"),
        timeout=300,
        check=True,
    )
    assert proc.stdout.split("\n")[:-1] == [
        "reuse",
        "on lenet True",
        "reuse",
        "auto resnet50 True",  # auto: the ResNets' working memory
        "auto lenet False",  # auto, LeNet: reuse made the digits demo slower
        "off resnet50 False",
        "started False",
    ]
    with pytest.raises(ValueError, match="cpu_tuning"):
        cpu.prepare_process("reuse", "lenet")


@pytest.mark.parametrize(
    ("overrides", "calls"),
    [
        (["cpu_tuning=on"], 1),
        (["cpu_tuning=off", "model.backbone=resnet50"], 0),
        (["model.backbone=resnet50"], 1),  # auto: the ResNets' working memory
        ([], 0),  # auto, LeNet: reuse made the digits demo slower
    ],
)
def test_cli_applies_it_before_jax_starts_where_the_setting_wants_it(
    monkeypatch, capsys, overrides, calls
):
    from uda_jax import train

    applied = []
    monkeypatch.setattr(memory, "reuse_cpu_buffers", lambda: applied.append(True) or True)

    def stop(config):  # the next step of main: nothing runs or is written
        raise UserError("stop here")

    monkeypatch.setattr(train, "resolve_run_dir", stop)
    assert train.main(overrides) == 2
    assert "stop here" in capsys.readouterr().err  # the config was valid
    assert len(applied) == calls


def test_a_run_resumes_under_another_setting_or_from_before_the_key(tmp_path):
    """``cpu_tuning`` changes no value: it is outside the config hash and the resume check, so
    a run written without the key (an older version) or with another setting resumes."""
    run_dir = tmp_path / "run"
    off = load_config(None, ["cpu_tuning=off", f"run_dir={run_dir}"])
    write_config(run_dir, off)
    on = load_config(None, ["cpu_tuning=on", f"run_dir={run_dir}"])
    assert resolve_run_dir(on) == (run_dir, True)
    assert config_hash(on) == config_hash(off)
    older = yaml.safe_load((run_dir / "config.yaml").read_text())
    del older["cpu_tuning"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(older))
    assert resolve_run_dir(on) == (run_dir, True)
    other = load_config(None, ["steps=3", f"run_dir={run_dir}"])  # a training key still counts
    with pytest.raises(UserError, match="steps"):
        resolve_run_dir(other)
