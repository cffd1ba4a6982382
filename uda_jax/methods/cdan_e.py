"""CDAN+E: CDAN with entropy-weighted examples (see :mod:`uda_jax.methods.cdan`)."""

from __future__ import annotations

from uda_jax.methods import adversarial
from uda_jax.methods.cdan import CDAN_E

NUM_CLASSIFIERS = 1
USES_PSEUDO_LABELS = False
ALIGNMENT = CDAN_E
NETWORK = ALIGNMENT.network_kwargs()
train_step = adversarial.bind(ALIGNMENT)
