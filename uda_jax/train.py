"""Command line: ``python -m uda_jax.train [CONFIG.yaml] [key=value ...]``.

Reads and validates the config, loads the domains, builds the network, optimizers and the
method's jit-compiled train step, then runs the loop: pseudo-label refreshes, periodic
evaluation on the target test split, progress on the console and ``metrics.jsonl`` in the run
directory, and at the end ``results.json`` and a ``done`` marker. No math lives here.

Without arguments it trains CGDM on the embedded task mnist5k → ucidigits.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh

from uda_jax.checkpoint import Checkpointer, Restored
from uda_jax.config import Config, load_config
from uda_jax.data.sources import pair_stream
from uda_jax.errors import UserError
from uda_jax.evaluation import make_predict_fn
from uda_jax.experiment import build_experiment, create_train_state, make_step_fn
from uda_jax.host_memory import reuse_cpu_buffers, reuse_wanted
from uda_jax.interrupts import Interrupted, StopSignals
from uda_jax.loop_eval import all_finite, evaluate_target, refresh_pseudo_labels, write_plots
from uda_jax.metrics import MetricsWriter, ProgressBar
from uda_jax.parallel import (
    check_batch_size,
    data_mesh,
    host_peak_rss_bytes,
    initialize_distributed,
    max_over_processes,
    peak_memory_bytes,
    process_0_decides,
    process_summary,
    replicate,
    shard_batch,
)
from uda_jax.run_dir import resolve_run_dir, truncate_metrics, write_atomic, write_config
from uda_jax.state import TrainState

COMPILING_STEPS = 2  # the first steps (compilation, warm caches) are not timed
USAGE = "usage: python -m uda_jax.train [CONFIG.yaml] [key=value ...]"


class TrainingError(Exception):
    """Training cannot go on (a NaN or inf loss): the loop stops with one line, exit code 1."""


def pseudo_refresh_due(config: Config, step: int) -> bool:
    """Whether the pseudo-labels are recomputed before iteration ``step``."""
    warmup, interval = config.method.warmup_steps, config.method.pseudo_interval
    return step >= warmup and (step - warmup) % interval == 0


def check_finite(step: int, metrics: dict[str, float]) -> None:
    """Raises :class:`TrainingError` naming the step and the loss that is NaN or inf."""
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise TrainingError(
                f"step {step}: {name} is {value}; training stopped "
                "(lower optimizer.learning_rate or check the data)"
            )


def run(config: Config, run_dir: Path, mesh: Mesh | None = None) -> dict[str, Any]:
    """Trains ``config`` in ``run_dir``, resuming from its latest checkpoint when there is one;
    returns the final results.

    ``mesh``: the devices to train on, data-parallel (default: all devices).

    Raises:
      UserError: a config, data or checkpoint problem, found before anything is written.
      TrainingError: a NaN or inf loss or parameter; the last good checkpoint stays.
      Interrupted: SIGTERM or Ctrl-C; a checkpoint of the current step was saved first (with
        several processes: of the first ``log_every`` step after any process received it).
    """
    experiment = build_experiment(config)
    mesh = mesh if mesh is not None else data_mesh()
    check_batch_size(config.data.batch_size, mesh)
    start = time.perf_counter()
    state = replicate(create_train_state(experiment), mesh)
    is_main = jax.process_index() == 0  # one process writes the run directory
    stream = pair_stream(
        experiment.source,
        experiment.target,
        config.data,
        config.seed,
        jax.process_index(),
        jax.process_count(),
    )
    restored = _restore(config, run_dir, state)
    start_step, eval_metrics = 0, {}
    if restored is not None:
        state, start_step, eval_metrics = restored.state, restored.step, restored.meta["eval"]
        stream.set_state(restored.data_state)
    if is_main:
        write_config(run_dir, config)
        truncate_metrics(run_dir / "metrics.jsonl", start_step)
    step_fn = make_step_fn(experiment)
    predict_fn = make_predict_fn(experiment.ctx.network)
    compiled_at = min(start_step + COMPILING_STEPS, config.steps)
    train_start, excluded = None, 0.0  # seconds outside train steps (refresh, evaluation)
    tensorboard_dir = run_dir / "tensorboard" if config.tensorboard and is_main else None
    metrics_path = run_dir / "metrics.jsonl" if is_main else None
    with (
        contextlib.closing(stream),
        StopSignals() as signals,
        Checkpointer(run_dir / "checkpoints", config.checkpoint) as checkpointer,
        MetricsWriter(metrics_path, tensorboard_dir, start_step) as writer,
        ProgressBar(config.steps, config.progress and is_main, initial=start_step) as progress,
    ):
        if restored is not None:
            progress.note(f"resumed from the checkpoint of step {start_step} in {run_dir}")

        def save(done: int, metrics: dict[str, Any]) -> None:
            check_finite(done, {k: float(v) for k, v in jax.device_get(metrics).items()})
            if not bool(all_finite(state.params)):
                raise TrainingError(f"step {done}: the parameters hold NaN or inf")
            checkpointer.save(done, state, stream.get_state(), {"eval": eval_metrics})

        for step in range(start_step, config.steps):
            if experiment.method.USES_PSEUDO_LABELS and pseudo_refresh_due(config, step):
                with _Stopwatch(state) as watch:
                    state = refresh_pseudo_labels(experiment, state, predict_fn)
                    # placed as the rest of the state: the step is not compiled again for them
                    state = state.replace(pseudo_labels=replicate(state.pseudo_labels, mesh))
                excluded += watch.seconds
            batch = shard_batch(next(stream), mesh, process_local=stream.PROCESS_LOCAL)
            if step_fn.compiles(step):  # a role's first call compiles: not timed
                if step >= compiled_at:  # a pause mid-run (CGDM: the first step after warm-up)
                    progress.note(f"step {step}: compiling the train step's variant for it")
                with _Stopwatch(state) as watch:
                    state, metrics = step_fn(state, batch, step)
                excluded += watch.seconds
            else:
                state, metrics = step_fn(state, batch, step)
            done = step + 1
            if done == compiled_at:  # time the steps after compilation
                jax.block_until_ready(state.step)
                train_start, excluded = time.perf_counter(), 0.0
            if done % config.log_every == 0 or done == config.steps:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                check_finite(done, values)
                writer.write(done, values)
                progress.show(values)
            progress.advance()
            if done == config.steps or (config.eval_every and done % config.eval_every == 0):
                with _Stopwatch(state) as watch:
                    eval_metrics = evaluate_target(experiment, state, predict_fn)
                excluded += watch.seconds
                writer.write(done, eval_metrics)
                accuracy = eval_metrics["eval/target_accuracy"]
                progress.note(f"step {done}: target accuracy {accuracy:.4f}")
            stop = 0  # the processes agree on a signal at log steps; one process checks every step
            if jax.process_count() == 1 or (done % config.log_every == 0 and done < config.steps):
                stop = max_over_processes(signals.received)
            every = config.checkpoint.every
            if done == config.steps or (every and done % every == 0) or stop:
                with _Stopwatch(state) as watch:
                    save(done, metrics)
                excluded += watch.seconds
            if stop and done < config.steps:
                raise Interrupted(stop, done, run_dir, elsewhere=not signals.received)
    jax.block_until_ready(state.step)
    timed_steps = config.steps - compiled_at
    steps_per_s = None
    if train_start is not None and timed_steps:
        steps_per_s = timed_steps / (time.perf_counter() - train_start - excluded)
    if not eval_metrics:  # resumed from the final checkpoint of an unfinished run
        eval_metrics = evaluate_target(experiment, state, predict_fn)
    results = final_results(config, eval_metrics, time.perf_counter() - start, steps_per_s)
    results["resumed_from_step"] = start_step or None
    if is_main:
        write_atomic(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    if config.plots:  # every process computes features (collectives); the main one draws
        write_plots(experiment, state, predict_fn, run_dir if is_main else None)
    if is_main:
        (run_dir / "done").write_text("")
    return results


def _restore(config: Config, run_dir: Path, like: TrainState) -> Restored | None:
    """The latest checkpoint of ``run_dir`` (None for a new run), read before anything is
    written, so an unreadable checkpoint leaves the directory as it was."""
    # every process must take the same branch: creating the Checkpointer is a collective, and
    # process 0 may be creating the directory while another process looks for it
    if not process_0_decides((run_dir / "checkpoints").is_dir()):
        return None
    with Checkpointer(run_dir / "checkpoints", config.checkpoint) as checkpointer:
        restored = checkpointer.restore_latest(like)
    if restored is not None and restored.step > config.steps:
        raise UserError(
            f"run_dir {run_dir} has a checkpoint at step {restored.step}, past steps="
            f"{config.steps}; raise steps or choose another run_dir"
        )
    return restored


def final_results(
    config: Config, eval_metrics: dict[str, float], wall_time_s: float, steps_per_s: float | None
) -> dict[str, Any]:
    """The ``results.json`` record: final-iterate accuracies, speed, and how it was run."""
    return {
        "method": config.method.name,
        "source": config.data.source,
        "target": config.data.target,
        "steps": config.steps,
        "seed": config.seed,
        "target_accuracy": eval_metrics["eval/target_accuracy"],
        "target_mean_class_accuracy": eval_metrics["eval/target_mean_class_accuracy"],
        "per_class_accuracy": {
            k.removeprefix("eval/target_per_class/"): v
            for k, v in eval_metrics.items()
            if "per_class/" in k
        },
        "wall_time_s": wall_time_s,
        "steps_per_s": steps_per_s,
        # each step reads batch_size source and batch_size target images
        "images_per_s": None if steps_per_s is None else steps_per_s * 2 * config.data.batch_size,
        "peak_device_memory_bytes": peak_memory_bytes(),
        "peak_host_memory_bytes": host_peak_rss_bytes(),
        "precision": config.precision,
        "processes": process_summary(),
        "selection": "final iterate",
        "devices": [str(d) for d in jax.devices()],
        "versions": {"jax": jax.__version__, "python": sys.version.split()[0]},
        "command": " ".join(sys.argv),
    }


class _Stopwatch:
    """Seconds spent inside a ``with`` block, after the device finished the work before it."""

    def __init__(self, pending: Any):
        self._pending = pending

    def __enter__(self) -> _Stopwatch:
        jax.block_until_ready(self._pending)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self._start


def parse_args(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """``(config path or None, overrides)`` from the command line."""
    if any(arg in ("-h", "--help") for arg in argv):
        raise SystemExit(print(__doc__.strip() + "\n\n" + USAGE) or 0)
    path = None
    overrides = list(argv)
    if overrides and "=" not in overrides[0]:
        path = overrides.pop(0)
    for arg in overrides:
        if "=" not in arg:
            raise UserError(f"argument {arg!r} is not key=value; {USAGE}")
    return path, overrides


def summary_line(results: dict[str, Any], run_dir: Path) -> str:
    """The closing summary printed after training."""
    steps_per_s = results["steps_per_s"]
    speed = "n/a"
    if steps_per_s:
        speed = f"{steps_per_s:.1f} steps/s, {results['images_per_s']:.0f} images/s"
    peak = results["peak_device_memory_bytes"] or results["peak_host_memory_bytes"]
    where = "device" if results["peak_device_memory_bytes"] else "host"
    speed += f", peak {where} memory {peak / 2**20:.0f} MiB"
    return (
        f"{results['method']} {results['source']} → {results['target']}: "
        f"target accuracy {results['target_accuracy']:.4f}, "
        f"mean class accuracy {results['target_mean_class_accuracy']:.4f} "
        f"after {results['steps']} steps ({results['wall_time_s']:.0f} s, {speed}); "
        f"results in {run_dir}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for any user mistake)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        path, overrides = parse_args(argv)
        config = load_config(path, overrides)
        if reuse_wanted(config.cpu_memory, config.model.backbone):  # before JAX starts
            reuse_cpu_buffers()
        if config.distributed:
            initialize_distributed()
        run_dir, _ = resolve_run_dir(config)
        results = run(config, run_dir)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"error: {err}; the last good checkpoint is kept", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"stopped: {err}", file=sys.stderr)
        return err.exit_code
    print(summary_line(results, run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
