"""Unsupervised validators against independent NumPy computations and hand-made cases."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from uda_jax import validators as v


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _row_entropy(p: np.ndarray) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return {
        "target_logits": rng.normal(size=(37, 6)) * 3,
        "source_logits": rng.normal(size=(29, 6)) * 3,
        "source_labels": rng.integers(0, 6, 29),
        "source_features": rng.normal(size=(29, 4)),
        "target_features": rng.normal(size=(37, 4)) + 0.5,
    }


def test_source_accuracy(arrays):
    z, y = arrays["source_logits"], arrays["source_labels"]
    expected = sum(int(np.argmax(row) == label) for row, label in zip(z, y, strict=True)) / len(y)
    assert v.source_accuracy(z, y) == pytest.approx(expected)
    assert v.source_accuracy(np.eye(3), np.arange(3)) == 1.0


def test_entropy_matches_numpy_and_is_negated(arrays):
    p = _softmax(arrays["target_logits"])
    expected = -np.mean([_row_entropy(row) for row in p])
    assert v.target_entropy(arrays["target_logits"]) == pytest.approx(expected, rel=1e-10)
    assert v.target_entropy(np.zeros((4, 5))) == pytest.approx(-math.log(5))
    assert v.target_entropy(np.eye(5) * 1e3) == pytest.approx(0.0, abs=1e-12)


def test_information_maximization_matches_numpy(arrays):
    p = _softmax(arrays["target_logits"])
    expected = _row_entropy(p.mean(axis=0)) - np.mean([_row_entropy(row) for row in p])
    assert v.information_maximization(arrays["target_logits"]) == pytest.approx(expected, rel=1e-10)


def test_information_maximization_is_largest_for_confident_diverse_predictions():
    classes = 4
    confident_diverse = np.tile(np.eye(classes), (3, 1)) * 1e3  # one-hot, balanced
    assert v.information_maximization(confident_diverse) == pytest.approx(math.log(classes))
    confident_collapsed = np.tile(np.eye(classes)[:1], (12, 1)) * 1e3  # one class only
    uniform = np.zeros((12, classes))
    assert v.information_maximization(confident_collapsed) == pytest.approx(0.0, abs=1e-9)
    assert v.information_maximization(uniform) == pytest.approx(0.0, abs=1e-9)


def test_bnm_matches_numpy_and_a_one_hot_identity(arrays):
    p = _softmax(arrays["target_logits"])
    # the nuclear norm as the trace of sqrt(PᵀP), from the eigenvalues
    eig = np.clip(np.linalg.eigvalsh(p.T @ p), 0, None)
    expected = np.sum(np.sqrt(eig)) / len(p)
    assert v.batch_nuclear_norm(arrays["target_logits"]) == pytest.approx(expected, rel=1e-8)
    assert v.batch_nuclear_norm(np.eye(7) * 1e3) == pytest.approx(1.0)
    # one-hot rows, class counts (4, 1): nuclear norm sqrt(4) + sqrt(1) over 5 rows
    counts = np.eye(2)[[0, 0, 0, 0, 1]] * 1e3
    assert v.batch_nuclear_norm(counts) == pytest.approx(3 / 5)


def test_snd_matches_a_loop_over_points(arrays, monkeypatch):
    logits = arrays["target_logits"]
    p = _softmax(logits)
    tau = 0.05
    entropies = []
    for i in range(len(p)):
        sims = [
            -1 / tau if j == i else p[i] @ p[j] / np.linalg.norm(p[i]) / np.linalg.norm(p[j]) / tau
            for j in range(len(p))
        ]
        entropies.append(_row_entropy(_softmax(np.asarray([sims]))[0]))
    expected = np.mean(entropies)
    assert v.soft_neighborhood_density(logits) == pytest.approx(expected, rel=1e-10)
    monkeypatch.setattr(v, "SND_CHUNK", 5)  # rows in chunks give the same value
    assert v.soft_neighborhood_density(logits) == pytest.approx(expected, rel=1e-10)


def test_snd_is_higher_for_denser_neighbourhoods():
    rng = np.random.default_rng(1)
    clustered = np.repeat(np.eye(3) * 5, 10, axis=0) + rng.normal(size=(30, 3)) * 0.01
    scattered = rng.normal(size=(30, 3)) * 5
    assert v.soft_neighborhood_density(clustered) > v.soft_neighborhood_density(scattered)


def test_dev_risk_matches_the_control_variate_formula():
    rng = np.random.default_rng(2)
    w, loss = rng.gamma(2.0, 0.5, 50), rng.uniform(0, 2, 50)
    wl = w * loss
    cov = np.sum((wl - wl.mean()) * (w - w.mean())) / 49
    var = np.sum((w - w.mean()) ** 2) / 49
    eta = -cov / var
    assert v.dev_risk(w, loss) == pytest.approx(wl.mean() + eta * w.mean() - eta, rel=1e-10)
    assert v.dev_risk(np.ones(5), np.arange(5.0)) == pytest.approx(2.0)  # no variance: mean


def test_dev_weights_estimate_a_known_density_ratio():
    """Source N(0, I), target N(μ, I): ``p_t / p_s = exp(μ·x − ‖μ‖²/2)``, linear log-ratio."""
    rng = np.random.default_rng(3)
    mu = np.array([0.8, -0.5])
    source = rng.normal(size=(4000, 2))
    target = rng.normal(size=(2000, 2)) + mu
    val = rng.normal(size=(500, 2))
    weights = v.dev_weights(source, target, val)
    true = np.exp(val @ mu - mu @ mu / 2)
    np.testing.assert_allclose(np.log(weights), np.log(true), atol=0.15)
    assert np.mean(weights) == pytest.approx(1.0, abs=0.1)  # E_s[w] = 1


def test_dev_prefers_the_model_with_lower_loss_where_the_target_is():
    rng = np.random.default_rng(4)
    source = rng.normal(size=(400, 2))
    target = rng.normal(size=(400, 2)) + np.array([1.5, 0.0])
    val = rng.normal(size=(300, 2))
    labels = (val[:, 0] > 0).astype(int)
    right = val[:, 0] > 0.5
    good = np.stack([np.zeros(300), np.where(labels == 1, 4.0, -4.0)], 1)  # right everywhere
    bad = np.where(right[:, None], -good, good)  # wrong where target density is high
    score = {
        name: v.deep_embedded_validation(source, val, z, labels, target)
        for name, z in (("good", good), ("bad", bad))
    }
    assert score["good"] > score["bad"]


def test_validator_scores_computes_each_validator(arrays):
    scores = v.validator_scores(
        arrays["source_features"],
        arrays["source_logits"],
        arrays["source_labels"],
        arrays["target_features"],
        arrays["target_logits"],
    )
    assert list(scores) == list(v.VALIDATORS)
    assert scores["im"] == v.information_maximization(arrays["target_logits"])
    assert scores["snd"] == v.soft_neighborhood_density(arrays["target_logits"])
    assert scores["dev"] == v.deep_embedded_validation(
        arrays["source_features"],
        arrays["source_features"],
        arrays["source_logits"],
        arrays["source_labels"],
        arrays["target_features"],
    )
    assert all(np.isfinite(list(scores.values())))
    only = v.validator_scores(*arrays.values(), names=("bnm",))  # any order of arrays works here
    assert list(only) == ["bnm"]
    with pytest.raises(ValueError, match="unknown validators"):
        v.validator_scores(*arrays.values(), names=("accuracy",))


class _FakePredictor:
    """``predictor(state, domain, split) -> (features, logits)`` over fixed random arrays,
    counting the passes (what :func:`validators.state_scores` asks of a Predictor)."""

    def __init__(self, source_test_size: int = 29):
        rng = np.random.default_rng(5)
        self.arrays = {
            ("source", "train"): (rng.normal(size=(41, 4)), rng.normal(size=(41, 6)) * 3),
            ("source", "test"): (
                rng.normal(size=(source_test_size, 4)),
                rng.normal(size=(source_test_size, 6)) * 3,
            ),
            ("target", "train"): (rng.normal(size=(37, 4)) + 0.5, rng.normal(size=(37, 6)) * 3),
            ("target", "test"): (rng.normal(size=(23, 4)), rng.normal(size=(23, 6)) * 3),
        }
        source = SimpleNamespace(test_labels=rng.integers(0, 6, source_test_size))
        target = SimpleNamespace(test_labels=rng.integers(0, 6, 23))
        self.experiment = SimpleNamespace(source=source, target=target)
        self.calls: list[tuple[str, str]] = []

    def __call__(self, state, domain, split):
        assert state == "state"
        self.calls.append((domain, split))
        return self.arrays[(domain, split)]


def test_state_scores_makes_each_pass_once_and_equals_the_array_functions():
    predictor = _FakePredictor()
    names = (*v.VALIDATORS, v.ORACLE)
    scores = v.state_scores(predictor, "state", names, seed=3)
    assert list(scores) == list(names)
    assert sorted(predictor.calls) == sorted(set(predictor.calls))  # each pass once
    assert set(predictor.calls) == {w for n in names for w in v.DEFINITIONS[n].reads}
    a = predictor.arrays
    source_labels = predictor.experiment.source.test_labels
    expected = {
        "source_accuracy": v.source_accuracy(a["source", "test"][1], source_labels),
        "entropy": v.target_entropy(a["target", "train"][1]),
        "im": v.information_maximization(a["target", "train"][1]),
        "bnm": v.batch_nuclear_norm(a["target", "train"][1]),
        "snd": v.soft_neighborhood_density(a["target", "train"][1]),
        "dev": v.deep_embedded_validation(
            a["source", "train"][0],
            *a["source", "test"],
            source_labels,
            a["target", "train"][0],
            seed=3,
        ),
        "oracle": float(
            np.mean(np.argmax(a["target", "test"][1], 1) == predictor.experiment.target.test_labels)
        ),
    }
    assert scores == pytest.approx(expected, rel=1e-12)


def test_state_scores_reads_only_what_the_named_validators_need():
    predictor = _FakePredictor()
    v.state_scores(predictor, "state", ("entropy", "im", "bnm", "snd"))
    assert predictor.calls == [("target", "train")]  # the target's labels are never read
    predictor = _FakePredictor()
    v.state_scores(predictor, "state", ("source_accuracy",))
    assert predictor.calls == [("source", "test")]
    with pytest.raises(ValueError, match="unknown validators"):
        v.state_scores(predictor, "state", ("accuracy",))


def test_state_scores_is_nan_where_the_source_test_split_is_empty():
    predictor = _FakePredictor(source_test_size=0)
    scores = v.state_scores(predictor, "state", ("source_accuracy", "dev", "im"))
    assert math.isnan(scores["source_accuracy"]) and math.isnan(scores["dev"])
    assert math.isfinite(scores["im"])
    assert ("source", "train") not in predictor.calls  # DEV's pass is skipped too


def test_definitions_cover_every_validator_and_mark_only_the_oracle():
    assert set(v.DEFINITIONS) == {*v.VALIDATORS, v.ORACLE}
    assert [n for n, d in v.DEFINITIONS.items() if d.uses_target_labels] == [v.ORACLE]
    assert all(("target", "test") not in v.DEFINITIONS[n].reads for n in v.VALIDATORS)
    assert v.metric_name("snd") == "eval/validator/snd"
    assert v.metric_name(v.ORACLE) == "eval/target_accuracy"
