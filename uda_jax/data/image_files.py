"""Image domains on disk: ``"path label"`` list files and ``root/<class>/<image>`` folder trees.

These are the two formats the official code reads: MetaAlign/GVB image lists (CRLF line
endings, one integer label per line) and CGDM's ``ImageFolder`` trees. Both become an
:class:`ImageDomain`: absolute paths, int32 labels and class names, validated once here so
that training never meets a missing file or a bad label.

What the readers refuse or report (a :class:`UserError` or a one-line ``warning:`` on stderr,
while the domain is loaded, before anything is trained or written):

- **Classes with no image.** Where the reader infers the classes (a folder tree without
  ``class_names``: every folder is a class; a list without ``class_names``/``num_classes``: the
  classes are 0 to its largest label) a class without any image is refused — it would be a
  phantom class that changes the model's number of outputs (a label typo such as 500 in a
  10-class list would make 501 classes). Where the caller defines the classes (``class_names``
  or ``num_classes``, as the benchmarks do) such a class is kept, with a warning.
- **Symlinks** (folder trees). Every directory is read once, by its real path: the real
  folders of all classes first, then the symlinked folders. A symlink to a folder that contains
  it (a loop) or to a folder already read is skipped with a one-line warning; its images count
  once, in the class where they were read. An image reached twice in one class (two file
  symlinks) is kept once, with a warning; one reached from two classes, or class folders that
  are the same folder or nested, are refused.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from uda_jax.data.transforms import pil_to_rgb
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
    the labels one to one, else ``"0", "1", ...``. With a given class count a class without
    any image is kept, with a one-line warning on stderr; with an inferred one it is refused
    (a label typo must not add phantom classes).

    Raises:
      UserError: missing or empty list, a malformed line, a non-integer label, a multi-label
        vector (3+ numeric tokens), a label outside ``[0, num_classes)``, a listed file that
        does not exist, an inferred class count with classes that have no image (a label typo)
        — each naming the list file, line number and label.
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
    present = set(labels)
    if num_classes is None:
        num_classes = max(labels) + 1
        ordered = sorted(present)
        missing = next((k for k, label in enumerate(ordered) if k != label), None)
        if missing is not None:  # the first label without an image, below ordered[missing]
            above = ordered[missing]
            line = lines[labels.index(above)]
            gap = f"class {missing}" if above == missing + 1 else f"classes {missing}..{above - 1}"
            raise UserError(
                f"{list_path} line {line}: label {above} leaves {gap} without any image (a list "
                f"without a class count has classes 0..its largest label, {num_classes - 1}); fix "
                "the label, or give every class an image"
            )
    else:
        empty = [k for k in range(num_classes) if k not in present]
        if empty:
            names = [class_names[k] if class_names else str(k) for k in empty]
            _warn(
                f"image list {str(list_path)!r} has no image of {len(empty)} of its "
                f"{num_classes} classes ({_some(names)}); they stay classes, as the class "
                "count is given, without an accuracy of their own"
            )
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


def _warn(message: str) -> None:
    """A one-line ``warning: ...`` on stderr (as the other data warnings)."""
    print(f"warning: {message}", file=sys.stderr)


def _some(names: list[str], shown: int = 5) -> str:
    """``'a', 'b', 'c' and 4 more``."""
    text = ", ".join(repr(n) for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _inside(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or inside it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _walk_classes(root: Path, tops: list[Path], names: tuple[str, ...]) -> list[list[str]]:
    """The image files under each class folder ``tops[k]`` (class ``names[k]``; walked paths,
    unsorted), every directory read once by its real path (see the module docstring)."""
    real_tops = [os.path.realpath(t) for t in tops]
    # Sorted by path components, a folder is followed by the folders inside it.
    by_real = sorted(range(len(tops)), key=lambda k: real_tops[k].split(os.sep))
    for a, b in itertools.pairwise(by_real):
        if _inside(real_tops[b], real_tops[a]):
            how = "the same folder as" if real_tops[a] == real_tops[b] else "inside"
            raise UserError(
                f"image folder {str(root)!r}: class folder {str(tops[b])!r} is {how} class folder "
                f"{str(tops[a])!r} (through a symlink); an image must have one class"
            )
    owner: dict[str, int] = {}  # real directory → the class that read it
    found: list[list[str]] = [[] for _ in tops]
    links: collections.deque[tuple[int, str]] = collections.deque()

    def fail(error: OSError) -> None:
        raise UserError(
            f"image folder {str(root)!r}: cannot list {error.filename!r} ({error.strerror}); make "
            "it readable or remove it"
        )

    def walk(label: int, top: str) -> None:
        for dirpath, dirnames, filenames in os.walk(top, onerror=fail):
            real = os.path.realpath(dirpath)
            if real in owner:  # already read through a link to a folder above it (or a mount)
                dirnames[:] = []
                continue
            owner[real] = label
            linked = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            links.extend((label, os.path.join(dirpath, d)) for d in linked)
            dirnames[:] = [d for d in dirnames if d not in linked]  # followed later, if at all
            found[label] += [
                os.path.join(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS)
            ]

    for label, top in enumerate(tops):  # the real folders of every class first
        walk(label, str(top))
    while links:  # then the symlinked folders, breadth first
        label, link = links.popleft()
        target = os.path.realpath(link)
        if _inside(os.path.realpath(os.path.dirname(link)), target):
            _warn(
                f"image folder {str(root)!r}: skipped the symlink loop {link!r} (it links to "
                f"{target!r}, which contains it)"
            )
        elif target in owner:
            _warn(
                f"image folder {str(root)!r}: skipped the symlink {link!r} to {target!r}, a "
                f"folder already read for class {names[owner[target]]!r}"
            )
        else:
            walk(label, link)
    return found


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
    Symlinked folders are followed, each real directory once (a loop or a second link to a
    folder already read is skipped with a one-line warning; see the module docstring).

    Raises:
      UserError: ``root`` missing, a listed class folder missing, no images at all, a class
        folder without images when the classes are the folders (``class_names`` not given;
        given, it is kept with a warning), an image or folder in two classes through symlinks,
        an unreadable directory.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise UserError(f"image folder {str(root_path)!r} does not exist")
    defined = class_names is not None
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
    tops = [root_path / cls for cls in class_names]
    found = _walk_classes(root_path, tops, class_names)
    paths: list[str] = []
    labels: list[int] = []
    read: dict[str, tuple[int, str]] = {}  # real image file → (class, path it was read as)
    for label, files in enumerate(found):
        twice = []
        for walked in sorted(files):
            path = str(Path(walked).resolve())
            if path in read:
                first_label, first = read[path]
                if first_label != label:
                    raise UserError(
                        f"image {path!r} is in two classes, {class_names[first_label]!r} (as "
                        f"{first!r}) and {class_names[label]!r} (as {walked!r}), through a "
                        "symlink; an image must have one class, so remove one of them"
                    )
                twice.append(f"{first!r} and {walked!r} are one image")
                continue
            read[path] = (label, walked)
            paths.append(path)
            labels.append(label)
        if twice:
            _warn(
                f"image folder {str(root_path)!r}: class {class_names[label]!r} reaches "
                f"{len(twice)} image(s) a second time through symlinks (e.g. {twice[0]}); each "
                "image is read once"
            )
    if not paths:
        raise UserError(
            f"image folder {str(root_path)!r} has no images (expected "
            f"ROOT/<class>/<image> with extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    present = set(labels)
    empty = [k for k in range(len(class_names)) if k not in present]
    if empty and not defined:
        more = f" (and {len(empty) - 1} more empty class folders)" if len(empty) > 1 else ""
        raise UserError(
            f"image folder {str(root_path)!r}: class folder {str(tops[empty[0]])!r} has no images "
            f"({', '.join(IMAGE_EXTENSIONS)}){more}; every folder of the root is a class, so add "
            "its images or remove the folder"
        )
    if empty:
        _warn(
            f"image folder {str(root_path)!r} has no image of {len(empty)} of its "
            f"{len(class_names)} classes ({_some([class_names[k] for k in empty])}); they stay "
            "classes, as the class list defines them, without an accuracy of their own"
        )
    return ImageDomain(
        name=name or root_path.name,
        paths=tuple(paths),
        labels=np.asarray(labels, dtype=np.int32),
        class_names=class_names,
    )


def _readable(path: str) -> str | None:
    """``None`` if ``path`` decodes completely and converts to 8-bit RGB
    (:func:`~uda_jax.data.transforms.pil_to_rgb`: e.g. a float image outside ``[0, 1]`` fails),
    else the error text.

    JPEGs are decoded at 1/8 scale (``draft``): still every byte of the entropy-coded data is
    read, so truncated files fail, at a fraction of the cost of a full decode.
    """
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
            pil_to_rgb(image)
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
