"""The run directory: where a run writes, and whether a new command starts or resumes it.

``<run_dir>/config.yaml`` marks a run. Running a command again on the same directory resumes it
from its latest checkpoint, provided the config is the same up to the keys that only steer
logging and checkpointing (:data:`RESUMABLE_CHANGES`); a finished run (``done``) is never
touched again. Without ``run_dir`` the directory is ``runs/<method>_<source>-<target>_<hash>``
with a hash of the config, so the same command finds its own unfinished run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from uda_jax.config import Config, dump_yaml, to_dict
from uda_jax.errors import UserError

# Keys that may differ between the run on disk and the command that resumes it.
RESUMABLE_CHANGES = frozenset(
    {
        "run_dir",
        "progress",
        "log_every",
        "tensorboard",
        "plots",
        "checkpoint",
        "distributed",
        "cpu_tuning",
        "tsne",
    }
)


def training_fields(config: Config | dict[str, Any]) -> dict[str, Any]:
    """The config as plain data without the keys that do not change what is trained."""
    data = to_dict(config) if not isinstance(config, dict) else config
    return {k: v for k, v in data.items() if k not in RESUMABLE_CHANGES}


def config_hash(config: Config) -> str:
    """Eight hex digits that identify what ``config`` trains."""
    text = json.dumps(training_fields(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _default_base(config: Config) -> Path:
    source = config.data.source.replace("/", "-")
    target = config.data.target.replace("/", "-")
    return Path("runs") / f"{config.method.name}_{source}-{target}_{config_hash(config)}"


def finished_twin(config: Config, run_dir: Path) -> Path | None:
    """The default run directory of ``config`` when it holds a finished run and ``run_dir``
    is a fresh one beside it (the same command run again); else None."""
    base = _default_base(config)
    if config.run_dir or run_dir == base or not (base / "done").exists():
        return None
    return base


def default_run_dir(config: Config) -> Path:
    """``runs/<method>_<source>-<target>_<config hash>``; a finished one gets a suffix ``-2``..."""
    base = _default_base(config)
    run_dir, n = base, 1
    while (run_dir / "done").exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir


def _first_difference(old: Any, new: Any, where: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key), new.get(key), f"{where}{key}.")
            if found:
                return found
        return None
    return None if old == new else f"{where.rstrip('.')}: {old!r} in the run, {new!r} now"


def resolve_run_dir(config: Config) -> tuple[Path, bool]:
    """``(run directory, resuming)`` for ``config``.

    Raises:
      UserError: the path is a file, the directory holds a finished run, or it holds a run of
        another config (naming the first key that differs).
    """
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run_dir {run_dir} is a file; choose a directory path")
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return run_dir, False
    if (run_dir / "done").exists():
        raise UserError(f"run_dir {run_dir} already holds a finished run; choose another run_dir")
    try:
        old = yaml.safe_load(saved.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        raise UserError(
            f"run_dir {run_dir} holds an unreadable config.yaml; choose another run_dir"
        ) from None
    difference = _first_difference(training_fields(old or {}), training_fields(config))
    if difference:
        raise UserError(
            f"run_dir {run_dir} holds a run with another config ({difference}); resume it with "
            "the same config or choose another run_dir"
        )
    return run_dir, True


def write_config(run_dir: Path, config: Config) -> None:
    """Writes ``config.yaml`` atomically (the marker of a run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", dump_yaml(config))


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file, so ``path`` is never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drops the records after ``last_step`` (and any half-written line) from a JSON-lines file:
    a resumed run writes them again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", last_step + 1) <= last_step:
            kept.append(line + "\n")
    write_atomic(path, "".join(kept))


@contextlib.contextmanager
def exclusive(run_dir: Path) -> Iterator[None]:
    """Holds ``<run_dir>/.lock`` for one training at a time (an ``flock``, which the system
    releases when the process ends, so a killed run never leaves it stuck).

    Raises:
      UserError: another process holds it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise UserError(
                f"run_dir {run_dir} is in use by a running training ({owner}); wait for it to "
                "finish or choose another run_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
