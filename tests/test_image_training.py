"""Training and evaluating on image files end to end: a class-folder dataset the test writes."""

import json

import numpy as np
import pytest
from PIL import Image

from uda_jax.evaluate import main as evaluate_main
from uda_jax.train import main as train_main


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two domains of 3 classes × 6 JPEGs (40×30), the target darker than the source."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for domain, scale in (("src", 1.0), ("tgt", 0.5)):
        for k, name in enumerate(("cat", "dog", "fox")):
            (root / domain / name).mkdir(parents=True)
            for i in range(6):
                pixels = rng.random((30, 40, 3)) * 80 + 60 * k
                Image.fromarray((pixels * scale).astype(np.uint8)).save(
                    root / domain / name / f"{i}.jpg"
                )
    return root


def test_train_and_evaluate_on_class_folders(folders, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = [
        "data.source=folder:src",
        "data.target=folder:tgt",
        f"data.root={folders}",
        "data.resize=36",
        "data.crop_size=32",
        "data.batch_size=6",
        "data.eval_batch_size=8",
        "steps=3",
        "eval_every=0",
        "cgdm.num_k=1",
        "cgdm.warmup_steps=1",
        "cgdm.pseudo_interval=1",
        "model.classifier_widths=[16,16]",
        "progress=false",
        "plots=false",
        f"run_dir={run_dir}",
    ]
    assert train_main(args) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["source"] == "folder:src" and 0.0 <= results["target_accuracy"] <= 1.0
    assert set(results["per_class_accuracy"]) == {"cat", "dog", "fox"}
    capsys.readouterr()
    assert evaluate_main([str(run_dir), "json=true"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["num_examples"] == 18  # transductive: the whole target domain
    assert evaluated["accuracy"] == results["target_accuracy"]


def test_corrupt_image_fails_before_training_naming_the_file(folders, tmp_path, capsys):
    root = tmp_path / "data"
    for domain in ("src", "tgt"):
        for path in (folders / domain).rglob("*.jpg"):
            target = root / path.relative_to(folders)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (root / "tgt" / "dog" / "3.jpg").write_bytes(b"not a jpeg")
    args = ["data.source=folder:src", "data.target=folder:tgt", f"data.root={root}"]
    run_dir = tmp_path / "run"
    assert train_main([*args, "data.batch_size=6", f"run_dir={run_dir}"]) == 2
    lines = capsys.readouterr().err.splitlines()
    # one error line naming the file, after at most the status lines ("[  1.2 s] loading ...")
    (error,) = [line for line in lines if not line.startswith("[")]
    assert error.startswith("error: ") and "dog/3.jpg" in error
    assert not run_dir.exists()
