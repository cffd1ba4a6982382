"""TFDS catalog domains through ``tfds.data_source`` — random access, no TensorFlow needed.

Needs the ``tfds`` extra (``pip install "uda-jax[tfds]"``); ``tensorflow_datasets`` is imported
only here, when a ``tfds:`` domain is opened, so the rest of uda_jax runs without it.

Supported names: ``mnist``, ``svhn_cropped`` and ``domainnet/<clipart|infograph|painting|
quickdraw|real|sketch>`` (TFDS builder ``domainnet`` with one config per domain, splits
``train``/``test``). Data must already be prepared, in the ArrayRecord format (the one
``tfds.data_source`` reads at random), in ``data_dir`` (argument — a config's ``data.root`` or
``$UDA_DATA_DIR`` — else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``). Preparing it
needs the network and, for these builders, TensorFlow: once, anywhere, ``pip install tensorflow
tensorflow-datasets`` then ``tfds build mnist --file_format=array_record --data_dir DIR``, and
copy ``DIR/mnist`` (``DIR/domainnet/sketch``, ...) to the data directory. Nothing is downloaded
unless a caller of this module passes ``download=True``, and a missing dataset folder is a
:class:`UserError` at once (an offline TFDS lookup would otherwise hang for minutes trying to
reach GCS).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from uda_jax.data import transforms
from uda_jax.data.domains import DomainData
from uda_jax.errors import UserError, did_you_mean

DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
TFDS_NAMES = ("mnist", "svhn_cropped", *(f"domainnet/{d}" for d in DOMAINNET_DOMAINS))
"""The TFDS domains this module knows (``name`` or ``name/config``)."""


def tfds_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` (TFDS's default)."""
    chosen = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(chosen).expanduser()


def import_tfds(name: str) -> Any:
    """The ``tensorflow_datasets`` module (a slow import, done only when a TFDS domain is used).

    Raises:
      UserError: the ``tfds`` extra is not installed (one line that names it).
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise UserError(
            f"domain 'tfds:{name}' needs TensorFlow Datasets, which is not installed: "
            'pip install "uda-jax[tfds]"'
        ) from e
    return tfds


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


class TfdsSource:
    """Random-access TFDS split: ``source[i] -> (uint8 [H, W, C] image, int label)``.

    Picklable when the underlying TFDS source is (ArrayRecord sources are), so it can feed
    grain worker processes.
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        data_dir: str | os.PathLike | None = None,
        *,
        download: bool = False,
    ):
        if name not in TFDS_NAMES:
            raise UserError(
                f"unknown TFDS domain {name!r}{did_you_mean(name, TFDS_NAMES)}; "
                f"known: {', '.join(TFDS_NAMES)}"
            )
        tfds = import_tfds(name)
        root = tfds_data_dir(data_dir)
        if not download and not (root / name).is_dir():
            raise UserError(
                f"TFDS dataset {name!r} is not prepared under {str(root)!r} (no folder "
                f"{str(root / name)!r}): set data.root (or UDA_DATA_DIR, else TFDS_DATA_DIR) to "
                "the folder that holds it; to make it, where there is network: pip install "
                f"tensorflow tensorflow-datasets && tfds build {name} --file_format=array_record "
                f"--data_dir DIR, then copy DIR/{name} to {str(root / name)!r}"
            )
        try:
            self._source = tfds.data_source(
                name, split=split, data_dir=str(root), download=download
            )
        except (ValueError, KeyError, FileNotFoundError, AssertionError) as e:
            raise UserError(
                f"cannot open TFDS {name!r} split {split!r} in {root}: {_one_line(e)}"
            ) from e
        except NotImplementedError as e:  # prepared as TFRecord: no random access
            raise UserError(
                f"cannot open TFDS {name!r} in {root}: it is not in the ArrayRecord format that "
                f"random access needs; build it again with tfds build {name} "
                "--file_format=array_record"
            ) from e
        features = self._source.dataset_info.features
        self.name = f"{name}:{split}"
        self.class_names: tuple[str, ...] = tuple(features["label"].names)

    @property
    def num_classes(self) -> int:
        """Number of classes (from the builder's ``ClassLabel`` feature)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        example = self._source[int(index)]
        return np.asarray(example["image"], dtype=np.uint8), int(example["label"])


def load_tfds_domain(
    name: str,
    *,
    image_size: int = 32,
    data_dir: str | os.PathLike | None = None,
    train_split: str = "train",
    test_split: str = "test",
    max_examples: int | None = None,
    download: bool = False,
) -> DomainData:
    """A small TFDS domain (digits) in memory as :class:`DomainData`: images resized (PIL
    bilinear) to ``image_size`` × ``image_size``, grey repeated to RGB, float32 in [−1, 1],
    read by :class:`~uda_jax.data.pipeline.PairStream` as rows, with no decode.

    ``max_examples`` keeps the first examples of each split (quick experiments).
    """
    splits = []
    for split in (train_split, test_split):
        source = TfdsSource(name, split, data_dir, download=download)
        count = len(source) if max_examples is None else min(len(source), max_examples)
        images = np.empty((count, image_size, image_size, 3), np.float32)
        labels = np.empty((count,), np.int32)
        for i in range(count):
            image, labels[i] = source[i]
            image = transforms.resize(transforms.to_rgb(image), (image_size, image_size))
            images[i] = image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        splits += [images, labels]
    return DomainData(name, *splits, class_names=source.class_names)
