"""Evaluation: batched eval-mode predictions and the accuracy metrics of the papers.

Overall accuracy (Office, ImageCLEF, digits) and mean per-class accuracy (VisDA), with the
per-class table. The prediction is ``argmax`` of the summed classifiers' logits.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uda_jax.data.sources import domain_batches, num_examples
from uda_jax.experiment import Experiment, compile_predict, create_train_state
from uda_jax.state import TrainState

PyTree = Any


def predict_batches(
    predict_fn, params: PyTree, stats: PyTree, batches: Iterable[tuple[Any, Any, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """``(features [N, dim], logits [N, classes])`` over ``(images, labels, num_valid)``
    batches (padded rows dropped), in order."""
    features, logits = [], []
    for batch, _, valid in batches:
        f, z = predict_fn(params, stats, batch)
        features.append(np.asarray(f)[:valid])
        logits.append(np.asarray(z)[:valid])
    return np.concatenate(features), np.concatenate(logits)


def classification_metrics(
    predictions: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]
) -> dict[str, float]:
    """``accuracy``, ``mean_class_accuracy`` and ``per_class/<name>``.

    A class with no test example (a benchmark class without images) has no accuracy: its
    ``per_class`` value is NaN here (``"nan"`` in ``metrics.jsonl``, ``null`` in
    ``results.json``, see :func:`uda_jax.loop.final_results`) and it is left out of the mean,
    which averages the classes that have test examples.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    accuracy = float(np.mean(predictions == labels)) if labels.size else float("nan")
    metrics = {"accuracy": accuracy}
    defined = []
    for index, name in enumerate(class_names):
        members = labels == index
        value = float(np.mean(predictions[members] == index)) if members.any() else float("nan")
        metrics[f"per_class/{name}"] = value
        if members.any():
            defined.append(value)
    metrics["mean_class_accuracy"] = float(np.mean(defined)) if defined else float("nan")
    return metrics


class Predictor:
    """Eval-mode predictions of an experiment's network on its domains (compiled once)."""

    def __init__(self, experiment: Experiment):
        self.experiment = experiment
        self._predict = compile_predict(experiment)

    def __call__(
        self, state: TrainState, domain: str, split: str, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(features, logits)`` of ``domain`` (``source`` or ``target``) ``split`` (``train``
        or ``test``), optionally only the examples ``rows``, in order."""
        data = self.experiment.source if domain == "source" else self.experiment.target
        batches = domain_batches(data, split, self.experiment.config.data, rows)
        return predict_batches(self._predict, state.params, state.batch_stats, batches)

    def evaluate_target(self, state: TrainState) -> dict[str, float]:
        """Accuracy metrics on the target test split, keys ``eval/target_...``."""
        target = self.experiment.target
        _, logits = self(state, "target", "test")
        metrics = classification_metrics(
            np.argmax(logits, axis=1), target.test_labels, target.class_names
        )
        return {f"eval/target_{k}": v for k, v in metrics.items()}


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """Whether every float in ``tree`` is finite (one device-side reduction)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def write_curves(experiment: Experiment, run_dir: Path) -> None:
    """``curves.png`` from ``metrics.jsonl``, in panels the method's metrics define."""
    from uda_jax.plots import plot_curves

    method = experiment.method
    plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", method.alignment_metrics)


def write_tsne(predictor: Predictor, state: TrainState, run_dir: Path | None) -> None:
    """``features_tsne.png``: source and target features of the network at initialisation
    (before adaptation) and now (after), coloured by class. ``run_dir`` None: compute the
    features only (the other processes of a multi-host run, which must join the collectives)."""
    from uda_jax.plots import TSNE_POINTS_PER_DOMAIN, plot_feature_tsne

    experiment = predictor.experiment
    rng = np.random.default_rng(experiment.config.seed)
    domains = {"source": experiment.source, "target": experiment.target}
    rows = {
        name: np.sort(rng.permutation(num_examples(d))[:TSNE_POINTS_PER_DOMAIN])
        for name, d in domains.items()
    }
    labels = tuple(domains[n].train_labels[rows[n]] for n in domains)

    def features(state: TrainState) -> tuple[np.ndarray, ...]:
        return tuple(predictor(state, name, "train", rows[name])[0] for name in domains)

    before, after = features(create_train_state(experiment)), features(state)
    if run_dir is not None:
        plot_feature_tsne(
            before, after, labels, run_dir / "features_tsne.png", experiment.config.seed
        )
