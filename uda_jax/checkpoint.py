"""Orbax checkpoints of a run: train state, data-stream position and metadata.

A checkpoint is one orbax step directory ``<run_dir>/checkpoints/<step>`` holding three items:

- ``state``: the :class:`~uda_jax.state.TrainState` (parameters, BatchNorm statistics, optimizer
  states, pseudo-labels, the PRNG key as raw key data, method extras);
- ``data``: the position of the training batch streams (JSON), so a resumed run sees exactly the
  batches it would have seen;
- ``meta``: JSON with the step, the latest evaluation metrics and the config hash.

Orbax writes each step to a temporary directory and renames it when complete, so a save that is
killed half-way is never listed. A step directory that is listed but cannot be read (damaged
afterwards) is skipped with a warning and the previous one is used.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from uda_jax.config import CheckpointConfig
from uda_jax.errors import UserError
from uda_jax.state import TrainState

PyTree = Any
BEST_METRIC = "eval/target_accuracy"

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


def _abstract(tree: PyTree) -> PyTree:
    """Shape, dtype and sharding of every array: the target a restore fills in."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    """Saves and restores a run's checkpoints in ``directory``.

    Keeps the latest ``config.keep`` steps and, with ``config.keep_best``, also the step with
    the best target accuracy in its metadata.
    """

    def __init__(self, directory: Path, config: CheckpointConfig):
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=config.keep)]
        if config.keep_best:
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=lambda metrics: metrics[BEST_METRIC],
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            create=True,
            cleanup_tmp_directories=True,
        )
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "meta")
        )

    def steps(self) -> list[int]:
        """Complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(
        self, step: int, state: TrainState, data_state: dict[str, Any], meta: dict[str, Any]
    ) -> None:
        """Writes checkpoint ``step`` (replacing one of the same step); returns when durable."""
        if step in self._manager.all_steps():
            self._manager.delete(step)
        metrics = {BEST_METRIC: meta["eval"][BEST_METRIC]} if BEST_METRIC in meta["eval"] else None
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_tree(state)),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave({**meta, "step": step}),
            ),
            metrics=metrics,
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(self, step: int, like: TrainState) -> Restored:
        """Checkpoint ``step`` into arrays shaped and sharded like ``like``.

        Raises:
          UserError: the checkpoint cannot be read or does not fit ``like`` (another config).
        """
        try:
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_abstract(_to_tree(like))),
                    data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as err:  # orbax raises many types for unreadable or mismatched data
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(
                f"checkpoint {self.directory / str(step)} cannot be restored: {first[:300]}"
            ) from None
        return Restored(step, _from_tree(out.state, like), out.data, out.meta)

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
