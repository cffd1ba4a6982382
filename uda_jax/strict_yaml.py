"""Strict YAML for configs: PyYAML's safe loader without its silent readings.

PyYAML keeps the last of a key given twice, reads ``010`` as octal 8 and ``1:30`` as base 60,
and reads ``1e-3`` as text. A config typed by hand should fail loudly on each instead, with the
line; :func:`read_yaml_file` turns every problem into one :class:`uda_jax.errors.UserError`.
"""

from __future__ import annotations

import contextlib
import math
import re
import unicodedata
from pathlib import Path
from typing import Any

import yaml

from uda_jax.errors import UserError


class StrictYamlError(yaml.YAMLError):
    """What :class:`StrictLoader` refuses, with the line (1-based) of the YAML text."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class AmbiguousNumber(StrictYamlError):
    """A number YAML 1.1 reads other than as the decimal it looks like (``010`` is octal 8)."""


_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader without its silent readings: a key given twice (PyYAML keeps the
    last one), a key that is not ASCII, a key that is not a name (``null``, ``true``, ``1.5``
    or a list; integer keys are left to the config check, which refuses them where a name is
    expected), and a number YAML 1.1 reads other than as the decimal it looks like (``010`` is
    octal 8, ``0x10``, ``0b10``, ``1_000``, ``1:30`` is base 60)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            line = key_node.start_mark.line + 1
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, bool) or not isinstance(key, str | int):
                text = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key)
                raise StrictYamlError(
                    line,
                    f"the key {text} is read as {kind_of(key)}, not a name; "
                    "config keys are names such as steps (quote it if you meant text)",
                )
            if isinstance(key, str) and not key.isascii():
                raise StrictYamlError(line, f"the key {key!r} {non_ascii(key)}; retype it")
            if key in seen:
                lines = f" (lines {seen[key]} and {line})" if seen[key] != line else ""
                raise StrictYamlError(
                    line,
                    f"the key {key!r} is given twice{lines}; PyYAML would silently keep the "
                    "last one: remove one",
                )
            seen[key] = line
            if isinstance(value_node, yaml.ScalarNode):
                with _naming(key):
                    self.construct_object(value_node)
        return super().construct_mapping(node, deep=deep)


@contextlib.contextmanager
def _naming(key: Any):
    """Puts ``key: `` before the message of an ambiguous number found under it."""
    try:
        yield
    except AmbiguousNumber as err:
        if not err.message.startswith(f"{key}: "):
            err.message = f"{key}: {err.message}"
        raise


def _construct_number(loader: StrictLoader, node: yaml.ScalarNode) -> Any:
    if node.tag.endswith(":int"):
        value = yaml.SafeLoader.construct_yaml_int(loader, node)
    else:
        value = yaml.SafeLoader.construct_yaml_float(loader, node)
    reason = ambiguous_number(node.value, value)
    if reason:
        raise AmbiguousNumber(node.start_mark.line + 1, reason)
    if isinstance(value, float) and math.isinf(value) and "inf" not in node.value.lower():
        raise AmbiguousNumber(
            node.start_mark.line + 1,
            f"{node.value} is too large for a 64-bit float (it reads as inf); write a finite "
            "number",
        )
    return value


StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_number)
StrictLoader.add_constructor("tag:yaml.org,2002:float", _construct_number)
# PyYAML (YAML 1.1) reads 1e-3, 2.5e3 and -.5 as text; YAML 1.2 and every reader of a config
# read them as numbers, and so does this loader (tried after YAML 1.1's own int and float).
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)$"),
    list("-+.0123456789"),
)


def ambiguous_number(text: str, value: Any) -> str | None:
    """Why YAML's reading ``value`` of the number ``text`` is not what it looks like, or None:
    a leading zero (octal in YAML 1.1), hexadecimal, binary, base 60 or an underscore (a number
    in YAML 1.1, text in YAML 1.2)."""
    body = text.strip().lstrip("+-")
    quote = f", or quote it ('{text}') for text"
    if ":" in body:
        return f"{text} is read by YAML 1.1 as the base-60 number {value}; write {value}{quote}"
    if "_" in body:
        return (
            f"{text} has an underscore, which YAML 1.1 reads as the number {value} and YAML 1.2 "
            f"as text; write {value}"
        )
    if body[:2].lower() == "0x":
        return f"{text} is hexadecimal, which YAML reads as {value}; write the decimal {value}"
    if body[:2].lower() == "0b":
        return f"{text} is binary, which YAML reads as {value}; write the decimal {value}"
    if isinstance(value, int) and len(body) > 1 and body.startswith("0"):
        decimal = int(body, 10) * (-1 if text.strip().startswith("-") else 1)
        if decimal != value:
            return (
                f"{text} has a leading zero, which YAML 1.1 reads as the octal number {value}; "
                f"write {decimal} (or {value} if you meant octal){quote}"
            )
    return None


def kind_of(value: Any) -> str:
    """How an error names what YAML read: ``null``, ``a boolean``, ``a number``, ``a list``..."""
    if value is None:
        return "null"
    names = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "a mapping",
    }
    return names.get(type(value), f"a {type(value).__name__}")


def non_ascii(text: str) -> str:
    """``holds the non-ASCII character 'е' (U+0435 CYRILLIC SMALL LETTER IE)``."""
    char = next(c for c in text if not c.isascii())
    name = unicodedata.name(char, "unnamed")
    return f"holds the non-ASCII character {char!r} (U+{ord(char):04X} {name})"


def load_yaml(text: str) -> Any:
    """``text`` parsed by :class:`StrictLoader`.

    Raises:
      StrictYamlError: a duplicate, non-ASCII or non-name key, or an ambiguous number.
      yaml.YAMLError: not valid YAML.
    """
    return yaml.load(text, Loader=StrictLoader)


def read_yaml_file(path: Path) -> dict[str, Any]:
    """The mapping of the config file at ``path`` (empty for an empty file); a missing,
    unreadable, non-UTF-8 or invalid file, or one that does not hold a mapping, is one
    :class:`UserError` naming the file (and the line, where YAML gives one)."""
    if not path.is_file():
        raise UserError(f"config file not found: {path} (give the path of a YAML file)")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise UserError(f"config file {path} cannot be read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise UserError(
            f"config file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8"
        ) from None
    try:
        data = load_yaml(text)
    except StrictYamlError as err:
        raise UserError(f"config file {path} line {err.line}: {err.message}") from None
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"config file {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys, not {kind_of(data)}")
    return data
