"""Image domains on disk, torchvision-style transforms, TFDS (mocked) and the grain pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uda_jax.data import benchmarks, transforms
from uda_jax.data.image_files import check_images, read_image_folder, read_image_list
from uda_jax.data.pipeline import PairStream, image_eval_batches
from uda_jax.errors import UserError

CLASSES = ("cat", "dog", "bird")


def _write(path: Path, seed: int, fmt: str = "JPEG", size=(40, 30)) -> np.ndarray:
    """Writes a random ``size = (width, height)`` RGB image and returns its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt)
    return pixels


@pytest.fixture
def tree(tmp_path) -> Path:
    """``root/<class>/...`` with 12 images (4 per class), one class with a nested folder + PNG."""
    root = tmp_path / "domain"
    for c, cls in enumerate(CLASSES):
        for i in range(4):
            sub = "nested/" if (cls == "dog" and i == 3) else ""
            ext, fmt = (".PNG", "PNG") if i == 2 else (".jpg", "JPEG")
            _write(root / cls / f"{sub}img{i}{ext}", 10 * c + i, fmt)
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def _list_lines(root: Path, domain) -> list[str]:
    return [
        f"{Path(p).relative_to(root)} {lab}"
        for p, lab in zip(domain.paths, domain.labels, strict=True)
    ]


# ---- folders and lists ------------------------------------------------------------------------


def test_folder_sorted_and_explicit_order(tree):
    domain = read_image_folder(tree)
    assert domain.class_names == ("bird", "cat", "dog") and len(domain) == 12
    assert np.bincount(domain.labels).tolist() == [4, 4, 4]
    assert any("nested" in p for p in domain.paths) and all(
        Path(p).is_absolute() for p in domain.paths
    )
    explicit = read_image_folder(tree, class_names=["dog", "cat"])
    assert explicit.num_classes == 2 and len(explicit) == 8
    assert all(
        ("/dog/" in p) == (lab == 0) for p, lab in zip(explicit.paths, explicit.labels, strict=True)
    )
    with pytest.raises(UserError, match="no folder for class 'cow'"):
        read_image_folder(tree, class_names=["dog", "cow"])


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(UserError, match="has no images"):
        read_image_folder(tmp_path / "empty")


def test_list_crlf_spaces_relative_absolute(tree, tmp_path):
    domain = read_image_folder(tree, class_names=CLASSES)
    spaced = tree / "cat" / "with space.jpg"
    _write(spaced, 99)
    lines = _list_lines(tree, domain)
    lines[1] = f"{domain.paths[1]} {domain.labels[1]}"  # absolute path kept
    lines += ["", "cat/with space.jpg 0", "   "]
    list_file = tmp_path / "lists" / "d.txt"
    list_file.parent.mkdir()
    list_file.write_bytes("\r\n".join(lines).encode())
    read = read_image_list(list_file, tree)
    assert read.paths[:12] == domain.paths and read.paths[12] == str(spaced.resolve())
    assert read.labels.tolist() == [*domain.labels.tolist(), 0]
    assert read.class_names == CLASSES  # inferred from the parent folders
    assert read.line_numbers[12] == 14 and read.num_classes == 3


def test_list_errors_name_file_and_line(tree, tmp_path):
    good = "cat/img0.jpg 0"
    cases = {
        "nolabel.jpg": "line 2: expected 'PATH LABEL'",
        "cat/img1.jpg x": "line 2: label 'x' is not an integer",
        "cat/img1.jpg 7": r"line 2: label 7 is outside \[0, 3\)",
        "cat/img1.jpg 0 1 0": "line 2: multi-label",
        "cat/gone.jpg 1": "line 2: image .*gone.jpg' does not exist",
    }
    for bad, message in cases.items():
        list_file = tmp_path / "bad.txt"
        list_file.write_text(f"{good}\n{bad}\n")
        with pytest.raises(UserError, match=f"bad.txt {message}"):
            read_image_list(list_file, tree, num_classes=3)
    (tmp_path / "empty.txt").write_text("\n\r\n")
    with pytest.raises(UserError, match="lists no images"):
        read_image_list(tmp_path / "empty.txt", tree)
    with pytest.raises(UserError, match="does not exist"):
        read_image_list(tmp_path / "nope.txt", tree)


def test_check_images_corrupt_truncated_and_skip(tree, tmp_path):
    domain = read_image_folder(tree, class_names=CLASSES)
    assert check_images(domain) == (domain, 0)
    jpg = Path(domain.paths[1])
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])  # truncated JPEG: the header still opens
    Image.open(jpg).verify()  # a header-only check would pass it
    list_file = tmp_path / "l.txt"
    list_file.write_text("\n".join(_list_lines(tree, domain)))
    listed = read_image_list(list_file, tree)
    with pytest.raises(UserError, match=r"img1.jpg \(.*l.txt line 2\).*truncated"):
        check_images(listed)
    Path(domain.paths[5]).write_bytes(b"garbage, not a JPEG")
    with pytest.raises(UserError, match=r"img1.jpg.*\(1 more unreadable\)"):
        check_images(domain)
    kept, skipped = check_images(listed, skip_unreadable=True)
    assert skipped == 2 and len(kept) == 10
    assert domain.paths[1] not in kept.paths and kept.line_numbers[:2] == (1, 3)


# ---- benchmarks -------------------------------------------------------------------------------


def test_benchmark_resolution(tmp_path, monkeypatch):
    assert len(benchmarks.OFFICEHOME_CLASSES) == 65 == len(set(benchmarks.OFFICEHOME_CLASSES))
    assert len(benchmarks.OFFICE31_CLASSES) == 31
    monkeypatch.delenv("UDA_DATA_DIR", raising=False)
    with pytest.raises(UserError, match="no data root"):
        benchmarks.resolve_image_domain("office31/amazon")
    with pytest.raises(UserError, match="does not exist"):
        benchmarks.resolve_image_domain("office31/amazon", tmp_path / "nowhere")
    with pytest.raises(UserError, match="did you mean 'office31/amazon'"):
        benchmarks.resolve_image_domain("office31/amazn", tmp_path)
    with pytest.raises(UserError, match="did you mean 'officehome'"):
        benchmarks.resolve_image_domain("ofice_home/Art", tmp_path)
    # Office-Home folders in the list order, "Real World" with a space.
    for k in (0, 2, 64):
        _write(
            tmp_path / "officehome" / "Real World" / benchmarks.OFFICEHOME_CLASSES[k] / "a.jpg", k
        )
    for cls in benchmarks.OFFICEHOME_CLASSES:
        (tmp_path / "officehome" / "Real World" / cls).mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("UDA_DATA_DIR", str(tmp_path))
    rw = benchmarks.resolve_image_domain("officehome/Real_World")
    assert rw.labels.tolist() == [0, 2, 64] and rw.class_names[1] == "Exit_Sign"
    # A list file wins over folders; paths relative to the benchmark folder.
    _write(tmp_path / "office31" / "dslr" / "images" / "bike" / "x.jpg", 1)
    (tmp_path / "office31" / "dslr_list.txt").write_text("dslr/images/bike/x.jpg 1\r\n")
    dslr = benchmarks.resolve_image_domain("office31/dslr")
    assert dslr.labels.tolist() == [1] and dslr.class_names[1] == "bike" and dslr.list_file
    # Generic folders are alphabetical, and every folder is a class: empty ones are refused.
    with pytest.raises(UserError, match=r"class folder '.*/Real World/Alarm_Clock' has no images"):
        benchmarks.resolve_image_domain("folder:officehome/Real World")
    with pytest.raises(UserError, match="only domainnet"):
        benchmarks.resolve_image_domain("office31/dslr:test")


# ---- transforms -------------------------------------------------------------------------------


def test_transforms_by_hand():
    image = np.random.default_rng(0).integers(0, 256, (9, 12, 3), dtype=np.uint8)
    assert transforms.center_crop_box(image.shape, 4) == (2, 4)  # round(2.5) = 2 (half to even)
    assert transforms.center_crop_box((10, 13), 4) == (3, 4)  # round(3.0), round(4.5) = 4
    t = transforms.ImageTransform(resize=None, crop_size=4, crop="center", flip=False)
    mean, std = np.float32(transforms.IMAGENET_MEAN), np.float32(transforms.IMAGENET_STD)
    expected = (image[2:6, 4:8].astype(np.float32) / 255 - mean) / std
    np.testing.assert_allclose(t(image), expected, rtol=1e-6)
    flip = transforms.ImageTransform(resize=None, crop_size=4, crop="random", flip=True)
    seen = set()
    for seed in range(40):
        out = flip(image, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        top, left = int(rng.integers(0, 6)), int(rng.integers(0, 9))
        window = image[top : top + 4, left : left + 4]
        flipped = rng.random() < 0.5
        window = window[:, ::-1] if flipped else window
        np.testing.assert_allclose(out, (window.astype(np.float32) / 255 - mean) / std, rtol=1e-6)
        seen.add(flipped)
    assert seen == {True, False}
    grey = transforms.ImageTransform(resize=(6, 5), crop="none")(image[:, :, 0])
    assert grey.shape == (6, 5, 3) and grey.dtype == np.float32
    np.testing.assert_array_equal(grey[..., 0] * std[0] + mean[0], grey[..., 1] * std[1] + mean[1])


def test_transforms_match_torchvision_or_pil():
    image = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    resized = transforms.resize(image, (32, 36))
    pil = np.asarray(Image.fromarray(image).resize((36, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resized, pil)
    try:
        import torchvision.transforms as tv
    except ImportError:
        pytest.skip("torchvision not installed (compared with PIL directly above)")
    ref = tv.Compose(
        [
            tv.Resize((32, 36)),
            tv.CenterCrop(27),
            tv.ToTensor(),
            tv.Normalize(transforms.IMAGENET_MEAN, transforms.IMAGENET_STD),
        ]
    )(Image.fromarray(image))
    ours = transforms.ImageTransform(resize=(32, 36), crop_size=27)(image)
    np.testing.assert_allclose(ours, ref.numpy().transpose(1, 2, 0), atol=1e-6)


# ---- TFDS (mocked: never touches the network) -------------------------------------------------


def test_tfds_source_mocked(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from uda_jax.data import tfds_source

    with pytest.raises(UserError, match="not prepared"):
        tfds_source.TfdsSource("mnist", data_dir=tmp_path)
    with pytest.raises(UserError, match="did you mean 'svhn_cropped'"):
        tfds_source.TfdsSource("svhn_croped", data_dir=tmp_path)
    for name in ("mnist", "domainnet/sketch"):
        (tmp_path / name).mkdir(parents=True)
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        source = tfds_source.TfdsSource("mnist", "train", tmp_path)
        image, label = source[3]
        assert len(source) == 6 and image.shape == (28, 28, 1) and image.dtype == np.uint8
        assert 0 <= label < 10 and source.class_names == tuple(str(k) for k in range(10))
        dn = tfds_source.TfdsSource("domainnet/sketch", "test", tmp_path)
        assert dn.num_classes == 345 and dn[0][0].shape[2] == 3
        domain = tfds_source.load_tfds_domain("mnist", image_size=16, data_dir=tmp_path)
        assert domain.train_images.shape == (6, 16, 16, 3) and domain.num_classes == 10
        assert domain.train_images.min() >= -1 and domain.train_images.max() <= 1
        stream = PairStream(source, dn, 2, 0, transforms.ImageTransform(32, 28))
        batch = next(stream)
        assert batch["source_image"].shape == (2, 28, 28, 3) and batch["target_index"].max() < 6


# ---- the grain pipeline -----------------------------------------------------------------------

TRAIN = transforms.train_transform(32, 28)


def _take(stream, n):
    return [next(stream) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_pair_stream_determinism_resume_and_order(tree):
    domain = read_image_folder(tree)
    run = PairStream(domain, domain, 4, 3, TRAIN)
    first = _take(run, 7)  # 3 batches per epoch: crosses two epoch boundaries
    assert first[0]["source_image"].shape == (4, 28, 28, 3)
    assert first[0]["source_label"].dtype == np.int32 and first[0]["target_index"].dtype == np.int32
    _assert_same(first, _take(PairStream(domain, domain, 4, 3, TRAIN), 7))
    other = next(PairStream(domain, domain, 4, 4, TRAIN))
    assert not np.array_equal(other["source_image"], first[0]["source_image"])
    # The example order of in-memory domains: seeded drop-last permutations per epoch.
    for step, batch in enumerate(first):
        epoch, within = divmod(step, 3)
        rows = slice(4 * within, 4 * within + 4)
        source = np.random.default_rng([6, epoch]).permutation(12)[rows]
        target = np.random.default_rng([7, epoch]).permutation(12)[rows]
        np.testing.assert_array_equal(batch["source_label"], domain.labels[source])
        np.testing.assert_array_equal(batch["target_index"], target)
    # Each epoch is a drop-last permutation; re-seen examples get fresh random crops.
    epoch0 = np.concatenate([b["target_index"] for b in first[:3]])
    assert sorted(epoch0.tolist()) == list(range(12))
    # Resume mid-epoch from a JSON round trip of the state.
    resumed = PairStream(domain, domain, 4, 3, TRAIN)
    _take(resumed, 2)
    state = json.loads(json.dumps(resumed.get_state()))
    fresh = PairStream(domain, domain, 4, 3, TRAIN)
    fresh.set_state(state)
    _assert_same(_take(fresh, 5), first[2:])
    with pytest.raises(UserError, match="batch_size=4 but this run has 6"):
        PairStream(domain, domain, 6, 3, TRAIN).set_state(state)
    full = next(PairStream(domain, domain, 12, 3, TRAIN))  # large batches: no overflow
    assert sorted(full["source_label"].tolist()) == sorted(domain.labels.tolist())
    with pytest.raises(UserError, match="batch size 13"):
        PairStream(domain, domain, 13, 3, TRAIN)


def test_pair_stream_sharding_and_workers(tree):
    domain = read_image_folder(tree)
    whole = _take(PairStream(domain, domain, 4, 1, TRAIN), 4)
    halves = [
        _take(PairStream(domain, domain, 4, 1, TRAIN, process_index=p, process_count=2), 4)
        for p in range(2)
    ]
    joined = [
        {k: np.concatenate([h0[k], h1[k]]) for k in h0} for h0, h1 in zip(*halves, strict=True)
    ]
    _assert_same(joined, whole)
    # A run resumed on 2 hosts continues the 1-host run exactly.
    host1 = PairStream(domain, domain, 4, 1, TRAIN, process_index=1, process_count=2)
    host1.set_state({**PairStream(domain, domain, 4, 1, TRAIN).get_state(), "step": 2})
    np.testing.assert_array_equal(next(host1)["source_image"], whole[2]["source_image"][2:])
    with PairStream(domain, domain, 4, 1, TRAIN, num_workers=2) as workers:
        _assert_same(_take(workers, 4), whole)


def test_an_in_memory_domain_pairs_with_an_image_domain_of_the_same_shape(tree):
    from uda_jax.config import DataConfig
    from uda_jax.data.domains import from_arrays
    from uda_jax.data.sources import load_data_domain, pair_stream

    data = DataConfig(batch_size=4, resize=32, crop_size=28)
    images = load_data_domain(f"folder:{tree}", data)
    pixels = np.random.default_rng(0).uniform(-1, 1, (9, 28, 28, 3))
    memory = from_arrays("mine", pixels, np.arange(9) % 3)
    stream = pair_stream(memory, images, data, seed=3)
    batches = _take(stream, 3)  # 2 source batches per epoch: crosses an epoch
    image_only = _take(pair_stream(images, images, data, seed=3), 3)
    for step, (batch, alone) in enumerate(zip(batches, image_only, strict=True)):
        rows = np.random.default_rng([6, step // 2]).permutation(9)[4 * (step % 2) :][:4]
        np.testing.assert_array_equal(batch["source_image"], memory.train_images[rows])
        np.testing.assert_array_equal(batch["source_label"], memory.train_labels[rows])
        for key in ("target_image", "target_index"):  # the image side is unchanged
            np.testing.assert_array_equal(batch[key], alone[key])
    wrong = from_arrays("wrong", pixels[:, :24, :24], np.arange(9) % 3)
    with pytest.raises(UserError, match="image shapes") as info:
        pair_stream(wrong, images, data, seed=3)
    assert "\n" not in str(info.value)


def test_eval_batches_padded_fixed_order(tree):
    domain = read_image_folder(tree)
    batches = list(image_eval_batches(domain, 5, transforms.eval_transform(32, 28)))
    assert [b[2] for b in batches] == [5, 5, 2]
    labels = np.concatenate([b[1][: b[2]] for b in batches])
    np.testing.assert_array_equal(labels, domain.labels)
    image0 = transforms.eval_transform(32, 28)(transforms.decode_rgb(domain.paths[0]))
    np.testing.assert_array_equal(batches[2][0][2], image0)  # padding repeats example 0
    np.testing.assert_array_equal(batches[0][0][0], image0)
    stochastic = transforms.eval_transform(32, 28, stochastic=True)
    a = list(image_eval_batches(domain, 5, stochastic))
    b = list(image_eval_batches(domain, 5, stochastic))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[0], y[0])


# ---- validation before training: empty classes, symlinks, labels, bit depths ------------------


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def _warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]


def test_an_empty_class_folder_is_refused_unless_a_class_list_defines_it(tree, capsys):
    (tree / "cow").mkdir()
    (tree / "cow" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match=r"class folder '.*/cow' has no images") as info:
        read_image_folder(tree)  # the folders are the classes: a phantom class would be made
    assert "add its images or remove the folder" in _one_line(info)
    (tree / "yak").mkdir()
    with pytest.raises(UserError, match=r"'.*/cow' has no images .*\(and 1 more empty"):
        read_image_folder(tree)
    capsys.readouterr()
    kept = read_image_folder(tree, class_names=["bird", "cat", "cow", "dog"])  # defined: kept
    assert kept.num_classes == 4 and np.bincount(kept.labels).tolist() == [4, 4, 0, 4]
    (warning,) = _warnings(capsys)
    assert "no image of 1 of its 4 classes ('cow'); they stay classes" in warning


def test_benchmark_classes_without_images_stay_classes_with_a_warning(tmp_path, capsys):
    for k in range(12):  # ImageCLEF: 12 sorted class folders, one of them empty
        folder = tmp_path / "imageclef" / "c" / f"class{k:02d}"
        folder.mkdir(parents=True)
        if k != 5:
            _write(folder / "a.jpg", k)
    domain = benchmarks.resolve_image_domain("imageclef/c", tmp_path)
    assert domain.num_classes == 12 and 5 not in domain.labels.tolist()
    (warning,) = _warnings(capsys)
    assert "no image of 1 of its 12 classes ('class05')" in warning
    (tmp_path / "imageclef" / "c" / "class05").rmdir()
    with pytest.raises(UserError, match="has 11 class folders, expected 12"):
        benchmarks.resolve_image_domain("imageclef/c", tmp_path)
    # A benchmark list names its classes' images; classes it does not list are kept, warned.
    _write(tmp_path / "office31" / "amazon" / "images" / "bike" / "x.jpg", 1)
    _write(tmp_path / "office31" / "amazon" / "images" / "mug" / "y.jpg", 2)
    listed = tmp_path / "office31" / "amazon_list.txt"
    listed.write_text("amazon/images/bike/x.jpg 1\namazon/images/mug/y.jpg 17\n")
    amazon = benchmarks.resolve_image_domain("office31/amazon", tmp_path)
    assert amazon.num_classes == 31 and amazon.labels.tolist() == [1, 17]
    (warning,) = _warnings(capsys)
    assert "no image of 29 of its 31 classes ('back_pack', 'bike_helmet'," in warning
    # Folders that are not classes of the benchmark are reported, not read.
    listed.unlink()
    for cls in [*benchmarks.OFFICE31_CLASSES, "misc"]:
        (tmp_path / "office31" / "amazon" / "images" / cls).mkdir(exist_ok=True)
    _write(tmp_path / "office31" / "amazon" / "images" / "misc" / "z.jpg", 3)
    amazon = benchmarks.resolve_image_domain("office31/amazon", tmp_path)
    assert amazon.num_classes == 31 and amazon.labels.tolist() == [1, 17]
    (extra, empty) = _warnings(capsys)
    assert "folders that are not office31 classes are not read ('misc')" in extra
    assert "no image of 29 of its 31 classes" in empty


def test_a_class_without_test_examples_gives_valid_results_json():
    from uda_jax.config import Config
    from uda_jax.evaluation import classification_metrics
    from uda_jax.loop import final_results

    metrics = classification_metrics(np.array([0, 1, 1, 0]), np.array([0, 1, 1, 1]), CLASSES)
    assert metrics["per_class/cat"] == 1.0 and metrics["per_class/dog"] == 2 / 3
    assert np.isnan(metrics["per_class/bird"])  # no test example: no accuracy
    assert metrics["mean_class_accuracy"] == pytest.approx((1.0 + 2 / 3) / 2)  # bird left out
    results = final_results(
        Config(), {f"eval/target_{k}": v for k, v in metrics.items()}, 1.5, float("nan")
    )
    text = json.dumps(results, allow_nan=False)  # raises on NaN: results.json must be JSON
    assert json.loads(text)["per_class_accuracy"] == {"cat": 1.0, "dog": 2 / 3, "bird": None}
    assert results["steps_per_s"] is None and results["images_per_s"] is None
    assert results["target_mean_class_accuracy"] == metrics["mean_class_accuracy"]


def test_symlink_loops_are_skipped_once_with_a_warning(tree, capsys):
    (tree / "cat" / "loop").symlink_to("..")  # the domain root
    (tree / "dog" / "nested" / "self").symlink_to(".")
    domain = read_image_folder(tree)
    assert len(domain) == 12 and len(set(domain.paths)) == 12  # was 492 entries
    assert np.bincount(domain.labels).tolist() == [4, 4, 4]
    warnings = _warnings(capsys)
    assert len(warnings) == 2 and all("skipped the symlink loop" in w for w in warnings)
    assert any(f"'{tree}/cat/loop' (it links to '{tree.resolve()}'" in w for w in warnings)


def test_symlinked_folders_are_followed_and_each_folder_read_once(tree, tmp_path, capsys):
    outside = tmp_path / "more_birds"
    _write(outside / "b.jpg", 7)
    _write(outside / "deeper" / "c.png", 8, "PNG")
    (tree / "bird" / "extra").symlink_to(outside)  # a folder elsewhere: read as class bird
    (tree / "fox").mkdir()
    (tree / "fox" / "same").symlink_to(outside)  # the same folder again: skipped, warned
    _write(tree / "fox" / "f.jpg", 9)
    (tree / "fox" / "dogs").symlink_to(tree / "dog" / "nested")  # another class's folder
    domain = read_image_folder(tree)
    assert domain.class_names == ("bird", "cat", "dog", "fox")
    assert np.bincount(domain.labels).tolist() == [6, 4, 4, 1]
    assert str((outside / "deeper" / "c.png").resolve()) in domain.paths
    warnings = _warnings(capsys)
    assert len(warnings) == 2 and "\n" not in "".join(warnings)
    assert any("fox/same' to" in w and "already read for class 'bird'" in w for w in warnings)
    assert any("fox/dogs' to" in w and "already read for class 'dog'" in w for w in warnings)


def test_images_reached_twice_through_symlinks(tree, capsys):
    (tree / "cat" / "again.jpg").symlink_to(tree / "cat" / "img0.jpg")
    domain = read_image_folder(tree)
    assert len(domain) == 12  # once
    (warning,) = _warnings(capsys)
    assert "class 'cat' reaches 1 image(s) a second time through symlinks (e.g. '" in warning
    assert (
        "cat/again.jpg' and '" in warning
        and "img0.jpg' are one image" in warning
        and "; each image is read once" in warning
    )
    (tree / "dog" / "cat.jpg").symlink_to(tree / "cat" / "img1.jpg")
    two = r"img1.jpg' is in two classes, 'cat' \(as '.*/cat/img1.jpg'\) and 'dog' \(as '.*/dog/cat"
    with pytest.raises(UserError, match=two) as info:
        read_image_folder(tree)
    assert "an image must have one class" in _one_line(info)
    (tree / "dog" / "cat.jpg").unlink()
    (tree / "kitty").symlink_to(tree / "cat")
    with pytest.raises(UserError, match=r"'.*/kitty' is the same folder as class folder"):
        read_image_folder(tree)


def test_list_label_typo_refused_naming_file_line_and_label(tree, tmp_path, capsys):
    domain = read_image_folder(tree, class_names=CLASSES)
    lines = _list_lines(tree, domain)
    lines[5] = lines[5].rsplit(" ", 1)[0] + " 500"
    list_file = tmp_path / "typo.txt"
    list_file.write_text("\n".join(lines))
    with pytest.raises(
        UserError, match=r"typo\.txt line 6: label 500 leaves classes 3\.\.499"
    ) as info:
        read_image_list(list_file, tree)  # was a 501-class domain
    assert "fix the label" in _one_line(info)
    lines[5] = lines[5].rsplit(" ", 1)[0] + " 3"
    lines = [line for line in lines if not line.endswith(" 2")]  # labels 0, 1, 3: no class 2
    list_file.write_text("\n".join(lines))
    with pytest.raises(UserError, match=r"typo\.txt line 6: label 3 leaves class 2 without any"):
        read_image_list(list_file, tree)
    with pytest.raises(UserError, match=r"typo.txt line 6: label 3 is outside \[0, 3\)"):
        read_image_list(list_file, tree, num_classes=3)  # a known count: out of range
    capsys.readouterr()
    known = read_image_list(list_file, tree, num_classes=4)  # known count: class 2 kept, warned
    assert known.num_classes == 4
    (warning,) = _warnings(capsys)
    assert "no image of 1 of its 4 classes ('2')" in warning


def test_benchmark_list_label_beyond_the_known_class_count(tmp_path):
    _write(tmp_path / "office31" / "dslr" / "images" / "bike" / "x.jpg", 1)
    (tmp_path / "office31" / "dslr_list.txt").write_text(
        "dslr/images/bike/x.jpg 1\r\n" * 2 + "dslr/images/bike/x.jpg 310\r\n"
    )
    with pytest.raises(UserError, match=r"dslr_list.txt line 3: label 310 is outside \[0, 31\)"):
        benchmarks.resolve_image_domain("office31/dslr", tmp_path)


def test_domains_with_other_classes_are_refused_naming_file_line_and_label(tree, tmp_path):
    from uda_jax.config import DataConfig
    from uda_jax.data.domains import check_compatible
    from uda_jax.data.sources import load_data_domain

    domain = read_image_folder(tree)  # bird, cat, dog
    lines = _list_lines(tree, domain)
    (tmp_path / "three.txt").write_text("\n".join(lines))
    _write(tree / "owl" / "o.jpg", 5)
    (tmp_path / "four.txt").write_text("\n".join([*lines, "owl/o.jpg 3"]))
    data = DataConfig(root=str(tree))
    three = load_data_domain(f"list:{tmp_path / 'three.txt'}", data)
    four = load_data_domain(f"list:{tmp_path / 'four.txt'}", data)
    with pytest.raises(UserError, match="have 3 and 4 classes") as info:
        check_compatible(three, four)
    assert r"has label 3 at " in _one_line(info)
    assert r"owl/o.jpg (" in str(info.value) and r"four.txt line 13), outside [0, 3))" in str(
        info.value
    )
    # The same classes in another order (a folder tree against a list in its own order).
    swapped = [line.replace(" 0", " x").replace(" 1", " 0").replace(" x", " 1") for line in lines]
    (tmp_path / "swapped.txt").write_text("\n".join(swapped))
    other = load_data_domain(f"list:{tmp_path / 'swapped.txt'}", data)
    assert other.class_names == ("cat", "bird", "dog")
    with pytest.raises(UserError, match="number the same classes differently") as info:
        check_compatible(three, other)
    assert "label 0 is 'bird' in one and 'cat' in the other" in _one_line(info)


# Each mode: a tiny PIL image, saved and decoded as the pipeline does, and the pixel expected.
I16 = np.array([[0, 65535, 32896, 1000]], np.uint16)  # → 0, 255, 128, round(3.89) = 4
FLOATS = np.array([[0.0, 0.5, 1.0, 0.25, 1.001, -0.001]], np.float32)  # 1.001/−0.001: noise


def _mode_images():
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((1, 0), 1)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    return {
        "I;16 png": (Image.fromarray(I16), "PNG", [[0] * 3, [255] * 3, [128] * 3, [4] * 3]),
        "I int32 tiff": (
            Image.fromarray(np.array([[0, 65535, 25700]], np.int32)),
            "TIFF",
            [[0] * 3, [255] * 3, [100] * 3],
        ),
        "F float32 tiff": (
            Image.fromarray(FLOATS),
            "TIFF",
            [[0] * 3, [128] * 3, [255] * 3, [64] * 3, [255] * 3, [0] * 3],
        ),
        "P palette png": (palette, "PNG", [[10, 20, 30], [200, 100, 50]]),
        "P transparent png": (transparent, "PNG", [[10, 20, 30], [200, 100, 50]]),
        "CMYK tiff": (
            Image.frombytes("CMYK", (2, 1), bytes([0, 255, 255, 0, 128, 0, 0, 128])),
            "TIFF",
            [[255, 0, 0], [63, 127, 127]],  # 255·(1 − C)(1 − K)
        ),
        "LA png": (Image.new("LA", (1, 1), (100, 0)), "PNG", [[100, 100, 100]]),  # alpha dropped
        "RGBA png": (Image.new("RGBA", (1, 1), (10, 20, 30, 0)), "PNG", [[10, 20, 30]]),
        "L png": (Image.new("L", (1, 1), 77), "PNG", [[77, 77, 77]]),
        "1-bit png": (bilevel, "PNG", [[0, 0, 0], [255, 255, 255]]),
    }


@pytest.mark.parametrize("case", list(_mode_images()))
def test_every_bit_depth_decodes_to_8_bit_rgb(case, tmp_path):
    image, fmt, expected = _mode_images()[case]
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, fmt)
    with Image.open(path) as saved:
        assert saved.mode == image.mode  # the file really has the mode under test
    decoded = transforms.decode_rgb(str(path))
    assert decoded.dtype == np.uint8 and decoded.shape == (1, len(expected), 3)
    np.testing.assert_array_equal(decoded[0], expected)
    np.testing.assert_array_equal(transforms.decode_rgb(path.read_bytes()), decoded)


def _png_16_bit_rgb(rgb: tuple[int, int, int]) -> bytes:
    """A 1×1 48-bit RGB PNG (Pillow cannot write one)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 16, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + struct.pack(">HHH", *rgb))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def test_16_bit_variants_and_16_bit_rgb_png():
    for mode in ("I;16B", "I;16L", "I;16N"):
        image = Image.new(mode, (1, 1), 32896)
        np.testing.assert_array_equal(transforms.pil_to_rgb(image), [[[128, 128, 128]]])
    # Pillow decodes 48-bit RGB PNGs to 8 bits itself, keeping each high byte.
    rgb = transforms.decode_rgb(_png_16_bit_rgb((65535, 32767, 32896)))
    np.testing.assert_array_equal(rgb, [[[255, 127, 128]]])


@pytest.mark.parametrize(
    "values, fragment",
    [
        (
            np.array([[0.0, 2.0]], np.float32),
            r"float image with values in \[0, 2\], outside \[0, 1\]",
        ),
        (np.array([[0.0, 255.0]], np.float32), r"values in \[0, 255\], outside \[0, 1\]"),
        (np.array([[-0.5, 0.5]], np.float32), r"values in \[-0.5, 0.5\]"),
        (np.array([[np.nan, 0.5]], np.float32), "values in NaN or inf"),
        (np.array([[-1, 5]], np.int32), r"values in \[-1, 5\], outside the 16-bit range"),
        (np.array([[0, 70000]], np.int32), r"values in \[0, 70000\], outside the 16-bit range"),
    ],
)
def test_out_of_range_float_and_integer_images_are_refused(values, fragment):
    with pytest.raises(transforms.ImageValueError, match=fragment):
        transforms.pil_to_rgb(Image.fromarray(values))


def test_an_out_of_range_float_image_fails_when_the_domain_is_checked(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5]], np.float32)).save(tmp_path / "ok.tif")
    Image.fromarray(np.array([[0.0, 100.0]], np.float32)).save(tmp_path / "bad.tif")
    (tmp_path / "l.txt").write_text("ok.tif 0\nbad.tif 1\n")
    listed = read_image_list(tmp_path / "l.txt")
    with pytest.raises(UserError, match=r"bad.tif \(.*l.txt line 2\): .*outside \[0, 1\]") as info:
        check_images(listed)
    assert "scale it to [0, 1] or save it as an 8-bit image" in _one_line(info)
    kept, skipped = check_images(listed, skip_unreadable=True)
    assert skipped == 1 and kept.paths == (str((tmp_path / "ok.tif").resolve()),)


def test_arrays_of_other_depths_are_scaled_not_wrapped():
    expected = [[[0, 0, 0], [128, 128, 128], [255, 255, 255]]]
    for array in (
        np.array([[0, 32896, 65535]], np.uint16),
        np.array([[0.0, 0.5, 1.0]], np.float32),
        np.array([[0, 128, 255]], np.int64),
    ):
        np.testing.assert_array_equal(transforms.to_rgb(array), expected)
    np.testing.assert_array_equal(
        transforms.to_rgb(np.array([[False, True]])), [[[0] * 3, [255] * 3]]
    )
    with pytest.raises(transforms.ImageValueError, match=r"int64 image with values in \[0, 300\]"):
        transforms.to_rgb(np.array([[0, 300]], np.int64))  # was wrapped to 44
    t = transforms.ImageTransform(resize=None, crop="none")
    np.testing.assert_array_equal(
        t(np.array([[0, 65535]], np.uint16)), t(np.array([[0, 255]], np.uint8))
    )
