"""Experiment configuration: frozen dataclass sections, YAML files and dotted overrides.

A config is data. It is read from YAML, patched with ``key=value`` overrides from the command
line, and validated into frozen dataclasses before anything runs: an unknown key, a wrong type
or an impossible value raises :class:`uda_jax.errors.UserError` with one line that names the key
and the fix.

The fixed sections are ``method`` (which method), ``model``, ``data``, ``optimizer`` and
``checkpoint``. Each method brings its own section, named after it (``cgdm.gd_weight``,
``dann.trade_off``, ``metaalign.order``): its frozen config dataclass, found through the method
registry (:mod:`uda_jax.methods`). Only the sections of the method in use are accepted, so an
option of another method is an unknown-key error.

The defaults of :class:`Config` are the embedded demo (CGDM on mnist5k → ucidigits), so
``python -m uda_jax.train`` needs no file; ``configs/digits_cgdm.yaml`` spells the same values out.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
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
    # image domains: Resize((resize, resize)) → crop → flip → ImageNet normalisation
    resize: int = 256
    crop_size: int = 224
    # random: the ImageCLEF and MetaAlign scripts; center: the CGDM VisDA/DomainNet scripts
    train_crop: typing.Literal["random", "center"] = "random"
    # center: deterministic; train: the random training transform, as the CGDM scripts test
    eval_transform: typing.Literal["center", "train"] = "center"
    num_workers: int = 0  # grain worker processes decoding images (0: in the main process)
    skip_unreadable: bool = False  # drop unreadable images (counted in the log) instead of failing


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Feature extractor G (backbone + optional bottleneck) and the heads the method asks for."""

    backbone: str = "lenet"  # a registered backbone: lenet | resnet18/34/50/101/152 | your own
    pretrained: str | None = None  # ImageNet weights of the backbone (.pth or .safetensors)
    bottleneck_dim: int = 0  # 0: no bottleneck; the ResNet runs of the papers use 256
    train_bottleneck: bool = True  # the official VisDA/DomainNet scripts never step it
    classifier_widths: tuple[int, ...] = (256, 256)
    dropout: float = 0.5
    # reference: N(0, 0.01²) (the official CGDM code); xavier; pytorch (torch.nn.Linear's default)
    classifier_init: typing.Literal["reference", "xavier", "pytorch"] = "reference"
    # unbiased: PyTorch's running variance (faithful); biased: flax's convention
    bn_running_var: typing.Literal["unbiased", "biased"] = "unbiased"
    bn_momentum: float = 0.1  # PyTorch convention: running ← (1 − m)·running + m·batch
    bn_eps: float = 1e-5
    discriminator_hidden: int = 1024  # the adversarial methods' domain discriminator
    discriminator_dropout: float = 0.5


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Which method trains: a registered name (``cgdm``, ``metaalign``, ...) or the import path
    ``package.module:Name`` of a :class:`uda_jax.methods.Method` subclass defined elsewhere.
    Its options live in its own section, named after it."""

    name: str = "cgdm"


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate schedule: ``inv`` (the papers' ``lr0·(1 + gamma·t)^(−power)``),
    ``constant``, or any optax schedule by name (``cosine_decay_schedule``, ...), called with
    ``optimizer.learning_rate`` as its first argument and ``kwargs``; ``t`` is the iteration."""

    name: str = "constant"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


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
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    groups: dict[str, OptimizerGroupConfig] = dataclasses.field(
        default_factory=lambda: {"g": OptimizerGroupConfig(kwargs={"momentum": 0.0})}
    )


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints in ``<run_dir>/checkpoints``: what a resumed run restarts from."""

    every: int = 500  # save every this many steps; 0: only at the end and on SIGTERM/Ctrl-C
    keep: int = 3  # how many of the latest checkpoints to keep
    keep_best: bool = False  # also keep the best by target accuracy (oracle selection)


def _default_sections() -> Mapping[str, Any]:
    from uda_jax.methods.registry import default_sections

    return default_sections(MethodConfig().name)


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment. Defaults: the embedded CGDM demo, mnist5k → ucidigits.

    ``sections`` holds the method's own config sections by name (``config.cgdm``, or
    ``config.metaalign`` and ``config.gvb``); read one as an attribute or with :meth:`section`.
    """

    method: MethodConfig = dataclasses.field(default_factory=MethodConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    steps: int = 400
    seed: int = 0
    eval_every: int = 100  # 0: evaluate only at the end
    log_every: int = 25
    run_dir: str | None = None  # default: runs/<method>_<source>-<target>_<config hash>
    progress: bool = True
    tensorboard: bool = True  # TensorBoard event files in <run_dir>/tensorboard
    plots: bool = True  # curves.png at the end: losses, learning rate and accuracy by step
    tsne: bool = False  # also features_tsne.png: a t-SNE before/after adaptation (minutes)
    precision: typing.Literal["float32", "bf16"] = "float32"  # bf16: compute only
    distributed: bool = False  # join the other hosts through jax.distributed.initialize()
    # CPU-only speed (uda_jax.cpu): auto: on when the platform is CPU; on; off. Same numbers.
    cpu_tuning: typing.Literal["auto", "on", "off"] = "auto"
    sections: Mapping[str, Any] = dataclasses.field(default_factory=_default_sections)

    def section(self, name: str) -> Any:
        """The method section ``name`` (a frozen dataclass)."""
        try:
            return self.sections[name]
        except KeyError:
            raise AttributeError(f"this config has no section {name!r}") from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "sections":
            raise AttributeError(name)
        return self.section(name)


FIXED_SECTIONS = tuple(f.name for f in dataclasses.fields(Config) if f.name != "sections")

# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Reads a YAML config (or the defaults), applies ``a.b=value`` overrides and validates.

    ``path`` is a YAML file or the name of a packaged config (``digits_cgdm``). Layers, lowest
    first: the defaults, the file, the overrides. A mapping given in a file
    (``optimizer.kwargs``, ``optimizer.groups``) replaces the default one whole. An override
    that changes ``optimizer.name`` clears the optimizer keyword arguments of the lower layers
    (they were meant for the other optimizer); one that changes ``method.name`` drops the file's
    sections that the new method does not use. A section with a ``name`` key may be given as
    its name alone (``schedule: inv``, ``method: dann``).

    Raises:
      UserError: missing or unreadable file, unknown key, wrong type or impossible value.
    """
    raw = to_dict(_fixed_defaults())
    if path is not None:
        raw = _merge(Config, raw, _expand_names(_read_yaml(resolve_config_path(path))))
    parsed = [_named_override(*_parse_override(item)) for item in overrides]
    new_optimizer = dict(parsed).get("optimizer.name")
    if new_optimizer is not None and new_optimizer != raw.get("optimizer", {}).get("name"):
        _clear_optimizer_kwargs(raw)
    if any(key.startswith("method.") or key.endswith(".base") for key, _ in parsed):
        _drop_unused_sections(raw, parsed)
    for key, value in parsed:
        _set_dotted(raw, key, value)
    config = build_config(raw)
    validate(config)
    return config


_NAMED_SECTIONS = ("method", "optimizer.schedule")


def _expand_names(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the shorthand of a named section (``schedule: inv``) written out."""
    for key in _NAMED_SECTIONS:
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(last), str):
            node[last] = {"name": node[last]}
    return raw


def _named_override(key: str, value: Any) -> tuple[str, Any]:
    """``method=dann`` as ``method.name=dann`` (and so for every named section)."""
    if key in _NAMED_SECTIONS and isinstance(value, str):
        return f"{key}.name", value
    return key, value


def _method_name(raw: dict[str, Any]) -> Any:
    method = raw.get("method")
    return method.get("name") if isinstance(method, dict) else None


def _drop_unused_sections(raw: dict[str, Any], parsed: list[tuple[str, Any]]) -> None:
    """Removes the lower layers' method sections that the method chosen by the overrides does
    not read, when the overrides change which sections that is (``method.name``, a wrapper's
    ``base``)."""
    from uda_jax.methods.registry import method_sections

    after = copy.deepcopy(raw)
    for key, value in parsed:
        _set_dotted(after, key, value)
    wanted = method_sections(_method_name(after), after)
    try:
        before = method_sections(_method_name(raw), raw)
    except UserError:
        before = {}
    if set(before) == set(wanted):
        return
    for key in [k for k in raw if k not in FIXED_SECTIONS and k not in wanted]:
        del raw[key]


def configs_dir() -> Path | None:
    """The folder of the packaged configs: ``uda_jax/configs`` in an installed wheel, the
    repository's ``configs/`` in a checkout (None if neither is there)."""
    try:
        import importlib.resources

        folder = Path(str(importlib.resources.files("uda_jax.configs")))
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parent.parent / "configs"
    return folder if folder.is_dir() else None


def resolve_config_path(name: str | Path) -> Path:
    """``name`` as a path, or the packaged config of that name (``digits_cgdm``).

    Raises:
      UserError: neither a file nor a packaged config.
    """
    path = Path(name)
    if path.is_file():
        return path
    folder = configs_dir()
    if folder is not None and path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
        packaged = folder / f"{path.name}.yaml"
        if packaged.is_file():
            return packaged
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        hint = did_you_mean(path.name, names)
        raise UserError(
            f"no config file or packaged config {str(name)!r}{hint}; packaged: {', '.join(names)}"
        )
    raise UserError(f"config file not found: {path} (give the path of a YAML file)")


def _fixed_defaults() -> dict[str, Any]:
    return {f.name: _field_default(f) for f in dataclasses.fields(Config) if f.name != "sections"}


def _field_default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def build_config(raw: Mapping[str, Any]) -> Config:
    """The :class:`Config` of plain data (a parsed YAML mapping), every key and type checked."""
    from uda_jax.methods.registry import method_sections

    if not isinstance(raw, Mapping):
        raise UserError(f"config must be a mapping of keys, got {raw!r}")
    fixed = {k: v for k, v in raw.items() if k in FIXED_SECTIONS}
    config = _build(Config, fixed, "")
    wanted = method_sections(config.method.name, raw)
    sections = {}
    for key, value in raw.items():
        if key in FIXED_SECTIONS:
            continue
        if key not in wanted:
            raise UserError(_foreign_section_message(key, config.method.name, list(wanted)))
        sections[key] = value
    built = {name: _build(cls, sections.get(name, {}), f"{name}.") for name, cls in wanted.items()}
    return dataclasses.replace(config, sections=types.MappingProxyType(built))


def _foreign_section_message(key: str, method: str, wanted: list[str]) -> str:
    from uda_jax.methods.registry import names

    valid = [*FIXED_SECTIONS, *wanted]
    if key in names():
        return (
            f"config section '{key}' belongs to method {key}, but method.name is {method!r}; "
            f"remove it or set method.name={key} (this method's sections: {', '.join(wanted)})"
        )
    return _unknown_key_message(key, "", valid)


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
    """The config as plain YAML-friendly data (tuples become lists, sections top-level)."""
    if isinstance(config, Config):
        fixed = {name: to_dict(getattr(config, name)) for name in FIXED_SECTIONS}
        return fixed | {name: to_dict(value) for name, value in config.sections.items()}
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, tuple | list):
        return [to_dict(v) for v in config]
    return config


def dump_yaml(config: Config) -> str:
    """The resolved config as YAML text, loadable again with :func:`load_config`."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


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
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise UserError(_unknown_key_message(str(key), where, list(fields)))
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, f"{where}{name}")
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, str) and "name" in {f.name for f in dataclasses.fields(hint)}:
            value = {"name": value}  # shorthand: `schedule: inv` is `schedule: {name: inv}`
        return _build(hint, value, key + ".")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if isinstance(value, bool) and {"on", "off"} <= set(choices):
            value = "on" if value else "off"  # YAML 1.1 reads on/off as booleans
        if value not in choices:
            raise UserError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
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
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise UserError(f"{key} must be a mapping, got {value!r}")
        args = typing.get_args(hint)
        inner = args[1] if args else Any
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
        if hint is float and not math.isfinite(float(value)):
            raise UserError(f"{key} must be a finite number, got {value!r}")
        return float(value) if hint is float else value
    raise UserError(f"{key} must be of type {hint.__name__}, got {value!r}")


def _unknown_key_message(key: str, where: str, valid: list[str]) -> str:
    hint = did_you_mean(key, valid, prefix=where)
    return f"unknown config key '{where}{key}'{hint}; valid keys here: {', '.join(valid)}"


# ----------------------------------------------------------------------------- validation

_POSITIVE = (
    "steps",
    "log_every",
    "data.batch_size",
    "data.eval_batch_size",
    "data.image_size",
    "optimizer.learning_rate",
    "model.discriminator_hidden",
    "checkpoint.keep",
    "data.resize",
    "data.crop_size",
)
_NON_NEGATIVE = (
    "eval_every",
    "model.bottleneck_dim",
    "optimizer.weight_decay",
    "checkpoint.every",
    "data.num_workers",
    "seed",
    "data.split_seed",
)


def _value(config: Config, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def check_range(section: Any, where: str, positive=(), non_negative=(), unit=()) -> None:
    """One-line :class:`UserError` for the first field of ``section`` out of its range:
    ``positive`` (> 0), ``non_negative`` (>= 0), ``unit`` (in [0, 1))."""
    for names, test, text in (
        (positive, lambda v: v > 0, "positive"),
        (non_negative, lambda v: v >= 0, ">= 0"),
        (unit, lambda v: 0 <= v < 1, "in [0, 1)"),
    ):
        for name in names:
            value = getattr(section, name)
            if not test(value):
                raise UserError(f"{where}{name} must be {text}, got {value}")


def validate(config: Config) -> None:
    """Checks values that have the right type but are impossible (non-positive sizes, ...),
    then each method section's own ``validate()`` when it has one."""
    for key in _POSITIVE:
        if _value(config, key) <= 0:
            raise UserError(f"{key} must be positive, got {_value(config, key)}")
    for key in _NON_NEGATIVE:
        if _value(config, key) < 0:
            raise UserError(f"{key} must be >= 0, got {_value(config, key)}")
    check_range(config.model, "model.", unit=("dropout", "discriminator_dropout"))
    if not 0.0 < config.model.bn_momentum <= 1.0:
        raise UserError(f"model.bn_momentum must be in (0, 1], got {config.model.bn_momentum}")
    if config.model.bn_eps <= 0:
        raise UserError(f"model.bn_eps must be positive, got {config.model.bn_eps}")
    if not config.model.classifier_widths or min(config.model.classifier_widths) <= 0:
        raise UserError("model.classifier_widths must be a non-empty list of positive widths")
    for group, group_cfg in config.optimizer.groups.items():
        if group_cfg.lr_mult < 0:
            raise UserError(f"optimizer.groups.{group}.lr_mult must be >= 0")
    for name, section in config.sections.items():
        check: Callable[[str], None] | None = getattr(section, "validate", None)
        if check is not None:
            check(f"{name}.")
