"""CDAN and CDAN+E (Long et al., NeurIPS 2018): the discriminator sees ``vec(p ⊗ f)``, the outer
product of the (detached) class probabilities and G's features; CDAN+E weights each example by
``1 + exp(−H(p))`` (the CDAN repository's ``loss.py::CDAN``).
"""

from __future__ import annotations

import dataclasses

import jax

from uda_jax import domain_losses
from uda_jax.methods.adversarial import Adversarial, AdversarialConfig, Alignment
from uda_jax.methods.registry import register


def _conditioning(features: jax.Array, probs: jax.Array) -> jax.Array:
    return domain_losses.multilinear_map(jax.lax.stop_gradient(probs), features)


def _width(feature_dim: int, num_classes: int) -> int:
    return feature_dim * num_classes


CDAN_ALIGNMENT = Alignment(
    bridge=False,
    input_width=_width,
    d_input=_conditioning,
    transfer_loss=lambda d_logits, probs, num_source, coeff: domain_losses.dann_loss(
        d_logits, num_source
    ),
)
CDAN_E_ALIGNMENT = dataclasses.replace(
    CDAN_ALIGNMENT, transfer_loss=domain_losses.cdan_entropy_loss
)


@register
@dataclasses.dataclass(frozen=True)
class CDAN(Adversarial):
    """Conditional adversarial alignment on ``vec(p ⊗ f)``."""

    config: AdversarialConfig = dataclasses.field(default_factory=AdversarialConfig)
    name = "cdan"
    alignment = CDAN_ALIGNMENT
    # every new Linear layer Xavier-normal, zero bias: init_weights in the CDAN code's network.py
    network = CDAN_ALIGNMENT.network("xavier")


@register
@dataclasses.dataclass(frozen=True)
class CDANE(Adversarial):
    """CDAN with entropy-weighted examples."""

    config: AdversarialConfig = dataclasses.field(default_factory=AdversarialConfig)
    name = "cdan_e"
    alignment = CDAN_E_ALIGNMENT
    network = CDAN_E_ALIGNMENT.network("xavier")
