"""CGDM's clustering pseudo-labels (as the official code computes them), the guard against an
empty cluster, and CGDM's host-side hook that refreshes them in ``state.extras``."""

import jax
import jax.numpy as jnp
import numpy as np

from uda_jax.methods.cgdm import CGDM, CgdmConfig, target_pseudo_labels
from uda_jax.methods.mcd import MCD
from uda_jax.pseudo_labels import cluster_pseudo_labels, nearest_centroid, weighted_centroids
from uda_jax.state import TrainState


def _clusters(seed=0, per_class=30, classes=4, dim=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 5
    labels = np.repeat(np.arange(classes), per_class)
    features = centres[labels] + rng.normal(size=(len(labels), dim)) * 0.3
    return features.astype(np.float32), labels


def test_recovers_well_separated_clusters_from_noisy_probabilities():
    features, labels = _clusters()
    rng = np.random.default_rng(1)
    # A weak classifier: right class gets a little more mass, 30% of rows point elsewhere.
    logits = rng.normal(size=(len(labels), 4))
    logits[np.arange(len(labels)), labels] += 1.5
    wrong = rng.random(len(labels)) < 0.3
    logits[wrong, (labels[wrong] + 1) % 4] += 3.0
    probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32))
    assert np.mean(np.argmax(logits, 1) == labels) < 0.8  # the classifier alone is poor
    pseudo = np.asarray(cluster_pseudo_labels(jnp.asarray(features), probs))
    assert np.mean(pseudo == labels) > 0.98


def test_matches_the_official_procedure_written_in_numpy():
    features, labels = _clusters(seed=2, classes=3)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(np.eye(3)[labels] * 0.5 + 0.1)))
    fea = np.concatenate([features, np.ones((len(features), 1), np.float32)], 1)
    fea = fea / np.linalg.norm(fea, axis=1, keepdims=True)

    def assign(centroids):
        c = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        return np.argmin(1 - fea @ c.T, axis=1)  # scipy cdist 'cosine'

    initc = probs.T @ fea / (1e-8 + probs.sum(0)[:, None])
    pred = assign(initc)
    aff = np.eye(3)[pred]
    pred = assign(aff.T @ fea / (1e-8 + aff.sum(0)[:, None]))
    got = cluster_pseudo_labels(jnp.asarray(features), jnp.asarray(probs))
    np.testing.assert_array_equal(np.asarray(got), pred)


def test_empty_cluster_gives_no_nan_and_no_collapse():
    features, labels = _clusters(seed=3, classes=3)
    # Class 3 exists in the classifier's output space but gets almost no probability mass,
    # so it has no member after the soft round: the official code would assign every row to it.
    logits = np.full((len(labels), 4), -20.0, np.float32)
    logits[np.arange(len(labels)), labels] = 5.0
    pseudo = np.asarray(cluster_pseudo_labels(jnp.asarray(features), jax.nn.softmax(logits)))
    assert np.all((pseudo >= 0) & (pseudo < 3))
    assert np.mean(pseudo == labels) > 0.98


def test_weighted_centroids_and_masked_nearest():
    features = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    weights = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    centroids = weighted_centroids(features, weights)
    np.testing.assert_allclose(centroids, [[1.0, 0.0], [0.0, 1.0]], rtol=1e-6)
    valid = jnp.asarray([False, True])
    np.testing.assert_array_equal(nearest_centroid(features, centroids, valid), [1, 1, 1])
    np.testing.assert_array_equal(nearest_centroid(features, centroids), [0, 1, 0])


def _state(extras, step=0):
    return TrainState(
        step=jnp.asarray(step, jnp.int32),
        params={},
        batch_stats={},
        opt_state={},
        key=jax.random.key(0),
        extras=extras,
    )


def test_cgdm_hook_refreshes_the_pseudo_labels_from_the_target_predictions():
    features, labels = _clusters(seed=4)
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(len(labels), 4)).astype(np.float32)
    logits[np.arange(len(labels)), labels] += 2.0
    method = CGDM(CgdmConfig(warmup_steps=0))
    extras = method.init_extras({}, len(labels))
    assert extras["pseudo_labels"].dtype == jnp.int32
    np.testing.assert_array_equal(extras["pseudo_labels"], np.full(len(labels), -1))
    state = _state({**extras, "other": jnp.ones(3)}, step=0)
    calls = []

    def predict(domain, split):
        calls.append((domain, split))
        return features, logits  # numpy, as the evaluation's predictor returns them

    new = method.hook(state, predict)
    assert calls == [("target", "train")]
    expected = cluster_pseudo_labels(jnp.asarray(features), jax.nn.softmax(jnp.asarray(logits)))
    np.testing.assert_array_equal(new.extras["pseudo_labels"], expected)
    assert new.extras["pseudo_labels"].dtype == jnp.int32
    assert np.mean(np.asarray(new.extras["pseudo_labels"]) == labels) > 0.98
    np.testing.assert_array_equal(new.extras["other"], state.extras["other"])
    assert int(new.step) == int(state.step)


def test_cgdm_hook_is_due_every_interval_from_the_warmup_on():
    method = CGDM(CgdmConfig(warmup_steps=200, pseudo_interval=100))
    assert method.warmup_steps == 200
    assert [t for t in range(601) if method.hook_due(t)] == [200, 300, 400, 500, 600]
    early = CGDM(CgdmConfig(warmup_steps=0, pseudo_interval=7))
    assert [t for t in range(22) if early.hook_due(t)] == [0, 7, 14, 21]
    assert not any(MCD().hook_due(t) for t in range(300))  # plain MCD has no pseudo-labels
    assert MCD().warmup_steps == 0


def test_batch_pseudo_labels_are_the_rows_of_the_target_index_unset_as_class_0():
    state = _state({"pseudo_labels": jnp.asarray([-1, 3, 2, -1, 1], jnp.int32)})
    batch = {"target_index": jnp.asarray([1, 0, 4, 3], jnp.int32)}
    np.testing.assert_array_equal(target_pseudo_labels(state, batch), [3, 0, 1, 0])
