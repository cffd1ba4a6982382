"""grain input pipelines for image domains: training pairs and evaluation batches.

Every training batch is a pure function of ``(seed, step)``: epoch ``e`` of a stream is the
permutation ``default_rng([stream_seed, e])`` with ``drop_last`` (exactly the order of
:class:`~uda_jax.data.pipeline.ShuffledStream`, so image and in-memory runs index alike), and
example ``i`` of epoch ``e`` is transformed with ``default_rng([stream_seed, e, i, 1])``. So the
position of a stream is one integer (the step), a resumed run sees exactly the batches it would
have seen, and neither worker processes, threads nor the number of hosts change the data: host
``p`` of ``P`` decodes rows ``[p·B/P, (p+1)·B/P)`` of global batch ``step``.

grain does the work: ``MapDataset.range`` over host-local example slots → ``map`` (decode,
transform) → ``batch`` → ``to_iter_dataset`` (reader threads) → ``mp_prefetch`` (worker
processes, which slice the batches round-robin and give them back in order).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any, Protocol

import grain
import numpy as np

from uda_jax.data.image_files import ImageDomain
from uda_jax.data.transforms import ImageTransform, decode_rgb
from uda_jax.errors import UserError


class RandomAccessSource(Protocol):
    """What the pipelines read: ``len(source)`` and ``source[i] -> (uint8 [H, W, C], label)``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]: ...


class ImageFileSource:
    """An :class:`ImageDomain` as a random-access source: decodes ``paths[i]`` to RGB uint8."""

    def __init__(self, domain: ImageDomain):
        self.domain = domain
        self.name = domain.name
        self.class_names = domain.class_names

    def __len__(self) -> int:
        return len(self.domain)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        index = int(index)
        try:
            image = decode_rgb(self.domain.paths[index])
        except Exception as e:
            raise UserError(
                f"cannot read image {self.domain.where(index)}: {e} "
                "(check the domain's images before training)"
            ) from e
        return image, int(self.domain.labels[index])


def as_source(data: ImageDomain | RandomAccessSource) -> RandomAccessSource:
    """An :class:`ImageDomain` wrapped as :class:`ImageFileSource`; other sources unchanged."""
    return ImageFileSource(data) if isinstance(data, ImageDomain) else data


_UNBOUNDED = sys.maxsize // 4
"""Length of the "infinite" index range (grain datasets need a length)."""


def _mark_flags_parsed() -> None:
    """grain's worker processes read absl flags (``grain_*``), which raise if the program never
    parsed flags (no ``absl.app``); mark them parsed so the defaults apply."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class _EpochOrder:
    """Which example a stream reads at a global position: epochs of ``default_rng([seed, e])``
    permutations with ``drop_last``; the last two epochs' permutations are cached."""

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.batches_per_epoch = num_examples // batch_size
        self._cache: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": {}}

    def locate(self, step: int, row: int) -> tuple[int, int]:
        """``(epoch, example index)`` of row ``row`` of global batch ``step``."""
        epoch, within = divmod(step, self.batches_per_epoch)
        order = self._cache.get(epoch)
        if order is None:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = order
        return epoch, int(order[within * self.batch_size + row])


class _PairExample:
    """Slot ``k`` of this host's stream → one transformed source and target example."""

    def __init__(self, source, target, batch_size, local_batch, process_index, seed, transform):
        self.source, self.target, self.transform = source, target, transform
        self.local_batch, self.offset = local_batch, process_index * local_batch
        self.source_order = _EpochOrder(len(source), batch_size, 2 * seed)
        self.target_order = _EpochOrder(len(target), batch_size, 2 * seed + 1)

    def _example(self, data, order: _EpochOrder, step: int, row: int):
        epoch, index = order.locate(step, row)
        image, label = data[index]
        rng = np.random.default_rng([order.seed, epoch, index, 1])
        return self.transform(image, rng), label, index

    def __call__(self, slot: int) -> dict[str, np.ndarray]:
        step, row = divmod(int(slot), self.local_batch)
        row += self.offset
        source_image, source_label, _ = self._example(self.source, self.source_order, step, row)
        target_image, _, target_index = self._example(self.target, self.target_order, step, row)
        return {
            "source_image": source_image,
            "source_label": np.int32(source_label),
            "target_image": target_image,
            "target_index": np.int32(target_index),
        }


class ImagePairStream:
    """Training batches from two image sources, with the interface of
    :class:`~uda_jax.data.pipeline.DomainPairStream`.

    ``next()`` gives this host's ``batch_size // process_count`` rows of the global batch:
    ``{"source_image": [b, h, w, 3] float32, "source_label": [b] int32, "target_image",
    "target_index": [b] int32}``. Shuffle seeds are ``2·seed`` (source) and ``2·seed + 1``
    (target), as in ``DomainPairStream``. ``get_state()`` is a small JSON-serialisable dict.
    ``num_workers > 0`` decodes in that many worker processes (the sources and transform must
    be picklable); ``num_threads`` reader threads per process. Call :meth:`close` (or use
    ``with``) to stop the workers.
    """

    PROCESS_LOCAL = True  # next() is only this host's rows of the global batch

    def __init__(
        self,
        source: ImageDomain | RandomAccessSource,
        target: ImageDomain | RandomAccessSource,
        batch_size: int,
        seed: int,
        train_transform: ImageTransform,
        num_workers: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        *,
        num_threads: int = 2,
        prefetch: int = 4,
    ):
        self.source, self.target = as_source(source), as_source(target)
        for data in (self.source, self.target):
            what = getattr(data, "name", "a domain")
            if batch_size < 1 or batch_size > len(data):
                raise UserError(
                    f"batch size {batch_size} must be in [1, {len(data)}] (the size of "
                    f"{what!r}); lower data.batch_size"
                )
        if seed < 0:
            raise UserError(f"stream seed must be non-negative, got {seed}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if batch_size % process_count:
            raise UserError(
                f"batch size {batch_size} is not divisible by the {process_count} processes"
            )
        if num_workers < 0:
            raise UserError(f"data.num_workers must be non-negative, got {num_workers}")
        self.batch_size, self.seed = batch_size, seed
        self.local_batch = batch_size // process_count
        self.num_workers, self.num_threads, self.prefetch = num_workers, num_threads, prefetch
        self._example = _PairExample(
            self.source,
            self.target,
            batch_size,
            self.local_batch,
            process_index,
            seed,
            train_transform,
        )
        self.step = 0
        self._iterator: Iterator | None = None

    def _start(self) -> Iterator:
        """A grain iterator whose first batch is global batch ``self.step``."""
        b = self.local_batch
        dataset = (
            grain.MapDataset.range(self.step * b, (_UNBOUNDED // b) * b)
            .map(self._example)
            .batch(b, drop_remainder=True)
            .to_iter_dataset(
                grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=self.prefetch)
            )
        )
        if self.num_workers > 0:
            _mark_flags_parsed()
            dataset = dataset.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=self.num_workers)
            )
        return iter(dataset)

    def __iter__(self) -> ImagePairStream:
        """The stream itself (it is infinite)."""
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        """The next training batch (never raises ``StopIteration``)."""
        if self._iterator is None:
            self._iterator = self._start()
        batch = next(self._iterator)
        self.step += 1
        return batch

    def get_state(self) -> dict[str, int]:
        """The position (batches consumed) and what it is valid for, JSON-serialisable."""
        return {
            "step": int(self.step),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "source_size": len(self.source),
            "target_size": len(self.target),
        }

    def set_state(self, state: dict[str, int]) -> None:
        """Continues from :meth:`get_state`'s output (also one saved with another host count).

        Raises:
          UserError: malformed state, or one written for other data, batch size or seed.
        """
        try:
            step = int(state["step"])
            saved = {k: int(state[k]) for k in ("batch_size", "seed", "source_size", "target_size")}
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"malformed image stream state {state!r}: {e}") from None
        current = self.get_state()
        for key, value in saved.items():
            if value != current[key]:
                raise UserError(
                    f"image stream state has {key}={value} but this run has {current[key]}; "
                    "it was saved with other data or settings"
                )
        if step < 0:
            raise UserError(f"image stream state has a negative step {step}")
        self.close()
        self.step = step

    def close(self) -> None:
        """Stops the reader threads and worker processes (a later ``next`` restarts them)."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None

    def __enter__(self) -> ImagePairStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _EvalExample:
    """Index → transformed image and label; random eval transforms seeded by the index."""

    def __init__(self, source, transform: ImageTransform, seed: int):
        self.source, self.transform, self.seed = source, transform, seed

    def __call__(self, index: int) -> tuple[np.ndarray, np.int32]:
        image, label = self.source[int(index)]
        rng = np.random.default_rng([self.seed, int(index), 2])
        return self.transform(image, rng), np.int32(label)


def image_eval_batches(
    source: ImageDomain | RandomAccessSource,
    batch_size: int,
    eval_transform: ImageTransform,
    *,
    seed: int = 0,
    num_threads: int = 2,
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Fixed-order ``(images [B, h, w, 3], labels [B] int32, num_valid)`` batches, like
    :func:`~uda_jax.data.pipeline.eval_batches`: the last batch is padded with copies of example
    0 and only its first ``num_valid`` rows count. A stochastic ``eval_transform`` (the CGDM
    test transform) draws from ``default_rng([seed, index, 2])``, so evaluation repeats exactly.
    """
    if batch_size < 1:
        raise UserError(f"evaluation batch size must be at least 1, got {batch_size}")
    source = as_source(source)
    n = len(source)
    padded = -(-n // batch_size) * batch_size
    indices = np.concatenate([np.arange(n), np.zeros(padded - n, np.int64)])
    dataset = (
        grain.MapDataset.source(indices)
        .map(_EvalExample(source, eval_transform, seed))
        .batch(batch_size)
        .to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4))
    )
    for k, (images, labels) in enumerate(dataset):
        yield images, labels, min(batch_size, n - k * batch_size)
