"""PNG figures of a finished run: training curves and a t-SNE of source and target features.

Written into the run directory at the end of training (``plots: true``), from ``metrics.jsonl``
and from features of the network at initialisation ("before adaptation") and at the end.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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


def plot_curves(metrics_path: Path, out_path: Path, alignment_metrics: Sequence[str] = ()) -> None:
    """Four panels against the step: classification losses, alignment losses (the method's
    ``alignment_metrics``), the learning rate, and the target accuracies (the validators,
    on other scales, stay in ``metrics.jsonl`` and TensorBoard)."""
    records = read_metrics(metrics_path)
    train = _series(records, "train/")
    alignment = {n: s for n, s in train.items() if n in alignment_metrics}
    learning_rate = {n: s for n, s in train.items() if n == "learning_rate"}
    classification = {
        n: s for n, s in train.items() if n not in alignment and n not in learning_rate
    }
    panels = (
        ("classification losses", classification, {}),
        ("alignment losses", alignment, {}),
        ("learning rate", learning_rate, {}),
        ("target accuracy", _series(records, "eval/target_"), {"ylim": (0, 1), "marker": "o"}),
    )
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for ax, (title, series, options) in zip(axes, panels, strict=True):
        marker = options.get("marker")
        for name, (steps, values) in sorted(series.items()):
            ax.plot(steps, values, label=name, marker=marker)
        ax.set(xlabel="step", title=title)
        if "ylim" in options:
            ax.set_ylim(*options["ylim"])
        if series:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def tsne_embedding(source: np.ndarray, target: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE of the ``source`` and ``target`` features, rows source first."""
    points = np.concatenate([source, target])
    perplexity = min(30.0, (len(points) - 1) / 3)
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
    return tsne.fit_transform(points.astype(np.float64))


def plot_feature_tsne(
    before: tuple[np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray],
    labels: tuple[np.ndarray, np.ndarray],
    out_path: Path,
    seed: int = 0,
) -> None:
    """Side-by-side t-SNE of ``(source, target)`` features before and after adaptation,
    coloured by class (``labels``), with the domain as the marker (source ○, target ×)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    colours = plt.get_cmap("tab10" if int(max(map(np.max, labels))) < 10 else "tab20")
    for ax, (source, target), title in zip(
        axes, (before, after), ("before adaptation", "after adaptation"), strict=True
    ):
        points = tsne_embedding(source, target, seed)
        n = len(source)
        for rows, marker, domain, y in (
            (points[:n], "o", "source", labels[0]),
            (points[n:], "x", "target", labels[1]),
        ):
            ax.scatter(
                *rows.T, s=6, alpha=0.6, c=colours(y % colours.N), marker=marker, label=domain
            )
        ax.set(title=title, xticks=[], yticks=[])
        ax.legend(markerscale=2)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
