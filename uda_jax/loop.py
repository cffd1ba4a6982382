"""The pieces of the training loop besides train steps: timing, what is due at a step, what an
evaluation measures, the finiteness guard, the process-wide stop decision and the end-of-run
record."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import jax

from uda_jax import validators
from uda_jax.config import Config
from uda_jax.parallel import (
    host_peak_rss_bytes,
    max_over_processes,
    peak_memory_bytes,
    process_summary,
)

COMPILING_STEPS = 2  # the first steps (compilation, warm caches) are not timed


class TrainingError(Exception):
    """Training cannot go on (a NaN or inf loss): the loop stops with one line, exit code 1."""


def check_finite(step: int, metrics: dict[str, float]) -> None:
    """Raises :class:`TrainingError` naming the step and the loss that is NaN or inf.

    Gradient norms (``*grad_norm*``) are diagnostics, not checked: an overflowing gradient shows
    in the parameters, which every checkpoint checks, and in the next step's losses.
    """
    for name, value in metrics.items():
        if "grad_norm" not in name and not math.isfinite(value):
            raise TrainingError(
                f"step {step}: {name} is {value}; training stopped "
                "(lower optimizer.learning_rate or the method's own step sizes, or check the data)"
            )


def log_due(config: Config, done: int) -> bool:
    """Whether the metrics of iteration ``done`` are logged."""
    return done % config.log_every == 0 or done == config.steps


def eval_due(config: Config, done: int) -> bool:
    """Whether the target is evaluated after iteration ``done``."""
    return done == config.steps or bool(config.eval_every and done % config.eval_every == 0)


def logged_validators(config: Config) -> tuple[str, ...]:
    """The validators each evaluation computes: ``config.validators``, and
    ``checkpoint.best_by`` when ``keep_best`` ranks by a validator (it needs the value)."""
    names = tuple(config.validators)
    best = config.checkpoint
    if best.keep_best and best.best_by != validators.ORACLE and best.best_by not in names:
        names += (best.best_by,)
    return names


def evaluation_metrics(predictor: Any, state: Any, config: Config) -> dict[str, float]:
    """One evaluation: the target test accuracies (``eval/target_...``) and the logged
    validators' scores (``eval/validator/<name>``, :func:`logged_validators`), from
    ``predictor`` (a :class:`uda_jax.evaluation.Predictor`). Both score the state evaluation
    predicts with (with ``eval_batchnorm: target``, the target's BatchNorm statistics)."""
    evaluated = predictor.evaluated(state)  # AdaBN's pass, when asked for, once
    metrics = predictor.target_metrics(evaluated)
    names = logged_validators(config)
    if names:
        scores = validators.state_scores(predictor, evaluated, names, seed=config.seed)
        metrics |= {validators.metric_name(name): value for name, value in scores.items()}
    return metrics


def save_due(config: Config, done: int) -> bool:
    """Whether a checkpoint is saved after iteration ``done``."""
    every = config.checkpoint.every
    return done == config.steps or bool(every and done % every == 0)


def agreed_stop(config: Config, received: int, done: int) -> int:
    """The signal all processes stop on after iteration ``done`` (0: none). With several
    processes they agree at log steps only (one tiny collective where the loop waits anyway)."""
    if jax.process_count() == 1 or (done % config.log_every == 0 and done < config.steps):
        return max_over_processes(received)
    return 0


class StepClock:
    """Wall time of the training steps: the compiling first step and host work between steps
    (hooks, evaluation, checkpoints: :meth:`pause`) are left out of the speed."""

    def __init__(self, start_step: int, steps: int):
        self.start = time.perf_counter()
        self.timed_from = min(start_step + COMPILING_STEPS, steps)
        self._train_start: float | None = None
        self._paused = 0.0

    def pause(self, pending: Any) -> _Pause:
        """``with clock.pause(state):`` excludes the block (after ``pending`` is computed)."""
        return _Pause(self, pending)

    def after_step(self, done: int, state: Any) -> None:
        """Starts the timing once the compiling steps are done."""
        if done == self.timed_from:
            jax.block_until_ready(state)
            self._train_start, self._paused = time.perf_counter(), 0.0

    def steps_per_second(self, steps: int) -> float | None:
        """Iterations per second over the timed steps, or None when none were timed."""
        timed = steps - self.timed_from
        if self._train_start is None or not timed:
            return None
        return timed / (time.perf_counter() - self._train_start - self._paused)

    def wall_time(self) -> float:
        """Seconds since the clock started."""
        return time.perf_counter() - self.start


class _Pause:
    def __init__(self, clock: StepClock, pending: Any):
        self._clock, self._pending = clock, pending

    def __enter__(self) -> None:
        jax.block_until_ready(self._pending)
        self._begin = time.perf_counter()

    def __exit__(self, *exc_info: object) -> None:
        self._clock._paused += time.perf_counter() - self._begin


def final_results(
    config: Config, eval_metrics: dict[str, float], wall_time_s: float, steps_per_s: float | None
) -> dict[str, Any]:
    """The ``results.json`` record: final-iterate accuracies, speed, and how it was run.

    Always valid JSON: an accuracy that is undefined — the per-class accuracy of a class with no
    test example — is ``null`` (and not part of ``target_mean_class_accuracy``, the mean over
    the classes that have test examples); so is any other non-finite number.
    """

    def _json_number(value: Any) -> float | None:
        """A float, or None where missing or not finite (``allow_nan=False`` must pass)."""
        if value is None:
            return None
        value = float(value)
        return value if math.isfinite(value) else None

    images_per_s = None if steps_per_s is None else steps_per_s * 2 * config.data.batch_size
    return {
        "method": config.method.name,
        "source": config.data.source,
        "target": config.data.target,
        "steps": config.steps,
        "seed": config.seed,
        "target_accuracy": _json_number(eval_metrics["eval/target_accuracy"]),
        "target_mean_class_accuracy": _json_number(eval_metrics["eval/target_mean_class_accuracy"]),
        "per_class_accuracy": {
            k.removeprefix("eval/target_per_class/"): _json_number(v)
            for k, v in eval_metrics.items()
            if "per_class/" in k
        },
        "wall_time_s": _json_number(wall_time_s),
        "steps_per_s": _json_number(steps_per_s),
        # each step reads batch_size source and batch_size target images
        "images_per_s": _json_number(images_per_s),
        "peak_device_memory_bytes": peak_memory_bytes(),
        "peak_host_memory_bytes": host_peak_rss_bytes(),
        "precision": config.precision,
        "processes": process_summary(),
        "selection": "final iterate",
        "devices": [str(d) for d in jax.devices()],
        "versions": {"jax": jax.__version__, "python": sys.version.split()[0]},
        "command": " ".join(sys.argv),
    }


def summary_line(results: dict[str, Any], run_dir: Any) -> str:
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
