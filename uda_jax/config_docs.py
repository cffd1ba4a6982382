"""What every config key is: its section, type, default and meaning, read without importing JAX.

The fixed sections come from the dataclasses of :mod:`uda_jax.config` (types and defaults at run
time, meanings from the comments next to each field in its source). The built-in methods'
sections are read from the source of ``uda_jax/methods/*.py`` with :mod:`ast`, so ``--help``
lists them before JAX starts; the same table generates the documentation's config reference.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import tokenize
import typing
from pathlib import Path
from typing import Any

from uda_jax import config as config_module

METHODS_DIR = Path(__file__).resolve().parent / "methods"


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key."""

    name: str  # dotted, e.g. ``optimizer.learning_rate``
    type: str
    default: str
    meaning: str


def _comments(path: Path) -> dict[int, tuple[str, bool]]:
    """``{line: (comment text, whether the line is only the comment)}`` of a source file."""
    found = {}
    with path.open("rb") as handle:
        for token in tokenize.tokenize(handle.readline):
            if token.type == tokenize.COMMENT:
                alone = token.line.strip().startswith("#")
                found[token.start[0]] = (token.string.lstrip("#").strip(), alone)
    return found


@dataclasses.dataclass
class _Class:
    bases: list[str]
    fields: list[tuple[str, str, str, str]]  # name, type, default, meaning
    method_name: str | None = None
    config_class: str | None = None


def _field_meaning(comments: dict[int, tuple[str, bool]], node: ast.AnnAssign) -> str:
    """The comment on the field's lines, else the comment-only lines right above it."""
    lines = range(node.lineno, node.end_lineno + 1)
    inline = [comments[n][0] for n in lines if n in comments and not comments[n][1]]
    if inline:
        return " ".join(inline)
    above, line = [], node.lineno - 1
    while line in comments and comments[line][1]:
        above.insert(0, comments[line][0])
        line -= 1
    return " ".join(above)


def _default_text(node: ast.AnnAssign) -> str:
    value = node.value
    if isinstance(value, ast.Call) and getattr(value.func, "attr", "") == "field":
        for keyword in value.keywords:
            if keyword.arg == "default_factory" and isinstance(keyword.value, ast.Lambda):
                return ast.unparse(keyword.value.body)
            if keyword.arg == "default_factory":
                return ast.unparse(keyword.value) + "()"
    return ast.unparse(value) if value is not None else ""


def _parse_classes(path: Path) -> dict[str, _Class]:
    comments = _comments(path)
    classes = {}
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.ClassDef):
            continue
        entry = _Class([ast.unparse(b).split(".")[-1] for b in node.bases], [])
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                annotation = ast.unparse(item.annotation)
                if item.target.id == "config":
                    entry.config_class = annotation
                elif "ClassVar" not in annotation:
                    meaning = _field_meaning(comments, item)
                    entry.fields.append((item.target.id, annotation, _default_text(item), meaning))
            if isinstance(item, ast.Assign) and len(item.targets) == 1:
                target = item.targets[0]
                is_constant = isinstance(item.value, ast.Constant)
                if isinstance(target, ast.Name) and target.id == "name" and is_constant:
                    entry.method_name = item.value.value
                if isinstance(target, ast.Name) and target.id == "config_class":
                    entry.config_class = ast.unparse(item.value)
        classes[node.name] = entry
    return classes


def _all_fields(classes: dict[str, _Class], name: str) -> list[tuple[str, str, str, str]]:
    """A dataclass's fields, its bases' first, a field redefined by a subclass replaced."""
    entry = classes.get(name)
    if entry is None:
        return []
    fields: dict[str, tuple[str, str, str, str]] = {}
    for base in entry.bases:
        for field in _all_fields(classes, base):
            fields[field[0]] = field
    for field in entry.fields:
        fields[field[0]] = field
    return list(fields.values())


def method_sections() -> dict[str, list[Key]]:
    """The built-in methods' config sections, by method name, from their source."""
    classes: dict[str, _Class] = {}
    for path in sorted(METHODS_DIR.glob("*.py")):
        classes.update(_parse_classes(path))
    sections = {}
    for entry in classes.values():
        if not entry.method_name:
            continue
        config_class = entry.config_class
        base = entry
        while config_class is None and base.bases:  # inherited from the parent method class
            base = classes.get(base.bases[0], _Class([], []))
            config_class = base.config_class
        fields = _all_fields(classes, config_class) if config_class else []
        sections[entry.method_name] = [
            Key(f"{entry.method_name}.{n}", t, d, m) for n, t, d, m in fields
        ]
    return dict(sorted(sections.items()))


def _type_text(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(map(str, typing.get_args(hint)))
    text = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
    return text or str(hint).replace("typing.", "")


def _dataclass_keys(cls: type, prefix: str, comments: dict[int, tuple[str, bool]]) -> list[Key]:
    keys = []
    hints = typing.get_type_hints(cls, vars(config_module))
    for field in dataclasses.fields(cls):
        if field.name == "sections":
            continue
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            keys += _dataclass_keys(hint, f"{prefix}{field.name}.", comments)
            continue
        default = field.default
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        meaning = _source_meaning(cls, field.name, comments)
        keys.append(Key(f"{prefix}{field.name}", _type_text(hint), repr(default), meaning))
    return keys


def _source_meaning(cls: type, name: str, comments: dict[int, tuple[str, bool]]) -> str:
    """The comment of field ``name`` in ``cls``'s source (config.py)."""
    tree = ast.parse(Path(config_module.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and getattr(item.target, "id", None) == name:
                    return _field_meaning(comments, item)
    return ""


def fixed_keys() -> list[Key]:
    """Every key of the fixed sections of :class:`uda_jax.config.Config`."""
    comments = _comments(Path(config_module.__file__))
    return _dataclass_keys(config_module.Config, "", comments)


def packaged_configs() -> list[str]:
    """The names of the configs shipped with uda-jax (``configs/*.yaml``)."""
    from uda_jax.config import configs_dir

    directory = configs_dir()
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory else []


def help_text(usage: str) -> str:
    """``--help`` of the training command: usage, every key, the methods and packaged configs."""
    out = io.StringIO()
    out.write(f"{usage}\n\nTrain a domain-adaptation method; without arguments, CGDM on the ")
    out.write("embedded digits task mnist5k → ucidigits.\nCONFIG is a YAML file or the name of a ")
    out.write("packaged config; key=value overrides any key below.\n\nKeys (default):\n")
    for key in fixed_keys():
        _write_key(out, key)
    out.write("\nMethod sections (only the section of method.name is accepted):\n")
    for method, keys in method_sections().items():
        out.write(f"  [{method}]\n")
        for key in keys:
            _write_key(out, key, indent=4)
    out.write("\nPackaged configs: " + ", ".join(packaged_configs()) + "\n")
    return out.getvalue()


def _write_key(out: io.StringIO, key: Key, indent: int = 2) -> None:
    meaning = f"  # {key.meaning}" if key.meaning else ""
    out.write(f"{' ' * indent}{key.name} = {key.default}{meaning}\n")
