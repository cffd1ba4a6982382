"""Methods by name. Each is a module with ``train_step(state, batch, rng, *, ctx)``.

``METHODS`` maps the config's ``method.name`` to the module; see :mod:`uda_jax.methods.base`
for the shared shape of a step.
"""

from __future__ import annotations

from types import ModuleType

from uda_jax.errors import UserError, did_you_mean
from uda_jax.methods import cdan, cdan_e, cgdm, dann, gvb, mcd, source_only

METHODS: dict[str, ModuleType] = {
    "source_only": source_only,
    "mcd": mcd,
    "cgdm": cgdm,
    "dann": dann,
    "cdan": cdan,
    "cdan_e": cdan_e,
    "gvb": gvb,
}


def supports_metaalign(name: str) -> bool:
    """Whether MetaAlign can wrap method ``name`` (the adversarial ones)."""
    return hasattr(METHODS.get(name), "ALIGNMENT")


def get_method(name: str) -> ModuleType:
    """The method module called ``name``; a :class:`UserError` listing the valid ones if none."""
    if name not in METHODS:
        hint = did_you_mean(name, METHODS)
        raise UserError(f"unknown method.name {name!r}{hint}; valid: {', '.join(METHODS)}")
    return METHODS[name]
