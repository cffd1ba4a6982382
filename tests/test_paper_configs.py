"""The paper configs: all load, hold the settings of the official code of each paper and equal
the generator's output (configs/make_paper_configs.py), so they cannot drift."""

import importlib.util
import itertools
from pathlib import Path

import pytest

from uda_jax.config import FIXED_SECTIONS, load_config
from uda_jax.methods import build_method

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
GENERATED_PREFIXES = ("cgdm_visda", "cgdm_imageclef_", "cgdm_domainnet_", "metaalign_gvb_")


def _generator():
    spec = importlib.util.spec_from_file_location(
        "make_paper_configs", CONFIGS / "make_paper_configs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _value(config, key):
    for part in key.split("."):
        config = config[part] if isinstance(config, dict) else getattr(config, part)
    return config


def _check(path, expected):
    config = load_config(path)
    for key, value in expected.items():
        assert _value(config, key) == value, f"{path.name}: {key}"
    sections = {key.split(".")[0] for key in expected} - set(FIXED_SECTIONS)
    assert set(config.sections) == sections, f"{path.name}: the method sections"
    return config


# ----------------------------------------------------------------------------- the reference

CGDM = {  # every CGDM script: step C, weights, optimizer, heads, resize and crop
    "method.name": "cgdm",
    "cgdm.num_k": 4,
    "cgdm.discrepancy_weight": 1.0,
    "cgdm.gd_weight": 0.01,
    "model.bottleneck_dim": 256,
    "model.classifier_widths": (1000, 1000),
    "model.dropout": 0.5,
    "model.classifier_init": "reference",
    "model.bn_running_var": "unbiased",
    "data.batch_size": 32,
    "data.resize": 256,
    "data.crop_size": 224,
    "optimizer.name": "sgd",
    "optimizer.weight_decay": 5e-4,
    "optimizer.kwargs": {"momentum": 0.9},
    "optimizer.schedule.name": "constant",
    "optimizer.schedule.kwargs": {},
    "optimizer.groups.g.lr_mult": 1.0,
    "optimizer.groups.g.kwargs": {"momentum": 0.0},
}
VISDA = {
    **CGDM,
    "model.backbone": "resnet101",
    "model.pretrained": "resnet101-63fe2227.pth",
    "model.train_bottleneck": False,
    "optimizer.learning_rate": 3e-4,
    "cgdm.entropy_weight": 0.01,
    "cgdm.pseudo_weight": 0.01,
    "data.source": "visda/train",
    "data.target": "visda/validation",
    "data.train_crop": "center",
    "steps": 4762 * 21,  # 152,397 // 32 per epoch, 20 + 1 epochs
    "cgdm.warmup_steps": 4762,
    "eval_every": 4762,
    "seed": 1,
}
IMAGECLEF = {
    **CGDM,
    "model.backbone": "resnet50",
    "model.pretrained": "resnet50-0676ba61.pth",
    "model.train_bottleneck": True,
    "optimizer.learning_rate": 1e-3,
    "cgdm.entropy_weight": 0.1,
    "cgdm.pseudo_weight": 0.1,
    "data.train_crop": "random",
    "steps": 18 * 201,  # 600 // 32 per epoch, 200 + 1 epochs
    "cgdm.warmup_steps": 0,  # start = -1
    "cgdm.pseudo_interval": 18,
    "eval_every": 18,
    "seed": 100,
}
IMAGECLEF_TASKS = ["i2p", "p2i", "i2c", "c2i", "c2p", "p2c"]
DOMAINNET = {
    **CGDM,
    "model.backbone": "resnet50",
    "model.pretrained": "resnet50-0676ba61.pth",
    "model.train_bottleneck": False,
    "optimizer.learning_rate": 1e-3,
    "cgdm.entropy_weight": 0.1,
    "cgdm.pseudo_weight": 0.01,
    "data.train_crop": "center",
    "seed": 1,
}
DOMAINNET_SIZES = {  # whole domains, cleaned release (not in the reference)
    "clipart": 48_129,
    "infograph": 51_605,
    "painting": 72_266,
    "quickdraw": 172_500,
    "real": 172_947,
    "sketch": 69_128,
}
METAALIGN = {  # the MetaAlign code around GVB-GD, with its README run's settings
    "method.name": "metaalign",
    "metaalign.base": "gvb",
    "gvb.trade_off": 1.0,
    "gvb.gvbg_weight": 1.0,
    "gvb.gvbd_weight": 1.0,
    "gvb.grl_max_iter": 10000.0,
    "gvb.grl_alpha": 10.0,
    "model.backbone": "resnet50",
    "model.pretrained": "resnet50-0676ba61.pth",
    "model.bottleneck_dim": 0,
    "model.discriminator_hidden": 1024,
    "model.discriminator_dropout": 0.5,
    "data.batch_size": 24,
    "data.train_crop": "random",
    "data.eval_transform": "center",
    "optimizer.name": "sgd",
    "optimizer.weight_decay": 1e-3,
    "optimizer.kwargs": {"momentum": 0.9, "nesterov": True},
    "optimizer.schedule.name": "inv",
    "optimizer.schedule.kwargs": {"gamma": 0.001, "power": 0.75},
    "optimizer.groups.f.lr_mult": 10.0,
    "optimizer.groups.d.lr_mult": 10.0,
    "metaalign.order": "first",
    "metaalign.meta_lr": 100.0,
    "metaalign.period": 1,
    "metaalign.roles": "alternate",
    "metaalign.inner_mult": {"f": 10.0, "d/gvbd": 10.0},
    "metaalign.stale_discriminator": True,
    "steps": 10002,
    "eval_every": 500,
    "seed": 1,
}
OFFICE31_LR = {"a2w": 3e-4, "d2w": 3e-4, "w2d": 3e-4, "a2d": 3e-4, "d2a": 1e-3, "w2a": 1e-3}
OFFICE31 = {"a": "amazon", "d": "dslr", "w": "webcam"}
OFFICEHOME = {"ar": "Art", "cl": "Clipart", "pr": "Product", "rw": "Real_World"}


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads(path):
    load_config(path)


def test_cgdm_visda():
    config = _check(CONFIGS / "cgdm_visda.yaml", VISDA)
    interval = config.cgdm.pseudo_interval
    # the loop's pseudo-label refreshes: 60, 3 per epoch over epochs 1–20
    method = build_method(config)
    assert sum(method.hook_due(step) for step in range(config.steps)) == 60
    assert interval <= 2000  # labels never older than the official script's --pseudo_interval


@pytest.mark.parametrize("task", IMAGECLEF_TASKS)
def test_cgdm_imageclef(task):
    source, target = task.split("2")
    expected = {
        **IMAGECLEF,
        "data.source": f"imageclef/{source}",
        "data.target": f"imageclef/{target}",
    }
    _check(CONFIGS / f"cgdm_imageclef_{task}.yaml", expected)


@pytest.mark.parametrize("source", DOMAINNET_SIZES)
def test_cgdm_domainnet(source):
    per_epoch = DOMAINNET_SIZES[source] // 32
    expected = {
        **DOMAINNET,
        "data.source": f"domainnet/{source}",
        "steps": per_epoch * 201,
        "cgdm.warmup_steps": per_epoch,  # start = 0
        "cgdm.pseudo_interval": per_epoch,
        "eval_every": per_epoch,
    }
    config = _check(CONFIGS / f"cgdm_domainnet_{source}.yaml", expected)
    assert config.data.target.startswith("domainnet/") and config.data.target != config.data.source
    for target in DOMAINNET_SIZES:  # every task is this file plus a target override
        if target != source:
            override = load_config(
                CONFIGS / f"cgdm_domainnet_{source}.yaml", [f"data.target=domainnet/{target}"]
            )
            assert override.data.target == f"domainnet/{target}"


@pytest.mark.parametrize("task", sorted(OFFICE31_LR))
def test_metaalign_office31(task):
    expected = {
        **METAALIGN,
        "data.source": f"office31/{OFFICE31[task[0]]}",
        "data.target": f"office31/{OFFICE31[task[2]]}",
        "optimizer.learning_rate": OFFICE31_LR[task],  # the GVB-GD code's lr0 per task
    }
    _check(CONFIGS / f"metaalign_gvb_office31_{task}.yaml", expected)


@pytest.mark.parametrize("task", [f"{s}2{t}" for s, t in itertools.permutations(OFFICEHOME, 2)])
def test_metaalign_officehome(task):
    source, target = task.split("2")
    expected = {
        **METAALIGN,
        "data.source": f"officehome/{OFFICEHOME[source]}",
        "data.target": f"officehome/{OFFICEHOME[target]}",
        "optimizer.learning_rate": 1e-3,
    }
    _check(CONFIGS / f"metaalign_gvb_officehome_{task}.yaml", expected)


def test_generator_output_equals_the_files_on_disk(tmp_path):
    written = _generator().write_configs(tmp_path)
    generated = {p.name: p.read_text(encoding="utf-8") for p in written}
    on_disk = {p.name for p in CONFIGS.glob("*.yaml") if p.name.startswith(GENERATED_PREFIXES)}
    assert set(generated) == on_disk
    assert len(generated) == 1 + 6 + 6 + 6 + 12
    for name, text in generated.items():
        assert (CONFIGS / name).read_text(encoding="utf-8") == text, (
            f"{name} differs from the generator: run python configs/make_paper_configs.py"
        )
        assert f"# Run: python -m uda_jax.train configs/{name}" in text or (
            f"#   python -m uda_jax.train configs/{name}" in text
        )
        assert "\n# Paper" in text
        assert max(len(line) for line in text.splitlines()) <= 100
