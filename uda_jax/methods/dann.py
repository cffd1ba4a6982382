"""DANN (Ganin & Lempitsky, ICML 2015): a discriminator on G's features behind a gradient
reversal.

``min_{G,f} max_d  CE(f(G(x_s)), y_s) − trade_off · BCE(d(G(x)), domain)``, written as one
minimisation with the reversal (the CDAN repository's ``loss.py::DANN``).
"""

from __future__ import annotations

import dataclasses

from uda_jax import domain_losses
from uda_jax.methods.adversarial import Adversarial, AdversarialConfig, Alignment
from uda_jax.methods.registry import register

DANN_ALIGNMENT = Alignment(
    bridge=False,
    input_width=lambda feature_dim, num_classes: feature_dim,
    d_input=lambda features, probs: features,
    transfer_loss=lambda d_logits, probs, num_source, coeff: domain_losses.dann_loss(
        d_logits, num_source
    ),
)


@register
@dataclasses.dataclass(frozen=True)
class DANN(Adversarial):
    """Domain-adversarial training on G's features."""

    config: AdversarialConfig = dataclasses.field(default_factory=AdversarialConfig)
    name = "dann"
    alignment = DANN_ALIGNMENT
    # every new Linear layer Xavier-normal, zero bias: init_weights in the CDAN code's network.py
    network = DANN_ALIGNMENT.network("xavier")
