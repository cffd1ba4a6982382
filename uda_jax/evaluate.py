"""Command line: ``python -m uda_jax.evaluate RUN_DIR_OR_CHECKPOINT [key=value ...]``.

Restores a run's checkpoint (the latest, or the one named by the path or ``step=``) and reports
overall accuracy, mean class accuracy and the per-class table on a domain the config knows, and
the score of every unsupervised validator (:mod:`uda_jax.validators`) of the checkpoint: for the
run's source and target whatever ``domain=`` and ``split=`` say, from the target's training split
without labels, the source's test split and, for DEV, the source's training split.

Keys:
  domain=NAME      the domain to evaluate (default: the run's target)
  split=test       test (default) or train
  step=N           the checkpoint step (default: the latest)
  features=PATH    also write features, logits, predictions and labels to PATH (.npz)
  json=true        print the metrics as one JSON object instead of a table
"""

from __future__ import annotations

import sys

from uda_jax import cli, validators

if __name__ == "__main__" and cli.wants_help(sys.argv[1:]):  # answer before JAX is imported
    raise SystemExit(cli.print_help("evaluate"))

import errno
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from uda_jax.checkpoint import Checkpointer
from uda_jax.config import load_config, parse_override
from uda_jax.data.domains import check_compatible
from uda_jax.data.sources import AnyDomain, domain_batches, load_data_domain, split_labels
from uda_jax.errors import UserError, did_you_mean
from uda_jax.evaluation import Predictor, classification_metrics, predict_batches
from uda_jax.experiment import build_experiment, compile_predict, create_train_state
from uda_jax.run_dir import training_fields

USAGE = cli.EVALUATE_USAGE
KEYS = {"domain": str, "split": str, "step": int, "features": str, "json": bool}


def parse_args(argv: Sequence[str]) -> tuple[Path, dict[str, Any]]:
    """``(path, options)`` from the command line; every mistake is a :class:`UserError`."""
    if cli.wants_help(argv):
        raise SystemExit(cli.print_help("evaluate"))
    if not argv or "=" in argv[0]:
        raise UserError(f"give a run directory or a checkpoint; {USAGE}")
    options: dict[str, Any] = {"split": "test", "json": False}
    for arg in argv[1:]:
        key, sep, text = arg.partition("=")
        if not sep:
            raise UserError(f"argument {arg!r} is not key=value; {USAGE}")
        if key not in KEYS:
            hint = did_you_mean(key, KEYS)
            raise UserError(f"unknown key {key!r}{hint}; valid keys: {', '.join(KEYS)}")
        value = text if KEYS[key] is str else parse_override(arg)[1]
        if not isinstance(value, KEYS[key]) or (KEYS[key] is int and isinstance(value, bool)):
            raise UserError(f"{key} must be of type {KEYS[key].__name__}, got {text!r}")
        options[key] = value
    if options["split"] not in ("train", "test"):
        raise UserError(f"split must be train or test, got {options['split']!r}")
    if "features" in options:
        if not options["features"].strip():
            raise UserError("features= is empty; give a file path ending in .npz")
        check_features_path(Path(options["features"]))
    return Path(argv[0]), options


def check_features_path(out: Path) -> None:
    """Refuses a ``features=`` path that cannot be written, before the evaluation runs.

    Raises:
      UserError: a folder, no ``.npz`` suffix (numpy would add one), its folder missing or
        not writable, a name too long, or a read-only file or dangling symlink in its place.
    """
    try:
        _check_features_path(out)
    except OSError as err:  # a folder on the way that cannot be looked into (EACCES)
        raise UserError(
            f"features={out}: cannot look at {err.filename or out} ({err.strerror or err}); "
            "choose another path"
        ) from None


def _check_features_path(out: Path) -> None:
    name_max = _name_max(out.parent)
    if len(os.fsencode(out.name)) + 16 > name_max:  # with the temporary file's affixes
        raise UserError(
            f"features={out}: the file name is longer than this filesystem allows ({name_max} "
            "bytes); choose a shorter name"
        )
    if out.is_dir():
        raise UserError(
            f"features={out} is a folder; give a file path ending in .npz "
            f"(e.g. features={out / 'features.npz'})"
        )
    if out.suffix != ".npz":
        raise UserError(
            f"features={out} does not end in .npz (numpy would write {out}.npz); "
            f"write features={out}.npz"
        )
    folder = out.parent
    if folder.exists() and not folder.is_dir():
        raise UserError(f"features={out}: {folder} is a file, not a folder; choose another path")
    if not folder.is_dir():
        raise UserError(f"features={out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"features={out}: no permission to write in {folder}; choose another path")
    if out.is_symlink() and not out.exists():
        raise UserError(
            f"features={out} is a symlink to {os.readlink(out)}, which does not exist; "
            "choose another path"
        )
    if out.exists() and not os.access(out, os.W_OK):
        raise UserError(f"features={out} exists and is read-only; choose another path")


def _name_max(folder: Path) -> int:
    """NAME_MAX of the filesystem of ``folder`` (or of the nearest folder above that exists)."""
    for candidate in [folder, *folder.parents]:
        try:
            return os.pathconf(candidate, "PC_NAME_MAX")
        except (OSError, ValueError):
            continue
    return 255


def write_features(out: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` through a temporary file in the same folder, so ``out`` is never
    half-written (a full disk leaves no file behind)."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def locate(path: Path, step: int | None) -> tuple[Path, int | None]:
    """``(run directory, checkpoint step or None for the latest)`` of a run directory or of a
    checkpoint directory ``<run_dir>/checkpoints/<step>``."""
    if not path.exists():
        raise UserError(f"{path} does not exist; give a run directory or a checkpoint directory")
    if path.name.isdigit() and path.parent.name == "checkpoints":
        if step is not None and step != int(path.name):
            raise UserError(f"step={step} contradicts the checkpoint {path}")
        return path.parent.parent, int(path.name)
    if not (path / "config.yaml").is_file():
        raise UserError(f"{path} is not a run directory (it has no config.yaml)")
    return path, step


def _domain(experiment, name: str | None) -> AnyDomain:
    if name is None or name == experiment.target.name:
        return experiment.target
    if name == experiment.source.name:
        return experiment.source
    domain = load_data_domain(name, experiment.config.data)
    check_compatible(experiment.source, domain)
    return domain


def evaluate(path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Restores the checkpoint and returns the metrics and the validators' scores (and writes
    features when asked)."""
    run_dir, step = locate(path, options.get("step"))
    config = load_config(run_dir / "config.yaml")
    experiment = build_experiment(config)
    like = create_train_state(experiment)
    checkpoints = run_dir / "checkpoints"
    if not checkpoints.is_dir():
        raise UserError(f"run {run_dir} has no checkpoints")
    identity = training_fields(config)
    with Checkpointer(
        checkpoints, config.checkpoint, identity=identity, read_only=True
    ) as checkpointer:
        steps = checkpointer.steps()
        if not steps:
            raise UserError(f"run {run_dir} has no complete checkpoint")
        if step is None:
            step = steps[-1]  # the newest; a damaged one is refused, never replaced silently
        if step not in steps:
            listed = ", ".join(map(str, steps))
            raise UserError(f"run {run_dir} has no checkpoint of step {step} (it has {listed})")
        restored = checkpointer.restore(step, like)
    domain = _domain(experiment, options.get("domain"))
    split = options["split"]
    labels = split_labels(domain, split)
    predictor = Predictor(experiment)
    state = predictor.evaluated(restored.state)  # as training evaluated (eval_batchnorm)
    roles = {id(experiment.target): "target", id(experiment.source): "source"}
    if id(domain) in roles:  # the run's own domains: the predictor compiled for the validators
        features, logits = predictor(state, roles[id(domain)], split)
    else:
        batches = domain_batches(domain, split, config.data)
        predict_fn = compile_predict(experiment)
        features, logits = predict_batches(predict_fn, state.params, state.batch_stats, batches)
    predictions = np.argmax(logits, axis=1)
    metrics = classification_metrics(predictions, labels, domain.class_names)
    if options.get("features"):
        out = Path(options["features"])
        check_features_path(out)  # again: the folder may have changed while evaluating
        write_features(
            out, features=features, logits=logits, predictions=predictions, labels=labels
        )
    return {
        "run_dir": str(run_dir),
        "step": restored.step,
        "domain": domain.name,
        "split": split,
        "num_examples": len(labels),
        **metrics,
        "validators": validator_report(predictor, state, config.seed),
    }


def validator_report(predictor: Predictor, state: Any, seed: int) -> dict[str, dict[str, Any]]:
    """``{name: {"value": score or None (NaN), "higher_is_better": bool}}`` of every validator
    (:data:`uda_jax.validators.VALIDATORS`) for ``state``."""
    scores = validators.state_scores(predictor, state, validators.VALIDATORS, seed=seed)
    return {
        name: {
            "value": value if np.isfinite(value) else None,
            "higher_is_better": validators.DEFINITIONS[name].higher_is_better,
        }
        for name, value in scores.items()
    }


def format_table(result: dict[str, Any]) -> str:
    """The metrics as a small text table, per-class rows last."""
    lines = [
        f"{result['domain']} ({result['split']}, {result['num_examples']} images), "
        f"checkpoint step {result['step']} of {result['run_dir']}",
        f"  accuracy             {result['accuracy']:.4f}",
        f"  mean class accuracy  {result['mean_class_accuracy']:.4f}",
        "  per class:",
    ]
    for key, value in result.items():
        if key.startswith("per_class/"):
            lines.append(f"    {key.removeprefix('per_class/'):<20} {value:.4f}")
    lines.append("  validators (no target labels: target train, source test and train splits):")
    for name, entry in result["validators"].items():
        value = math.nan if entry["value"] is None else entry["value"]
        better = "higher" if entry["higher_is_better"] else "lower"
        lines.append(f"    {name:<20} {value:>9.4f}  {better} is better")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code: 2 for any user mistake (found before the
    evaluation runs), 1 for a disk that fills while the features are written."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        path, options = parse_args(argv)
        result = evaluate(path, options)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped: interrupted (Ctrl-C); evaluate writes nothing", file=sys.stderr)
        return 130
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" {err.filename}" if err.filename else ""
        print(
            f"error: disk full while writing{where}; no features file was written", file=sys.stderr
        )
        return 1
    print(json.dumps(result) if options["json"] else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
