"""Evaluation: batched eval-mode predictions and the accuracy metrics of the papers.

Overall accuracy (Office, ImageCLEF, digits) and mean per-class accuracy (VisDA, reference
§1.10), with the per-class table. Prediction is ``argmax`` of the summed classifiers' logits.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import numpy as np

from uda_jax.data.pipeline import eval_batches
from uda_jax.methods.base import jit_for, predict
from uda_jax.models import Network

PyTree = Any


def make_predict_fn(network: Network):
    """A jit-compiled ``(params, batch_stats, images) -> (features, logits)`` in eval mode."""
    return jit_for(network, functools.partial(predict, network))


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


def predict_dataset(
    predict_fn, params: PyTree, stats: PyTree, images: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`predict_batches` over a whole in-memory array, in fixed order."""
    return predict_batches(predict_fn, params, stats, eval_batches(images, None, batch_size))


def classification_metrics(
    predictions: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]
) -> dict[str, float]:
    """``accuracy``, ``mean_class_accuracy`` and ``per_class/<name>`` (classes with no test
    example are left out of the mean and reported as NaN)."""
    metrics = {"accuracy": float(np.mean(predictions == labels))}
    per_class = []
    for index, name in enumerate(class_names):
        members = labels == index
        value = float(np.mean(predictions[members] == index)) if members.any() else float("nan")
        metrics[f"per_class/{name}"] = value
        per_class.append(value)
    metrics["mean_class_accuracy"] = float(np.nanmean(per_class))
    return metrics
