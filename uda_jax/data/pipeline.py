"""The grain input pipeline of every domain: training pairs and fixed-order evaluation batches.

Global training batch ``step`` is a pure function of ``(seed, step)``: epoch ``e`` of a stream is
the permutation ``default_rng([stream_seed, e])`` with ``drop_last`` (stream seeds ``2·seed`` for
the source and ``2·seed + 1`` for the target), and an example of an image source is transformed
with ``default_rng([stream_seed, e, index, 1])``. So a stream's position is one integer, a
resumed run sees exactly the batches it would have seen, and neither worker processes, threads
nor the number of hosts change the data: host ``p`` of ``P`` loads rows ``[p·B/P, (p+1)·B/P)``.

grain does the work: ``MapDataset.range`` over batch numbers → ``map`` (read this host's rows of
both domains) → ``to_iter_dataset`` (reader threads) → ``mp_prefetch`` (worker processes, only
when something is decoded). In-memory domains (:class:`ArraySource`) are read a batch of rows
at a time with no decode or transform; image sources decode and transform each example.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any, Protocol

import grain
import numpy as np

from uda_jax.data.domains import DomainData
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


class ArraySource:
    """Images already in memory (float32 ``[N, H, W, C]``) and int32 labels ``[N]``: rows are
    read as they are, a whole batch at once, with no decode or transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str = "arrays"):
        self.images = np.asarray(images, np.float32)
        self.labels = np.asarray(labels, np.int32)
        self.name = name
        if self.images.ndim != 4 or self.labels.shape != self.images.shape[:1]:
            raise UserError(
                f"{name!r}: images must be [N, H, W, C] and labels [N], got "
                f"{self.images.shape} and {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])


def as_source(data: DomainData | ImageDomain | RandomAccessSource) -> RandomAccessSource:
    """A domain as a source: the train split of a :class:`DomainData` as :class:`ArraySource`,
    an :class:`ImageDomain` as :class:`ImageFileSource`; sources unchanged."""
    if isinstance(data, DomainData):
        return ArraySource(data.train_images, data.train_labels, data.name)
    return ImageFileSource(data) if isinstance(data, ImageDomain) else data


_UNBOUNDED = sys.maxsize // 4
"""Length of the "infinite" range of batch numbers (grain datasets need a length)."""


def _mark_flags_parsed() -> None:
    """grain's worker processes read absl flags (``grain_*``), which raise if the program never
    parsed flags (no ``absl.app``); mark them parsed so the defaults apply."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class _Side:
    """One domain of a pair stream: its epoch order and how it reads rows of a batch."""

    def __init__(self, data, batch_size: int, seed: int, transform: ImageTransform | None):
        self.data, self.batch_size, self.seed, self.transform = data, batch_size, seed, transform
        self.batches_per_epoch = len(data) // batch_size
        self._orders: dict[int, np.ndarray] = {}  # a few recent epochs' permutations

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_orders": {}}

    def _order(self, epoch: int) -> np.ndarray:
        order = self._orders.get(epoch)
        if order is None:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
            # replaced whole, never mutated: reader threads share it
            kept = {e: o for e, o in self._orders.items() if abs(e - epoch) <= 1}
            self._orders = {**kept, epoch: order}
        return order

    def read(self, step: int, rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(images, labels, indices)`` of the rows ``rows`` of global batch ``step``."""
        epoch, within = divmod(step, self.batches_per_epoch)
        start = within * self.batch_size
        indices = self._order(epoch)[start + rows.start : start + rows.stop].astype(np.int32)
        if isinstance(self.data, ArraySource):
            return self.data.images[indices], self.data.labels[indices], indices
        images, labels = [], []
        for index in indices.tolist():
            image, label = self.data[index]
            rng = np.random.default_rng([self.seed, epoch, index, 1])
            images.append(self.transform(image, rng))
            labels.append(label)
        return np.stack(images), np.asarray(labels, np.int32), indices


class _PairBatch:
    """Global batch number → this host's rows of both domains."""

    def __init__(self, source: _Side, target: _Side, rows: slice):
        self.source, self.target, self.rows = source, target, rows

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        source_image, source_label, _ = self.source.read(int(step), self.rows)
        target_image, _, target_index = self.target.read(int(step), self.rows)
        return {
            "source_image": source_image,
            "source_label": source_label,
            "target_image": target_image,
            "target_index": target_index,
        }


class PairStream:
    """The infinite training stream of a source and a target domain, in memory or image files.

    ``next()`` gives this host's ``batch_size // process_count`` rows of the global batch:
    ``{"source_image": [b, H, W, C] float32, "source_label": [b] int32, "target_image",
    "target_index": [b] int32}`` over the train splits. Target labels never enter a batch
    (``target_index`` lets pseudo-label methods keep per-example state). ``train_transform``
    turns the uint8 images of image sources into float32 (it is not applied to in-memory
    domains). ``num_workers > 0`` decodes in that many worker processes (the sources and
    transform must be picklable), ``num_threads`` reader threads per process; both are unused
    when the two domains are in memory. ``get_state()`` is a small JSON-serialisable dict.
    Call :meth:`close` (or use ``with``) to stop the threads and workers.
    """

    def __init__(
        self,
        source: DomainData | ImageDomain | RandomAccessSource,
        target: DomainData | ImageDomain | RandomAccessSource,
        batch_size: int,
        seed: int,
        train_transform: ImageTransform | None = None,
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
            if train_transform is None and not isinstance(data, ArraySource):
                raise ValueError(f"the image source {what!r} needs a train_transform")
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
        in_memory = all(isinstance(d, ArraySource) for d in (self.source, self.target))
        self.batch_size, self.seed, self.process_count = batch_size, seed, process_count
        # rows of arrays take microseconds: no workers or reader threads for them
        self.num_workers = 0 if in_memory else num_workers
        self.num_threads = 0 if in_memory else num_threads
        self.prefetch = prefetch
        local = batch_size // process_count
        self.rows = slice(process_index * local, (process_index + 1) * local)  # of each batch
        self._batch = _PairBatch(
            _Side(self.source, batch_size, 2 * seed, train_transform),
            _Side(self.target, batch_size, 2 * seed + 1, train_transform),
            self.rows,
        )
        self.step = 0
        self._iterator: Iterator | None = None

    @property
    def PROCESS_LOCAL(self) -> bool:
        """Whether ``next()`` is only this host's rows (several processes) or the whole batch."""
        return self.process_count > 1

    def _start(self) -> Iterator:
        """A grain iterator whose first batch is global batch ``self.step``."""
        dataset = (
            grain.MapDataset.range(self.step, _UNBOUNDED)
            .map(self._batch)
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

    def __iter__(self) -> PairStream:
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
        """The position (batches consumed) and what it is valid for, JSON-serialisable; the
        same on every host."""
        return {
            "step": int(self.step),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "source_size": len(self.source),
            "target_size": len(self.target),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from :meth:`get_state`'s output (also one saved with another host count,
        or by the earlier in-memory stream: ``{"source"|"target": {"epoch", "position"}}``).

        Raises:
          UserError: malformed state, or one written for other data, batch size or seed.
        """
        brief = repr(state)[:200]
        try:
            if isinstance(state, dict) and set(state) == {"source", "target"}:
                step = self._legacy_step(state)
                saved = {}
            else:
                step = _integer(state["step"])
                keys = ("batch_size", "seed", "source_size", "target_size")
                saved = {k: _integer(state[k]) for k in keys}
        except (KeyError, TypeError, ValueError) as e:
            detail = f"no key {e}" if isinstance(e, KeyError) else e
            raise UserError(f"malformed data stream state {brief}: {detail}") from None
        current = self.get_state()
        for key, value in saved.items():
            if value != current[key]:
                raise UserError(
                    f"data stream state has {key}={value} but this run has {current[key]}; "
                    "it was saved with other data or settings"
                )
        if step < 0:
            raise UserError(f"data stream state has a negative step {step}")
        self.close()
        self.step = step

    def _legacy_step(self, state: dict[str, Any]) -> int:
        """The step of a state of the earlier in-memory stream (one epoch and position per
        domain, both streams having given the same number of batches)."""
        steps = []
        for side, data in (("source", self.source), ("target", self.target)):
            epoch, position = _integer(state[side]["epoch"]), _integer(state[side]["position"])
            per_epoch = len(data) // self.batch_size
            if epoch < 0 or position % self.batch_size or not 0 <= position <= len(data):
                raise ValueError(f"{side} position {position} does not fit this run")
            steps.append(epoch * per_epoch + position // self.batch_size)
        if steps[0] != steps[1]:
            raise ValueError(f"source and target positions disagree ({steps[0]} vs {steps[1]})")
        return steps[0]

    def close(self) -> None:
        """Stops the reader threads and worker processes (a later ``next`` restarts them)."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None

    def __enter__(self) -> PairStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"expected an integer, got {value!r}")
    return int(value)


def eval_batches(
    images: np.ndarray, labels: np.ndarray | None, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None, int]]:
    """Fixed-order ``(images [B, ...], labels [B] | None, num_valid)`` batches of in-memory
    arrays, ``B = batch_size``.

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
    """Fixed-order ``(images [B, h, w, 3], labels [B] int32, num_valid)`` batches of an image
    source, padded like :func:`eval_batches`. A stochastic ``eval_transform`` (the CGDM test
    transform) draws from ``default_rng([seed, index, 2])``, so evaluation repeats exactly.
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
