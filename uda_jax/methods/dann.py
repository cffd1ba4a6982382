"""DANN (Ganin & Lempitsky, 2015): a discriminator on G's features behind a gradient reversal.

``min_{G,f} max_d  CE(f(G(x_s)), y_s) − trade_off · BCE(d(G(x)), domain)``, written as one
minimisation with the reversal (``CDAN-GD/loss.py::DANN``, reference §2.5).
"""

from __future__ import annotations

from uda_jax import adversarial as adv
from uda_jax.methods import adversarial

NUM_CLASSIFIERS = 1
USES_PSEUDO_LABELS = False

ALIGNMENT = adversarial.Alignment(
    name="dann",
    bridge=False,
    input_width=lambda feature_dim, num_classes: feature_dim,
    d_input=lambda features, probs: features,
    transfer_loss=lambda d_logits, probs, num_source, coeff: adv.dann_loss(d_logits, num_source),
)
NETWORK = ALIGNMENT.network_kwargs()
train_step = adversarial.bind(ALIGNMENT)
