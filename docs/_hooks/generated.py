"""MkDocs hook: the pages' generated parts, written at build time from the library itself.

A page holds a marker line, e.g. ``<!-- generated: fixed-keys -->``, and the hook replaces it
with Markdown made by :mod:`uda_jax.config_docs` (the same tables ``--help`` prints): every key of
the fixed config sections and of each built-in method's section with its type, default and
meaning, and the names of the packaged configs. Nothing here is copied by hand from the config
classes, so the reference cannot fall behind them.

A meaning comes from the comment next to the field in its source. The few keys that have none
yet get the sentence in :data:`FALLBACK_MEANINGS`; a comment in the source always wins.
``tests/test_docs.py`` imports this file and checks that every key is rendered with a meaning.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from collections.abc import Callable

from uda_jax import config as config_module
from uda_jax import config_docs

# Sentences for the keys whose source has no comment yet (a source comment replaces them).
FALLBACK_MEANINGS = {
    "method.name": "the method that trains: a registered name (see the sections below) or the "
    "import path package.module:ClassName of your own Method subclass",
    "model.classifier_widths": "hidden widths of the MLP classifier head (mcd, cgdm, "
    "source_only); the adversarial methods use a linear head",
    "model.dropout": "dropout rate of the classifier heads",
    "model.bn_eps": "BatchNorm epsilon",
    "model.discriminator_dropout": "dropout rate of the domain discriminator",
    "data.source": "the labelled source domain (a domain name, see Datasets and weights)",
    "data.target": "the unlabelled target domain; its test split is what is evaluated",
    "data.split_seed": "embedded domains: seed of the stratified train/test split",
    "data.eval_batch_size": "batch size of the evaluation passes (and the pseudo-label pass)",
    "data.crop_size": "image domains: side of the random or center crop",
    "optimizer.name": "any optax optimizer that takes learning_rate (sgd, adam, adamw, lion, ...)",
    "optimizer.learning_rate": "base learning rate lr0, scaled by the schedule and each "
    "group's lr_mult",
    "optimizer.kwargs": "keyword arguments of the optax optimizer (cleared when an override "
    "changes optimizer.name)",
    "optimizer.schedule.name": "inv (lr0·(1 + gamma·t)^(−power)), constant, or any optax "
    "schedule by name, called with the learning rate first; t is the iteration",
    "optimizer.schedule.kwargs": "keyword arguments of the schedule (inv: gamma, power)",
    "optimizer.groups": "per module group (g, f, f1, f2, d): lr_mult and kwargs overriding "
    "optimizer.kwargs for that group",
    "optimizer.groups.<group>.lr_mult": "learning-rate multiplier of the group",
    "optimizer.groups.<group>.kwargs": "optimizer keyword arguments of the group, laid over "
    "optimizer.kwargs",
    "steps": "training iterations",
    "seed": "seed of the parameters, the dropout masks and the batch order",
    "log_every": "write metrics.jsonl (and check the losses are finite) every this many steps",
    "progress": "show the progress bar and status lines on stderr",
    "grl_alpha": "steepness of the reversal's schedule c(t)",
    "metaalign.roles": "alternate (the official code), or always align_first / cls_first",
}

FIXED_SECTIONS = ("method", "model", "data", "optimizer", "checkpoint")
GROUP_CLASS = config_module.OptimizerGroupConfig


def _fallback(name: str) -> str:
    """The fallback meaning of key ``name`` (method keys by their last part too)."""
    return FALLBACK_MEANINGS.get(name) or FALLBACK_MEANINGS.get(name.split(".")[-1], "")


def meaning(key: config_docs.Key) -> str:
    """The key's meaning: its source comment, else its fallback sentence."""
    return key.meaning or _fallback(key.name)


def type_text(text: str) -> str:
    """``typing.Literal['a', 'b']`` as ``a | b``; other types as written."""
    found = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", text)
    if found:
        return " | ".join(str(v) for v in ast.literal_eval(f"[{found.group(1)}]"))
    return text.replace("uda_jax.config.", "")


def _yaml_flow(value: object) -> str:
    """A Python value as a YAML flow value: ``null``, ``true``, ``[256, 256]``, ``{a: 1}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value or "''"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml_flow(v) for v in value) + "]"
    return repr(value)


def default_text(key: config_docs.Key) -> str:
    """A key's default as it is written in a YAML config (``'cgdm'`` → ``cgdm``)."""
    if key.name == "optimizer.groups":  # a mapping of dataclasses: their fields, as YAML has them
        return _yaml_flow(config_module.to_dict(config_module.OptimizerConfig().groups))
    try:
        return _yaml_flow(ast.literal_eval(key.default))
    except (ValueError, SyntaxError):
        return key.default


def _cell(text: str) -> str:
    """Table-cell text: pipes escaped, no line breaks."""
    return text.replace("|", r"\|").replace("\n", " ")


def _row(name: str, type_: str, default: str, text: str) -> str:
    return f"| `{name}` | {_cell(type_)} | `{_cell(default)}` | {_cell(text)} |"


def _table(keys: list[config_docs.Key]) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key in keys:
        lines.append(_row(key.name, type_text(key.type), default_text(key), meaning(key)))
        if key.name == "optimizer.groups":
            lines += _group_rows()
    return lines


def _group_rows() -> list[str]:
    """The fields of one ``optimizer.groups.<group>`` entry (:class:`OptimizerGroupConfig`)."""
    rows = []
    hints = typing.get_type_hints(GROUP_CLASS)
    for field in dataclasses.fields(GROUP_CLASS):
        default = field.default
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        name = f"optimizer.groups.<group>.{field.name}"
        hint = hints[field.name]
        type_ = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
        type_ = type_ or str(hint).replace("typing.", "")
        rows.append(_row(name, type_, _yaml_flow(default), _fallback(name)))
    return rows


def fixed_keys_markdown() -> str:
    """One table per fixed section, then the top-level keys."""
    keys = config_docs.fixed_keys()
    out = []
    for section in FIXED_SECTIONS:
        out += [
            f"### `{section}`",
            "",
            *_table([k for k in keys if k.name.startswith(section + ".")]),
        ]
        out.append("")
    top = [k for k in keys if "." not in k.name]
    out += ["### Top-level keys", "", *_table(top), ""]
    return "\n".join(out)


def method_sections_markdown() -> str:
    """One table per built-in method's section (a method without options says so)."""
    out = []
    for method, keys in config_docs.method_sections().items():
        out += [f"### `{method}`", ""]
        if keys:
            out += _table(keys)
        else:
            out.append(f"`{method}` has no options (its section is empty).")
        out.append("")
    return "\n".join(out)


def packaged_configs_markdown() -> str:
    """The packaged config names, as a bulleted list grouped by their first word."""
    groups: dict[str, list[str]] = {}
    for name in config_docs.packaged_configs():
        groups.setdefault(name.split("_")[0], []).append(name)
    return "\n".join(f"- {', '.join(f'`{n}`' for n in names)}" for names in groups.values())


GENERATORS: dict[str, Callable[[], str]] = {
    "<!-- generated: fixed-keys -->": fixed_keys_markdown,
    "<!-- generated: method-sections -->": method_sections_markdown,
    "<!-- generated: packaged-configs -->": packaged_configs_markdown,
}


def render(markdown: str) -> str:
    """``markdown`` with every generated marker replaced by its generated Markdown."""
    for marker, generate in GENERATORS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown


def on_page_markdown(markdown: str, **kwargs) -> str:
    """MkDocs event: fills in the generated parts of a page."""
    del kwargs
    return render(markdown)
