"""What the training loop computes besides train steps: pseudo-label refreshes, target
evaluation, the finiteness check of the parameters and the end-of-run figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uda_jax.data.sources import domain_batches, num_examples
from uda_jax.evaluation import classification_metrics, predict_batches
from uda_jax.experiment import Experiment, create_train_state
from uda_jax.plots import TSNE_POINTS_PER_DOMAIN, plot_curves, plot_feature_tsne
from uda_jax.pseudo_labels import cluster_pseudo_labels
from uda_jax.state import TrainState


def refresh_pseudo_labels(experiment: Experiment, state: TrainState, predict_fn) -> TrainState:
    """Eval-mode pass over the target training set, then CGDM's clustering (§1.7)."""
    batches = domain_batches(experiment.target, "train", experiment.config.data)
    features, logits = predict_batches(predict_fn, state.params, state.batch_stats, batches)
    labels = cluster_pseudo_labels(jnp.asarray(features), jax.nn.softmax(jnp.asarray(logits)))
    return state.replace(pseudo_labels=labels)


def evaluate_target(experiment: Experiment, state: TrainState, predict_fn) -> dict[str, float]:
    """Accuracy metrics on the target test split, keys ``eval/...``."""
    target = experiment.target
    batches = domain_batches(target, "test", experiment.config.data)
    _, logits = predict_batches(predict_fn, state.params, state.batch_stats, batches)
    metrics = classification_metrics(
        np.argmax(logits, axis=1), target.test_labels, target.class_names
    )
    return {f"eval/target_{k}": v for k, v in metrics.items()}


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """Whether every float in ``tree`` is finite (one device-side reduction)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def write_plots(
    experiment: Experiment, state: TrainState, predict_fn, run_dir: Path | None
) -> None:
    """``curves.png`` from ``metrics.jsonl`` and ``features_tsne.png``: source vs target
    features of the network at initialisation (before adaptation) and now (after).
    ``run_dir`` None: compute the features only (the other processes of a multi-host run)."""
    rng = np.random.default_rng(experiment.config.seed)
    data = experiment.config.data
    domains = (experiment.source, experiment.target)
    rows = [np.sort(rng.permutation(num_examples(d))[:TSNE_POINTS_PER_DOMAIN]) for d in domains]

    def features(state: TrainState) -> tuple[np.ndarray, ...]:
        return tuple(
            predict_batches(
                predict_fn, state.params, state.batch_stats, domain_batches(d, "train", data, r)
            )[0]
            for d, r in zip(domains, rows, strict=True)
        )

    before, after = features(create_train_state(experiment)), features(state)
    if run_dir is not None:
        plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png")
        plot_feature_tsne(before, after, run_dir / "features_tsne.png", experiment.config.seed)
