"""Unsupervised validators: scores for choosing a model without target labels.

Each validator is a small pure NumPy function of what a user of domain adaptation has: labelled
source data (its held-out split for validation) and unlabelled target data. Every score is a
float where **higher is better**; the ones that are losses in their papers are negated, as each
docstring says. Conventions: ``logits [N, C]``, ``features [N, D]``, ``labels [N]`` int;
``p_i = softmax(z_i)``; ``H(p) = −Σ_k p_k log p_k`` (natural log, computed from log-softmax, so
without the ``+1e-5`` some official codes put inside the log).

:func:`validator_scores` computes all of them (or the ones named) from arrays of predictions;
:func:`state_scores` makes those predictions for one model state and computes them: the one
function behind ``python -m uda_jax.evaluate`` (which prints them all), ``python -m
uda_jax.select`` (which ranks checkpoints and runs by one), the ``eval/validator/<name>`` metrics
logged during training and ``checkpoint.best_by``. :data:`DEFINITIONS` says what each reads and
which way is better; ``oracle`` (the target test accuracy, which reads the target labels) is
there too, marked as the one that is not a validator.

References:
  Morerio, P., Cavazza, J., Murino, V. Minimal-Entropy Correlation Alignment for Unsupervised
  Deep Domain Adaptation. ICLR 2018.
  Gomes, R., Krause, A., Perona, P. Discriminative Clustering by Regularized Information
  Maximization. NeurIPS 2010.
  Shi, Y., Sha, F. Information-Theoretical Learning of Discriminative Clusters for Unsupervised
  Domain Adaptation. ICML 2012.
  Liang, J., Hu, D., Feng, J. Do We Really Need to Access the Source Data? Source Hypothesis
  Transfer for Unsupervised Domain Adaptation (SHOT). ICML 2020.
  Cui, S., Wang, S., Zhuo, J., Li, L., Huang, Q., Tian, Q. Towards Discriminability and
  Diversity: Batch Nuclear-norm Maximization under Label Insufficient Situations. CVPR 2020.
  Saito, K., Kim, D., Teterwak, P., Sclaroff, S., Darrell, T., Saenko, K. Tune it the Right
  Way: Unsupervised Validation of Domain Adaptation via Soft Neighborhood Density. ICCV 2021.
  You, K., Wang, X., Long, M., Jordan, M. I. Towards Accurate Model Selection in Deep
  Unsupervised Domain Adaptation (DEV). ICML 2019.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SND_TEMPERATURE = 0.05  # Saito et al.'s τ
SND_CHUNK = 1024  # rows of the N×N similarity matrix computed at once
DEV_REGULARIZATION = (0.1, 1.0, 10.0)  # inverse L2 strengths C tried for the classifier
DEV_HOLDOUT = 0.2  # fraction of the domain classifier's data that chooses C
VALIDATORS = ("source_accuracy", "entropy", "im", "bnm", "snd", "dev")
ORACLE = "oracle"  # target test accuracy: reads the target labels, so not a validator
METRIC_PREFIX = "eval/validator/"  # the training metrics: eval/validator/<name>
ORACLE_METRIC = "eval/target_accuracy"  # the training metric oracle selection ranks by

# The predictions a validator reads, as (domain, split) of the experiment.
TARGET_TRAIN = ("target", "train")  # the unlabelled target data adaptation trains on
SOURCE_TEST = ("source", "test")  # held-out labelled source data (validation)
SOURCE_TRAIN = ("source", "train")  # the source data the model trained on (DEV's classifier)
TARGET_TEST = ("target", "test")  # with its labels: oracle only


@dataclasses.dataclass(frozen=True)
class Definition:
    """A criterion for choosing a model: what it reads and which way is better."""

    name: str
    higher_is_better: bool
    reads: tuple[tuple[str, str], ...]  # the (domain, split) predictions it needs
    summary: str  # one line, for tables
    uses_target_labels: bool = False


DEFINITIONS = {
    d.name: d
    for d in (
        Definition("source_accuracy", True, (SOURCE_TEST,), "accuracy on held-out source data"),
        Definition("entropy", True, (TARGET_TRAIN,), "negated mean entropy of target predictions"),
        Definition("im", True, (TARGET_TRAIN,), "information maximization on the target"),
        Definition("bnm", True, (TARGET_TRAIN,), "nuclear norm of target predictions / N"),
        Definition("snd", True, (TARGET_TRAIN,), "soft neighbourhood density on the target"),
        Definition(
            "dev",
            True,
            (SOURCE_TEST, SOURCE_TRAIN, TARGET_TRAIN),
            "negated importance-weighted source risk (DEV)",
        ),
        Definition(
            ORACLE,
            True,
            (TARGET_TEST,),
            "target test accuracy (reads target labels)",
            uses_target_labels=True,
        ),
    )
}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - np.max(z, axis=1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))


def _entropy_rows(log_probs: np.ndarray) -> np.ndarray:
    """``[N]`` entropies ``−Σ_k p_k log p_k`` from log-probabilities (``0·log 0 = 0``)."""
    return -np.sum(np.exp(log_probs) * log_probs, axis=1)


def source_accuracy(source_logits: np.ndarray, source_labels: np.ndarray) -> float:
    """Source validation accuracy ``mean_i [argmax_k z_ik = y_i]`` on held-out source data.

    The classic baseline of model selection in domain adaptation: the source domain's test split
    stands in for the target (e.g. as discussed by You et al., ICML 2019). Higher is better.
    """
    labels = np.asarray(source_labels)
    if labels.size == 0:
        return float("nan")
    return float(np.mean(np.argmax(source_logits, axis=1) == labels))


def target_entropy(target_logits: np.ndarray) -> float:
    """Negated mean prediction entropy on the target, ``−(1/N) Σ_i H(p_i)``.

    Lower entropy (more confident target predictions) is better, so the score is its negative:
    0 for one-hot predictions, ``−log C`` for uniform ones (entropy minimisation as a criterion:
    Grandvalet & Bengio, NeurIPS 2004; target entropy for choosing hyperparameters without
    target labels: Morerio et al., ICLR 2018; a validator in Saito et al., ICCV 2021). Higher
    is better.
    """
    return float(-np.mean(_entropy_rows(_log_softmax(target_logits))))


def information_maximization(target_logits: np.ndarray) -> float:
    """Information maximisation ``IM = H(p̄) − (1/N) Σ_i H(p_i)``, ``p̄ = (1/N) Σ_i p_i``.

    The mutual information between input and predicted class (Gomes et al., NeurIPS 2010; Shi &
    Sha, ICML 2012; the IM objective of SHOT, Liang et al., ICML 2020): confident (low
    conditional entropy) and diverse (high marginal entropy) target predictions. Between 0 and
    ``log C``, which a perfectly confident prediction with balanced classes reaches. Higher is
    better.
    """
    log_probs = _log_softmax(target_logits)
    mean_probs = np.mean(np.exp(log_probs), axis=0)
    positive = mean_probs > 0
    marginal = -np.sum(mean_probs[positive] * np.log(mean_probs[positive]))
    return float(marginal - np.mean(_entropy_rows(log_probs)))


def batch_nuclear_norm(target_logits: np.ndarray) -> float:
    """BNM ``‖P‖_* / N``: the nuclear norm (sum of singular values) of the target softmax matrix
    ``P [N, C]`` divided by the number of rows (Cui et al., CVPR 2020; its loss is the negative).

    Large when predictions are both confident and diverse: a one-hot ``P`` has nuclear norm
    ``Σ_k sqrt(n_k)`` over the class counts ``n_k``, so ``N`` one-hot rows spread over ``N``
    classes give 1. Computed over the whole set given (one "batch"). Higher is better.
    """
    probs = np.exp(_log_softmax(target_logits))
    return float(np.sum(np.linalg.svd(probs, compute_uv=False)) / probs.shape[0])


def soft_neighborhood_density(
    target_logits: np.ndarray, temperature: float = SND_TEMPERATURE
) -> float:
    """Soft neighbourhood density (Saito et al., ICCV 2021).

    With ``p̂_i = p_i / ‖p_i‖`` the L2-normalised target softmax vectors,
    ``S_ij = p̂_i·p̂_j / τ`` (τ = 0.05) with the diagonal set to ``−1/τ`` (a point is not its own
    neighbour, as in the official code), and ``q_i = softmax_j(S_ij)``:
    ``SND = (1/N) Σ_i H(q_i)``. High when every target point has many close neighbours in the
    prediction space (dense clusters). Higher is better. Needs ``N ≥ 2``.
    """
    probs = np.exp(_log_softmax(target_logits))
    normed = probs / np.linalg.norm(probs, axis=1, keepdims=True)
    total = 0.0
    for start in range(0, len(normed), SND_CHUNK):
        rows = normed[start : start + SND_CHUNK]
        sims = rows @ normed.T / temperature
        index = np.arange(len(rows))
        sims[index, start + index] = -1.0 / temperature
        total += float(np.sum(_entropy_rows(_log_softmax(sims))))
    return total / len(normed)


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = np.mean(train, axis=0), np.std(train, axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(x - mean) / std for x in (train, *others)]


def dev_weights(
    source_train_features: np.ndarray,
    target_features: np.ndarray,
    source_val_features: np.ndarray,
    *,
    regularization: Sequence[float] = DEV_REGULARIZATION,
    seed: int = 0,
) -> np.ndarray:
    """Importance weights ``w(x) ≈ p_target(x) / p_source(x)`` of source-validation examples.

    A logistic regression domain classifier ``d(x) = P(source | x)`` (L2-regularised, on
    standardised features) separates source-train features from target features; its inverse
    regularisation C is chosen from ``regularization`` by log-loss on a random held-out fifth
    (``seed``), then it is refitted on all of them. By Bayes' rule (You et al., ICML 2019):
    ``w(x) = (N_s / N_t) · (1 − d(x)) / d(x)``.
    """
    from sklearn.linear_model import LogisticRegression

    source = np.asarray(source_train_features, np.float64)
    target = np.asarray(target_features, np.float64)
    val = np.asarray(source_val_features, np.float64)
    x = np.concatenate([source, target])
    y = np.concatenate([np.ones(len(source)), np.zeros(len(target))])
    x, val = _standardise(x, val)
    order = np.random.default_rng(seed).permutation(len(x))
    held = order[: max(1, int(DEV_HOLDOUT * len(x)))]
    fit = order[len(held) :]
    best, best_loss = regularization[0], np.inf
    if len(regularization) > 1 and len(np.unique(y[fit])) == 2:
        for c in regularization:
            model = LogisticRegression(C=c, max_iter=1000).fit(x[fit], y[fit])
            p = np.clip(model.predict_proba(x[held])[:, 1], 1e-12, 1 - 1e-12)
            loss = -np.mean(y[held] * np.log(p) + (1 - y[held]) * np.log(1 - p))
            if loss < best_loss:
                best, best_loss = c, loss
    model = LogisticRegression(C=best, max_iter=1000).fit(x, y)
    log_odds = model.decision_function(val)  # log d/(1−d)
    return np.exp(-log_odds) * len(source) / len(target)


def dev_risk(weights: np.ndarray, losses: np.ndarray) -> float:
    """The DEV risk estimate with its control variate (You et al., ICML 2019, Algorithm 1).

    ``R = mean(w·ℓ) + η·mean(w) − η`` with ``η = −Cov(w·ℓ, w) / Var(w)`` (sample estimates):
    the importance-weighted source-validation loss, corrected by the variate ``w`` whose true
    mean is 1, which lowers the variance of the estimate. ``Var(w) = 0`` gives ``mean(w·ℓ)``.
    """
    w, loss = np.asarray(weights, np.float64), np.asarray(losses, np.float64)
    weighted = w * loss
    if len(w) < 2:
        return float(np.mean(weighted))
    var = np.var(w, ddof=1)
    if not var > 0:
        return float(np.mean(weighted))
    eta = -np.cov(weighted, w)[0, 1] / var
    return float(np.mean(weighted) + eta * np.mean(w) - eta)


def deep_embedded_validation(
    source_train_features: np.ndarray,
    source_val_features: np.ndarray,
    source_val_logits: np.ndarray,
    source_val_labels: np.ndarray,
    target_features: np.ndarray,
    *,
    seed: int = 0,
) -> float:
    """Negated DEV risk (You et al., ICML 2019): ``−R`` of :func:`dev_risk` with weights from
    :func:`dev_weights` and ``ℓ_i`` the cross-entropy of source-validation example ``i``.

    DEV estimates the target risk without target labels; a lower risk is better, so the score
    is its negative. Higher is better.
    """
    weights = dev_weights(source_train_features, target_features, source_val_features, seed=seed)
    log_probs = _log_softmax(source_val_logits)
    labels = np.asarray(source_val_labels)
    losses = -log_probs[np.arange(len(labels)), labels]
    return -dev_risk(weights, losses)


def validator_scores(
    source_features: np.ndarray,
    source_logits: np.ndarray,
    source_labels: np.ndarray,
    target_features: np.ndarray,
    target_logits: np.ndarray,
    *,
    source_train_features: np.ndarray | None = None,
    names: Sequence[str] = VALIDATORS,
    snd_temperature: float = SND_TEMPERATURE,
    seed: int = 0,
) -> dict[str, float]:
    """The scores of the validators ``names`` (default all of :data:`VALIDATORS`), higher better.

    Args:
      source_features, source_logits, source_labels: the held-out source split (validation).
      target_features, target_logits: the unlabelled target data.
      source_train_features: the source data the model trained on, which DEV's domain
        classifier separates from the target (default: ``source_features``).
      names: which validators to compute.
      snd_temperature: SND's τ.
      seed: DEV's held-out split for choosing its classifier's regularisation.

    Raises:
      ValueError: an unknown validator name.
    """
    unknown = [n for n in names if n not in VALIDATORS]
    if unknown:
        raise ValueError(f"unknown validators {unknown}; valid: {', '.join(VALIDATORS)}")
    compute = {
        "source_accuracy": lambda: source_accuracy(source_logits, source_labels),
        "entropy": lambda: target_entropy(target_logits),
        "im": lambda: information_maximization(target_logits),
        "bnm": lambda: batch_nuclear_norm(target_logits),
        "snd": lambda: soft_neighborhood_density(target_logits, snd_temperature),
        "dev": lambda: deep_embedded_validation(
            source_features if source_train_features is None else source_train_features,
            source_features,
            source_logits,
            source_labels,
            target_features,
            seed=seed,
        ),
    }
    return {name: compute[name]() for name in names}


def metric_name(name: str) -> str:
    """The training metric of criterion ``name``: ``eval/validator/<name>``, or
    ``eval/target_accuracy`` for ``oracle``."""
    return ORACLE_METRIC if name == ORACLE else METRIC_PREFIX + name


def state_scores(
    predictor: Callable[..., tuple[np.ndarray, np.ndarray]],
    state: Any,
    names: Sequence[str] = VALIDATORS,
    *,
    seed: int = 0,
) -> dict[str, float]:
    """The scores of ``names`` (validators, or ``oracle``) for one model state.

    Makes each prediction pass the criteria read (:attr:`Definition.reads`) once, then computes
    them with :func:`validator_scores`. A criterion that reads the source's test split scores
    NaN when that split is empty.

    Args:
      predictor: a :class:`uda_jax.evaluation.Predictor` of the experiment (``predictor(state,
        domain, split) -> (features, logits)``, with the domains as ``predictor.experiment``).
      state: the model state to score, as evaluation predicts with it.
      names: which criteria, in the order of the result.
      seed: DEV's held-out split for choosing its classifier's regularisation.

    Raises:
      ValueError: an unknown name.
    """
    unknown = [n for n in names if n not in DEFINITIONS]
    if unknown:
        valid = ", ".join(DEFINITIONS)
        raise ValueError(f"unknown validators {unknown}; valid: {valid}")
    experiment = predictor.experiment
    source_labels = np.asarray(experiment.source.test_labels)
    undefined = {
        n for n in names if SOURCE_TEST in DEFINITIONS[n].reads and source_labels.size == 0
    }
    predictions: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for name in (n for n in names if n not in undefined):
        for where in DEFINITIONS[name].reads:
            if where not in predictions:
                predictions[where] = predictor(state, *where)
    empty = (np.zeros((0, 0)), np.zeros((0, 0)))
    source_features, source_logits = predictions.get(SOURCE_TEST, empty)
    target_features, target_logits = predictions.get(TARGET_TRAIN, empty)
    unsupervised = [n for n in names if n != ORACLE and n not in undefined]
    scores = validator_scores(
        source_features,
        source_logits,
        source_labels,
        target_features,
        target_logits,
        source_train_features=predictions.get(SOURCE_TRAIN, empty)[0],
        names=unsupervised,
        seed=seed,
    )
    if ORACLE in names:
        _, logits = predictions[TARGET_TEST]
        scores[ORACLE] = source_accuracy(logits, experiment.target.test_labels)
    return {name: scores.get(name, math.nan) for name in names}
