"""Deterministic infinite batch streams over in-memory domains (DESIGN: data/pipeline.py).

Each epoch of a stream is a fresh permutation that is a pure function of ``(seed, epoch)``, so a
stream's position is two integers (:meth:`ShuffledStream.get_state`) and a resumed run sees
exactly the batches it would have seen. Incomplete last batches are dropped (``drop_last``),
so every training batch has one shape and the train step compiles once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from uda_jax.data.domains import DomainData
from uda_jax.errors import UserError


class ShuffledStream:
    """Infinite stream of ``[batch_size]`` index batches into ``[0, num_examples)``.

    Each epoch is a fresh permutation from ``default_rng([seed, epoch])`` with ``drop_last``, so
    within an epoch every index appears at most once (exactly once when ``batch_size`` divides
    ``num_examples``). Its position is a small dict (:meth:`get_state`/:meth:`set_state`) and
    needs no RNG state, so a resumed run sees exactly the same batches.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, *, name: str | None = None):
        """``name`` only labels error messages (e.g. the domain the indices point into)."""
        what = "the domain" if name is None else f"the domain {name!r}"
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if batch_size > num_examples:
            raise UserError(
                f"batch size {batch_size} is larger than {what} ({num_examples} examples); "
                "lower data.batch_size"
            )
        if seed < 0:
            raise UserError(f"stream seed must be non-negative, got {seed}")
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s order: a pure function of ``(seed, epoch)``."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def next_indices(self) -> np.ndarray:
        """The next batch of indices, ``[batch_size]`` int32."""
        if self.position + self.batch_size > self.num_examples:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        batch = self._order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch.astype(np.int32)

    def get_state(self) -> dict[str, int]:
        """The position, JSON-serialisable: ``{"epoch": e, "position": p}``."""
        return {"epoch": int(self.epoch), "position": int(self.position)}

    def set_state(self, state: dict[str, int]) -> None:
        """Continues from a position returned by :meth:`get_state`.

        Raises:
          UserError: the state is malformed or does not fit this stream (e.g. a checkpoint
            written with another dataset).
        """
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"malformed stream state {state!r}: {e}") from None
        if epoch < 0 or not 0 <= position <= self.num_examples:
            raise UserError(
                f"stream state {state!r} does not fit a stream over {self.num_examples} examples"
            )
        self.epoch, self.position = epoch, position
        self._order = self._permutation(self.epoch)


class DomainPairStream:
    """Training batches: labelled source rows and target rows with their dataset indices.

    Each ``next()`` is ``{"source_image": [B, H, W, C] float32, "source_label": [B] int32,
    "target_image": [B, H, W, C] float32, "target_index": [B] int32}`` over the train splits;
    target labels never enter a training batch (``target_index`` lets pseudo-label methods
    keep per-example state). The two streams use the seeds ``2 * seed`` and ``2 * seed + 1``, so
    they are independent and no two run seeds share one.
    """

    PROCESS_LOCAL = False  # next() is the whole global batch, the same on every host

    def __init__(self, source: DomainData, target: DomainData, batch_size: int, seed: int):
        self.source, self.target = source, target
        self.source_stream = ShuffledStream(
            len(source.train_labels), batch_size, seed * 2, name=source.name
        )
        self.target_stream = ShuffledStream(
            len(target.train_labels), batch_size, seed * 2 + 1, name=target.name
        )

    def __iter__(self) -> DomainPairStream:
        """The stream itself (it is infinite)."""
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        """The next training batch (never raises ``StopIteration``)."""
        s = self.source_stream.next_indices()
        t = self.target_stream.next_indices()
        return {
            "source_image": self.source.train_images[s],
            "source_label": self.source.train_labels[s],
            "target_image": self.target.train_images[t],
            "target_index": t,
        }

    def close(self) -> None:
        """Nothing to release (the interface of the image streams, which have workers)."""

    def get_state(self) -> dict[str, dict[str, int]]:
        """Both streams' positions."""
        return {"source": self.source_stream.get_state(), "target": self.target_stream.get_state()}

    def set_state(self, state: dict[str, dict[str, int]]) -> None:
        """Continues both streams from :meth:`get_state`'s output."""
        self.source_stream.set_state(state["source"])
        self.target_stream.set_state(state["target"])


def eval_batches(
    images: np.ndarray, labels: np.ndarray | None, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None, int]]:
    """Fixed-order ``(images [B, ...], labels [B] | None, num_valid)`` batches, ``B = batch_size``.

    The last batch is padded to ``batch_size`` with copies of row 0 so one compiled function
    serves every batch; only its first ``num_valid`` rows count.
    """
    if batch_size < 1:
        raise UserError(f"evaluation batch size must be at least 1, got {batch_size}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        valid = len(chunk)
        label_chunk = None if labels is None else labels[start : start + batch_size]
        if valid < batch_size:
            pad = batch_size - valid
            chunk = np.concatenate([chunk, np.repeat(images[:1], pad, axis=0)])
            if label_chunk is not None:
                label_chunk = np.concatenate([label_chunk, np.repeat(labels[:1], pad)])
        yield chunk, label_chunk, valid
