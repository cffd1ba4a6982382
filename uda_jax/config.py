"""Experiment configuration: a frozen dataclass schema, YAML files and dotted overrides.

A config is data (DESIGN principle 7). It is read from YAML, patched with ``key=value``
overrides from the command line, and validated into frozen dataclasses before anything runs:
an unknown key, a wrong type or an impossible value raises :class:`uda_jax.errors.UserError`
with one line that names the key and the fix.

The defaults of :class:`Config` are the embedded demo (CGDM on mnist5k → ucidigits), so
``python -m uda_jax.train`` needs no file; ``configs/digits_cgdm.yaml`` spells the same values out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from uda_jax.errors import UserError, did_you_mean


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which domains to adapt between and how batches are drawn.

    A domain is an embedded one (``mnist5k``, ``ucidigits``), a TFDS catalog dataset
    (``tfds:mnist``, ``tfds:svhn_cropped``) or an image dataset on disk under ``root``
    (``office31/amazon``, ``officehome/Art``, ``visda/train``, ``imageclef/i``,
    ``domainnet/clipart``, ``list:PATH`` or ``folder:PATH``; see :mod:`uda_jax.data.benchmarks`).
    """

    source: str = "mnist5k"
    target: str = "ucidigits"
    root: str | None = None  # dataset root of image/TFDS domains; default: $UDA_DATA_DIR
    batch_size: int = 32  # per domain: each step sees batch_size source + batch_size target
    image_size: int = 32  # embedded and TFDS digits domains
    test_fraction: float = 0.2  # embedded domains: the held-out share of each class
    split_seed: int = 0
    eval_batch_size: int = 256
    # image domains (reference §1.9, §2.8): Resize((resize, resize)) → crop → flip → ImageNet norm
    resize: int = 256
    crop_size: int = 224
    train_crop: str = "random"  # random (ImageCLEF, MetaAlign) | center (CGDM VisDA, DomainNet)
    eval_transform: str = "center"  # center: deterministic | train: the reference's random one
    num_workers: int = 0  # grain worker processes decoding images (0: in the main process)
    skip_unreadable: bool = False  # drop unreadable images (counted in the log) instead of failing


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Feature extractor G and classifier head(s) F (reference Part I §1.3)."""

    backbone: str = "lenet"  # lenet | resnet50 | resnet101
    pretrained: str | None = None  # ImageNet weights of the backbone (.pth or .safetensors)
    bottleneck_dim: int = 0  # 0: no bottleneck; the ResNet runs of the reference use 256
    train_bottleneck: bool = True  # the VisDA/DomainNet scripts leave it frozen (Pitfall 1)
    classifier_widths: tuple[int, ...] = (256, 256)
    dropout: float = 0.5
    classifier_init: str = "reference"  # reference: N(0, 0.01²); xavier; pytorch (default torch)
    bn_running_var: str = "unbiased"  # unbiased: PyTorch (faithful); biased: flax's convention
    bn_momentum: float = 0.1  # PyTorch convention: running ← (1 − m)·running + m·batch
    bn_eps: float = 1e-5
    discriminator_hidden: int = 1024  # the adversarial methods' domain discriminator
    discriminator_dropout: float = 0.5
    # auto: on CPU, XLA's Eigen convolutions (not YNNPACK's), gradients as plain convolutions
    # (stride 1) or matrix products (strided), max-pool gradients as masks; XLA's own ops
    # elsewhere (uda_jax.models.gemm_ops); gemm / xla force one. Same functions either way.
    kernels: str = "auto"


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Method name and the loss weights and schedule of its sub-steps (reference §1.5, §1.8)."""

    name: str = "cgdm"
    num_k: int = 4  # generator repeats of MCD/CGDM step C
    # compile step C's num_k repeats unrolled (fastest on CPU) or as one loop body (about num_k
    # times less to compile: for ResNet backbones, whose unrolled CGDM step compiles for minutes)
    unroll_c: bool = True
    discrepancy_weight: float = 1.0
    entropy_weight: float = 0.01  # weight of the IM entropy term E in steps A/B/C (CGDM)
    pseudo_weight: float = 0.01  # α: pseudo-label weighted CE in step A (CGDM)
    gd_weight: float = 0.01  # β: gradient discrepancy loss in step C (CGDM)
    warmup_steps: int = 200  # steps before pseudo-labels and L_GD switch on (reference: epoch 0)
    pseudo_interval: int = 100  # refresh the target pseudo-labels every this many steps
    trade_off: float = 1.0  # weight of the transfer loss (DANN, CDAN, GVB-GD)
    gvbg_weight: float = 1.0  # GVB-G bridge penalty mean|z| (gvb)
    gvbd_weight: float = 1.0  # GVB-D bridge penalty mean|b| (gvb)
    grl_max_iter: float = 10000.0  # c(t) = 2/(1 + exp(−alpha·t/max_iter)) − 1
    grl_alpha: float = 10.0


@dataclasses.dataclass(frozen=True)
class MetaAlignConfig:
    """MetaAlign around an adversarial method (reference Part II §2.3–2.4)."""

    enabled: bool = False
    order: str = "first"  # first: the official code (inner gradient detached); second: exact
    meta_lr: float = 1.0  # inner step α_p = meta_lr · lr(t) · inner_mult[p]
    period: int = 1  # the two meta-train/meta-test role assignments alternate every `period` steps
    roles: str = "alternate"  # alternate | align_first | cls_first
    # Multipliers of the inner step by parameter path prefix (longest match, default 1): the
    # reference gives 10 to names with 'fc' or 'gvb' (the head, both bridges), 1 to the rest.
    inner_mult: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"f": 10.0, "d/gvbd": 10.0}
    )
    stale_discriminator: bool = True  # faithful: cls-first uses the last align-first fast θ_D


@dataclasses.dataclass(frozen=True)
class OptimizerGroupConfig:
    """Per-module overrides: learning-rate multiplier and optimizer keyword arguments."""

    lr_mult: float = 1.0
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Any optax optimizer by name, with its keyword arguments (see :mod:`uda_jax.optim`)."""

    name: str = "sgd"
    learning_rate: float = 0.01
    weight_decay: float = 5e-4  # coupled L2 added to the gradient, as torch.optim.SGD does
    kwargs: dict[str, Any] = dataclasses.field(default_factory=lambda: {"momentum": 0.9})
    schedule: str = "constant"  # constant | inv: lr0·(1 + gamma·t)^(−power), t the iteration
    schedule_gamma: float = 0.001
    schedule_power: float = 0.75
    groups: dict[str, OptimizerGroupConfig] = dataclasses.field(
        default_factory=lambda: {"g": OptimizerGroupConfig(kwargs={"momentum": 0.0})}
    )


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints in ``<run_dir>/checkpoints``: what a resumed run restarts from."""

    every: int = 500  # save every this many steps; 0: only at the end and on SIGTERM/Ctrl-C
    keep: int = 3  # how many of the latest checkpoints to keep
    keep_best: bool = False  # also keep the best by target accuracy (oracle selection)


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment. Defaults: the embedded CGDM demo, mnist5k → ucidigits."""

    method: MethodConfig = dataclasses.field(default_factory=MethodConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    metaalign: MetaAlignConfig = dataclasses.field(default_factory=MetaAlignConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    steps: int = 400
    seed: int = 0
    eval_every: int = 100  # 0: evaluate only at the end
    log_every: int = 25
    run_dir: str | None = None  # default: runs/<method>_<source>-<target>_<config hash>
    progress: bool = True
    tensorboard: bool = True  # TensorBoard event files in <run_dir>/tensorboard
    plots: bool = True  # PNG training curves and a t-SNE of the features at the end
    precision: str = "float32"  # float32 | bf16: bf16 compute, float32 parameters and optimizer
    distributed: bool = False  # join the other hosts through jax.distributed.initialize()
    cpu_memory: str = "auto"  # auto: reuse with a ResNet backbone | reuse | release (host_memory)


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Reads a YAML config (or the defaults), applies ``a.b=value`` overrides and validates.

    Layers, lowest first: the defaults of :class:`Config`, the file, the overrides. A mapping
    given in a file (``optimizer.kwargs``, ``optimizer.groups``) replaces the default one whole.
    An override that changes ``optimizer.name`` clears the optimizer keyword arguments of the
    lower layers (they were meant for the other optimizer); set them again with
    ``optimizer.kwargs.NAME=value``.

    Raises:
      UserError: missing or unreadable file, unknown key, wrong type or impossible value.
    """
    raw = to_dict(Config())
    if path is not None:
        raw = _merge(Config, raw, _read_yaml(Path(path)))
    parsed = [_parse_override(item) for item in overrides]
    new_name = dict(parsed).get("optimizer.name")
    if new_name is not None and new_name != raw.get("optimizer", {}).get("name"):
        _clear_optimizer_kwargs(raw)
    for key, value in parsed:
        _set_dotted(raw, key, value)
    config = _build(Config, raw, "")
    validate(config)
    return config


def _merge(cls: type, base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it: config sections merge, every other value replaces."""
    merged = dict(base)
    hints = typing.get_type_hints(cls)
    for key, value in update.items():
        hint = hints.get(key)
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            merged[key] = _merge(hint, merged.get(key, {}), value)
        else:
            merged[key] = value
    return merged


def _clear_optimizer_kwargs(raw: dict[str, Any]) -> None:
    optimizer = raw.get("optimizer")
    if not isinstance(optimizer, dict):
        return
    optimizer["kwargs"] = {}
    groups = optimizer.get("groups")
    if isinstance(groups, dict):
        for group in groups.values():
            if isinstance(group, dict):
                group["kwargs"] = {}


def to_dict(config: Any) -> Any:
    """The config as plain YAML-friendly data (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, tuple | list):
        return [to_dict(v) for v in config]
    return config


def dump_yaml(config: Config) -> str:
    """The resolved config as YAML text, loadable again with :func:`load_config`."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file not found: {path} (give the path of a YAML file)")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"config file {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise UserError(f"config file {path} must hold a mapping of keys, not a {kind}")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"override {item!r} is not of the form key=value (e.g. steps=200)")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"override {key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


# ----------------------------------------------------------------------------- building


def _build(cls: type, raw: Any, where: str) -> Any:
    """Turns nested dicts into the dataclass ``cls``, checking every key and type."""
    if not isinstance(raw, Mapping):
        raise UserError(f"{where.rstrip('.') or 'config'} must be a mapping of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise UserError(_unknown_key_message(key, where, list(fields)))
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, f"{where}{name}")
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [t for t in options if t is not type(None)]
        return _coerce(inner, value, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise UserError(f"{key} must be a list, got {value!r} (e.g. {key}=[256,256])")
        inner = typing.get_args(hint)[0]
        return tuple(_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"{key} must be a mapping, got {value!r}")
        inner = typing.get_args(hint)[1]
        return {str(k): _coerce(inner, v, f"{key}.{k}") for k, v in value.items()}
    return _coerce_scalar(hint, value, key)


def _coerce_scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is Any:
        return value
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    accepted = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}[hint]
    is_bool_as_number = isinstance(value, bool) and hint is not bool
    if isinstance(value, accepted) and not is_bool_as_number:
        return float(value) if hint is float else value
    raise UserError(f"{key} must be of type {hint.__name__}, got {value!r}")


def _unknown_key_message(key: str, where: str, valid: list[str]) -> str:
    hint = did_you_mean(key, valid, prefix=where)
    return f"unknown config key '{where}{key}'{hint}; valid keys here: {', '.join(valid)}"


# ----------------------------------------------------------------------------- validation

_CHOICES = {
    "model.classifier_init": ("reference", "xavier", "pytorch"),
    "model.bn_running_var": ("unbiased", "biased"),
    "model.kernels": ("auto", "gemm", "xla"),
    "optimizer.schedule": ("constant", "inv"),
    "metaalign.order": ("first", "second"),
    "metaalign.roles": ("alternate", "align_first", "cls_first"),
    "precision": ("float32", "bf16"),
    "cpu_memory": ("auto", "reuse", "release"),
    "data.train_crop": ("random", "center"),
    "data.eval_transform": ("center", "train"),
}


_POSITIVE = (
    "steps",
    "log_every",
    "data.batch_size",
    "data.eval_batch_size",
    "data.image_size",
    "method.num_k",
    "method.pseudo_interval",
    "optimizer.learning_rate",
    "metaalign.period",
    "model.discriminator_hidden",
    "checkpoint.keep",
    "data.resize",
    "data.crop_size",
)
_NON_NEGATIVE = (
    "eval_every",
    "method.warmup_steps",
    "model.bottleneck_dim",
    "optimizer.weight_decay",
    "metaalign.meta_lr",
    "checkpoint.every",
    "data.num_workers",
    "seed",
    "data.split_seed",
)


def _value(config: Config, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def validate(config: Config) -> None:
    """Checks values that have the right type but are impossible (non-positive sizes, ...)."""
    for key, choices in _CHOICES.items():
        if _value(config, key) not in choices:
            raise UserError(
                f"{key} must be one of {', '.join(choices)}; got {_value(config, key)!r}"
            )
    for key in _POSITIVE:
        if _value(config, key) <= 0:
            raise UserError(f"{key} must be positive, got {_value(config, key)}")
    for key in _NON_NEGATIVE:
        if _value(config, key) < 0:
            raise UserError(f"{key} must be >= 0, got {_value(config, key)}")
    for key in ("model.dropout", "model.discriminator_dropout"):
        if not 0.0 <= _value(config, key) < 1.0:
            raise UserError(f"{key} must be in [0, 1), got {_value(config, key)}")
    if not 0.0 < config.model.bn_momentum <= 1.0:
        raise UserError(f"model.bn_momentum must be in (0, 1], got {config.model.bn_momentum}")
    if not config.model.classifier_widths or min(config.model.classifier_widths) <= 0:
        raise UserError("model.classifier_widths must be a non-empty list of positive widths")
    for group, group_cfg in config.optimizer.groups.items():
        if group_cfg.lr_mult < 0:
            raise UserError(f"optimizer.groups.{group}.lr_mult must be >= 0")
