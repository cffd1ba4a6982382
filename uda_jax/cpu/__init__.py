"""CPU-only speed-ups, chosen by one switch: the config's ``cpu_tuning`` (``auto | on | off``).

XLA's CPU backend runs these networks slower than it could: its convolution library, its
gradients of strided convolutions and of max-pooling, and its fresh mapping of every step's
working memory are slow there. This package holds all that works around it, so that no model,
method or training loop names the CPU:

* :mod:`uda_jax.cpu.kernels`: convolution and max-pooling written so that XLA's CPU compiler
  runs them and their derivatives of every order fast, handed to the models as their
  :class:`~uda_jax.models.layers.LayerOps` (:func:`layer_ops`), and the compiler options the
  steps compile with (:func:`compiler_options`, :func:`jit`).
* :mod:`uda_jax.cpu.memory`: XLA's per-step buffers kept mapped between steps
  (:func:`prepare_process`, before JAX's backend starts).

Neither changes what is computed: the kernels are the same functions (only the floating-point
summation order differs, ≈1e-7 relative) and the memory setting changes no value. ``auto``
turns the kernels on where JAX's default backend is the CPU
and the memory reuse on for the ResNet backbones; ``on`` both, ``off`` neither.

Importing this package, :func:`tuning` with a ``platform`` and :func:`prepare_process` do not
start JAX's backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uda_jax.models.layers import LayerOps

SETTINGS = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class CpuTuning:
    """What ``cpu_tuning`` turns on for one run.

    Attributes:
      kernels: the networks' convolution and max-pooling from :mod:`uda_jax.cpu.kernels`, and
        the XLA compiler options the steps compile with (those apply on CPU only).
      reuse_memory: XLA's per-step CPU buffers kept mapped (:mod:`uda_jax.cpu.memory`).
    """

    kernels: bool
    reuse_memory: bool


def _check(setting: str) -> None:
    if setting not in SETTINGS:
        raise ValueError(f"cpu_tuning must be one of {SETTINGS}, got {setting!r}")


def _reuse_memory(setting: str, backbone: str) -> bool:
    # auto: a ResNet's steps have working memory of hundreds of MB, which faults without reuse;
    # LeNet's buffers fit malloc's per-thread heaps, and reuse made the digits demo slower
    return setting == "on" or (setting == "auto" and backbone.startswith("resnet"))


def tuning(setting: str, backbone: str, platform: str | None = None) -> CpuTuning:
    """The :class:`CpuTuning` of ``setting`` for a run of ``backbone``.

    ``auto``: the kernels where ``platform`` (default: ``jax.default_backend()``, which starts
    the backend) is ``cpu``, the memory reuse for a ResNet backbone. ``on``: both (the compiler
    options still apply on CPU only). ``off``: neither.
    """
    _check(setting)
    if setting == "auto":
        if platform is None:
            import jax

            platform = jax.default_backend()
        kernels = platform == "cpu"
    else:
        kernels = setting == "on"
    return CpuTuning(kernels=kernels, reuse_memory=_reuse_memory(setting, backbone))


def prepare_process(setting: str, backbone: str) -> bool:
    """What ``setting`` needs done before JAX's backend starts: the memory reuse
    (:func:`uda_jax.cpu.memory.reuse_cpu_buffers`) where it wants it. Returns whether the
    reuse was applied (False where not wanted, not Linux with glibc, or too late). Does not
    start the backend."""
    _check(setting)
    if not _reuse_memory(setting, backbone):
        return False
    from uda_jax.cpu import memory

    return memory.reuse_cpu_buffers()


def layer_ops(t: CpuTuning) -> LayerOps:
    """The backbone's convolution and pooling: :data:`uda_jax.cpu.kernels.OPS` with the
    kernels on, else :data:`~uda_jax.models.layers.XLA_OPS` (flax's and lax's)."""
    if t.kernels:
        from uda_jax.cpu import kernels

        return kernels.OPS
    from uda_jax.models.layers import XLA_OPS

    return XLA_OPS


def compiler_options(t: CpuTuning) -> dict[str, Any] | None:
    """``jax.jit``'s ``compiler_options`` for the steps of a network built with
    ``layer_ops(t)``: :func:`uda_jax.cpu.kernels.compiler_options` with the kernels on (None
    off CPU or where the user's ``XLA_FLAGS`` decide), else None (XLA's defaults)."""
    if not t.kernels:
        return None
    from uda_jax.cpu import kernels

    return kernels.compiler_options()


def jit(fn: Callable, t: CpuTuning, **jit_kwargs: Any) -> Callable:
    """``jax.jit(fn, compiler_options=compiler_options(t), **jit_kwargs)``."""
    import jax

    return jax.jit(fn, compiler_options=compiler_options(t), **jit_kwargs)
