"""CDAN and CDAN+E (Long et al., 2018): the discriminator sees ``vec(p ⊗ f)``, the outer product
of the (detached) class probabilities and G's features; CDAN+E weights each example by
``1 + exp(−H(p))`` (``CDAN-GD/loss.py::CDAN``, reference §2.5).
"""

from __future__ import annotations

import jax

from uda_jax import adversarial as adv
from uda_jax.methods import adversarial

NUM_CLASSIFIERS = 1
USES_PSEUDO_LABELS = False


def _conditioning(features: jax.Array, probs: jax.Array) -> jax.Array:
    return adv.multilinear_map(jax.lax.stop_gradient(probs), features)


def _width(feature_dim: int, num_classes: int) -> int:
    return feature_dim * num_classes


CDAN = adversarial.Alignment(
    name="cdan",
    bridge=False,
    input_width=_width,
    d_input=_conditioning,
    transfer_loss=lambda d_logits, probs, num_source, coeff: adv.dann_loss(d_logits, num_source),
)
CDAN_E = adversarial.Alignment(
    name="cdan_e",
    bridge=False,
    input_width=_width,
    d_input=_conditioning,
    transfer_loss=adv.cdan_entropy_loss,
)
ALIGNMENT = CDAN
NETWORK = ALIGNMENT.network_kwargs()
train_step = adversarial.bind(ALIGNMENT)
