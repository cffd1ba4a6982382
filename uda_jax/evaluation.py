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
from uda_jax.experiment import Experiment, compile_predict, create_train_state, jit
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


def pool_moments(chunks: Iterable[tuple[PyTree, int]]) -> PyTree:
    """Per BatchNorm layer, the mean and biased variance of the union of batches, from each
    batch's ``(moments, size)`` as :meth:`uda_jax.models.Network.batchnorm_moments` reports them
    (accumulated in float64): ``{... {"mean": [C], "var": [C]}}`` at each layer's path."""
    sums, total = None, 0
    for moments, size in chunks:
        weighted = jax.tree.map(lambda m, n=size: n * np.asarray(m, np.float64), moments)
        sums = weighted if sums is None else jax.tree.map(np.add, sums, weighted)
        total += size
    if sums is None:
        raise ValueError("no batches to pool BatchNorm statistics from")
    return _layer_statistics(jax.tree.map(lambda s: s / total, sums))


def _layer_statistics(means: dict) -> dict:
    if "moments" in means:
        (layer,) = means["moments"]  # each layer runs once per forward pass
        return {"mean": layer["mean"], "var": np.maximum(layer["square"] - layer["mean"] ** 2, 0)}
    return {name: _layer_statistics(sub) for name, sub in means.items()}


def _with_statistics(stats: PyTree, new: PyTree) -> PyTree:
    """``stats`` with the layers of ``new`` replaced (same dtype); other layers unchanged."""
    if not isinstance(stats, dict):
        return stats
    out = {}
    for name, sub in stats.items():
        if name not in new:
            out[name] = sub
        elif isinstance(new[name], dict):
            out[name] = _with_statistics(sub, new[name])
        else:
            out[name] = jnp.asarray(new[name], jnp.asarray(sub).dtype)
    return out


class Predictor:
    """Eval-mode predictions of an experiment's network on its domains (compiled once)."""

    def __init__(self, experiment: Experiment):
        self.experiment = experiment
        self._predict = compile_predict(experiment)
        self._moments = jit(experiment, experiment.ctx.network.batchnorm_moments)

    def adapt_batchnorm(self, state: TrainState) -> TrainState:
        """AdaBN (Li et al., ICLR workshop 2017, arXiv 1603.04779): ``state`` with every
        BatchNorm layer's running mean and variance replaced by the target domain's.

        One train-mode pass over the target training split in evaluation batches (the
        deterministic test transform; dropout on, as in training, from a key of the seed).
        Each layer pools its batches' means and mean squares weighted by batch size, so its
        statistics are those of the whole split with the earlier layers normalising by their
        batch statistics (the usual one-pass AdaBN); the variance is the biased one. Layers
        other than :class:`uda_jax.models.layers.BatchNorm` keep their statistics.
        """
        experiment = self.experiment
        key = jax.random.fold_in(jax.random.key(experiment.config.seed), 0xADA)
        batches = domain_batches(experiment.target, "train", experiment.config.data)
        chunks = (
            (
                self._moments(
                    state.params, state.batch_stats, images[:n], jax.random.fold_in(key, i)
                ),
                n,
            )
            for i, (images, _, n) in enumerate(batches)
        )
        statistics = pool_moments(chunks)
        return state.replace(batch_stats=_with_statistics(state.batch_stats, statistics))

    def evaluated(self, state: TrainState) -> TrainState:
        """The state evaluation predicts with: ``state``, or with the target's BatchNorm
        statistics (:meth:`adapt_batchnorm`) when the config says ``eval_batchnorm: target``."""
        if self.experiment.config.eval_batchnorm == "target":
            return self.adapt_batchnorm(state)
        return state

    def __call__(
        self, state: TrainState, domain: str, split: str, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(features, logits)`` of ``domain`` (``source`` or ``target``) ``split`` (``train``
        or ``test``), optionally only the examples ``rows``, in order."""
        data = self.experiment.source if domain == "source" else self.experiment.target
        batches = domain_batches(data, split, self.experiment.config.data, rows)
        return predict_batches(self._predict, state.params, state.batch_stats, batches)

    def evaluate_target(self, state: TrainState) -> dict[str, float]:
        """Accuracy metrics on the target test split, keys ``eval/target_...``, of the state
        evaluation predicts with (:meth:`evaluated`)."""
        return self.target_metrics(self.evaluated(state))

    def target_metrics(self, evaluated: TrainState) -> dict[str, float]:
        """:meth:`evaluate_target` of a state that is already :meth:`evaluated`."""
        target = self.experiment.target
        _, logits = self(evaluated, "target", "test")
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
