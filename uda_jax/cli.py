"""The console scripts ``uda-jax-train`` and ``uda-jax-evaluate``, and ``--help`` answered
before JAX is imported (the help lists every key from the config classes' source)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

TRAIN_USAGE = "usage: python -m uda_jax.train [CONFIG] [key=value ...]   (or: uda-jax-train ...)"
EVALUATE_USAGE = (
    "usage: python -m uda_jax.evaluate RUN_DIR_OR_CHECKPOINT [key=value ...]   "
    "(or: uda-jax-evaluate ...)"
)
EVALUATE_KEYS = """
Report accuracy, mean class accuracy and the per-class table of a run's checkpoint, and the
score of every unsupervised validator (entropy, IM, BNM, SND, DEV, source accuracy; see
uda_jax.select to rank checkpoints by one). Read-only: it never writes, cleans or locks the run
directory.

Keys:
  domain=NAME      the domain to evaluate (default: the run's target)
  split=test       test (default) or train
  step=N           the checkpoint step (default: the latest; a damaged one is refused)
  features=PATH    also write features, logits, predictions and labels to PATH (.npz)
  json=true        print the metrics as one JSON object instead of a table
"""


def quiet_interrupt(signum: int, frame: object) -> None:
    """SIGINT while the modules load (before ``main`` runs): one line and exit 130."""
    del signum, frame
    print("stopped: interrupted (Ctrl-C) while starting", file=sys.stderr, flush=True)
    os._exit(130)


def wants_help(argv: Sequence[str]) -> bool:
    """Whether the command line asks for ``--help``."""
    return any(arg in ("-h", "--help") for arg in argv)


def print_help(command: str) -> None:
    """The help of ``train`` or ``evaluate`` on stdout."""
    if command == "train":
        from uda_jax.config_docs import help_text

        print(help_text(TRAIN_USAGE), end="")
    else:
        print(EVALUATE_USAGE + "\n" + EVALUATE_KEYS, end="")


def announce_start(argv: Sequence[str]) -> None:
    """On a terminal, the first status line, printed before JAX and the training modules load
    (seconds), unless the command line says ``progress=false``. Logs and pipes get none: a
    bad command line stays one line there."""
    if not sys.stderr.isatty():
        return
    if any(arg.replace(" ", "").lower() in ("progress=false", "progress=no") for arg in argv):
        return
    from uda_jax.metrics import status

    status("starting: loading JAX and the training modules")


def train(argv: Sequence[str] | None = None) -> int:
    """``uda-jax-train``: :func:`uda_jax.train.main`, with ``--help`` before JAX starts."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if wants_help(argv):
        print_help("train")
        return 0
    signal.signal(signal.SIGINT, quiet_interrupt)
    announce_start(argv)
    from uda_jax.train import main

    return main(argv)


def evaluate(argv: Sequence[str] | None = None) -> int:
    """``uda-jax-evaluate``: :func:`uda_jax.evaluate.main`, with ``--help`` before JAX starts."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if wants_help(argv):
        print_help("evaluate")
        return 0
    from uda_jax.evaluate import main

    return main(argv)
