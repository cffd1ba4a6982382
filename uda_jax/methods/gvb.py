"""GVB-GD (Cui et al., CVPR 2020): gradually vanishing bridges on the generator and the
discriminator.

The head outputs ``logits = fc(f) − gvbg(f)``; the discriminator sees the softmax of those
logits and outputs ``σ(d − b)`` with its bridge ``b = gvbd(h)``. The transfer loss is GVB's
entropy-weighted BCE; ``gvbg_weight · mean|z|`` and ``gvbd_weight · mean|b|`` shrink the bridges.

Faithful to the GVB-GD code (https://github.com/cuishuhao/GVB) by default: the head's layers
start Kaiming-normal with zero biases, and source and target pass BatchNorm as two batches
(``separate_batchnorm``).
"""

from __future__ import annotations

import dataclasses

from uda_jax import domain_losses
from uda_jax.config import check_range
from uda_jax.methods.adversarial import Adversarial, AdversarialConfig, Alignment
from uda_jax.methods.registry import register

GVB_ALIGNMENT = Alignment(
    bridge=True,
    input_width=lambda feature_dim, num_classes: num_classes,
    d_input=lambda features, probs: probs,
    transfer_loss=domain_losses.gvb_transfer_loss,
)


@dataclasses.dataclass(frozen=True)
class GvbConfig(AdversarialConfig):
    """Options of GVB-GD (section ``gvb``): the adversarial ones and the bridge penalties."""

    gvbg_weight: float = 1.0  # GVB-G: weight of mean|z| of the generator bridge
    gvbd_weight: float = 1.0  # GVB-D: weight of mean|b| of the discriminator bridge
    # source and target through BatchNorm as two batches, as the GVB-GD code forwards them
    # (MetaAlign's code concatenates them: around GVB-GD, MetaAlign always does)
    separate_batchnorm: bool = True

    def validate(self, where: str) -> None:
        """The adversarial checks and non-negative bridge weights."""
        super().validate(where)
        check_range(self, where, non_negative=("gvbg_weight", "gvbd_weight"))


@register
@dataclasses.dataclass(frozen=True)
class GVB(Adversarial):
    """Adversarial alignment with gradually vanishing bridges."""

    config: GvbConfig = dataclasses.field(default_factory=GvbConfig)
    name = "gvb"
    config_class = GvbConfig
    alignment = GVB_ALIGNMENT
    # every new Linear layer Kaiming-normal, zero bias: init_weights in the GVB-GD code's network.py
    network = GVB_ALIGNMENT.network("kaiming")
    metrics = ("loss_cls", "loss_trs", "loss_gvbg_all", "loss_gvbd", "grad_norm")
    alignment_metrics = ("loss_trs", "loss_gvbg_all", "loss_gvbd")

    def bridge_weights(self) -> tuple[float, float]:
        """``(gvbg_weight, gvbd_weight)`` from the config."""
        return self.config.gvbg_weight, self.config.gvbd_weight
