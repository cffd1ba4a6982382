"""Methods: one module each, implementing the :class:`Method` protocol (:mod:`.api`).

Public API: :class:`Method`, :class:`NetworkSpec`, :class:`StepContext`, :func:`register`,
:func:`lookup`, :func:`names` and :func:`build_method`; the shared step pieces
:func:`apply_updates`, :func:`classify`, :func:`source_and_target`, :func:`predict`.
"""

from uda_jax.methods.api import (
    Batch,
    Method,
    Metrics,
    NetworkSpec,
    NoOptions,
    StepContext,
    apply_updates,
    classify,
    predict,
    source_and_target,
)
from uda_jax.methods.registry import build_method, lookup, names, register

__all__ = [
    "Batch",
    "Method",
    "Metrics",
    "NetworkSpec",
    "NoOptions",
    "StepContext",
    "apply_updates",
    "build_method",
    "classify",
    "lookup",
    "names",
    "predict",
    "register",
    "source_and_target",
]
