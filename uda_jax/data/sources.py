"""One view of every kind of domain for the training loop and the evaluate command.

A domain is either in memory (:class:`~uda_jax.data.domains.DomainData`: the embedded digits
and TFDS digits) or read from image files (:class:`ImageDomainData`: Office-31, Office-Home,
VisDA, ImageCLEF, DomainNet, list and folder specs, TFDS DomainNet). The loop only calls the
functions here: :func:`load_data_domain`, :func:`pair_stream`, :func:`domain_batches`.

Image domains are transductive, as in the papers: the test split is the whole domain, the
same images the target side trains on.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterator

import numpy as np

from uda_jax.config import DataConfig
from uda_jax.data.benchmarks import data_root, resolve_image_domain
from uda_jax.data.domains import DOMAINS, DomainData, check_compatible, load_domain
from uda_jax.data.image_files import check_images
from uda_jax.data.pipeline import (
    ImageFileSource,
    PairStream,
    RandomAccessSource,
    eval_batches,
    image_eval_batches,
)
from uda_jax.data.tfds_source import TfdsSource, load_tfds_domain
from uda_jax.data.transforms import ImageTransform, eval_transform, train_transform
from uda_jax.errors import UserError, did_you_mean

TFDS_IN_MEMORY = ("mnist", "svhn_cropped")  # small TFDS digits datasets, loaded whole


@dataclasses.dataclass(frozen=True)
class ImageDomainData:
    """An image domain read lazily from ``source`` (files or TFDS), labels in memory."""

    name: str
    source: RandomAccessSource
    labels: np.ndarray
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (crop, crop, 3) after the transform

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def train_labels(self) -> np.ndarray:
        """Labels of the training images (the whole domain)."""
        return self.labels

    @property
    def test_labels(self) -> np.ndarray:
        """Labels of the test images: the whole domain (transductive)."""
        return self.labels


AnyDomain = DomainData | ImageDomainData


def _tfds_name(spec: str) -> str | None:
    return spec.removeprefix("tfds:") if spec.startswith("tfds:") else None


def load_data_domain(spec: str, data: DataConfig) -> AnyDomain:
    """The domain ``spec`` of a config: embedded, ``tfds:NAME`` or an image dataset.

    Image files are all decoded once here, so a corrupt image fails before training (or is
    dropped with ``data.skip_unreadable``, reported on stderr).

    Raises:
      UserError: unknown name, missing root or files, unreadable images, bad labels.
    """
    if spec in DOMAINS:
        return load_domain(
            spec,
            image_size=data.image_size,
            test_fraction=data.test_fraction,
            split_seed=data.split_seed,
        )
    shape = (data.crop_size, data.crop_size, 3)
    name = _tfds_name(spec)
    if name is not None:
        root = data_root(data.root) if data.root or os.environ.get("UDA_DATA_DIR") else None
        if name.split("/")[0] in TFDS_IN_MEMORY:
            return load_tfds_domain(name, image_size=data.image_size, data_dir=root)
        source = TfdsSource(name, "train", root)
        labels = np.asarray([source[i][1] for i in range(len(source))], np.int32)
        return ImageDomainData(spec, source, labels, tuple(source.class_names), shape)
    if "/" not in spec and ":" not in spec:
        valid = ", ".join([*DOMAINS, "tfds:NAME", "BENCHMARK/DOMAIN", "list:PATH", "folder:PATH"])
        hint = did_you_mean(spec, DOMAINS)
        raise UserError(f"unknown domain {spec!r}{hint}; valid domains: {valid}")
    files = resolve_image_domain(spec, data.root)
    files, skipped = check_images(files, data.skip_unreadable)
    if skipped:
        print(f"warning: domain {spec!r}: skipped {skipped} unreadable images", file=sys.stderr)
    return ImageDomainData(spec, ImageFileSource(files), files.labels, files.class_names, shape)


def training_transform(data: DataConfig) -> ImageTransform:
    """The training transform of image domains: resize → crop → random flip → normalise."""
    return train_transform(data.resize, data.crop_size, data.train_crop)


def test_transform(data: DataConfig) -> ImageTransform:
    """Deterministic resize → center crop, or (``eval_transform: train``) the training
    transform, as the CGDM scripts test."""
    if data.eval_transform == "train":
        return training_transform(data)
    return eval_transform(data.resize, data.crop_size)


def pair_stream(
    source: AnyDomain,
    target: AnyDomain,
    data: DataConfig,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> PairStream:
    """The infinite training stream over ``source`` and ``target`` (in memory, image files, or
    one of each with the same image shape): ``next()`` gives this process's rows of the global
    batch; ``get_state``/``set_state`` for checkpoints.

    Raises:
      UserError: the domains differ in classes or image shape, or the batch does not fit.
    """
    check_compatible(source, target)
    return PairStream(
        source if isinstance(source, DomainData) else source.source,
        target if isinstance(target, DomainData) else target.source,
        data.batch_size,
        seed,
        training_transform(data),
        data.num_workers,
        process_index,
        process_count,
    )


def domain_batches(
    domain: AnyDomain, split: str, data: DataConfig, rows: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Fixed-order evaluation batches ``(images, labels, num_valid)`` of ``split`` (train or
    test), optionally only the examples ``rows``."""
    if isinstance(domain, DomainData):
        images, labels = getattr(domain, f"{split}_images"), getattr(domain, f"{split}_labels")
        if rows is not None:
            images, labels = images[rows], labels[rows]
        return eval_batches(images, labels, data.eval_batch_size)
    source = domain.source if rows is None else _Rows(domain.source, rows)
    return image_eval_batches(source, data.eval_batch_size, test_transform(data))


class _Rows:
    """The examples ``rows`` of a random-access source."""

    def __init__(self, source: RandomAccessSource, rows: np.ndarray):
        self.source, self.rows = source, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.source[int(self.rows[index])]


def split_labels(domain: AnyDomain, split: str) -> np.ndarray:
    """The labels of ``split`` (train or test)."""
    return getattr(domain, f"{split}_labels")


def num_examples(domain: AnyDomain, split: str = "train") -> int:
    """How many examples ``split`` has."""
    return len(split_labels(domain, split))
