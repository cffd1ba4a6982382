"""Command line: ``python -m uda_jax.train [CONFIG.yaml] [key=value ...]``.

Reads and validates the config, builds the experiment (domains, network, optimizers, method),
then :func:`train_and_evaluate` runs the loop: the method's host hooks, the compiled train step,
periodic evaluation on the target test split, progress on the console, ``metrics.jsonl`` and
TensorBoard in the run directory, checkpoints, and at the end ``results.json`` and a ``done``
marker. No math lives here.

Without arguments it trains CGDM on the embedded task mnist5k → ucidigits.
"""

from __future__ import annotations

import signal
import sys
import threading

from uda_jax import cli

if __name__ == "__main__":
    if cli.wants_help(sys.argv[1:]):  # answer before JAX is imported
        raise SystemExit(cli.print_help("train"))
    signal.signal(signal.SIGINT, cli.quiet_interrupt)  # Ctrl-C while the modules load
    cli.announce_start(sys.argv[1:])

import contextlib
import dataclasses
import errno
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh

from uda_jax import cpu
from uda_jax.baselines import comparison_line
from uda_jax.checkpoint import Checkpointer, Restored
from uda_jax.config import Config, load_config
from uda_jax.data.sources import pair_stream
from uda_jax.errors import UserError
from uda_jax.evaluation import Predictor, all_finite, write_curves, write_tsne
from uda_jax.experiment import Experiment, build_experiment, compile_train_step, create_train_state
from uda_jax.interrupts import Interrupted, StopSignals
from uda_jax.loop import (
    StepClock,
    TrainingError,
    agreed_stop,
    check_finite,
    eval_due,
    evaluation_metrics,
    final_results,
    log_due,
    save_due,
    summary_line,
)
from uda_jax.metrics import MetricsWriter, ProgressBar
from uda_jax.metrics import status as _status
from uda_jax.parallel import (
    check_batch_size,
    data_mesh,
    initialize_distributed,
    process_0_decides,
    replicate,
    shard_batch,
)
from uda_jax.run_dir import (
    exclusive,
    finished_twin,
    latest_checkpoint_step,
    resolve_run_dir,
    training_fields,
    truncate_metrics,
    write_atomic,
    write_config,
)
from uda_jax.state import TrainState

USAGE = cli.TRAIN_USAGE


def train_and_evaluate(
    config: Config,
    run_dir: Path,
    *,
    experiment: Experiment | None = None,
    mesh: Mesh | None = None,
) -> dict[str, Any]:
    """Trains ``config`` in ``run_dir``, resuming from its latest checkpoint when there is one;
    returns the final results.

    Args:
      experiment: built from ``config`` when not given (pass one for your own domains or optax).
      mesh: the devices to train on, data-parallel (default: all devices).

    Raises:
      UserError: a config, data or checkpoint problem, found before anything is written.
      TrainingError: a NaN or inf loss or parameter; the last good checkpoint stays.
      Interrupted: SIGTERM or Ctrl-C; a checkpoint of the current step was saved first.
    """
    if experiment is None:
        data = config.data
        _say(config, f"loading {data.source} → {data.target}, building {config.method.name}")
        experiment = build_experiment(config)
    mesh = mesh if mesh is not None else data_mesh()
    check_batch_size(config.data.batch_size, mesh)
    state = replicate(create_train_state(experiment), mesh)
    stream = pair_stream(
        experiment.source, experiment.target, config.data, config.seed,
        jax.process_index(), jax.process_count(),
    )  # fmt: skip
    is_main = jax.process_index() == 0  # one process writes the run directory
    with exclusive(run_dir) if is_main else contextlib.nullcontext():
        restored = _restore(config, run_dir, state)
        if is_main:
            write_config(run_dir, config)
            truncate_metrics(run_dir / "metrics.jsonl", 0 if restored is None else restored.step)
        return _train(experiment, run_dir, mesh, state, stream, restored, is_main)


def _train(experiment, run_dir, mesh, state, stream, restored, is_main) -> dict[str, Any]:
    """The training loop of :func:`train_and_evaluate`, from ``state`` (restored or fresh)."""
    config, start, eval_metrics = experiment.config, 0, {}
    if restored is not None:
        state, start, eval_metrics = restored.state, restored.step, restored.meta["eval"]
        stream.set_state(restored.data_state)
    method, train_step = experiment.method, compile_train_step(experiment)
    predictor, clock = Predictor(experiment), StepClock(start, config.steps)
    with _session(config, run_dir, start, method.metrics, is_main, stream) as out:
        if restored is not None:
            out.progress.note(f"resumed from the checkpoint of step {start} in {run_dir}")
        for warning in method.warnings(config.steps):
            out.progress.note(f"warning: {warning}")
        for step in range(start, config.steps):
            if method.hook_due(step):
                with clock.pause(state):
                    state = replicate(method.hook(state, functools.partial(predictor, state)), mesh)
            batch = shard_batch(next(stream), mesh, process_local=stream.PROCESS_LOCAL)
            if step == start:
                _say(config, "compiling the train step (the first step waits for it)")
            state, metrics = train_step(state, batch)
            done = step + 1
            clock.after_step(done, state)
            if log_due(config, done):
                out.log(done, _host_values(metrics) | _learning_rate(experiment, step))
            out.progress.advance()
            if eval_due(config, done):
                with clock.pause(state):
                    eval_metrics = evaluation_metrics(predictor, state, config)
                out.log_evaluation(done, eval_metrics)
            stop = agreed_stop(config, out.signals.received, done)
            if save_due(config, done) or stop:
                with clock.pause(state):
                    _save(out.checkpointer, done, state, metrics, stream, eval_metrics)
            if stop and done < config.steps:
                raise Interrupted(stop, done, run_dir, elsewhere=not out.signals.received)
    return _finish(config, run_dir, state, predictor, eval_metrics, clock, start, is_main)


def _say(config: Config, text: str) -> None:
    """A status line on stderr unless the config asks for quiet (``progress: false``)."""
    if config.progress and jax.process_index() == 0:
        _status(text)


@dataclasses.dataclass(frozen=True)
class _Session:
    """Where a running training writes: metrics, progress, checkpoints; and its stop signals."""

    writer: MetricsWriter
    progress: ProgressBar
    checkpointer: Checkpointer
    signals: StopSignals

    def log(self, done: int, values: dict[str, float]) -> None:
        """Writes and shows the training metrics of iteration ``done`` (finite, or stop)."""
        check_finite(done, values)
        self.writer.write(done, values)
        self.progress.show(values)

    def log_evaluation(self, done: int, eval_metrics: dict[str, float]) -> None:
        """Writes the evaluation metrics and notes the target accuracy above the bar."""
        self.writer.write(done, eval_metrics)
        accuracy = eval_metrics["eval/target_accuracy"]
        self.progress.note(f"step {done}: target accuracy {accuracy:.4f}")


@contextlib.contextmanager
def _session(config: Config, run_dir: Path, start: int, shown, is_main: bool, stream):
    """The open outputs of a training run (closed, and the stream released, on exit)."""
    identity = training_fields(config)
    tensorboard_dir = run_dir / "tensorboard" if config.tensorboard and is_main else None
    metrics_path = run_dir / "metrics.jsonl" if is_main else None
    with (
        contextlib.closing(stream),
        StopSignals() as signals,
        Checkpointer(run_dir / "checkpoints", config.checkpoint, identity=identity) as checkpointer,
        MetricsWriter(metrics_path, tensorboard_dir, start) as writer,
        ProgressBar(config.steps, config.progress and is_main, start, shown) as progress,
    ):
        yield _Session(writer, progress, checkpointer, signals)


def _host_values(metrics: dict[str, jax.Array]) -> dict[str, float]:
    """The step's metrics as Python floats (waits for the step)."""
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _learning_rate(experiment: Experiment, step: int) -> dict[str, float]:
    """The schedule's base learning rate at iteration ``step``."""
    return {"train/learning_rate": float(experiment.ctx.optimizers["g"].schedule(step))}


def _save(checkpointer, done, state, metrics, stream, eval_metrics) -> None:
    """A checkpoint of iteration ``done``, after checking its losses and parameters are finite."""
    check_finite(done, _host_values(metrics))
    if not bool(all_finite(state.params)):
        raise TrainingError(f"step {done}: the parameters hold NaN or inf")
    checkpointer.save(done, state, stream.get_state(), {"eval": eval_metrics})


def _finish(config, run_dir, state, predictor, eval_metrics, clock, start, is_main):
    """``results.json``, the plots and the ``done`` marker; returns the results."""
    jax.block_until_ready(state.step)
    steps_per_s = clock.steps_per_second(config.steps)
    if not eval_metrics:  # resumed from the final checkpoint of an unfinished run
        eval_metrics = evaluation_metrics(predictor, state, config)
    if config.plots and is_main:
        write_curves(predictor.experiment, run_dir)
    if config.tsne:  # every process computes features (collectives); the main one draws
        _say(config, "t-SNE of source and target features before and after adaptation (minutes)")
        write_tsne(predictor, state, run_dir if is_main else None)
    results = final_results(config, eval_metrics, clock.wall_time(), steps_per_s)
    results["resumed_from_step"] = start or None
    if is_main:
        write_atomic(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
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
    identity = training_fields(config)
    with Checkpointer(run_dir / "checkpoints", config.checkpoint, identity=identity) as ckpt:
        restored = ckpt.restore_latest(like)
    if restored is not None and restored.step > config.steps:
        raise UserError(
            f"run_dir {run_dir} has a checkpoint at step {restored.step}, past steps="
            f"{config.steps}; raise steps or choose another run_dir"
        )
    return restored


def parse_args(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """``(config path or None, overrides)`` from the command line."""
    if cli.wants_help(argv):
        raise SystemExit(cli.print_help("train"))
    path = None
    overrides = list(argv)
    if overrides and "=" not in overrides[0]:
        path = overrides.pop(0)
    for arg in overrides:
        if "=" not in arg:
            raise UserError(f"argument {arg!r} is not key=value; {USAGE}")
    return path, overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code.

    0: done. 2: a user mistake (config, data, paths), refused before anything is written.
    1: the run started and failed: a NaN or inf loss or parameter, or a disk that is full
    (or turned read-only) while the run writes; the newest complete checkpoint stays, so the
    same command resumes from it. 130/143: stopped by Ctrl-C/SIGTERM after a checkpoint.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C: KeyboardInterrupt
    argv = sys.argv[1:] if argv is None else argv
    run_dir = None
    try:
        path, overrides = parse_args(argv)
        config = load_config(path, overrides)
        cpu.prepare_process(config.cpu_tuning, config.model.backbone)  # before JAX starts
        if config.distributed:
            initialize_distributed()
        run_dir, resuming = resolve_run_dir(config)
        twin = finished_twin(config, run_dir)
        if twin is not None:
            _say(config, f"{twin} holds a finished run of this command; training a fresh one in "
                   f"{run_dir} (set run_dir=... to choose the directory)")  # fmt: skip
        if resuming:
            _say(config, f"resuming the unfinished run in {run_dir}")
        results = train_and_evaluate(config, run_dir)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"error: {err}; {_kept(run_dir)}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"stopped: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (start-up, plots)
        print("stopped: interrupted (Ctrl-C) outside the training steps", file=sys.stderr)
        return 130
    except Exception as err:  # last: only a full or read-only disk, others go on
        failure = _write_failure(err)
        if failure is None:
            raise
        print(f"error: {failure}; {_kept(run_dir, resumable=True)}", file=sys.stderr)
        return 1
    print(summary_line(results, run_dir))
    if (line := comparison_line(config)) is not None:
        print(line)
    return 0


def _kept(run_dir: Path | None, *, resumable: bool = False) -> str:
    """What a failed run leaves: its newest complete checkpoint, if any. ``resumable``: the
    failure was not the run's own (a full disk), so the same command continues from it."""
    step = None if run_dir is None else latest_checkpoint_step(run_dir)
    if step is None:
        if resumable:
            return "no checkpoint was saved yet, so the same command starts again from step 0"
        return "no checkpoint was saved yet"
    kept = f"the last good checkpoint (step {step}) is kept"
    return f"{kept}; the same command resumes from it" if resumable else kept


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _write_failure(err: BaseException) -> str | None:
    """One line for a full or read-only disk met while the run writes (an ``OSError`` raised
    directly or wrapped by orbax), else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (*_DISK_FULL, *_NOT_WRITABLE):
            where = f" {err.filename}" if err.filename else ""
            if err.errno in _DISK_FULL:
                return f"disk full while writing{where} (free some space)"
            if err.errno == errno.EROFS:
                return f"cannot write{where}: the file system turned read-only"
            return f"no permission for{where} ({err.strerror or 'permission denied'})"
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
