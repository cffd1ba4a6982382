"""PNG figures of a finished run: training curves and a t-SNE of source vs target features.

Written into the run directory at the end of training (``plots: true``), from ``metrics.jsonl``
and from features of the network at initialisation ("before adaptation") and at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from sklearn.manifold import TSNE

TSNE_POINTS_PER_DOMAIN = 500


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _series(records: list[dict], prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key.startswith(prefix) and "per_class" not in key and isinstance(value, float):
                steps, values = series.setdefault(key.removeprefix(prefix), ([], []))
                steps.append(record["step"])
                values.append(value)
    return series


def plot_curves(metrics_path: Path, out_path: Path) -> None:
    """Training losses (left) and target accuracies (right) against the step."""
    records = read_metrics(metrics_path)
    fig, (losses, accuracy) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, (steps, values) in sorted(_series(records, "train/").items()):
        losses.plot(steps, values, label=name)
    losses.set(xlabel="step", title="training losses")
    losses.legend(fontsize="small", ncol=2)
    for name, (steps, values) in sorted(_series(records, "eval/").items()):
        accuracy.plot(steps, values, marker="o", label=name)
    accuracy.set(xlabel="step", ylim=(0, 1), title="target evaluation")
    accuracy.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def _subsample(features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(features) <= TSNE_POINTS_PER_DOMAIN:
        return features
    return features[rng.choice(len(features), TSNE_POINTS_PER_DOMAIN, replace=False)]


def tsne_embedding(source: np.ndarray, target: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE of up to 500 source and 500 target features, rows source first."""
    rng = np.random.default_rng(seed)
    points = np.concatenate([_subsample(source, rng), _subsample(target, rng)])
    perplexity = min(30.0, (len(points) - 1) / 3)
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
    return tsne.fit_transform(points.astype(np.float64))


def plot_feature_tsne(
    before: tuple[np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray],
    out_path: Path,
    seed: int = 0,
) -> None:
    """Side-by-side t-SNE of ``(source, target)`` features before and after adaptation."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, (source, target), title in zip(
        axes, (before, after), ("before adaptation", "after adaptation"), strict=True
    ):
        points = tsne_embedding(source, target, seed)
        n = min(len(source), TSNE_POINTS_PER_DOMAIN)
        ax.scatter(*points[:n].T, s=4, alpha=0.6, label="source")
        ax.scatter(*points[n:].T, s=4, alpha=0.6, label="target")
        ax.set(title=title, xticks=[], yticks=[])
        ax.legend(markerscale=3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
