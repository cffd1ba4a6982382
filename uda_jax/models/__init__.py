"""Networks as pure functions over plain pytrees: flax stays inside this package, and the
methods see only ``init`` and pure ``apply_*`` functions over dicts of arrays.

:func:`build_network` turns the model config into a :class:`Network` whose ``init`` returns
``params`` and ``batch_stats`` grouped by module (``g`` the feature extractor, ``f1``/``f2`` the
classifiers, or ``f`` for one classifier) and whose ``apply_*`` functions are pure.

``dtype`` is the compute dtype (``bfloat16`` for mixed precision): parameters, BatchNorm
statistics and every output the methods see (features, logits, domain logits) stay float32.
``ops`` (:class:`LayerOps`, default :data:`XLA_OPS`) is the convolution and pooling the backbone
is built from, passed down as module arguments; :func:`uda_jax.cpu.layer_ops` gives CPU ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from uda_jax.config import ModelConfig
from uda_jax.errors import UserError
from uda_jax.models.digits import LeNetEncoder
from uda_jax.models.heads import Bottleneck, BridgedClassifier, Classifier, Discriminator
from uda_jax.models.layers import MOMENTS, XLA_OPS, LayerOps, full_precision
from uda_jax.models.resnet import make_resnet

PyTree = Any

# name → constructor taking (bn_momentum, bn_epsilon, unbiased_running_var, dtype, ops, name)
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "lenet": LeNetEncoder,
    **{f"resnet{depth}": make_resnet(depth) for depth in (18, 34, 50, 101, 152)},
}


def register_backbone(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Makes ``constructor`` (a flax module class or a factory of one) ``model.backbone: name``.

    It is called with the keyword arguments ``bn_momentum``, ``bn_epsilon``,
    ``unbiased_running_var``, ``dtype``, ``ops`` (:class:`LayerOps`, the convolution and pooling
    to build from; ignore it if you like) and ``name``, and the module it returns maps images
    ``[batch, H, W, C]`` to features ``[batch, dim]`` when called as ``module(x, train=...)``.
    A pretrained ImageNet import (``model.pretrained``) is only defined for the ResNets.

    Raises:
      ValueError: ``name`` is a built-in backbone or is not an identifier.
    """
    if not name.isidentifier() or name in _BUILTIN_BACKBONES:
        raise ValueError(f"backbone name {name!r} must be an identifier and not built in")
    BACKBONES[name] = constructor


_BUILTIN_BACKBONES = frozenset(BACKBONES)


class Generator(nn.Module):
    """G: backbone, then an optional bottleneck. ``[batch, H, W, C]`` → ``[batch, dim]``."""

    backbone: str
    bottleneck_dim: int
    bn_kwargs: dict
    dtype: Any = jnp.float32
    ops: LayerOps = XLA_OPS
    bottleneck_init: str = "reference"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        backbone = BACKBONES[self.backbone](
            **self.bn_kwargs, dtype=self.dtype, ops=self.ops, name="backbone"
        )
        x = backbone(x, train=train)
        if self.bottleneck_dim:
            x = Bottleneck(
                self.bottleneck_dim, self.dtype, self.bottleneck_init, name="bottleneck"
            )(x)
        return full_precision(x)


@dataclasses.dataclass(frozen=True)
class Network:
    """A generator, ``len(classifier_names)`` classifiers of one architecture and, for the
    adversarial methods, a domain discriminator ``d`` whose input width is
    ``discriminator_input(feature_dim, num_classes)``."""

    generator: Generator
    classifier: nn.Module
    classifier_names: tuple[str, ...]
    train_bottleneck: bool
    num_classes: int
    discriminator: Discriminator | None = None
    discriminator_input: Callable[[int, int], int] | None = None

    def init(self, rng: jax.Array, image_shape: tuple[int, ...]) -> tuple[PyTree, PyTree]:
        """Initial ``(params, batch_stats)``, each a dict ``{group: pytree}``."""
        keys = jax.random.split(rng, 2 + len(self.classifier_names))
        images = jnp.zeros((2, *image_shape), jnp.float32)
        g_vars = self.generator.init(keys[0], images, train=False)
        features = self.generator.apply(g_vars, images, train=False)
        params, stats = {"g": g_vars["params"]}, {"g": g_vars["batch_stats"]}
        for key, name in zip(keys[2:], self.classifier_names, strict=True):
            f_vars = self.classifier.init(key, features, train=False)
            params[name], stats[name] = f_vars["params"], f_vars.get("batch_stats", {})
        if self.discriminator is not None:
            width = self.discriminator_input(features.shape[1], self.num_classes)
            d_vars = self.discriminator.init(
                keys[1], jnp.zeros((2, width), jnp.float32), train=False
            )
            params["d"], stats["d"] = d_vars["params"], {}
        return params, stats

    def apply_generator(
        self, params: PyTree, stats: PyTree, images: jax.Array, *, train: bool, rng=None
    ) -> tuple[jax.Array, PyTree]:
        """G's features ``[batch, dim]`` and its new batch_stats (unchanged in eval mode)."""
        return _apply(self.generator, params, stats, images, train, rng)

    def apply_classifier(
        self, params: PyTree, stats: PyTree, features: jax.Array, *, train: bool, rng=None
    ) -> tuple[jax.Array, PyTree]:
        """One classifier's logits ``[batch, classes]`` and its new batch_stats."""
        return _apply(self.classifier, params, stats, features, train, rng)

    def apply_discriminator(
        self, params: PyTree, inputs: jax.Array, *, train: bool, rng=None
    ) -> tuple[jax.Array, jax.Array]:
        """``(domain logit [batch], bridge [batch])`` of the discriminator (no BatchNorm)."""
        rngs = {"dropout": rng} if rng is not None else {}
        return self.discriminator.apply({"params": params}, inputs, train=train, rngs=rngs)

    def batchnorm_moments(
        self, params: PyTree, stats: PyTree, images: jax.Array, rng: jax.Array
    ) -> PyTree:
        """Train-mode pass of G and every classifier over ``images`` (dropout drawn from
        ``rng``): each BatchNorm layer's batch mean and mean square, as ``{group: {module path:
        {"moments": ({"mean": [C], "square": [C]},)}}}`` mirroring ``batch_stats``."""
        keys = jax.random.split(rng, 1 + len(self.classifier_names))
        features, moments = _moments(self.generator, params["g"], stats["g"], images, keys[0])
        out = {"g": moments}
        for key, name in zip(keys[1:], self.classifier_names, strict=True):
            _, out[name] = _moments(self.classifier, params[name], stats[name], features, key)
        return out

    def frozen_mask(self, group: str, params: PyTree) -> PyTree:
        """Pytree of bools over ``params`` of ``group``: True where the optimizer must not step.

        Only G's bottleneck can be frozen (``model.train_bottleneck: false``: the official CGDM
        VisDA/DomainNet scripts build its optimizer without the bottleneck, so never step it).
        """
        frozen_bottleneck = group == "g" and not self.train_bottleneck
        return {
            name: jax.tree.map(lambda _, f=frozen_bottleneck and name == "bottleneck": f, sub)
            for name, sub in params.items()
        }


def _apply(module, params, stats, inputs, train, rng):
    variables = {"params": params, "batch_stats": stats} if stats else {"params": params}
    rngs = {"dropout": rng} if rng is not None else {}
    if not train:
        return module.apply(variables, inputs, train=False), stats
    out, updates = module.apply(variables, inputs, train=True, rngs=rngs, mutable=["batch_stats"])
    return out, updates.get("batch_stats", {})


def _moments(module, params, stats, inputs, rng):
    variables = {"params": params, "batch_stats": stats} if stats else {"params": params}
    out, collections = module.apply(
        variables, inputs, train=True, rngs={"dropout": rng}, mutable=["batch_stats", MOMENTS]
    )
    return out, collections.get(MOMENTS, {})


def build_network(
    config: ModelConfig,
    num_classes: int,
    num_classifiers: int,
    *,
    head: str = "mlp",
    bridge: bool = False,
    discriminator_input: Callable[[int, int], int] | None = None,
    new_layer_init: str = "reference",
    dtype: Any = jnp.float32,
    ops: LayerOps = XLA_OPS,
) -> Network:
    """The network of ``config``.

    Args:
      num_classifiers: 1 (group ``f``) or 2 (``f1``, ``f2``).
      head: ``mlp`` (CGDM's classifier) or ``linear`` (the adversarial methods' fc).
      bridge: GVB's bridges on the linear head and the discriminator.
      new_layer_init: how the method's new layers (bottleneck, linear head, discriminator) are
        initialised: ``reference`` (the CGDM code's), ``xavier`` (CDAN's) or ``kaiming`` (GVB's);
        see :func:`uda_jax.models.heads.new_layer_inits`. The mlp head follows
        ``config.classifier_init``.
      discriminator_input: for the adversarial methods, the discriminator's input width as a
        function of ``(feature_dim, num_classes)``; None for no discriminator.
      dtype: compute dtype, ``jnp.float32`` or ``jnp.bfloat16`` (parameters stay float32).
      ops: the backbone's convolution and pooling (:class:`LayerOps`).
    """
    if config.backbone not in BACKBONES:
        raise UserError(
            f"unknown model.backbone {config.backbone!r}; valid: {', '.join(sorted(BACKBONES))}"
        )
    bn_kwargs = {
        "bn_momentum": config.bn_momentum,
        "bn_epsilon": config.bn_eps,
        "unbiased_running_var": config.bn_running_var == "unbiased",
    }
    if head == "mlp":
        classifier = Classifier(
            num_classes=num_classes,
            widths=tuple(config.classifier_widths),
            dropout=config.dropout,
            init_scheme=config.classifier_init,
            dtype=dtype,
            **bn_kwargs,
        )
    else:
        classifier = BridgedClassifier(
            num_classes=num_classes, bridge=bridge, dtype=dtype, init_scheme=new_layer_init
        )
    discriminator = None
    if discriminator_input is not None:
        discriminator = Discriminator(
            config.discriminator_hidden,
            config.discriminator_dropout,
            bridge,
            dtype=dtype,
            init_scheme=new_layer_init,
        )
    names = ("f",) if num_classifiers == 1 else tuple(f"f{i + 1}" for i in range(num_classifiers))
    generator = Generator(
        config.backbone, config.bottleneck_dim, bn_kwargs, dtype, ops, new_layer_init
    )
    return Network(
        generator,
        classifier,
        names,
        config.train_bottleneck,
        num_classes,
        discriminator,
        discriminator_input,
    )
