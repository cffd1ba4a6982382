"""Orbax checkpoints of a run: train state, data-stream position and metadata.

A checkpoint is one orbax step directory ``<run_dir>/checkpoints/<step>`` holding three items:

- ``state``: the :class:`~uda_jax.state.TrainState` (parameters, BatchNorm statistics, optimizer
  states, pseudo-labels, the PRNG key as raw key data, method extras);
- ``data``: the position of the training batch streams (JSON), so a resumed run sees exactly the
  batches it would have seen;
- ``meta``: JSON with the step, the latest evaluation metrics, the SHA-256 of every saved
  array, and the config fields that change the numbers (with their hash).

Orbax writes each step to a temporary directory and renames it when complete, so a save that is
killed half-way is never listed. Every restore recomputes the arrays' checksums and compares
them, and the config fields with those of the run that restores: a damaged checkpoint or one of
another experiment is never used silently. Resuming skips a damaged newest checkpoint with a
warning and uses the previous one; a foreign config stops with the fields that differ.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from uda_jax import validators
from uda_jax.config import CheckpointConfig
from uda_jax.errors import UserError
from uda_jax.state import TrainState

PyTree = Any

# orbax logs every save at INFO through absl; the run's own console output is enough.
logging.getLogger("absl").setLevel(logging.WARNING)


@dataclasses.dataclass(frozen=True)
class Restored:
    """What a resumed run continues from."""

    step: int
    state: TrainState
    data_state: dict[str, Any]
    meta: dict[str, Any]


def _to_tree(state: TrainState) -> dict[str, PyTree]:
    """The state as a plain dict with the PRNG key as raw ``uint32`` data (orbax saves arrays)."""
    tree = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    tree["key"] = jax.random.key_data(state.key)
    return tree


def _from_tree(tree: dict[str, PyTree], like: TrainState) -> TrainState:
    """Inverse of :func:`_to_tree`, with ``like``'s key implementation."""
    key = jax.random.wrap_key_data(tree["key"], impl=jax.random.key_impl(like.key))
    return TrainState(**{**tree, "key": key})


def _host_copy(x: Any) -> np.ndarray:
    """The value of a (replicated) array on this host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.ascontiguousarray(np.asarray(x))


def checksums(tree: PyTree) -> dict[str, str]:
    """SHA-256 of every array of ``tree`` (its bytes, dtype and shape), by tree path."""
    sums = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = _host_copy(leaf)
        digest = hashlib.sha256(f"{value.dtype}{value.shape}".encode())
        digest.update(value.tobytes())
        sums[jax.tree_util.keystr(path)] = digest.hexdigest()
    return sums


def identity_hash(identity: dict[str, Any]) -> str:
    """SHA-256 of the config fields that change the numbers."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _differences(saved: Any, current: Any, where: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts."""
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = sorted(set(saved) | set(current))
        return [d for k in keys for d in _differences(saved.get(k), current.get(k), f"{where}{k}.")]
    return [] if saved == current else [where.rstrip(".")]


class ConfigMismatch(UserError):
    """A checkpoint of another experiment: resuming or evaluating it would be wrong."""


def _abstract(tree: PyTree) -> PyTree:
    """Shape, dtype and sharding of every array: the target a restore fills in."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def best_selection(config: CheckpointConfig) -> dict[str, Any] | None:
    """What ``keep_best`` ranks by (``by``: the criterion, ``metric``: its evaluation metric,
    ``higher_is_better``), or None when ``keep_best`` is off."""
    if not config.keep_best:
        return None
    return {
        "by": config.best_by,
        "metric": validators.metric_name(config.best_by),
        "higher_is_better": validators.DEFINITIONS[config.best_by].higher_is_better,
    }


def _selection_metrics(eval_metrics: dict[str, Any]) -> dict[str, float | None]:
    """The evaluation metrics a checkpoint is ranked by: the target accuracy and every logged
    validator (so a resumed run with another ``best_by`` ranks the same checkpoints); empty
    before the first evaluation (such a checkpoint ranks last)."""
    names = (validators.ORACLE_METRIC, *(validators.metric_name(v) for v in validators.VALIDATORS))
    found = {k: float(eval_metrics[k]) for k in names if k in eval_metrics}
    return {k: v if math.isfinite(v) else None for k, v in found.items()}


def _rank_value(metrics: dict[str, Any], *, metric: str, higher_is_better: bool) -> float:
    """A checkpoint's value of ``metric``; missing or not finite, the worst possible one."""
    value = metrics.get(metric)
    if value is None or not math.isfinite(value):
        return -math.inf if higher_is_better else math.inf
    return float(value)


class Checkpointer:
    """Saves and restores a run's checkpoints in ``directory``.

    Keeps the latest ``config.keep`` steps and, with ``config.keep_best``, also the step whose
    metadata holds the best value of ``config.best_by``: a validator's ``eval/validator/<name>``
    or, for ``oracle``, ``eval/target_accuracy`` (higher or lower is better as the criterion's
    :data:`~uda_jax.validators.DEFINITIONS` entry says). Every checkpoint's metadata records
    that choice under ``keep_best`` (null when none is kept).

    ``identity``: the config fields that change the numbers
    (:func:`uda_jax.run_dir.training_fields`), written with every save and checked by every
    restore (None: not checked). ``read_only``: never create, clean or write anything (what
    ``evaluate`` uses next to a running training).
    """

    def __init__(
        self,
        directory: Path,
        config: CheckpointConfig,
        *,
        identity: dict[str, Any] | None = None,
        read_only: bool = False,
    ):
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=config.keep)]
        self.best = best_selection(config)
        best: dict[str, Any] = {}
        if self.best is not None:
            rank = functools.partial(
                _rank_value,
                metric=self.best["metric"],
                higher_is_better=self.best["higher_is_better"],
            )
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=rank,
                    reverse=not self.best["higher_is_better"],
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
            # a best_fn makes orbax write each step's metrics and read them back when the run
            # resumes; without it the best step of before the restart would be dropped
            best = {"best_fn": rank, "best_mode": "max" if self.best["higher_is_better"] else "min"}
        self.directory = Path(directory).absolute()
        self.identity = identity
        absl = logging.getLogger("absl")
        level = absl.level
        if read_only:  # orbax warns that a read-only manager is read-only
            absl.setLevel(logging.ERROR)
        try:
            options = ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
                create=not read_only,
                cleanup_tmp_directories=not read_only,
                read_only=read_only,
                **best,
            )
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "data", "meta")
            )
        finally:
            absl.setLevel(level)

    def steps(self) -> list[int]:
        """Complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def best_step(self) -> int | None:
        """The checkpoint ``keep_best`` keeps: the best by ``best_by`` (the newest of equals;
        one saved before any evaluation ranks last), or None when ``keep_best`` is off or no
        checkpoint holds metrics (none saved, or saved by an older uda-jax)."""
        if self.best is None:
            return None
        metric, higher = self.best["metric"], self.best["higher_is_better"]
        ranked = []
        for step in self.steps():
            metrics = self._manager.metrics(step)
            if metrics is not None:
                value = _rank_value(metrics, metric=metric, higher_is_better=higher)
                ranked.append((value if higher else -value, step))
        return max(ranked)[1] if ranked else None

    def save(
        self, step: int, state: TrainState, data_state: dict[str, Any], meta: dict[str, Any]
    ) -> None:
        """Writes checkpoint ``step`` (replacing one of the same step); returns when durable."""
        if step in self._manager.all_steps():
            self._manager.delete(step)
        tree = _to_tree(state)
        proof: dict[str, Any] = {"checksums": checksums(tree), "keep_best": self.best}
        if self.identity is not None:
            proof |= {"config": self.identity, "config_hash": identity_hash(self.identity)}
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave({**meta, **proof, "step": step}),
            ),
            metrics=_selection_metrics(meta["eval"]),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(self, step: int, like: TrainState) -> Restored:
        """Checkpoint ``step`` into arrays shaped and sharded like ``like``.

        Raises:
          UserError: the checkpoint cannot be read, does not fit ``like``, or its arrays differ
            from their checksums (damaged).
          ConfigMismatch: it was saved by a run whose number-changing config fields differ.
        """
        where = self.directory / str(step)
        meta = self._read(step, where, meta=ocp.args.JsonRestore()).meta
        self._check_identity(step, meta)
        out = self._read(
            step,
            where,
            state=ocp.args.StandardRestore(_abstract(_to_tree(like))),
            data=ocp.args.JsonRestore(),
        )
        self._check_checksums(where, out.state, meta)
        return Restored(step, _from_tree(out.state, like), out.data, meta)

    def _read(self, step: int, where: Path, **items: Any) -> Any:
        """Restores the named items of checkpoint ``step``; any failure is one UserError line."""
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # orbax raises many types for unreadable or mismatched data
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            what = "its metadata" if set(items) == {"meta"} else "its arrays"
            raise UserError(
                f"checkpoint {where} is damaged or incompatible: {what} cannot be read "
                f"({first[:160]})"
            ) from None

    def _check_identity(self, step: int, meta: dict[str, Any]) -> None:
        """Refuses a checkpoint saved by a run whose number-changing config fields differ."""
        if self.identity is not None and meta.get("config_hash") != identity_hash(self.identity):
            fields = _differences(meta.get("config", {}), self.identity)
            raise ConfigMismatch(
                f"checkpoint of step {step} in {self.directory} belongs to another experiment "
                f"(config fields that differ: {', '.join(fields[:8]) or 'unknown'}); "
                "use the same config or another run_dir"
            )

    @staticmethod
    def _check_checksums(where: Path, tree: PyTree, meta: dict[str, Any]) -> None:
        """Refuses arrays whose SHA-256 differs from the one saved with them."""
        saved = meta.get("checksums")
        if saved is None:
            raise UserError(f"checkpoint {where} has no checksums (written by an older uda-jax)")
        actual = checksums(tree)
        damaged = sorted(k for k, v in actual.items() if saved.get(k) != v)
        if damaged or set(saved) != set(actual):
            first = damaged[0] if damaged else "the set of arrays"
            raise UserError(f"checkpoint {where} is damaged: {first} differs from its checksum")

    def restore_latest(self, like: TrainState) -> Restored | None:
        """The newest checkpoint that can be read, or None when there is none.

        A damaged newer checkpoint is skipped with a warning on stderr.

        Raises:
          UserError: checkpoints exist but none can be restored.
        """
        steps = self.steps()
        errors = []
        for step in reversed(steps):
            try:
                return self.restore(step, like)
            except ConfigMismatch:
                raise
            except UserError as err:
                errors.append(str(err))
                print(f"warning: {err}; trying an older checkpoint", file=sys.stderr)
        if errors:
            raise UserError(errors[0])
        return None

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
