"""Config loading, overrides and validation: every mistake is one clear UserError."""

from pathlib import Path

import pytest

from uda_jax.config import Config, dump_yaml, load_config
from uda_jax.errors import UserError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_defaults_are_the_embedded_cgdm_demo_and_match_its_yaml():
    config = load_config()
    assert config == Config()
    assert (config.method.name, config.data.source, config.data.target) == (
        "cgdm",
        "mnist5k",
        "ucidigits",
    )
    assert load_config(CONFIGS / "digits_cgdm.yaml") == config


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    config = load_config(path)
    copy = tmp_path / "copy.yaml"
    copy.write_text(dump_yaml(config))
    assert load_config(copy) == config


def test_dotted_overrides_of_the_issue_example():
    config = load_config(
        CONFIGS / "digits_cgdm.yaml",
        [
            "method.name=mcd",
            "optimizer.name=adamw",
            "optimizer.learning_rate=3e-4",
            "steps=200",
            "seed=3",
        ],
    )
    assert config.method.name == "mcd"
    assert config.optimizer.name == "adamw"
    assert config.optimizer.learning_rate == pytest.approx(3e-4)
    assert (config.steps, config.seed) == (200, 3)
    assert config.optimizer.kwargs == {}  # sgd's momentum does not leak into adamw


def test_override_merges_into_mappings_and_lists_parse():
    config = load_config(None, ["optimizer.groups.f1.lr_mult=2", "model.classifier_widths=[8,4]"])
    assert config.optimizer.groups["f1"].lr_mult == 2.0
    assert config.optimizer.groups["g"].kwargs == {"momentum": 0.0}  # default group kept
    assert config.model.classifier_widths == (8, 4)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["stepz=10"], "unknown config key 'stepz' (did you mean 'steps'?)"),
        (["method.nmae=mcd"], "did you mean 'method.name'"),
        (["steps=ten"], "steps must be of type int"),
        (["steps=1.5"], "steps must be of type int"),
        (["seed=true"], "seed must be of type int"),
        (["optimizer.learning_rate=fast"], "optimizer.learning_rate must be of type float"),
        (["model.train_bottleneck=3"], "must be of type bool"),
        (["model.classifier_widths=7"], "must be a list"),
        (["steps=0"], "steps must be positive"),
        (["data.batch_size=-2"], "data.batch_size must be positive"),
        (["model.dropout=1.0"], "model.dropout must be in [0, 1)"),
        (["model.bn_running_var=exact"], "must be one of unbiased, biased"),
        (["optimizer.schedule=cosine"], "must be one of constant, inv"),
        (["steps"], "not of the form key=value"),
        (["=3"], "not of the form key=value"),
        (["steps.x=3"], "'steps' is a value, not a section"),
        (["method=3"], "method must be a mapping"),
    ],
)
def test_bad_overrides_raise_one_clear_line(overrides, fragment):
    with pytest.raises(UserError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(scalar)
