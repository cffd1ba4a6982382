"""Named benchmark domains (``office31/amazon``, ...) resolved against a data root.

The data root is the ``root`` argument, else ``$UDA_DATA_DIR``. Each domain is read from a list
file when one exists (paths in it relative to the benchmark folder, or absolute), else from a
class folder tree. Expected layout under the root (as the official code reads it):

``office31/<amazon|dslr|webcam>``
    list ``office31/<domain>_list.txt`` (GVB), else folders ``office31/<domain>/images/<class>/``
    (or ``office31/<domain>/<class>/``); 31 classes, alphabetical.
``officehome/<Art|Clipart|Product|Real_World>``
    list ``officehome/<Domain>.txt`` or ``officehome/<domain lower>_list.txt`` (MA/GVB), else
    folders ``officehome/<Domain>/<Class>/`` (``Real World`` with a space is accepted); 65
    classes in the lists' order (:data:`OFFICEHOME_CLASSES`, not alphabetical).
``visda/<train|validation>``
    list ``visda/<split>/image_list.txt`` (official, paths relative to ``visda/<split>/``), else
    folders ``visda/<split>/<12 classes>/``.
``imageclef/<c|i|p>``
    list ``imageclef/list/<d>List.txt``, else folders ``imageclef/<d>/<class>/`` (sorted).
``domainnet/<clipart|infograph|painting|quickdraw|real|sketch>[:train|:test]``
    list ``domainnet/<domain>_<split>.txt`` (split ``train`` unless ``:test``), else folders
    ``domainnet/<domain>/<class>/`` (sorted, all images).

Every benchmark has its known class count (:data:`NUM_CLASSES`): a list label outside it is
refused naming the file and line; a class without any image stays a class, with a one-line
warning (a phantom class never changes the count); folders that are not classes of a benchmark
with a class list are reported and not read.

Generic specs: ``list:PATH`` (a ``"path label"`` file; entries relative to the data root when
one is set, else to the list's folder) and ``folder:PATH`` (a ``<class>/<image>`` tree), with
``PATH`` relative to the data root or absolute. Their classes are inferred (0..the largest label;
every folder), so a class without any image — a label typo, an empty folder — is refused.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from uda_jax.data.image_files import ImageDomain, read_image_folder, read_image_list
from uda_jax.errors import UserError, did_you_mean

OFFICE31_CLASSES = [
    "back_pack",
    "bike",
    "bike_helmet",
    "bookcase",
    "bottle",
    "calculator",
    "desk_chair",
    "desk_lamp",
    "desktop_computer",
    "file_cabinet",
    "headphones",
    "keyboard",
    "laptop_computer",
    "letter_tray",
    "mobile_phone",
    "monitor",
    "mouse",
    "mug",
    "paper_notebook",
    "pen",
    "phone",
    "printer",
    "projector",
    "punchers",
    "ring_binder",
    "ruler",
    "scissors",
    "speaker",
    "stapler",
    "tape_dispenser",
    "trash_can",
]
OFFICEHOME_CLASSES = [
    "Drill",
    "Exit_Sign",
    "Bottle",
    "Glasses",
    "Computer",
    "File_Cabinet",
    "Shelf",
    "Toys",
    "Sink",
    "Laptop",
    "Kettle",
    "Folder",
    "Keyboard",
    "Flipflops",
    "Pencil",
    "Bed",
    "Hammer",
    "ToothBrush",
    "Couch",
    "Bike",
    "Postit_Notes",
    "Mug",
    "Webcam",
    "Desk_Lamp",
    "Telephone",
    "Helmet",
    "Mouse",
    "Pen",
    "Monitor",
    "Mop",
    "Sneakers",
    "Notebook",
    "Backpack",
    "Alarm_Clock",
    "Push_Pin",
    "Paper_Clip",
    "Batteries",
    "Radio",
    "Fan",
    "Ruler",
    "Pan",
    "Screwdriver",
    "Trash_Can",
    "Printer",
    "Speaker",
    "Eraser",
    "Bucket",
    "Chair",
    "Calendar",
    "Calculator",
    "Flowers",
    "Lamp_Shade",
    "Spoon",
    "Candles",
    "Clipboards",
    "Scissors",
    "TV",
    "Curtains",
    "Fork",
    "Soda",
    "Table",
    "Knives",
    "Oven",
    "Refrigerator",
    "Marker",
]
"""Office-Home label order of the MetaAlign and GVB lists (not alphabetical)."""
VISDA_CLASSES = [
    "aeroplane",
    "bicycle",
    "bus",
    "car",
    "horse",
    "knife",
    "motorcycle",
    "person",
    "plant",
    "skateboard",
    "train",
    "truck",
]

BENCHMARKS: dict[str, tuple[str, ...]] = {
    "office31": ("amazon", "dslr", "webcam"),
    "officehome": ("Art", "Clipart", "Product", "Real_World"),
    "visda": ("train", "validation"),
    "imageclef": ("c", "i", "p"),
    "domainnet": ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
}
NUM_CLASSES = {"office31": 31, "officehome": 65, "visda": 12, "imageclef": 12, "domainnet": 345}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$UDA_DATA_DIR``; raises :class:`UserError` if neither is set or the
    folder does not exist."""
    chosen = root if root is not None else os.environ.get("UDA_DATA_DIR")
    if not chosen:
        raise UserError("no data root: set data.root (or the UDA_DATA_DIR environment variable)")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise UserError(f"data root {str(path)!r} does not exist")
    return path


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def _benchmark_domain(bench: str, domain: str, split: str | None, root: Path) -> ImageDomain:
    """Reads one named benchmark domain (layouts in the module docstring)."""
    base = root / bench
    name = f"{bench}/{domain}" + (f":{split}" if split else "")
    num_classes = NUM_CLASSES[bench]
    classes: list[str] | None = None
    if bench == "office31":
        classes = OFFICE31_CLASSES
        lists = [base / f"{domain}_list.txt"]
        folders = [base / domain / "images", base / domain]
    elif bench == "officehome":
        classes = OFFICEHOME_CLASSES
        lists = [base / f"{domain}.txt", base / f"{domain.lower()}_list.txt"]
        folders = [base / domain, base / domain.replace("_", " ")]
    elif bench == "visda":
        classes = VISDA_CLASSES
        lists, folders = [base / domain / "image_list.txt"], [base / domain]
    elif bench == "imageclef":
        lists, folders = [base / "list" / f"{domain}List.txt"], [base / domain]
    else:
        lists = [base / f"{domain}_{split or 'train'}.txt"]
        folders = [base / domain]
    list_file = _first_existing(*lists)
    if list_file is not None:
        list_root = list_file.parent if bench == "visda" else base
        return read_image_list(list_file, list_root, classes, num_classes, name=name)
    folder = _first_existing(*folders)
    if folder is None or not folder.is_dir():
        tried = ", ".join(str(p) for p in [*lists, *folders])
        raise UserError(f"benchmark domain {name!r} not found; looked for {tried}")
    folders_there = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if classes is None:  # the sorted class folders, as many as the benchmark has classes
        if len(folders_there) != num_classes:
            raise UserError(
                f"benchmark domain {name!r} at {str(folder)!r} has {len(folders_there)} class "
                f"folders, expected {num_classes}"
            )
        classes = folders_there
    else:
        extra = sorted(set(folders_there) - set(classes))
        if extra:
            print(
                f"warning: benchmark domain {name!r} at {str(folder)!r}: folders that are not "
                f"{bench} classes are not read ({', '.join(map(repr, extra[:5]))}"
                + (f" and {len(extra) - 5} more)" if len(extra) > 5 else ")"),
                file=sys.stderr,
            )
    # The benchmark defines its classes: a class folder without images stays a class (warned).
    return read_image_folder(folder, classes, name=name)


def resolve_image_domain(spec: str, root: str | os.PathLike | None = None) -> ImageDomain:
    """The :class:`ImageDomain` named by ``spec``: ``BENCHMARK/DOMAIN`` (see the module
    docstring), ``list:PATH`` or ``folder:PATH``.

    Raises:
      UserError: unknown benchmark or domain (with the closest valid name), no data root, or
        anything :func:`read_image_list`/:func:`read_image_folder` rejects.
    """
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("list", "folder"):
        path = Path(rest).expanduser()
        if not path.is_absolute():
            path = data_root(root) / path
        if kind == "folder":
            return read_image_folder(path, name=spec)
        has_root = root is not None or os.environ.get("UDA_DATA_DIR")
        return read_image_list(path, data_root(root) if has_root else None, name=spec)
    name, _, split = spec.partition(":")
    bench, slash, domain = name.partition("/")
    if bench not in BENCHMARKS:
        valid = [*BENCHMARKS, "list", "folder"]
        raise UserError(
            f"unknown image domain {spec!r}{did_you_mean(bench, valid)}; use BENCHMARK/DOMAIN "
            f"(benchmarks: {', '.join(BENCHMARKS)}), list:PATH or folder:PATH"
        )
    if not slash or domain not in BENCHMARKS[bench]:
        hint = did_you_mean(domain, BENCHMARKS[bench], prefix=f"{bench}/")
        raise UserError(
            f"unknown {bench} domain {domain!r}{hint}; valid: "
            + ", ".join(f"{bench}/{d}" for d in BENCHMARKS[bench])
        )
    if split and (bench != "domainnet" or split not in ("train", "test")):
        raise UserError(f"{spec!r}: only domainnet domains take a split (':train' or ':test')")
    return _benchmark_domain(bench, domain, split or None, data_root(root))
