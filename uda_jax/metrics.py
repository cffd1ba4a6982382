"""Where metrics go: a JSON-lines file and TensorBoard event files in the run directory, and a
console progress bar."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tqdm import tqdm

import uda_jax


class MetricsWriter:
    """Appends one JSON object per line: ``{"step": int, "<name>": float, ...}``, and, with
    ``tensorboard_dir``, the same scalars as TensorBoard events. They are written by
    tensorboardX, a core dependency (small, no TensorFlow); viewing them needs the
    ``tensorboard`` extra: ``pip install "uda-jax[tensorboard]"``, then ``tensorboard --logdir``.

    Non-finite values are written as strings ("nan", "inf") so every line stays valid JSON.
    ``resume_step``: a resumed run's checkpoint step; TensorBoard drops the events after it,
    which the resumed run writes again.
    """

    def __init__(
        self,
        path: Path | None,
        tensorboard_dir: Path | None = None,
        resume_step: int | None = None,
    ):
        """``path`` None discards the records (the non-main processes of a multi-host run)."""
        self._file = open(path, "a") if path is not None else None  # noqa: SIM115
        self._tensorboard = None
        if tensorboard_dir is not None:
            from tensorboardX import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tensorboard = SummaryWriter(str(tensorboard_dir), purge_step=purge)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Writes and flushes one record."""
        record = {"step": step}
        record.update({k: v if math.isfinite(v) else str(v) for k, v in metrics.items()})
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tensorboard is not None:
            for name, value in metrics.items():
                self._tensorboard.add_scalar(name, value, step)
            self._tensorboard.flush()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None):
        if self._file is not None:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def status(text: str) -> None:
    """One line on stderr with the seconds since start: what a long silent phase is doing."""
    elapsed = time.perf_counter() - uda_jax.START_TIME
    print(f"[{elapsed:6.1f} s] {text}", file=sys.stderr, flush=True)


class ProgressBar:
    """Progress over the training steps on stderr: a tqdm bar with the latest losses, the
    learning rate and an ETA on a terminal; plain lines at each log step otherwise (a log file
    or a pipe gets no carriage returns). ``shown``: the metric names to show (the method's
    first four)."""

    def __init__(
        self, total: int, enabled: bool = True, initial: int = 0, shown: Sequence[str] = ()
    ):
        self._shown = (*tuple(shown)[:4], "learning_rate")
        self._enabled, self._total, self._done = enabled, total, initial
        self._plain = enabled and not sys.stderr.isatty()
        self._bar = tqdm(
            total=total,
            initial=initial,
            disable=not enabled or self._plain,
            file=sys.stderr,
            unit="step",
            dynamic_ncols=True,
        )

    def show(self, metrics: dict[str, float]) -> None:
        """Shows the main training losses (next to the bar, or as a plain line)."""
        values = {k.split("/")[-1]: v for k, v in metrics.items() if k.startswith("train/")}
        shown = {n: f"{values[n]:.4g}" for n in self._shown if n in values}
        if self._plain:
            pairs = "  ".join(f"{k} {v}" for k, v in shown.items())
            status(f"step {self._done + 1}/{self._total}  {pairs}")
        else:
            self._bar.set_postfix(shown, refresh=False)

    def advance(self) -> None:
        """One step done."""
        self._done += 1
        self._bar.update(1)

    def note(self, text: str) -> None:
        """A line above the bar (e.g. an evaluation result)."""
        if self._plain or not self._enabled:
            status(text)
        else:
            self._bar.write(text, file=sys.stderr)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None):
        self._bar.close()
