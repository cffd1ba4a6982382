"""Config loading, overrides and validation: every mistake is one clear UserError."""

import dataclasses
import sys
import textwrap
from pathlib import Path

import pytest

from uda_jax.config import Config, ScheduleConfig, dump_yaml, load_config
from uda_jax.errors import UserError
from uda_jax.methods import build_method

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _error(overrides, path=None) -> str:
    """The message of the UserError that loading raises; it must be one line."""
    with pytest.raises(UserError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_defaults_are_the_embedded_cgdm_demo_and_match_its_yaml():
    config = load_config()
    assert config == Config()
    assert (config.method.name, config.data.source, config.data.target) == (
        "cgdm",
        "mnist5k",
        "ucidigits",
    )
    assert list(config.sections) == ["cgdm"]
    assert config.cgdm is config.section("cgdm")
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
            "optimizer.weight_decay=0",
            "steps=200",
            "seed=3",
        ],
    )
    assert config.method.name == "mcd"
    assert config.optimizer.name == "adamw"
    assert config.optimizer.learning_rate == pytest.approx(3e-4)
    assert (config.steps, config.seed) == (200, 3)
    assert config.optimizer.kwargs == {}  # sgd's momentum does not leak into adamw
    assert list(config.sections) == ["mcd"]  # the file's cgdm section is dropped
    assert config.mcd.entropy_weight == 0.0  # mcd's own default, not cgdm's 0.01


def test_override_merges_into_mappings_and_lists_parse():
    config = load_config(None, ["optimizer.groups.f1.lr_mult=2", "model.classifier_widths=[8,4]"])
    assert config.optimizer.groups["f1"].lr_mult == 2.0
    assert config.optimizer.groups["g"].kwargs == {"momentum": 0.0}  # default group kept
    assert config.model.classifier_widths == (8, 4)


def test_method_sections_take_overrides():
    config = load_config(None, ["cgdm.gd_weight=0.5", "cgdm.num_k=2", "cpu_tuning=off"])
    assert (config.cgdm.gd_weight, config.cgdm.num_k, config.cpu_tuning) == (0.5, 2, "off")
    config = load_config(None, ["method.name=dann", "dann.trade_off=2"])
    assert list(config.sections) == ["dann"] and config.dann.trade_off == 2.0


def test_schedule_shorthand_and_section():
    assert load_config(None, ["optimizer.schedule=inv"]).optimizer.schedule == ScheduleConfig(
        name="inv"
    )
    config = load_config(
        None,
        [
            "optimizer.schedule.name=inv",
            "optimizer.schedule.kwargs.gamma=0.01",
            "optimizer.schedule.kwargs.power=0.5",
        ],
    )
    assert config.optimizer.schedule == ScheduleConfig("inv", {"gamma": 0.01, "power": 0.5})


def test_metaalign_is_a_method_with_its_base_section():
    config = load_config(None, ["method.name=metaalign", "metaalign.base=dann"])
    assert list(config.sections) == ["metaalign", "dann"]
    method = build_method(config)
    assert method.name == "metaalign" and method.base.name == "dann"
    config = load_config(CONFIGS / "digits_gvb_metaalign.yaml", ["gvb.trade_off=0.5"])
    assert set(config.sections) == {"metaalign", "gvb"}
    assert (config.metaalign.base, config.gvb.trade_off) == ("gvb", 0.5)


@pytest.mark.parametrize(
    "path, method, sections",
    [
        ("digits_cgdm.yaml", "dann", ["dann"]),
        ("digits_gvb_metaalign.yaml", "cgdm", ["cgdm"]),
        ("digits_gvb_metaalign.yaml", "gvb", ["gvb"]),
        ("digits_dann.yaml", "metaalign", ["metaalign", "gvb"]),
    ],
)
def test_method_override_drops_the_sections_of_the_files_method(path, method, sections):
    file_config = load_config(CONFIGS / path)
    config = load_config(CONFIGS / path, [f"method.name={method}"])
    assert config.method.name == method
    assert list(config.sections) == sections
    for name in sections:  # a section both methods read keeps the file's values
        if name in file_config.sections:
            assert config.section(name) == file_config.section(name)


def test_base_override_swaps_the_wrapped_methods_section():
    config = load_config(CONFIGS / "digits_gvb_metaalign.yaml", ["metaalign.base=dann"])
    assert list(config.sections) == ["metaalign", "dann"]
    assert config.metaalign.base == "dann"


def test_method_override_keeps_a_section_the_new_method_reads():
    config = load_config(
        CONFIGS / "digits_gvb.yaml", ["method.name=metaalign", "metaalign.period=2"]
    )
    assert config.gvb == load_config(CONFIGS / "digits_gvb.yaml").gvb
    assert config.metaalign.period == 2


@pytest.mark.parametrize(
    "overrides",
    [
        ["method.name=dann", "stepz=3"],
        ["method.name=dann", "cgdm.gd_weight=0.5"],
        ["method.name=metaalign", "metaalign.base=dann", "gvb.trade_off=2"],
    ],
)
def test_method_override_does_not_hide_an_unknown_key(overrides):
    _error(overrides)


@pytest.mark.parametrize(
    "text, overrides, check",
    [
        (
            "optimizer:\n  schedule: inv\n",
            ["optimizer.schedule.kwargs.gamma=0.01"],
            lambda c: c.optimizer.schedule == ScheduleConfig("inv", {"gamma": 0.01}),
        ),
        (
            "method: dann\ndann:\n  trade_off: 2.0\n",
            ["method.name=cgdm"],
            lambda c: list(c.sections) == ["cgdm"],
        ),
        (
            "method: dann\ndann:\n  trade_off: 2.0\n",
            ["method=cgdm"],
            lambda c: list(c.sections) == ["cgdm"],
        ),
    ],
    ids=["schedule: inv", "method: dann + method.name", "method: dann + method"],
)
def test_overrides_into_a_section_given_by_its_name_alone(tmp_path, text, overrides, check):
    path = tmp_path / "short.yaml"
    path.write_text(text)
    assert check(load_config(path, overrides))


TOY_METHOD = """
import dataclasses

from uda_jax.config import check_range
from uda_jax.methods import Method, NetworkSpec


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    weight: float = 1.0
    repeats: int = 3

    def validate(self, where):
        check_range(self, where, positive=("repeats",))


@dataclasses.dataclass(frozen=True)
class Toy(Method):
    config: ToyConfig = dataclasses.field(default_factory=ToyConfig)
    name = "toy"
    config_class = ToyConfig
    network = NetworkSpec(num_classifiers=1, head="linear")
"""


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    """A Method defined in a module of its own, outside uda_jax, never registered."""
    (tmp_path / "uda_test_toy_method.py").write_text(TOY_METHOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "uda_test_toy_method:Toy"
    sys.modules.pop("uda_test_toy_method", None)


def test_method_by_import_path_loads_its_section(toy_method, tmp_path):
    config = load_config(None, [f"method.name={toy_method}", "toy.weight=2.5"])
    assert list(config.sections) == ["toy"]
    assert dataclasses.asdict(config.toy) == {"weight": 2.5, "repeats": 3}
    method = build_method(config)
    assert type(method).__name__ == "Toy" and method.config is config.toy
    path = tmp_path / "toy.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            method:
              name: {toy_method}
            toy:
              repeats: 5
            """)
    )
    from_file = load_config(path)
    assert from_file.toy.repeats == 5
    copy = tmp_path / "copy.yaml"
    copy.write_text(dump_yaml(from_file))
    assert load_config(copy) == from_file
    assert "toy.repeats must be positive, got 0" in _error(["toy.repeats=0"], path)
    assert "did you mean 'toy.weight'" in _error(["toy.wieght=1"], path)
    path.write_text(f"method:\n  name: {toy_method}\ncgdm:\n  num_k: 2\n")
    assert "config section 'cgdm' belongs to method cgdm" in _error([], path)


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("uda_test_no_such_module:Toy", "cannot import 'uda_test_no_such_module'"),
        ("uda_test_toy_method:Nope", "is not a uda_jax.methods.Method subclass"),
        ("uda_test_toy_method:ToyConfig", "is not a uda_jax.methods.Method subclass"),
    ],
)
def test_bad_method_import_path(toy_method, name, fragment):
    del toy_method
    assert fragment in _error([f"method.name={name}"])


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["stepz=10"], "unknown config key 'stepz' (did you mean 'steps'?)"),
        (["method.nmae=mcd"], "did you mean 'method.name'"),
        (["method.name=cgdn"], "unknown method.name 'cgdn' (did you mean 'cgdm'?)"),
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
        (["cpu_tuning=maybe"], "cpu_tuning must be one of auto, on, off"),
        (["optimizer.schedule=[inv]"], "optimizer.schedule must be a mapping"),
        (["optimizer.schedule.kwargs=3"], "optimizer.schedule.kwargs must be a mapping"),
        (["optimizer.schedule.nmae=inv"], "did you mean 'optimizer.schedule.name'"),
        (["steps"], "not of the form key=value"),
        (["=3"], "not of the form key=value"),
        (["steps.x=3"], "'steps' is a value, not a section"),
        (["method=3"], "method must be a mapping"),
        (["cgdm=3"], "cgdm must be a mapping"),
        # keys of the old shape
        (["method.gd_weight=0.1"], "unknown config key 'method.gd_weight'"),
        (["optimizer.schedule_gamma=0.1"], "unknown config key 'optimizer.schedule_gamma'"),
        (["model.kernels=on"], "unknown config key 'model.kernels'"),
        (["cpu_memory=on"], "unknown config key 'cpu_memory'"),
        (
            ["method.name=metaalign", "metaalign.enabled=true"],
            "unknown config key 'metaalign.enabled'",
        ),
        # a section: its keys, their types and finiteness
        (
            ["cgdm.gd_wieght=0.1"],
            "unknown config key 'cgdm.gd_wieght' (did you mean 'cgdm.gd_weight'?)",
        ),
        (["cgdm.num_k=two"], "cgdm.num_k must be of type int"),
        (["cgdm.gd_weight=nan"], "cgdm.gd_weight must be a finite number, got nan"),
        (["cgdm.gd_weight=.nan"], "cgdm.gd_weight must be a finite number, got nan"),
        (["optimizer.learning_rate=inf"], "optimizer.learning_rate must be a finite number"),
        (["optimizer.weight_decay=-.inf"], "optimizer.weight_decay must be a finite number"),
        (["model.dropout=nan"], "model.dropout must be a finite number"),
        # each method's validate()
        (["cgdm.num_k=0"], "cgdm.num_k must be positive, got 0"),
        (["cgdm.pseudo_interval=0"], "cgdm.pseudo_interval must be positive, got 0"),
        (["cgdm.gd_weight=-0.1"], "cgdm.gd_weight must be >= 0, got -0.1"),
        (["cgdm.warmup_steps=-1"], "cgdm.warmup_steps must be >= 0, got -1"),
        (["method.name=mcd", "mcd.num_k=0"], "mcd.num_k must be positive, got 0"),
        (["method.name=mcd", "mcd.entropy_weight=-1"], "mcd.entropy_weight must be >= 0"),
        (["method.name=dann", "dann.trade_off=-1"], "dann.trade_off must be >= 0, got -1.0"),
        (["method.name=cdan", "cdan.grl_max_iter=0"], "cdan.grl_max_iter must be positive"),
        (["method.name=cdan_e", "cdan_e.grl_alpha=-1"], "cdan_e.grl_alpha must be positive"),
        (["method.name=gvb", "gvb.gvbg_weight=-1"], "gvb.gvbg_weight must be >= 0, got -1.0"),
        (["method.name=gvb", "gvb.gvbd_weight=-1"], "gvb.gvbd_weight must be >= 0, got -1.0"),
        (["method.name=metaalign", "metaalign.period=0"], "metaalign.period must be positive"),
        (["method.name=metaalign", "metaalign.meta_lr=-1"], "metaalign.meta_lr must be >= 0"),
        (
            ["method.name=metaalign", "metaalign.inner_mult.f=-1"],
            "metaalign.inner_mult.f must be >= 0, got -1.0",
        ),
        (
            ["method.name=metaalign", "metaalign.order=third"],
            "metaalign.order must be one of first, second",
        ),
        (
            ["method.name=metaalign", "metaalign.base=cgdm"],
            "metaalign.base must be an adversarial method (cdan, cdan_e, dann, gvb), not 'cgdm'",
        ),
        (
            ["method.name=metaalign", "metaalign.base=gvb", "gvb.gvbg_weight=-1"],
            "gvb.gvbg_weight must be >= 0",
        ),
    ],
)
def test_bad_overrides_raise_one_clear_line(overrides, fragment):
    assert fragment in _error(overrides)


@pytest.mark.parametrize(
    "path, overrides, section, method",
    [
        (None, ["dann.trade_off=2"], "dann", "cgdm"),
        (None, ["gvb.gvbg_weight=-1"], "gvb", "cgdm"),  # the foreign section, before its value
        (None, ["metaalign.base=gvb"], "metaalign", "cgdm"),
        ("digits_dann.yaml", ["cgdm.num_k=2"], "cgdm", "dann"),
    ],
)
def test_a_section_of_another_method_names_it_and_the_fix(path, overrides, section, method):
    message = _error(overrides, path and CONFIGS / path)
    assert message.startswith(
        f"config section '{section}' belongs to method {section}, but method.name is "
        f"'{method}'; remove it or set method.name={section}"
    ), message


def test_a_section_of_another_method_in_a_file(tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text("method:\n  name: cgdm\ndann:\n  trade_off: 2.0\n")
    message = _error([], path)
    assert "config section 'dann' belongs to method dann, but method.name is 'cgdm'" in message
    assert "set method.name=dann" in message
    assert load_config(path, ["method.name=dann"]).dann.trade_off == 2.0  # the fix it names


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


# ----------------------------------------------------------------------------- strict YAML


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("steps: 3\nseed: 1\nsteps: 4\n", 3, "the key 'steps' is given twice (lines 1 and 3)"),
        ("model:\n  dropout: 0.1\n  dropout: 0.2\n", 3, "the key 'dropout' is given twice"),
        ("null: 3\n", 1, "the key null is read as null, not a name"),
        ("1.5: 3\n", 1, "the key 1.5 is read as a number, not a name"),
        ("[a, b]: 3\n", 1, "is read as a list, not a name"),
        ("st\u00e9ps: 3\n", 1, "holds the non-ASCII character '\u00e9' (U+00E9"),
        ("steps: 010\n", 1, "steps: 010 has a leading zero, which YAML 1.1 reads as the octal"),
        ("a:\n  b: -010\n", 2, "b: -010 has a leading zero"),
        ("seed: 0x1F\n", 1, "seed: 0x1F is hexadecimal, which YAML reads as 31"),
        ("a: [1, 0b10]\n", 1, "0b10 is binary"),
        ("a: 1_000\n", 1, "a: 1_000 has an underscore"),
        ("a: 1:30\n", 1, "a: 1:30 is read by YAML 1.1 as the base-60 number 90"),
        ("a: 1e400\n", 1, "a: 1e400 is too large for a 64-bit float"),
    ],
)
def test_strict_yaml_refuses_what_pyyaml_reads_silently(text, line, fragment):
    from uda_jax.strict_yaml import StrictYamlError, load_yaml

    with pytest.raises(StrictYamlError) as info:
        load_yaml(text)
    assert info.value.line == line
    assert fragment in info.value.message, info.value.message


def test_strict_yaml_keeps_what_is_unambiguous():
    from uda_jax.strict_yaml import load_yaml

    text = "a: 1e-8\nb: 2.5e3\nc: 0\nd: 00\ne: 007\nf: '010'\ng: +5\nh: .inf\ni: -.5\n"
    assert load_yaml(text) == {
        "a": 1e-8,  # YAML 1.1 would read text here
        "b": 2500.0,
        "c": 0,
        "d": 0,  # octal and decimal agree
        "e": 7,
        "f": "010",
        "g": 5,
        "h": float("inf"),  # refused later where a finite number is needed
        "i": -0.5,
    }
    merged = load_yaml("base: &b {x: 1, y: 2}\nmore:\n  <<: *b\n  y: 3\n")
    assert merged["more"] == {"x": 1, "y": 3}  # a merge key overridden is no duplicate


def test_config_file_mistakes_name_the_file_and_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("steps: 3\nseed: 1\nsteps: 4\n")
    message = _error([], path)
    assert message.startswith(f"config file {path} line 3: the key 'steps' is given twice")
    path.write_bytes("steps: 3  # caf\u00e9\n".encode("latin-1"))
    assert "is not UTF-8 text" in _error([], path)
    path.write_text("1: 2\n")
    assert "the config key 1 at the top level is a number, not a name" in _error([], path)


def test_exponent_numbers_reach_optax_as_floats_and_integer_keys_stay_for_optax():
    config = load_config(
        None,
        [
            "optimizer.name=adam",
            "optimizer.weight_decay=0",
            "optimizer.kwargs.eps=1e-8",
            "optimizer.schedule=piecewise_constant_schedule",
            "optimizer.schedule.kwargs.boundaries_and_scales={100: 0.1}",
            "run_dir='010'",
        ],
    )
    assert config.optimizer.kwargs == {"eps": 1e-8}
    assert config.optimizer.schedule.kwargs == {"boundaries_and_scales": {100: 0.1}}
    assert config.run_dir == "010"  # quoted: text, as the message for 010 suggests


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["steps=010"], "write 10 (or 8 if you meant octal)"),
        (["seed=0x10"], "write the decimal 16"),
        (["seed=4294967296"], "seed must be at most 4294967295"),
        (["steps=2147483648"], "steps must be at most 2147483647"),
        (["steps=1e3"], "steps must be of type int, got 1000.0 (write 1000)"),
        (["optimizer.learning_rate=1e400"], "1e400 is too large for a 64-bit float"),
        (["optimizer.kwargs.momentum=nan"], "optimizer.kwargs.momentum must be a finite number"),
        (["optimizer.kwargs.momentum=1"], "optimizer.kwargs.momentum must be in [0, 1)"),
        (["optimizer.schedule=inv", "optimizer.schedule.kwargs.gamma=-1"], "gamma must be >= 0"),
        (["data.crop_size=300"], "data.crop_size=300 is larger than data.resize=256"),
        (["data.test_fraction=1"], "data.test_fraction must be in (0, 1)"),
        (["data.image_size=4"], "data.image_size must be at least 8"),
        (["run_dir="], "run_dir is empty"),
        (["optimizer.name=\u0455gd"], "holds the non-ASCII character"),
        (["optimizer.groups={1: {lr_mult: 2}}"], "the config key 1 under optimizer.groups"),
        (["optimizer.kwargs={a: 1, a: 2}"], "the key 'a' is given twice"),
    ],
)
def test_values_read_silently_wrong_before_are_refused(overrides, fragment):
    assert fragment in _error(overrides)
