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
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from uda_jax.errors import UserError, did_you_mean
from uda_jax.strict_yaml import StrictYamlError, kind_of, load_yaml, non_ascii, read_yaml_file


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which domains to adapt between and how batches are drawn.

    A domain is an embedded one (``mnist5k``, ``ucidigits``), a TFDS catalog dataset
    (``tfds:mnist``, ``tfds:svhn_cropped``) or an image dataset on disk under ``root``
    (``office31/amazon``, ``officehome/Art``, ``visda/train``, ``imageclef/i``,
    ``domainnet/clipart``, ``list:PATH`` or ``folder:PATH``; see :mod:`uda_jax.data.benchmarks`).
    """

    source: str = "mnist5k"  # the labelled domain (see the class docstring for the kinds)
    target: str = "ucidigits"  # the unlabelled domain; its test split is what is reported
    root: str | None = None  # dataset root of image/TFDS domains; default: $UDA_DATA_DIR
    batch_size: int = 32  # per domain: each step sees batch_size source + batch_size target
    image_size: int = 32  # embedded and TFDS digits domains
    test_fraction: float = 0.2  # embedded domains: the held-out share of each class
    split_seed: int = 0  # embedded domains: the seed of the train/test split
    eval_batch_size: int = 256  # images per evaluation batch (evaluation and pseudo-labels)
    # image domains: Resize((resize, resize)) → crop → flip → ImageNet normalisation
    resize: int = 256
    crop_size: int = 224  # image domains: the square crop the network sees
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
    classifier_widths: tuple[int, ...] = (256, 256)  # hidden widths of the mlp classifier head
    dropout: float = 0.5  # dropout before each Linear of the mlp classifier head
    # reference: N(0, 0.01²) (the official CGDM code); xavier; pytorch (torch.nn.Linear's default)
    classifier_init: typing.Literal["reference", "xavier", "pytorch"] = "reference"
    # unbiased: PyTorch's running variance (faithful); biased: flax's convention
    bn_running_var: typing.Literal["unbiased", "biased"] = "unbiased"
    bn_momentum: float = 0.1  # PyTorch convention: running ← (1 − m)·running + m·batch
    bn_eps: float = 1e-5  # BatchNorm's epsilon in the variance
    discriminator_hidden: int = 1024  # the adversarial methods' domain discriminator
    discriminator_dropout: float = 0.5  # dropout after each hidden layer of the discriminator


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Which method trains: a registered name (``cgdm``, ``metaalign``, ...) or the import path
    ``package.module:Name`` of a :class:`uda_jax.methods.Method` subclass defined elsewhere.
    Its options live in its own section, named after it."""

    name: str = "cgdm"  # a registered method, or package.module:ClassName of your own


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate schedule: ``inv`` (the papers' ``lr0·(1 + gamma·t)^(−power)``),
    ``constant``, or any optax schedule by name (``cosine_decay_schedule``, ...), called with
    ``optimizer.learning_rate`` as its first argument and ``kwargs``; ``t`` is the iteration."""

    name: str = "constant"  # constant | inv | any optax schedule (cosine_decay_schedule, ...)
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. {gamma: .., power: ..}


@dataclasses.dataclass(frozen=True)
class OptimizerGroupConfig:
    """Per-module overrides: learning-rate multiplier and optimizer keyword arguments."""

    lr_mult: float = 1.0  # this module's (group or group/path) multiplier of the learning rate
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # optimizer arguments of it


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Any optax optimizer by name, with its keyword arguments (see :mod:`uda_jax.optim`)."""

    name: str = "sgd"  # any optax optimizer taking a learning rate (sgd, adam, adamw, ...)
    learning_rate: float = 0.01  # the schedule's base value lr0
    weight_decay: float = 5e-4  # coupled L2 added to the gradient, as torch.optim.SGD does
    # keyword arguments of the optax optimizer, for every group (groups may override them)
    kwargs: dict[str, Any] = dataclasses.field(default_factory=lambda: {"momentum": 0.9})
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    # per module group (g, f, f1, f2, d) or module path (g/bottleneck): lr_mult and kwargs
    groups: dict[str, OptimizerGroupConfig] = dataclasses.field(
        default_factory=lambda: {"g": OptimizerGroupConfig(kwargs={"momentum": 0.0})}
    )


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints in ``<run_dir>/checkpoints``: what a resumed run restarts from."""

    every: int = 500  # save every this many steps; 0: only at the end and on SIGTERM/Ctrl-C
    keep: int = 3  # how many of the latest checkpoints to keep
    keep_best: bool = False  # also keep the best checkpoint by checkpoint.best_by
    # what keep_best ranks by: a validator, computed at each evaluation (see Model selection), or
    # oracle: the target test accuracy, which reads the target labels
    best_by: typing.Literal["im", "snd", "bnm", "entropy", "dev", "source_accuracy", "oracle"] = (
        "im"
    )


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
    steps: int = 1000  # training iterations
    seed: int = 0  # initialisation, batches and dropout: one seed, one run
    eval_every: int = 100  # 0: evaluate only at the end
    # BatchNorm statistics evaluation predicts with. running: those of training (the papers);
    # target: AdaBN, recomputed from the target training split before each evaluation
    eval_batchnorm: typing.Literal["running", "target"] = "running"
    # validators logged at each evaluation as eval/validator/<name>, without target labels:
    # entropy, im, bnm, snd (O(N²) in target examples), source_accuracy, dev (source passes)
    validators: tuple[str, ...] = ("entropy", "im", "bnm")
    log_every: int = 25  # write and show the training metrics every this many steps
    run_dir: str | None = None  # default: runs/<method>_<source>-<target>_<config hash>
    progress: bool = True  # progress bar (or plain lines when not a terminal) and status lines
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
        from_file = read_yaml_file(resolve_config_path(path))
        for key in from_file:
            _check_name(key, "")
        raw = _merge(Config, raw, _expand_names(from_file))
    parsed = [_named_override(*parse_override(item)) for item in overrides]
    _check_names(raw, parsed)
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


def _check_names(raw: dict[str, Any], parsed: list[tuple[str, Any]]) -> None:
    """The names of registered things (:data:`_NAMES`) in ASCII, before anything looks them
    up: a look-alike letter would otherwise read as an unknown name that looks right."""
    for key, value in parsed:
        if key in _NAMES and isinstance(value, str):
            _check_ascii_value(value, key)
    for key in _NAMES:
        node: Any = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, str):
            _check_ascii_value(node, key)


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
    for key in raw:
        _check_name(key, "")
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


def parse_override(item: str) -> tuple[str, Any]:
    """``(key, value)`` of one ``key=value`` override, the value read as YAML (text that is
    not valid YAML stays text).

    Raises:
      UserError: no ``=``, an empty or non-ASCII key, or a value YAML would read silently
        wrong (a duplicate key, an ambiguous number such as ``010``).
    """
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"override {item!r} is not of the form key=value (e.g. steps=200)")
    if not key.isascii():
        raise UserError(f"override {item!r}: the key {key!r} {non_ascii(key)}; retype it")
    if any(not part for part in key.split(".")):
        raise UserError(f"override {item!r}: the key {key!r} has an empty part (e.g. steps=200)")
    try:
        value = load_yaml(text) if text.strip() else ""
    except StrictYamlError as err:
        raise UserError(f"override {key}={text}: {err.message}") from None
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
        _check_name(key, where)
        if key not in fields:
            raise UserError(_unknown_key_message(str(key), where, list(fields)))
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, f"{where}{name}")
    return cls(**values)


def _check_name(key: Any, where: str) -> None:
    """A config key must be an ASCII string (YAML reads ``1:`` as a number)."""
    place = f"under {where.rstrip('.')}" if where else "at the top level"
    if not isinstance(key, str):
        raise UserError(
            f"the config key {key!r} {place} is {kind_of(key)}, not a name; config keys are names "
            "such as steps (quote it if you meant text)"
        )
    if not key.isascii():
        raise UserError(f"the config key {key!r} {place} {non_ascii(key)}; retype it")


# Values that name a registered thing: a look-alike character (a Cyrillic 'е') must not turn a
# valid name into an unknown one that reads the same.
_NAMES = ("method.name", "optimizer.name", "optimizer.schedule.name", "model.backbone")

INT_MAX = 2**31 - 1  # JAX counts steps and sizes in 32-bit integers
SEED_MAX = 2**32 - 1  # a 32-bit seed


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
        if inner is str and value == "":
            raise UserError(f"{key} is empty; write {key}=null (or leave it out) for its default")
        return _coerce(inner, value, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            inner = typing.get_args(hint)[0]
            example = "[256,256]" if inner is int else f"[{value}]"
            raise UserError(f"{key} must be a list, got {value!r} (e.g. {key}={example})")
        inner = typing.get_args(hint)[0]
        return tuple(_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise UserError(f"{key} must be a mapping, got {value!r}")
        args = typing.get_args(hint)
        inner = args[1] if args else Any
        for k in value:
            _check_name(k, key + ".")
        return {k: _coerce(inner, v, f"{key}.{k}") for k, v in value.items()}
    return _coerce_scalar(hint, value, key)


def _coerce_scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is Any:
        _check_plain_data(value, key)
        return value
    text = value
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    accepted = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}[hint]
    is_bool_as_number = isinstance(value, bool) and hint is not bool
    if isinstance(value, accepted) and not is_bool_as_number:
        if hint is float and not math.isfinite(float(value)):
            shown = text if isinstance(text, str) and text != repr(float(value)) else None
            got = f"{shown} (read as {float(value)!r})" if shown else repr(value)
            raise UserError(f"{key} must be a finite number, got {got}")
        if hint is int:
            _check_int(value, key)
        if hint is str and key in _NAMES:
            _check_ascii_value(value, key)
        if hint is str and not value.strip():
            raise UserError(f"{key} is empty; give a value (or leave the key out for its default)")
        return float(value) if hint is float else value
    raise UserError(f"{key} must be of type {hint.__name__}, got {value!r}{_int_hint(hint, value)}")


def _check_int(value: int, key: str) -> None:
    """Integers fit JAX's 32 bits (seeds: an unsigned 32-bit seed)."""
    limit = SEED_MAX if key.rpartition(".")[2] in ("seed", "split_seed") else INT_MAX
    if value > limit:
        raise UserError(f"{key} must be at most {limit} (a 32-bit integer), got {value}")
    if value < -INT_MAX:
        raise UserError(f"{key} must be at least {-INT_MAX} (a 32-bit integer), got {value}")


def _int_hint(hint: Any, value: Any) -> str:
    """`` (write 1000)`` for an integer written as ``1e3`` or ``1000.0``."""
    if hint is not int or isinstance(value, bool):
        return ""
    with contextlib.suppress(ValueError, TypeError, OverflowError):
        number = float(value)
        if math.isfinite(number) and number == int(number) and abs(number) <= INT_MAX:
            return f" (write {int(number)})"
    return ""


def _check_ascii_value(value: str, key: str) -> None:
    if value.isascii() or value in _registered(key):
        return
    raise UserError(f"{key} {value!r} {non_ascii(value)}; type the name in ASCII")


def _registered(key: str) -> Sequence[str]:
    """The names registered for ``key`` (a backbone or method of your own may be non-ASCII)."""
    if key == "model.backbone":
        from uda_jax.models import BACKBONES

        return list(BACKBONES)
    if key == "method.name":
        from uda_jax.methods.registry import names

        return names()
    return ()


def _check_plain_data(value: Any, key: str) -> None:
    """Free-form values (optimizer and schedule keyword arguments): finite numbers, integers
    of 32 bits, string keys (integer keys stay: optax's ``boundaries_and_scales``)."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            if not math.isfinite(float(value)):
                raise UserError(f"{key} must be a finite number, got {value}")
        return
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{key} must be a finite number, got {value!r}")
    if isinstance(value, int):
        _check_int(value, key)
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str) and not k.isascii():
                raise UserError(f"the key {k!r} under {key} {non_ascii(k)}; retype it")
            _check_plain_data(v, f"{key}.{k}")
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain_data(v, f"{key}[{i}]")


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
    _validate_data(config.data)
    _validate_validators(config.validators)
    _check_kwargs(config.optimizer.kwargs, "optimizer.kwargs.", _OPTIMIZER_RANGES)
    for group, group_cfg in config.optimizer.groups.items():
        _check_kwargs(group_cfg.kwargs, f"optimizer.groups.{group}.kwargs.", _OPTIMIZER_RANGES)
    _check_kwargs(config.optimizer.schedule.kwargs, "optimizer.schedule.kwargs.", _SCHEDULE_RANGES)
    for name, section in config.sections.items():
        check: Callable[[str], None] | None = getattr(section, "validate", None)
        if check is not None:
            check(f"{name}.")


def _validate_data(data: DataConfig) -> None:
    if not 0 < data.test_fraction < 1:
        raise UserError(f"data.test_fraction must be in (0, 1), got {data.test_fraction}")
    if data.image_size < 8:
        raise UserError(f"data.image_size must be at least 8, got {data.image_size}")
    if data.crop_size > data.resize:
        raise UserError(
            f"data.crop_size={data.crop_size} is larger than data.resize={data.resize}: the crop "
            "must fit in the resized image; lower data.crop_size or raise data.resize"
        )
    cores = os.cpu_count() or 1
    most = max(8, 4 * cores)
    if data.num_workers > most:
        raise UserError(
            f"data.num_workers={data.num_workers} is more worker processes than this machine "
            f"can use ({cores} CPU cores); use at most {most} (0 decodes in the main process)"
        )


def _validate_validators(names: Sequence[str]) -> None:
    """``validators``: known names, each once; ``oracle`` is not one (it reads target labels)."""
    from uda_jax.validators import ORACLE, VALIDATORS

    for name in names:
        if name == ORACLE:
            raise UserError(
                "validators cannot list oracle: it reads the target labels, and the target "
                "accuracy is logged at every evaluation anyway (eval/target_accuracy)"
            )
        if name not in VALIDATORS:
            hint = did_you_mean(name, VALIDATORS)
            raise UserError(
                f"validators: unknown validator {name!r}{hint}; valid: {', '.join(VALIDATORS)}"
            )
        if names.count(name) > 1:
            raise UserError(f"validators lists {name} twice; give each validator once")


def _positive(v: float) -> bool:
    return v > 0


def _non_negative(v: float) -> bool:
    return v >= 0


def _unit(v: float) -> bool:
    return 0 <= v < 1


# keyword arguments of optax optimizers and schedules whose range is known, by name
_OPTIMIZER_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "momentum": (_unit, "in [0, 1)"),
    "b1": (_unit, "in [0, 1)"),
    "b2": (_unit, "in [0, 1)"),
    "decay": (_unit, "in [0, 1)"),
    "eps": (_non_negative, ">= 0"),
    "eps_root": (_non_negative, ">= 0"),
    "weight_decay": (_non_negative, ">= 0"),
    "initial_accumulator_value": (_non_negative, ">= 0"),
}
_SCHEDULE_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "decay_steps": (_positive, "positive"),
    "transition_steps": (_positive, "positive (a schedule that never changes is 'constant')"),
    "warmup_steps": (_non_negative, ">= 0"),
    "transition_begin": (_non_negative, ">= 0"),
    "init_value": (_non_negative, ">= 0 (a learning rate)"),
    "peak_value": (_non_negative, ">= 0 (a learning rate)"),
    "end_value": (_non_negative, ">= 0 (a learning rate)"),
    "value": (_non_negative, ">= 0 (a learning rate)"),
    "alpha": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "pct_start": (lambda v: 0 < v < 1, "in (0, 1)"),
    "decay_rate": (_positive, "positive"),
    "exponent": (_positive, "positive"),
    "power": (_non_negative, ">= 0"),
    "gamma": (_non_negative, ">= 0"),
    "div_factor": (_positive, "positive"),
    "final_div_factor": (_positive, "positive"),
}


def _check_kwargs(
    kwargs: Mapping[str, Any], where: str, ranges: Mapping[str, tuple[Callable, str]]
) -> None:
    """The keyword arguments of a known range (``momentum`` in [0, 1), ``decay_steps`` > 0)."""
    for name, value in kwargs.items():
        if name not in ranges or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        test, text = ranges[name]
        if not test(value):
            raise UserError(f"{where}{name} must be {text}, got {value}")
