"""GVB-GD (Cui et al., CVPR 2020): gradually vanishing bridges on the generator and the
discriminator (reference §2.5).

The head outputs ``logits = fc(f) − gvbg(f)``; the discriminator sees the softmax of those
logits and outputs ``σ(d − b)`` with its bridge ``b = gvbd(h)``. The transfer loss is GVB's
entropy-weighted BCE; ``gvbg_weight · mean|z|`` and ``gvbd_weight · mean|b|`` shrink the bridges.
"""

from __future__ import annotations

from uda_jax import adversarial as adv
from uda_jax.methods import adversarial

NUM_CLASSIFIERS = 1
USES_PSEUDO_LABELS = False

ALIGNMENT = adversarial.Alignment(
    name="gvb",
    bridge=True,
    input_width=lambda feature_dim, num_classes: num_classes,
    d_input=lambda features, probs: probs,
    transfer_loss=adv.gvb_transfer_loss,
)
NETWORK = ALIGNMENT.network_kwargs()
train_step = adversarial.bind(ALIGNMENT)
