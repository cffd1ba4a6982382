"""Image domains on disk: ``"path label"`` list files and ``root/<class>/<image>`` folder trees.

These are the two formats the official code reads: MetaAlign/GVB image lists (CRLF line
endings, one integer label per line) and CGDM's ``ImageFolder`` trees. Both become an
:class:`ImageDomain`: absolute paths, int32 labels and class names, validated once here so
that training never meets a missing file or a bad label.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from pathlib import Path

import numpy as np
from PIL import Image

from uda_jax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
"""File extensions (case-insensitive) that :func:`read_image_folder` collects."""


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDomain:
    """A domain of image files: ``paths[i]`` (absolute) has label ``labels[i]`` (int32).

    ``list_file``/``line_numbers`` remember where each entry came from (``None`` for folder
    trees), so a later error can name the list line of an unreadable image.
    """

    name: str
    paths: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    list_file: str | None = None
    line_numbers: tuple[int, ...] | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def where(self, i: int) -> str:
        """``'PATH'`` or ``'PATH (LIST line N)'`` for entry ``i``, for error messages."""
        if self.list_file is None or self.line_numbers is None:
            return self.paths[i]
        return f"{self.paths[i]} ({self.list_file} line {self.line_numbers[i]})"

    def subset(self, keep: np.ndarray) -> ImageDomain:
        """The domain restricted to the entries ``keep`` (indices, in order)."""
        keep = np.asarray(keep, dtype=np.int64)
        lines = None if self.line_numbers is None else tuple(self.line_numbers[i] for i in keep)
        return dataclasses.replace(
            self,
            paths=tuple(self.paths[i] for i in keep),
            labels=self.labels[keep],
            line_numbers=lines,
        )


def _class_names_from_folders(paths: list[str], labels: list[int], num_classes: int) -> tuple:
    """Class names from the folder that holds all images of a label (``.../<class>/...``
    lists) when those names are distinct, else ``"0", "1", ...``."""
    by_label: dict[int, list[str]] = {}
    for path, label in zip(paths, labels, strict=True):
        by_label.setdefault(label, []).append(os.path.dirname(path))
    names = [
        Path(os.path.commonpath(by_label[k])).name if k in by_label else None
        for k in range(num_classes)
    ]
    if None in names or "" in names or len(set(names)) != num_classes:
        return tuple(str(k) for k in range(num_classes))
    return tuple(names)


def read_image_list(
    list_file: str | os.PathLike,
    root: str | os.PathLike | None = None,
    class_names: tuple[str, ...] | list[str] | None = None,
    num_classes: int | None = None,
    *,
    name: str | None = None,
) -> ImageDomain:
    """Reads a ``"path label"`` list (MetaAlign/GVB format) into an :class:`ImageDomain`.

    Tolerates CRLF endings, blank lines and spaces inside paths (the label is the last token).
    Relative paths are resolved against ``root`` (default: the list file's folder); absolute
    ones are kept. The number of classes is ``len(class_names)``, else ``num_classes``, else
    ``max label + 1``; class names default to the images' parent folder names when those match
    the labels one to one, else ``"0", "1", ...``.

    Raises:
      UserError: missing or empty list, a malformed line, a non-integer label, a multi-label
        vector (3+ numeric tokens), a label outside ``[0, num_classes)``, a listed file that
        does not exist — each naming the list file and line number.
    """
    list_path = Path(list_file).expanduser()
    if not list_path.is_file():
        raise UserError(f"image list {str(list_path)!r} does not exist")
    base = Path(root).expanduser() if root is not None else list_path.parent
    if class_names is not None:
        class_names = tuple(class_names)
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(f"{len(class_names)} class names but num_classes={num_classes}")
        num_classes = len(class_names)
    text = list_path.read_bytes().decode("utf-8", errors="replace")
    paths: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{list_path} line {number}"
        head, sep, label_text = line.rpartition(" ")
        head = head.rstrip()
        if not sep or not head:
            raise UserError(f"{where}: expected 'PATH LABEL', got {line!r}")
        tokens = line.split()
        if len(tokens) >= 3 and all(_is_int(t) for t in tokens[-2:]):
            raise UserError(
                f"{where}: multi-label vectors ({len(tokens) - 1} label tokens) are not "
                "supported; give one integer class label per line"
            )
        if not _is_int(label_text):
            raise UserError(f"{where}: label {label_text!r} is not an integer")
        label = int(label_text)
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = "..." if num_classes is None else num_classes
            raise UserError(f"{where}: label {label} is outside [0, {bound}) for {head!r}")
        path = Path(head).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise UserError(f"{where}: image {str(path)!r} does not exist")
        paths.append(str(path.resolve()))
        labels.append(label)
        lines.append(number)
    if not paths:
        raise UserError(f"image list {str(list_path)!r} lists no images")
    if num_classes is None:
        num_classes = max(labels) + 1
    if class_names is None:
        class_names = _class_names_from_folders(paths, labels, num_classes)
    return ImageDomain(
        name=name or list_path.stem,
        paths=tuple(paths),
        labels=np.asarray(labels, dtype=np.int32),
        class_names=class_names,
        list_file=str(list_path),
        line_numbers=tuple(lines),
    )


def _is_int(token: str) -> bool:
    """Whether ``token`` is a (signed) decimal integer."""
    return token.lstrip("+-").isdigit()


def read_image_folder(
    root: str | os.PathLike,
    class_names: tuple[str, ...] | list[str] | None = None,
    *,
    name: str | None = None,
) -> ImageDomain:
    """Reads a ``root/<class>/.../<image>`` tree (CGDM's ``ImageFolder`` layout).

    Label ``k`` is ``class_names[k]``; by default the sorted class folder names (the official code's
    order for Office-31, VisDA, ImageCLEF, DomainNet; Office-Home needs its explicit order).
    Images are files with the extensions in :data:`IMAGE_EXTENSIONS` (any case), also inside
    nested subfolders of a class; paths are sorted within each class, so order is reproducible.

    Raises:
      UserError: ``root`` missing, a listed class folder missing, or no images at all.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise UserError(f"image folder {str(root_path)!r} does not exist")
    if class_names is None:
        class_names = tuple(sorted(p.name for p in root_path.iterdir() if p.is_dir()))
    else:
        class_names = tuple(class_names)
        missing = [c for c in class_names if not (root_path / c).is_dir()]
        if missing:
            raise UserError(
                f"image folder {str(root_path)!r} has no folder for class {missing[0]!r}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
    paths: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(class_names):
        found = []
        for dirpath, _, files in os.walk(root_path / cls, followlinks=True):
            found += [
                os.path.join(dirpath, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)
            ]
        found.sort()
        paths += [str(Path(p).resolve()) for p in found]
        labels += [label] * len(found)
    if not paths:
        raise UserError(
            f"image folder {str(root_path)!r} has no images (expected "
            f"ROOT/<class>/<image> with extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return ImageDomain(
        name=name or root_path.name,
        paths=tuple(paths),
        labels=np.asarray(labels, dtype=np.int32),
        class_names=class_names,
    )


def _readable(path: str) -> str | None:
    """``None`` if ``path`` decodes completely, else the error text.

    JPEGs are decoded at 1/8 scale (``draft``): still every byte of the entropy-coded data is
    read, so truncated files fail, at a fraction of the cost of a full decode.
    """
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        return f"{type(e).__name__}: {e}"
    return None


def check_images(
    domain: ImageDomain, skip_unreadable: bool = False, *, num_threads: int = 8
) -> tuple[ImageDomain, int]:
    """Decodes every image of ``domain`` once (threads) and returns ``(domain, num_skipped)``.

    Raises:
      UserError: naming the first unreadable image (and its list line), unless
        ``skip_unreadable``, which drops unreadable images instead; also when nothing is left.
    """
    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        errors = list(pool.map(_readable, domain.paths, chunksize=16))
    bad = [i for i, e in enumerate(errors) if e is not None]
    if not bad:
        return domain, 0
    if not skip_unreadable:
        more = f" ({len(bad) - 1} more unreadable)" if len(bad) > 1 else ""
        raise UserError(
            f"domain {domain.name!r}: cannot read image {domain.where(bad[0])}: "
            f"{errors[bad[0]]}{more}; fix or remove it, or skip unreadable images"
        )
    keep = np.setdiff1d(np.arange(len(domain)), bad)
    if keep.size == 0:
        raise UserError(f"domain {domain.name!r}: none of its {len(domain)} images is readable")
    return domain.subset(keep), len(bad)
