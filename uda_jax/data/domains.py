"""In-memory domains: the registry (a name → its train/test images and labels) and
:func:`from_arrays` for arrays of one's own."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from uda_jax.data import embedded
from uda_jax.errors import UserError, did_you_mean


@dataclasses.dataclass(frozen=True)
class DomainData:
    """One domain in memory: ``*_images [N, H, W, C]`` float32, ``*_labels [N]`` int32.

    ``class_names[k]`` names label ``k``; source and target of a run share the label space.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """``(H, W, C)``."""
        return tuple(self.train_images.shape[1:])


def _embedded(name: str, image_size: int, test_fraction: float, split_seed: int) -> DomainData:
    """An embedded domain (:mod:`uda_jax.data.embedded`) as :class:`DomainData`."""
    arrays = embedded.load_embedded(name, image_size, test_fraction, split_seed)
    return DomainData(name, *arrays, class_names=embedded.CLASS_NAMES)


DOMAINS: dict[str, Callable[..., DomainData]] = {
    name: functools.partial(_embedded, name) for name in embedded.RAW_LOADERS
}
"""Name → ``loader(image_size, test_fraction, split_seed)``; use :func:`load_domain`."""


def load_domain(
    name: str, *, image_size: int = 32, test_fraction: float = 0.2, split_seed: int = 0
) -> DomainData:
    """Loads and validates domain ``name``: images ``[N, image_size, image_size, C]`` float32
    in [−1, 1], a seeded stratified train/test split (``test_fraction`` of each class to test).

    Raises:
      UserError: unknown name (with the closest valid one), impossible size or split settings
        (``image_size < 8``, ``test_fraction`` outside (0, 1), a negative seed), or data
        that is empty, has labels outside ``[0, num_classes)`` or non-finite pixels.
    """
    if name not in DOMAINS:
        hint = did_you_mean(name, DOMAINS)
        raise UserError(f"unknown domain {name!r}{hint}; valid domains: {', '.join(DOMAINS)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer):
        raise UserError(f"data.image_size must be an integer, got {image_size!r}")
    if image_size < 8:
        raise UserError(f"data.image_size must be at least 8, got {image_size}")
    if not isinstance(test_fraction, int | float | np.floating) or not 0 < test_fraction < 1:
        raise UserError(f"data.test_fraction must be in (0, 1), got {test_fraction!r}")
    if (
        isinstance(split_seed, bool)
        or not isinstance(split_seed, int | np.integer)
        or split_seed < 0
    ):
        raise UserError(f"data.split_seed must be a non-negative integer, got {split_seed!r}")
    domain = DOMAINS[name](int(image_size), float(test_fraction), int(split_seed))
    validate_domain(domain)
    return domain


def from_arrays(
    name: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    class_names: tuple[str, ...] | list[str] | None = None,
) -> DomainData:
    """A domain from arrays in memory, for experiments on data of one's own.

    Images are float ``[N, H, W, C]`` (stored as float32, used as they are: scale them as the
    model expects), labels integers in ``[0, num_classes)``; ``class_names`` default to
    ``"0"`` … ``"K-1"`` with ``K`` the largest label + 1. The test split defaults to the train
    split.

    Raises:
      UserError: non-float images, non-integer labels, a test split without its labels (or the
        reverse), mismatched lengths or shapes, labels out of range, NaN or inf pixels.
    """
    if (test_images is None) != (test_labels is None):
        raise UserError(f"domain {name!r}: give both test_images and test_labels, or neither")
    if test_images is None:
        test_images, test_labels = train_images, train_labels
    arrays = [np.asarray(a) for a in (train_images, train_labels, test_images, test_labels)]
    for split, images, labels in (("train", *arrays[:2]), ("test", *arrays[2:])):
        if not np.issubdtype(images.dtype, np.floating):
            raise UserError(f"domain {name!r}: {split} images must be float, got {images.dtype}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"domain {name!r}: {split} labels must be integers, got {labels.dtype}")
    if class_names is None:
        top = max((int(a.max()) for a in arrays[1::2] if a.size), default=-1)
        class_names = range(top + 1)
    domain = DomainData(name, *arrays, class_names=tuple(str(c) for c in class_names))
    validate_domain(domain)  # before the casts: a large label must not wrap into range
    return DomainData(
        name,
        *(a.astype(np.float32 if k % 2 == 0 else np.int32) for k, a in enumerate(arrays)),
        class_names=domain.class_names,
    )


def validate_domain(domain: DomainData) -> None:
    """Raises :class:`UserError` for an empty split, a malformed array, a bad label or a
    non-finite pixel — checked once at load, so training never meets them as NaN losses."""
    for split in ("train", "test"):
        images = getattr(domain, f"{split}_images")
        labels = getattr(domain, f"{split}_labels")
        if images.ndim != 4 or labels.ndim != 1:
            raise UserError(
                f"domain {domain.name!r}: {split} images must be [N, H, W, C] and labels [N], "
                f"got {images.shape} and {labels.shape}"
            )
        if images.shape[1:] != domain.image_shape:
            raise UserError(
                f"domain {domain.name!r}: train and test images differ in shape "
                f"({domain.image_shape} vs {images.shape[1:]})"
            )
        if len(labels) == 0:
            raise UserError(f"domain {domain.name!r} has no {split} images")
        if len(images) != len(labels):
            raise UserError(
                f"domain {domain.name!r}: {len(images)} {split} images but {len(labels)} labels"
            )
        bad = np.flatnonzero((labels < 0) | (labels >= domain.num_classes))
        if bad.size:
            raise UserError(
                f"domain {domain.name!r}: {split} label {labels[bad[0]]} at row {bad[0]} is "
                f"outside [0, {domain.num_classes})"
            )
        if not np.all(np.isfinite(images)):
            raise UserError(f"domain {domain.name!r}: {split} images contain NaN or inf")


def _first_label_from(domain: DomainData, limit: int) -> str:
    """Where ``domain`` first has a label ``>= limit``, for error messages: the list file and
    line (or the file) of an image domain, the split and row of an in-memory one, else the class
    (one without images)."""
    files = getattr(getattr(domain, "source", None), "domain", None)  # an ImageFileSource's
    if files is not None and hasattr(files, "where"):
        rows = np.flatnonzero(np.asarray(files.labels) >= limit)
        if rows.size:
            return f"label {files.labels[rows[0]]} at {files.where(int(rows[0]))}"
    else:
        for split in ("train", "test"):
            labels = np.asarray(getattr(domain, f"{split}_labels"))
            rows = np.flatnonzero(labels >= limit)
            if rows.size:
                return f"{split} label {labels[rows[0]]} at row {rows[0]}"
    return f"class {domain.class_names[limit]!r} (label {limit}), which has no image"


def check_compatible(source: DomainData, target: DomainData) -> None:
    """Raises :class:`UserError` unless both domains share the classes and the image shape
    ``(H, W, C)`` — one model and one compiled step must serve both.

    Sharing the classes means as many classes (the error names the first label of the larger
    domain beyond the smaller one's: list file and line, or row), and, when both name the
    same classes, the same order (e.g. an Office-Home list, in the benchmark's order, against
    an alphabetical ``folder:`` tree would mix up the labels).
    """
    if source.num_classes != target.num_classes:
        small, large = sorted((source, target), key=lambda d: d.num_classes)
        raise UserError(
            f"domains {source.name!r} and {target.name!r} have {source.num_classes} and "
            f"{target.num_classes} classes; adaptation needs the same classes ({large.name!r} has "
            f"{_first_label_from(large, small.num_classes)}, outside [0, {small.num_classes}))"
        )
    names = tuple(source.class_names), tuple(target.class_names)
    if names[0] != names[1] and sorted(names[0]) == sorted(names[1]):
        k = next(k for k, (a, b) in enumerate(zip(*names, strict=True)) if a != b)
        raise UserError(
            f"domains {source.name!r} and {target.name!r} number the same classes differently "
            f"(label {k} is {names[0][k]!r} in one and {names[1][k]!r} in the other); read both "
            "with one class order (e.g. a benchmark name for both, not folder:PATH for one)"
        )
    if source.image_shape != target.image_shape:
        raise UserError(
            f"domains {source.name!r} and {target.name!r} have image shapes "
            f"{source.image_shape} and {target.image_shape}; set one data.image_size"
        )
