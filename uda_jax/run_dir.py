"""The run directory: where a run writes, and whether a new command starts or resumes it.

``<run_dir>/config.yaml`` marks a run. Running a command again on the same directory resumes it
from its latest checkpoint, provided the config is the same up to the keys that only steer
logging and checkpointing (:data:`RESUMABLE_CHANGES`); a finished run (``done``) is never
touched again. Without ``run_dir`` the directory is ``runs/<method>_<source>-<target>_<hash>``
with a hash of the config, so the same command finds its own unfinished run.
"""

from __future__ import annotations

import contextlib
import errno
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
        "validators",  # what evaluation logs
        "eval_batchnorm",  # how evaluation predicts (AdaBN or not), not what is trained
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
      UserError: the path cannot be written (:func:`check_writable`), the directory holds a
        finished run, or it holds a run of another config (naming the first key that differs).
    """
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    check_writable(run_dir)
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


# What a run writes inside its directory: files, and folders.
RUN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "results.json",
    "done",
    ".lock",
    "curves.png",
    "features_tsne.png",
)
RUN_FOLDERS = ("checkpoints", "tensorboard")
# The longest path a run writes below its directory (an orbax temporary checkpoint file).
LONGEST_INSIDE = 200


def check_writable(run_dir: Path) -> None:
    """Refuses a run directory the run could not write, before anything is written: a name
    longer than the filesystem allows, a path through a file or a dangling symlink, no
    permission to write, or a file where the run writes a folder (``checkpoints``) or the
    reverse.

    Raises:
      UserError: one line naming the problem and the fix.
    """
    text = str(run_dir)
    if "\0" in text:
        raise UserError(f"run_dir {text!r} holds a NUL character; choose another run_dir")
    absolute = Path(os.path.abspath(run_dir))
    existing = _nearest_existing(absolute)
    name_max, path_max = _limits(existing)
    # the lengths first: a name too long makes every look at the path fail (ENAMETOOLONG)
    for part in absolute.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise UserError(
                f"run_dir: the folder name '{part[:40]}...' is {size} bytes long, more than "
                f"this filesystem allows ({name_max}); choose a shorter run_dir"
            )
    length = len(os.fsencode(str(absolute)))
    if length + LONGEST_INSIDE > path_max:
        raise UserError(
            f"run_dir is {length} bytes long as an absolute path; with the files a run writes "
            f"inside it (up to {LONGEST_INSIDE} more) that passes this filesystem's limit of "
            f"{path_max}; choose a shorter run_dir"
        )
    try:
        _check_path(run_dir, absolute, existing)
    except OSError as err:  # a folder on the way that cannot be looked into (EACCES)
        raise UserError(
            f"run_dir {run_dir}: cannot look at {err.filename or run_dir} "
            f"({err.strerror or err}); choose another run_dir"
        ) from None


def _check_path(run_dir: Path, absolute: Path, existing: Path) -> None:
    for path in [*reversed(absolute.parents), absolute]:
        broken = _broken_link(path)
        if broken:
            raise UserError(f"run_dir {run_dir}: {path} is {broken} or choose another run_dir")
        if not path.exists():
            break
        if not path.is_dir():
            if path == absolute:
                raise UserError(f"run_dir {run_dir} is a file; choose a directory path")
            raise UserError(
                f"run_dir {run_dir}: {path} is a file, not a folder; choose another run_dir"
            )
    folder = absolute if absolute.is_dir() else existing
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(
            f"run_dir {run_dir}: no permission to write in {folder}; choose another run_dir "
            "or make it writable"
        )
    if absolute.is_dir():
        _check_contents(run_dir, absolute)


def _check_contents(run_dir: Path, absolute: Path) -> None:
    for name in RUN_FOLDERS:
        path = absolute / name
        if path.exists() and not path.is_dir():
            raise UserError(
                f"run_dir {run_dir}: {name} is a file, but the run writes a folder there; "
                "remove it or choose another run_dir"
            )
        if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
            raise UserError(
                f"run_dir {run_dir}: no permission to write in {path}; choose another run_dir "
                "or make it writable"
            )
        broken = _broken_link(path)
        if broken:
            raise UserError(f"run_dir {run_dir}: {name} is {broken} or choose another run_dir")
    for name in RUN_FILES:
        path = absolute / name
        if path.is_dir():
            raise UserError(
                f"run_dir {run_dir}: {name} is a folder, but the run writes a file there; "
                "remove it or choose another run_dir"
            )


def _broken_link(path: Path) -> str | None:
    """What is wrong with ``path`` if it is a symlink that leads nowhere, ending in the fix
    (``a symlink to X, which does not exist; create it``), else None."""
    if not path.is_symlink() or path.exists():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 raises this for a loop
        return "a symlink loop; remove it"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop; remove it"
    return f"a symlink to {os.readlink(path)}, which does not exist; create it"


def _nearest_existing(path: Path) -> Path:
    """The nearest folder at or above ``path`` that exists (the folder of a file in the way)."""
    for candidate in [path, *path.parents]:
        try:
            if candidate.is_dir():
                return candidate
            if os.path.lexists(candidate):
                return candidate.parent
        except OSError:  # a name too long for the filesystem: look higher up
            continue
    return Path(path.anchor or "/")


def _limits(folder: Path) -> tuple[int, int]:
    """``(NAME_MAX, PATH_MAX)`` of the filesystem of ``folder`` (255 and 4096 if unknown)."""
    limits = []
    for name, default in (("PC_NAME_MAX", 255), ("PC_PATH_MAX", 4096)):
        try:
            limits.append(os.pathconf(folder, name) or default)
        except (OSError, ValueError):
            limits.append(default)
    return limits[0], limits[1]


def latest_checkpoint_step(run_dir: Path) -> int | None:
    """The step of the newest complete checkpoint in ``run_dir`` (orbax renames a step's
    folder to the bare step number when it is complete), or None."""
    try:
        steps = [int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]
    except OSError:
        return None
    return max(steps, default=None)


def write_config(run_dir: Path, config: Config) -> None:
    """Writes ``config.yaml`` atomically (the marker of a run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", dump_yaml(config))


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file, so ``path`` is never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no half-written temporary file stays
        tmp.unlink(missing_ok=True)
        raise


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
