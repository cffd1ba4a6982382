"""An experiment built from a config: domains, network, optimizers, method, initial state and
the compiled step and prediction functions.

Everything that can go wrong with a user's config or data goes wrong here, as a
:class:`uda_jax.errors.UserError`, before anything is written or trained. Research code may pass
its own pieces instead of naming them in the config: in-memory domains
(:func:`uda_jax.data.domains.from_arrays`), an optax transformation and schedule.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from uda_jax import cpu
from uda_jax.config import Config
from uda_jax.data.domains import DOMAINS, check_compatible
from uda_jax.data.sources import TFDS_IN_MEMORY, AnyDomain, load_data_domain, num_examples
from uda_jax.errors import UserError
from uda_jax.methods import Batch, Method, Metrics, StepContext, build_method, predict
from uda_jax.models import Network, build_network
from uda_jax.models.torch_weights import load_pretrained_backbone
from uda_jax.optim import build_optimizers
from uda_jax.state import TrainState


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything built from a config before the first step."""

    config: Config
    source: AnyDomain
    target: AnyDomain
    method: Method
    ctx: StepContext
    cpu_tuning: cpu.CpuTuning


def build_experiment(
    config: Config,
    *,
    source: AnyDomain | None = None,
    target: AnyDomain | None = None,
    transformation: optax.GradientTransformation | None = None,
    schedule: optax.Schedule | None = None,
) -> Experiment:
    """Loads the domains (unless given) and builds network, optimizers and method.

    Args:
      config: a validated config.
      source, target: in-memory or loaded domains to use instead of ``config.data``'s names.
      transformation, schedule: your own optax pieces (see
        :func:`uda_jax.optim.build_optimizers`).
    """
    method = build_method(config)
    data = config.data
    check_sizes(config, method, source)  # before the domains load or anything is built
    source = source if source is not None else load_data_domain(data.source, data)
    target = target if target is not None else load_data_domain(data.target, data)
    check_compatible(source, target)
    for domain in (source, target):
        if data.batch_size > num_examples(domain):
            raise UserError(
                f"data.batch_size={data.batch_size} is larger than domain {domain.name!r} "
                f"({num_examples(domain)} training images); lower data.batch_size"
            )
    tuning = cpu.tuning(config.cpu_tuning, config.model.backbone)
    network = method_network(config, method, source.num_classes, cpu.layer_ops(tuning))
    pretrained_path(config)  # a missing weights file fails here, before anything runs
    params, _ = jax.eval_shape(lambda: network.init(jax.random.key(0), source.image_shape))
    masks = {group: network.frozen_mask(group, tree) for group, tree in params.items()}
    optimizers = build_optimizers(
        config.optimizer, masks, transformation=transformation, schedule=schedule
    )
    ctx = StepContext(network, optimizers)
    return Experiment(config, source, target, method, ctx, tuning)


def method_network(config: Config, method: Method, num_classes: int, ops: Any = None) -> Network:
    """The network of ``config`` with the heads, bridge, discriminator and new-layer
    initialisation ``method`` asks for: the one ``build_experiment`` trains (``ops``: the layer
    implementations, XLA's by default)."""
    spec = method.network
    return build_network(
        config.model,
        num_classes,
        spec.num_classifiers,
        head=spec.head,
        bridge=spec.bridge,
        discriminator_input=spec.discriminator_input,
        new_layer_init=spec.new_layer_init,
        dtype=jnp.bfloat16 if config.precision == "bf16" else jnp.float32,
        **({} if ops is None else {"ops": ops}),
    )


# ----------------------------------------------------------------------------- up-front sizes

# Images of the in-memory domains (train and test), for the memory estimate before loading.
_IN_MEMORY_IMAGES = {
    "mnist5k": 5000,
    "ucidigits": 1797,
    "tfds:mnist": 70000,
    "tfds:svhn_cropped": 99289,
}
_IN_MEMORY_CHANNELS = {"tfds:svhn_cropped": 3}


def check_sizes(config: Config, method: Method, source: AnyDomain | None = None) -> None:
    """Refuses sizes that cannot work, before the domains load or anything compiles.

    The backbone runs abstractly (``jax.eval_shape``) on the image shape the config gives
    (``data.image_size`` for the digits domains, ``data.crop_size`` for image files, or the
    shape of ``source`` when given): a shape error, or features that come out empty (LeNet
    below 16×16), names the smallest size that works. The memory the run needs at least —
    the in-memory images, the parameters and their gradients, the activations of one training
    batch — is compared with the memory of this machine (of one accelerator).

    Raises:
      UserError: too small for the backbone, or more memory than there is.
    """
    shape, key = _image_shape(config, source)
    # the heads' classes are not known before the domains load: 1 gives a lower bound
    network = method_network(config, method, source.num_classes if source is not None else 1)
    data_bytes = 0 if source is not None else _in_memory_bytes(config)
    host = _memory(jax.local_devices(backend="cpu")[0]) if _has_cpu() else None
    if host is not None and data_bytes > host[0]:
        raise UserError(
            f"{key}={shape[0]}: the in-memory images of {config.data.source} and "
            f"{config.data.target} alone take {_size(data_bytes)}, more than this machine's "
            f"{_size(host[0])} of memory; lower {key}"
        )
    try:
        params, features, activations = jax.eval_shape(_abstract_run(network, shape))
    except (TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        message = _too_small(config, network, shape, key, f"it fails ({first[:160]})")
        raise UserError(message) from None
    if math.prod(features.shape[1:]) == 0:
        raise UserError(_too_small(config, network, shape, key, "its features come out empty"))
    _check_memory(config, key, params, activations, data_bytes)


def _has_cpu() -> bool:
    try:
        jax.local_devices(backend="cpu")
    except RuntimeError:
        return False
    return True


def _image_shape(config: Config, source: AnyDomain | None) -> tuple[tuple[int, ...], str]:
    """``(image shape, the config key that sets its size)`` of the source domain."""
    data = config.data
    if source is not None:
        return tuple(source.image_shape), "the images of the given domains"
    if data.source in DOMAINS or data.source.removeprefix("tfds:") in TFDS_IN_MEMORY:
        channels = _IN_MEMORY_CHANNELS.get(data.source, 1)
        return (data.image_size, data.image_size, channels), "data.image_size"
    return (data.crop_size, data.crop_size, 3), "data.crop_size"


def _in_memory_bytes(config: Config) -> int:
    """The float32 images of the config's in-memory domains (0 for image files)."""
    data, total = config.data, 0
    for spec in {data.source, data.target}:
        if spec in _IN_MEMORY_IMAGES:
            channels = _IN_MEMORY_CHANNELS.get(spec, 1)
            total += _IN_MEMORY_IMAGES[spec] * data.image_size**2 * channels * 4
    return total


def _abstract_run(network, shape: tuple[int, ...]) -> Callable:
    """What :func:`check_sizes` evaluates abstractly: the parameters, the features of one
    image and every intermediate output of the generator on it."""

    def run():
        params, stats = network.init(jax.random.key(0), shape)
        images = jnp.zeros((1, *shape), jnp.float32)
        variables = {"params": params["g"]} | ({"batch_stats": stats["g"]} if stats["g"] else {})
        features, state = network.generator.apply(
            variables, images, train=False, capture_intermediates=True, mutable=["intermediates"]
        )
        return params, features, state["intermediates"]

    return run


def _feature_size(network, shape: tuple[int, ...]) -> int:
    """The generator's feature count on ``shape`` (0 where it fails or comes out empty)."""
    images = jnp.zeros((1, *shape), jnp.float32)
    try:
        out, _ = jax.eval_shape(
            lambda: network.generator.init_with_output(jax.random.key(0), images, train=False)
        )
    except (TypeError, ValueError):
        return 0
    return math.prod(out.shape[1:])


def _too_small(config, network, shape, key, what: str) -> str:
    """The message for images too small for the backbone, with the smallest size that works."""
    size, rest = shape[0], tuple(shape[2:])
    backbone = config.model.backbone

    def works(s: int) -> bool:
        return _feature_size(network, (s, s, *rest)) > 0

    if works(size):  # the images are not too small: the network itself fails
        return f"model.backbone={backbone} with this model config {what} on {shape} images"
    high = size
    while high < 4096 and not works(high):
        high = min(2 * high, 4096)
    smallest = ""
    if works(high):
        low = size  # fails
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if works(middle) else (middle, high)
        smallest = f" (the smallest that works is {high}×{high})"
    if key.startswith("the images"):
        return (
            f"{key} ({size}×{size}) are too small for model.backbone={backbone}: {what}"
            f"{smallest}; resize them"
        )
    return (
        f"{key}={size} is too small for model.backbone={backbone}: {what} on "
        f"{size}×{size} images{smallest}; raise {key}"
    )


def _memory(device) -> tuple[int, str] | None:
    """``(bytes, description)`` of the memory ``device`` computes in: the machine's physical
    memory for the CPU, the accelerator's own (None if it does not say)."""
    if device.platform == "cpu":
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
        return total, "this machine's memory"
    try:
        stats = device.memory_stats() or {}
    except Exception:  # a backend that cannot tell: no check
        return None
    limit = stats.get("bytes_limit")
    return (int(limit), f"the memory of one {device.device_kind}") if limit else None


def _check_memory(config: Config, key: str, params, activations, data_bytes: int) -> None:
    """Refuses a run whose parameters, gradients and training activations cannot fit."""
    device = jax.local_devices()[0]
    memory = _memory(device)
    if memory is None:
        return
    limit, where = memory
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    per_image = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(activations))
    images = -(-2 * config.data.batch_size // jax.local_device_count())
    # a lower bound: XLA keeps about half the generator's outputs for the backward pass at
    # least, and no optimizer state is counted
    activation_bytes = per_image * images // 2
    total = 2 * param_bytes + activation_bytes + (data_bytes if device.platform == "cpu" else 0)
    if total <= limit:
        return
    parts = [
        f"parameters {_size(param_bytes)} ×2 with their gradients",
        f"activations {_size(activation_bytes)} for a batch of {images} images",
    ]
    if data_bytes and device.platform == "cpu":
        parts.append(f"in-memory images {_size(data_bytes)}")
    raise UserError(
        f"this run needs at least {_size(total)} ({', '.join(parts)}), more than "
        f"{where} ({_size(limit)}); lower data.batch_size, {key}, model.classifier_widths, "
        "model.bottleneck_dim or model.discriminator_hidden"
    )


def _size(n: float) -> str:
    """``1.5 GiB``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    for unit in units[:-1]:
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.3g} {units[-1]}"


def pretrained_path(config: Config) -> Path | None:
    """The backbone's ImageNet weights file (``model.pretrained``), or None.

    A relative path is looked up in the working directory, then under the data root
    (``data.root`` or ``$UDA_DATA_DIR``), so configs can name the torchvision file alone.

    Raises:
      UserError: the file is in neither place.
    """
    if not config.model.pretrained:
        return None
    path = Path(config.model.pretrained).expanduser()
    candidates = [path]
    root = config.data.root or os.environ.get("UDA_DATA_DIR")
    if not path.is_absolute() and root:
        candidates.append(Path(root).expanduser() / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = " or ".join(str(c) for c in candidates)
    raise UserError(
        f"model.pretrained: no weights file at {tried}; download the torchvision file "
        "(see uda_jax/models/torch_weights.py) or set model.pretrained=PATH"
    )


def create_train_state(experiment: Experiment) -> TrainState:
    """The initial state: fresh parameters (the backbone from ``model.pretrained`` when set),
    optimizer states and the method's extras."""
    key = jax.random.key(experiment.config.seed)
    init_key, train_key = jax.random.split(key)
    network = experiment.ctx.network
    params, stats = network.init(init_key, experiment.source.image_shape)
    weights = pretrained_path(experiment.config)
    if weights is not None:
        params, stats = load_pretrained_backbone(weights, params, stats)
        params, stats = jax.tree.map(jnp.asarray, (params, stats))
    extras = experiment.method.init_extras(params, num_examples(experiment.target))
    return TrainState.create(params, stats, experiment.ctx.optimizers, train_key, extras)


def jit(experiment: Experiment, fn: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fn, **jit_kwargs)`` with the experiment's CPU compiler options: the one way
    uda-jax compiles."""
    return cpu.jit(fn, experiment.cpu_tuning, **jit_kwargs)


def compile_train_step(
    experiment: Experiment,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The method's step as ``(state, batch) -> (state, metrics)``, jit-compiled once, donating
    the old state. Its key is ``fold_in(state.key, state.step)``, so any run that reaches a step
    (fresh or resumed, on any device count) draws the same randomness there."""
    step = functools.partial(experiment.method.step, experiment.ctx)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        return step(state, batch, jax.random.fold_in(state.key, state.step))

    return jit(experiment, train_step, donate_argnums=0)


def compile_predict(experiment: Experiment):
    """``(params, batch_stats, images) -> (features, logits)`` in eval mode, jit-compiled."""
    return jit(experiment, functools.partial(predict, experiment.ctx.network))
