"""Several processes joined by ``jax.distributed`` train like one process on one device.

Two processes on this machine, 2 CPU devices each, meet over localhost (gloo CPU collectives)
and train on one global 4-device mesh; a third, single process trains on 1 device from the same
global batches (tests/distributed_check.py). The final parameters must agree.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from uda_jax.errors import UserError
from uda_jax.parallel import check_mesh, data_mesh, host_rows, host_share, initialize_distributed

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["data.batch_size=8", "model.classifier_widths=[32,32]", "model.discriminator_hidden=32"]
CASES = {
    "cgdm": ["configs/digits_cgdm.yaml", [*SMALL, "cgdm.num_k=1", "cgdm.warmup_steps=0"]],
    # MetaAlign's sharded step is checked 1 vs 8 devices in test_parallel.py; the collectives
    # across processes are the same, so one method keeps this (3-process) test affordable
}
STEPS = 3
TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(procs: list[subprocess.Popen], logs: list[Path], until, bad) -> None:
    """Polls until ``until()`` holds; fails with the logs' ends if ``bad(exit codes)`` holds
    first (None: still running) or time runs out."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if bad([p.poll() for p in procs]):
            break
        if until():
            return
        time.sleep(0.05)
    logs_text = "\n\n".join(
        f"{log.name} (exit code {p.poll()}):\n{log.read_text()[-2500:]}"
        for p, log in zip(procs, logs, strict=True)
    )
    pytest.fail(f"the processes did not get there in time or one failed:\n{logs_text}")


def _ended(procs: list[subprocess.Popen]):
    """``until`` for :func:`_wait`: every process has exited."""
    return lambda: all(p.poll() is not None for p in procs)


def _any_failed(codes: list[int | None]) -> bool:
    """``bad`` for :func:`_wait`: a process exited with an error."""
    return any(c not in (None, 0) for c in codes)


def _kill_all(procs: list[subprocess.Popen]) -> None:
    """Ends every process still running (a process whose peer died waits for it forever)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Output folders of the 2-process run and of the 1-process run (both run at once)."""
    multi, single = tmp_path_factory.mktemp("multi"), tmp_path_factory.mktemp("single")
    base = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    base.pop("XLA_FLAGS", None)
    script = [sys.executable, "-u", str(ROOT / "tests/distributed_check.py")]
    cases = json.dumps(CASES)
    address = f"127.0.0.1:{_free_port()}"
    two = dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    commands = [
        ([*script, str(multi), cases, str(STEPS), address, "2", str(i)], two) for i in range(2)
    ]
    commands.append(([*script, str(single), cases, str(STEPS)], base))
    names = ["process 0", "process 1", "single"]
    logs = [multi / f"{name.replace(' ', '')}.log" for name in names]
    procs = []
    for (cmd, env), log in zip(commands, logs, strict=True):
        with log.open("w") as out:
            procs.append(
                subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            )
    try:  # stop all at the first failure
        _wait(procs, logs, _ended(procs), bad=_any_failed)
    finally:
        _kill_all(procs)
    reports = [json.loads((multi / f"process{i}.json").read_text()) for i in range(2)]
    return multi, single, reports


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_train_like_one_device(runs, case):
    multi, single, reports = runs
    for report in reports:
        assert report["cases"][case]["replicated_on"] == 4
    one, two = np.load(single / f"{case}.npz"), np.load(multi / f"{case}.npz")
    assert sorted(one.files) == sorted(two.files)
    scale = max(float(np.max(np.abs(one[k]))) for k in one.files)
    worst = max(float(np.max(np.abs(one[k] - two[k]))) for k in one.files)
    assert worst <= 1e-4 * scale, f"largest difference {worst:.3g}, parameter scale {scale:.3g}"
    for k in one.files:  # and each tensor against its own scale
        leaf_scale = max(float(np.max(np.abs(one[k]))), 1e-3)
        assert float(np.max(np.abs(one[k] - two[k]))) <= 1e-4 * leaf_scale, k


@pytest.mark.slow
def test_each_process_holds_its_rows_and_misconfigurations_are_user_errors(runs):
    _, _, reports = runs
    for i, report in enumerate(reports):
        summary = report["summary"]
        assert summary == {
            "process_index": i,
            "process_count": 2,
            "local_device_count": 2,
            "device_count": 4,
            "platform": "cpu",
        }
        assert report["rows"] == [4 * i, 4 * i + 4]  # 8 rows over 4 devices, 2 per device
        assert report["global_batch_ok"] and report["local_batch_ok"]
        errors = report["errors"]
        assert errors["batch_not_split"].startswith("data.batch_size=6 does not split over 4")
        assert "a multi-process run trains on all devices" in errors["local_mesh"]
        assert "interleaves the devices of different processes" in errors["interleaved_mesh"]
        assert "not adjacent in the mesh" in errors["interleaved_rows"]
        assert report["peak_memory_bytes"] is None  # CPU keeps no device memory statistics
        assert report["host_peak_rss_bytes"] > 10_000_000


@pytest.mark.parametrize(
    "args, message",
    [
        (("127.0.0.1:1234", 2, None), r"process_id missing"),
        ((None, 2, 0), r"coordinator_address missing"),
        (("127.0.0.1:1234", None, None), r"num_processes, process_id missing"),
        (("127.0.0.1:1234", 2, 2), r"process_id=2 is outside 0\.\.1"),
        (("127.0.0.1:1234", 2, -1), r"process_id=-1 is outside 0\.\.1"),
        (("127.0.0.1:1234", 0, 0), r"num_processes=0 must be at least 1"),
        (("127.0.0.1", 2, 0), r"is not host:port"),
        (("127.0.0.1:1234", "2", 0), r"num_processes='2' is not an integer"),
    ],
)
def test_inconsistent_distributed_arguments_are_user_errors(args, message):
    with pytest.raises(UserError, match=message):
        initialize_distributed(*args)


def test_distributed_settings_from_the_environment_are_checked(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    with pytest.raises(UserError, match=r"JAX_NUM_PROCESSES='two' is not an integer"):
        initialize_distributed()
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "5")
    with pytest.raises(UserError, match=r"process_id=5 is outside 0\.\.1"):
        initialize_distributed()


def test_one_process_holds_all_rows():
    mesh = data_mesh()
    check_mesh(mesh)
    assert host_rows(8, mesh) == slice(0, 8)
    batch = {"x": np.arange(8), "y": np.arange(16).reshape(8, 2)}
    share = host_share(batch, mesh)
    assert all(np.array_equal(share[k], batch[k]) for k in batch)
    with pytest.raises(UserError, match="different numbers of rows"):
        host_share({"x": np.arange(8), "y": np.arange(4)}, mesh)


# ---- the command line over two processes: evaluation, pseudo-labels, plots, SIGTERM, resume ----

CLI_STEPS = 12
CLI_RUN = [
    f"steps={CLI_STEPS}",
    "log_every=2",
    "eval_every=6",
    "checkpoint.every=0",
    "cgdm.num_k=1",
    "cgdm.warmup_steps=0",
    "cgdm.pseudo_interval=6",
    "model.classifier_widths=[32,32]",
    "data.batch_size=8",
    "progress=false",
    "tensorboard=false",
]


SIGTERM_AFTER = 3  # process 1 receives SIGTERM after this iteration (not a log step)
# ``python -m uda_jax.train`` with a t-SNE of fewer points than a real run's (the t-SNE is most of
# a tiny run's time; the test only checks that the figure is drawn). Its first argument is an
# iteration after which the process sends itself SIGTERM (0: never): a signal at a known step,
# where one sent from outside could arrive after the last iteration of so short a run.
TRAIN = """
import signal, sys
import uda_jax.plots, uda_jax.train
uda_jax.plots.TSNE_POINTS_PER_DOMAIN = 100
stop_after = int(sys.argv.pop(1))
eval_due = uda_jax.train.eval_due
def eval_due_then_signal(config, done):
    if done == stop_after:
        signal.raise_signal(signal.SIGTERM)
    return eval_due(config, done)
uda_jax.train.eval_due = eval_due_then_signal
sys.exit(uda_jax.train.main())
"""


def _cli(
    run_dir: Path,
    log: Path,
    process_id: int | None,
    address: str,
    *extra: str,
    sigterm_after: int = 0,
) -> subprocess.Popen:
    """The command line (:data:`TRAIN`) as one of two processes (2 CPU devices each), or alone
    on 1 device when ``process_id`` is None; it sends itself SIGTERM after iteration
    ``sigterm_after`` when that is not 0."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    args = [*CLI_RUN, *extra, f"run_dir={run_dir}"]
    if process_id is not None:
        env.update(
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_COORDINATOR_ADDRESS=address,
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(process_id),
        )
        args.append("distributed=true")
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-c", TRAIN, str(sigterm_after), *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_process_command_line_stops_together_on_one_sigterm_resumes_and_matches_one(
    tmp_path,
):
    """The whole CLI (pseudo-label refreshes, evaluation, checkpoints, plots) on two processes:
    SIGTERM to process 1 alone stops both at the next log step with one checkpoint; the same
    commands resume; the run then matches one process on one device."""
    multi, single = tmp_path / "multi", tmp_path / "single"
    logs = [tmp_path / f"{name}.log" for name in ("p0", "p1", "single", "p0b", "p1b")]
    address = f"127.0.0.1:{_free_port()}"
    alone = _cli(single, logs[2], None, address, "plots=false")
    procs = [
        _cli(multi, logs[i], i, address, "tsne=true", sigterm_after=SIGTERM_AFTER * i)
        for i in range(2)
    ]
    started = [alone, *procs]
    step = SIGTERM_AFTER + 1  # the first log step (log_every=2) after the signal

    try:
        # both must stop, not only the one that got the signal
        stopped = 128 + signal.SIGTERM
        _wait(procs, logs[:2], _ended(procs), bad=lambda codes: set(codes) - {None, stopped})
        outputs = [log.read_text() for log in logs[:2]]
        for p, out in zip(procs, outputs, strict=True):
            assert p.returncode == stopped, out[-2500:]
            assert "checkpoint saved" in out and "Traceback" not in out
        assert f"SIGTERM (received by another process) at step {step}:" in outputs[0]
        assert f"SIGTERM at step {step}:" in outputs[1]
        saved = sorted(int(d.name) for d in (multi / "checkpoints").iterdir() if d.name.isdigit())
        assert saved == [step] and not (multi / "done").exists()

        address = f"127.0.0.1:{_free_port()}"
        procs = [_cli(multi, logs[3 + i], i, address, "tsne=true") for i in range(2)]
        started += procs
        everyone = [*procs, alone]
        _wait(everyone, [logs[3], logs[4], logs[2]], _ended(everyone), bad=_any_failed)
    finally:  # never leave a process behind, whatever failed
        _kill_all(started)
    assert f"resumed from the checkpoint of step {step}" in logs[3].read_text()

    for name in ("done", "results.json", "curves.png", "features_tsne.png"):
        assert (multi / name).exists(), name
    results = json.loads((multi / "results.json").read_text())
    assert results["processes"]["process_count"] == 2 and results["resumed_from_step"] == step
    expected = json.loads((single / "results.json").read_text())
    assert results["target_accuracy"] == pytest.approx(expected["target_accuracy"], abs=0.01)
    mine, theirs = _records(multi), _records(single)
    assert [sorted(r) for r in mine] == [sorted(r) for r in theirs]
    for a, b in zip(mine, theirs, strict=True):
        assert a["step"] == b["step"]
        for key in a:
            tol = 0.01 if "accuracy" in key else 1e-4  # an accuracy may flip one test image
            assert a[key] == pytest.approx(b[key], rel=tol, abs=tol), (a["step"], key)
