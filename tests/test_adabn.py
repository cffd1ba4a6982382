"""AdaBN: evaluation with BatchNorm statistics recomputed on the target domain."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from uda_jax.config import load_config
from uda_jax.evaluation import Predictor, pool_moments
from uda_jax.experiment import build_experiment, create_train_state
from uda_jax.methods.api import predict

# No dropout, momentum 1 and the biased variance: one train-mode pass leaves the running
# statistics equal to the batch's, an independent record of what AdaBN must find.
SMALL = [
    "method.name=source_only",
    "model.classifier_widths=[16,16]",
    "model.dropout=0.0",
    "model.bn_momentum=1.0",
    "model.bn_running_var=biased",
    "data.eval_batch_size=2048",
    "progress=false",
]


@pytest.fixture(scope="module")
def experiment():
    return build_experiment(load_config(None, [*SMALL, "eval_batchnorm=target"]))


@pytest.fixture(scope="module")
def predictor(experiment):
    return Predictor(experiment)


def _leaves(tree):
    return {
        jax.tree_util.keystr(path): np.asarray(x)
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def test_one_batch_gives_the_statistics_a_train_mode_pass_records(experiment, predictor):
    state = create_train_state(experiment)
    images = experiment.target.train_images  # one evaluation batch holds the whole split
    assert len(images) <= experiment.config.data.eval_batch_size
    network = experiment.ctx.network
    features, g_stats = network.apply_generator(
        state.params["g"], state.batch_stats["g"], images, train=True
    )
    _, f_stats = network.apply_classifier(
        state.params["f"], state.batch_stats["f"], features, train=True
    )
    expected = _leaves({"g": g_stats, "f": f_stats})
    got = _leaves(predictor.adapt_batchnorm(state).batch_stats)
    assert set(got) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=2e-5, atol=2e-6, err_msg=name)
    # and they are not the initial (or source) statistics
    assert not np.allclose(got["['g']['backbone']['bn1']['mean']"], 0.0)


def test_batches_pool_to_the_statistics_of_their_union():
    rng = np.random.default_rng(0)
    rows = rng.normal(2.0, 3.0, size=(50, 4))
    chunks = [
        ({"layer": {"moments": ({"mean": b.mean(0), "square": (b**2).mean(0)},)}}, len(b))
        for b in (rows[:32], rows[32:45], rows[45:])
    ]
    pooled = pool_moments(chunks)["layer"]
    np.testing.assert_allclose(pooled["mean"], rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(pooled["var"], rows.var(0), rtol=1e-12)


def test_first_layer_statistics_do_not_depend_on_the_batch_size(experiment, predictor):
    state = create_train_state(experiment)
    small = build_experiment(
        load_config(None, [*SMALL, "eval_batchnorm=target", "data.eval_batch_size=100"])
    )
    whole = predictor.adapt_batchnorm(state).batch_stats["g"]["backbone"]["bn1"]
    chunked = Predictor(small).adapt_batchnorm(state).batch_stats["g"]["backbone"]["bn1"]
    for name in ("mean", "var"):
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-4, atol=1e-6)


def test_evaluation_uses_the_target_statistics_and_leaves_the_state_alone(experiment, predictor):
    state = create_train_state(experiment)
    before = _leaves(state.batch_stats)
    metrics = predictor.evaluate_target(state)
    assert all(np.array_equal(before[k], v) for k, v in _leaves(state.batch_stats).items())
    adapted = predictor.adapt_batchnorm(state)
    _, logits = predict(
        experiment.ctx.network, adapted.params, adapted.batch_stats, experiment.target.test_images
    )
    expected = np.mean(np.argmax(np.asarray(logits), 1) == experiment.target.test_labels)
    assert metrics["eval/target_accuracy"] == pytest.approx(expected, abs=1e-9)
    running = Predictor(build_experiment(load_config(None, SMALL))).evaluate_target(state)
    _, plain = predict(
        experiment.ctx.network, state.params, state.batch_stats, experiment.target.test_images
    )
    assert running["eval/target_accuracy"] == pytest.approx(
        np.mean(np.argmax(np.asarray(plain), 1) == experiment.target.test_labels), abs=1e-9
    )
