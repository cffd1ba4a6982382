"""The method registry: names to :class:`~uda_jax.methods.api.Method` classes.

The built-in methods register themselves when first looked up; a research method registers
with :func:`register` (a decorator), or is named on the command line by its import path
``package.module:ClassName`` without any registration.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from uda_jax.errors import UserError, did_you_mean

_METHODS: dict[str, type] = {}
_BUILTIN_MODULES = ("source_only", "mcd", "cgdm", "swd", "dann", "cdan", "gvb", "metaalign")
_RESERVED = ("method", "model", "data", "optimizer", "checkpoint")


def register(cls: type) -> type:
    """Registers a :class:`Method` subclass under ``cls.name`` (usable as a class decorator).

    Raises:
      ValueError: the class is not a Method, has no name, its name is a fixed config section,
        or another class already holds the name.
    """
    from uda_jax.methods.api import Method

    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ValueError(f"register() takes a Method subclass, got {cls!r}")
    if not cls.name or not cls.name.isidentifier() or cls.name in _RESERVED:
        raise ValueError(f"method name {cls.name!r} must be an identifier and not {_RESERVED}")
    existing = _METHODS.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"method name {cls.name!r} is taken by {existing.__qualname__}")
    _METHODS[cls.name] = cls
    return cls


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"uda_jax.methods.{module}")


def names() -> list[str]:
    """The registered method names, sorted."""
    _load_builtins()
    return sorted(_METHODS)


def lookup(name: str) -> type:
    """The method class called ``name``, or at the import path ``package.module:ClassName``.

    Raises:
      UserError: unknown name (with a did-you-mean), unimportable path, or not a Method.
    """
    if ":" in name:
        return _import_method(name)
    _load_builtins()
    if name not in _METHODS:
        hint = did_you_mean(name, _METHODS, prefix="")
        raise UserError(
            f"unknown method.name {name!r}{hint}; valid: {', '.join(sorted(_METHODS))}, "
            "or the import path package.module:ClassName of your own Method"
        )
    return _METHODS[name]


def _import_method(path: str) -> type:
    from uda_jax.methods.api import Method

    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"method.name {path!r}: cannot import {module_name!r} ({err})") from None
    cls = getattr(module, attribute, None)
    if not (isinstance(cls, type) and issubclass(cls, Method)) or not cls.name:
        raise UserError(
            f"method.name {path!r}: {module_name}.{attribute} is not a uda_jax.methods.Method "
            "subclass with a name"
        )
    if cls.name in _RESERVED:
        raise UserError(f"method.name {path!r}: its name {cls.name!r} is a fixed config section")
    return cls


def method_sections(name: str, raw: Mapping[str, Any]) -> dict[str, type]:
    """The config sections (name → dataclass) that method ``name`` reads."""
    return lookup(name).sections_for(raw)


def default_sections(name: str) -> dict[str, Any]:
    """The default config sections of method ``name``."""
    return {section: cls() for section, cls in method_sections(name, {}).items()}


def build_method(config) -> Any:
    """The :class:`Method` instance of a validated :class:`uda_jax.config.Config`."""
    return lookup(config.method.name).from_sections(config.sections)
