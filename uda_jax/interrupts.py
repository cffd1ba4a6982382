"""SIGTERM and Ctrl-C as a request to stop after the current step, with a checkpoint first.

Schedulers send SIGTERM before they kill a job; the training loop checks
:attr:`StopSignals.received` after every step, saves a checkpoint and raises
:class:`Interrupted`. A second signal stops at once (the default behaviour).

With several processes (``jax.distributed``) a signal may reach only some of them, and the
checkpoint is a collective every process must join. The processes therefore agree at every
``log_every`` step (``parallel.max_over_processes`` of the signal numbers, one tiny all-gather,
where the loop already waits for the step's metrics) and all stop together at the first such
step after any of them received one.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run stopped on a signal after saving a checkpoint at ``step``."""

    def __init__(self, signum: int, step: int, run_dir: Path, elsewhere: bool = False):
        name = signal.Signals(signum).name + (" (received by another process)" if elsewhere else "")
        super().__init__(
            f"{name} at step {step}: checkpoint saved in {run_dir}; "
            "run the same command again to resume"
        )
        self.signum, self.step = signum, step

    @property
    def exit_code(self) -> int:
        """The shell convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


class StopSignals:
    """Within ``with``: the first SIGINT/SIGTERM sets :attr:`received` (its number) and restores
    the previous handlers, so a second one stops the process at once. Outside the main thread
    (where Python cannot install handlers) it does nothing."""

    def __init__(self) -> None:
        self.received: int = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._restore()
