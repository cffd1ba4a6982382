"""Data parallelism: the same global batch on 1 and on 8 (CPU) devices gives the same training,
for every kind of step (source only, MCD, CGDM, DANN, and MetaAlign around GVB at second order,
whose one compiled step holds both role branches).

Runs in subprocesses, since the device count is fixed when JAX starts
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from uda_jax.errors import UserError
from uda_jax.parallel import check_batch_size, data_mesh

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["data.batch_size=8", "model.classifier_widths=[32,32]", "model.discriminator_hidden=32"]


@pytest.mark.parametrize(
    "config, overrides",
    [
        ("digits_source_only", []),
        ("digits_mcd", ["mcd.num_k=1"]),  # its repeats of step C: CGDM's case below
        ("digits_cgdm", ["cgdm.num_k=2", "cgdm.warmup_steps=0"]),
        ("digits_dann", []),
        ("digits_gvb_metaalign", ["metaalign.order=second"]),
    ],
)
def test_one_and_eight_devices_train_alike(config, overrides):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests/parallel_check.py"),
            str(ROOT / f"configs/{config}.yaml"),
            "3",
            *SMALL,
            *overrides,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8 and result["replicated"]
    assert result["max_relative_difference"] < 1e-3


def test_batch_that_does_not_split_over_the_devices_is_a_user_error():
    eight = SimpleNamespace(size=8)  # only the mesh's size matters
    check_batch_size(32, eight)
    with pytest.raises(UserError, match=r"data\.batch_size=36 does not split over 8 devices"):
        check_batch_size(36, eight)
    assert data_mesh().axis_names == ("data",)
