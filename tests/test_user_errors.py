"""Every user mistake on the command line, in a config file, in a data path or an output path:
one line, exit code 2, no traceback, found before anything compiles, and the run directory
(and everything else on disk) untouched (issues: "no traceback for any user mistake",
"nothing wrong is ever accepted silently").

A run that starts and then fails (a NaN loss, a full disk) exits 1 with one line that says
whether a checkpoint is kept, and leaves nothing half-written.
"""

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from uda_jax.checkpoint import Checkpointer
from uda_jax.evaluate import main as evaluate_main
from uda_jax.train import main as train_main

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "method.name=source_only",
    "steps=2",
    "eval_every=0",
    "data.batch_size=8",
    "progress=false",
    "plots=false",
    "tensorboard=false",
]
# chmod does not stop root: the permission cases need an ordinary user
needs_chmod = pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished run to resume, evaluate and break."""
    run_dir = tmp_path_factory.mktemp("runs") / "finished"
    assert train_main([*TINY, f"run_dir={run_dir}"]) == 0
    return run_dir


def _files(path: Path) -> dict[str, bytes]:
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _tree(path: Path) -> dict[str, object]:
    """Every entry under ``path`` (not following links): a link's target, a file's bytes, a
    folder's mode."""
    entries: dict[str, object] = {}
    for folder, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            entry = Path(folder) / name
            key = str(entry.relative_to(path))
            if entry.is_symlink():
                entries[key] = ("link", os.readlink(entry))
            elif entry.is_dir():
                entries[key] = ("dir", entry.stat().st_mode)
            else:
                entries[key] = ("file", entry.read_bytes() if os.access(entry, os.R_OK) else None)
    return entries


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


LONG_NAME = "n" * 300  # more than NAME_MAX (255) of any common filesystem
DEEP_PATH = "/".join(["d" * 200] * 25)  # 5000 bytes: more than PATH_MAX (4096)
CONFIG_FILES = {
    "bad.yaml": "steps: [1\nseed: 2\n",
    "list.yaml": "- steps\n- 3\n",
    "nested.yaml": "model:\n  widths: [1, 2]\n",
    "dup.yaml": "steps: 3\nseed: 1\nsteps: 4\n",
    "dup_nested.yaml": "model:\n  dropout: 0.1\n  dropout: 0.2\n",
    "dup_section.yaml": "data:\n  batch_size: 8\nseed: 1\ndata:\n  batch_size: 16\n",
    "int_key.yaml": "1: 2\n",
    "null_key.yaml": "null: 3\n",
    "bool_key.yaml": "model:\n  true: 3\n",
    "int_kwarg_key.yaml": "optimizer:\n  kwargs:\n    1: 0.9\n",
    "non_ascii_key.yaml": "st\u00e9ps: 3\n",
    "non_ascii_name.yaml": "method:\n  name: cgd\u043c\n",
    "non_ascii_label.yaml": "steps: &l\u00e1bel 3\n",
    "octal.yaml": "steps: 010\n",
    "hex.yaml": "seed: 0x10\n",
    "sexagesimal.yaml": "data:\n  batch_size: 1:30\n",
    "nan.yaml": "optimizer:\n  learning_rate: .nan\n",
    "huge.yaml": "optimizer:\n  weight_decay: 1e400\n",
    "scalar.yaml": "42\n",
    "unreadable.yaml": "steps: 3\n",
}


@pytest.fixture
def scene(tmp_path):
    """``tmp_path`` with the broken things the cases name: config files, a file where a folder
    belongs, dangling and looping symlinks, a read-only folder, run directories with a file
    where the run writes a folder (and the reverse)."""
    for name, text in CONFIG_FILES.items():
        _write(tmp_path / name, text)
    (tmp_path / "latin1.yaml").write_bytes(b"steps: 3  # caf\xe9\n")
    _write(tmp_path / "a_file", "")
    _write(tmp_path / "empty_list.txt", "")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "readonly").mkdir()
    (tmp_path / "ckpt_is_file").mkdir()
    _write(tmp_path / "ckpt_is_file" / "checkpoints", "")
    (tmp_path / "metrics_is_dir" / "metrics.jsonl").mkdir(parents=True)
    (tmp_path / "tb_is_file").mkdir()
    _write(tmp_path / "tb_is_file" / "tensorboard", "")
    (tmp_path / "ckpt_dangling").mkdir()
    (tmp_path / "ckpt_dangling" / "checkpoints").symlink_to(tmp_path / "nowhere")
    (tmp_path / "features_dir.npz").mkdir()
    _write(tmp_path / "readonly.npz", "")
    (tmp_path / "readonly.npz").chmod(0o444)
    (tmp_path / "unreadable.yaml").chmod(0)
    (tmp_path / "readonly").chmod(0o555)
    yield tmp_path
    (tmp_path / "readonly").chmod(0o755)
    (tmp_path / "unreadable.yaml").chmod(0o644)


# (command-line arguments, a fragment of the message); "{tmp}" and "{run}" are filled in
TRAIN_CASES = [
    (["stepz=3"], "unknown config key 'stepz' (did you mean 'steps'?)"),
    (["steps=many"], "steps must be of type int"),
    (["steps=0"], "steps must be positive"),
    (["steps=-5"], "steps must be positive"),
    (["seed=-1"], "seed must be >= 0"),
    (["log_every=0"], "log_every must be positive"),
    (["method.name=cgdn"], "unknown method.name 'cgdn' (did you mean 'cgdm'?)"),
    (["method.name=nosuchpkg.mod:Method"], "cannot import 'nosuchpkg.mod'"),
    (["method.gd_weight=0.01"], "unknown config key 'method.gd_weight'; valid keys here: name"),
    (["cgdm.num_k=1.5"], "cgdm.num_k must be of type int"),
    (["cgdm.nmu_k=2"], "unknown config key 'cgdm.nmu_k' (did you mean 'cgdm.num_k'?)"),
    (["cgdm.gd_wieght=2"], "unknown config key 'cgdm.gd_wieght' (did you mean 'cgdm.gd_weight'?)"),
    (["cgdm.gd_weight=nan"], "cgdm.gd_weight must be a finite number, got nan"),
    (["cgdm.num_k=0"], "cgdm.num_k must be positive, got 0"),
    (
        ["cgdm.num_k=40"],
        "cgdm.num_k=40 would compile 40 unrolled copies of step C; set "
        "cgdm.unroll_c=false (one loop body) or num_k <= 16",
    ),
    (
        ["dann.trade_off=2"],
        "config section 'dann' belongs to method dann, but method.name is 'cgdm'; "
        "remove it or set method.name=dann",
    ),
    (["method.name=gvb", "gvb.gvbg_weight=-1"], "gvb.gvbg_weight must be >= 0, got -1.0"),
    (["optimizer.name=adamm"], "unknown optimizer.name 'adamm' (did you mean 'adam'?)"),
    (["optimizer.learning_rate=-1"], "optimizer.learning_rate must be positive"),
    (["optimizer.learning_rate=inf"], "optimizer.learning_rate must be a finite number, got inf"),
    (["optimizer.schedule=cosine_decay"], "(did you mean 'cosine_decay_schedule'?)"),
    (["optimizer.schedule.kwargs.gama=0.1"], "constant has no such argument"),
    (
        ["optimizer.schedule.name=inv", "optimizer.schedule.kwargs.gama=0.1"],
        "optimizer.schedule.kwargs.gama: inv has no such argument (did you mean 'gamma'?)",
    ),
    (["optimizer.schedule_gamma=0.1"], "unknown config key 'optimizer.schedule_gamma'"),
    (["optimizer.name=adamw"], "would decay twice; set optimizer.weight_decay=0"),
    (["optimizer.kwargs.momentm=0.5"], "did you mean 'momentum'"),
    (["optimizer.kwargs.momentum=abc"], "optax.sgd rejects the keyword arguments"),
    (["optimizer.groups.x.lr_mult=2"], "this method has no module 'x'"),
    (["data.source=mnist"], "did you mean 'mnist5k'"),
    (["data.target=uci"], "unknown domain 'uci'"),
    (["data.batch_size=0"], "data.batch_size must be positive"),
    (["data.batch_size=5000"], "data.batch_size=5000 is larger than domain"),
    (["data.image_size=4"], "data.image_size must be at least 8"),
    (["data.test_fraction=1.5"], "data.test_fraction must be in (0, 1)"),
    (["data.train_crop=diagonal"], "data.train_crop must be one of random, center"),
    (["model.backbone=resnet9"], "unknown model.backbone"),
    (["model.dropout=1.5"], "model.dropout must be in [0, 1)"),
    (["model.classifier_widths=[]"], "model.classifier_widths must be a non-empty list"),
    (["model.classifier_widths=abc"], "model.classifier_widths must be a list"),
    (
        ["metaalign.order=first"],
        "config section 'metaalign' belongs to method metaalign, but method.name is 'cgdm'",
    ),
    (["method.name=metaalign", "metaalign.enabled=true"], "unknown config key 'metaalign.enabled'"),
    (["method.name=metaalign", "metaalign.order=third"], "metaalign.order must be one of first"),
    (["method.name=metaalign", "metaalign.period=0"], "metaalign.period must be positive, got 0"),
    (
        ["method.name=metaalign", "metaalign.base=cgdm"],
        "metaalign.base must be an adversarial method (cdan, cdan_e, dann, gvb), not 'cgdm'",
    ),
    (
        ["method.name=metaalign", "metaalign.inner_mult.f=abc"],
        "metaalign.inner_mult.f must be of type float",
    ),
    (["cpu_tuning=fast"], "cpu_tuning must be one of auto, on, off"),
    (["model.kernels=on"], "unknown config key 'model.kernels'"),
    (["precision=fp8"], "precision must be one of float32, bf16"),
    (["checkpoint.keep=0"], "checkpoint.keep must be positive"),
    (["checkpoint.every=-1"], "checkpoint.every must be >= 0"),
    (["checkpoint.best_by=accuracy"], "checkpoint.best_by must be one of im, snd, bnm, entropy,"),
    (["checkpoint.best_by=[snd]"], "checkpoint.best_by must be one of im, snd"),
    (["checkpoint.keep_best=snd"], "checkpoint.keep_best must be of type bool, got 'snd'"),
    (["validators=[snf]"], "validators: unknown validator 'snf' (did you mean 'snd'?); valid:"),
    (["validators=[im,oracle]"], "validators cannot list oracle: it reads the target labels"),
    (["validators=[im,bnm,im]"], "validators lists im twice"),
    (["validators=snd"], "validators must be a list, got 'snd' (e.g. validators=[snd])"),
    (["validators=[3]"], "validators[0] must be of type str, got 3"),
    (["validators=[im,'']"], "validators[1] is empty"),
    (["model.pretrained=missing.pth"], "model.pretrained: no weights file at missing.pth"),
    (["data.source=office31/amazon", "data.root={tmp}/nowhere"], "nowhere' does not exist"),
    (["data.source=office32/amazon", "data.root={tmp}"], "unknown image domain 'office32/amazon'"),
    (["data.source=office31/amazon", "data.root={tmp}"], "benchmark domain 'office31/amazon' not"),
    (["data.source=tfds:mnist", "data.root={tmp}"], "mnist"),
    (["steps.x=1"], "'steps' is a value, not a section"),
    (["=3"], "is not of the form key=value"),
    (["missing_config.yaml"], "config file not found"),
    (["{tmp}/bad.yaml"], "is not valid YAML"),
    (["{tmp}/list.yaml"], "must hold a mapping of keys, not a list"),
    (["{tmp}/nested.yaml"], "unknown config key 'model.widths'"),
    (["configs/digits_cgdm.yaml", "oops"], "is not key=value"),
    (["run_dir={tmp}/a_file"], "is a file; choose a directory path"),
    (["run_dir={run}"], "already holds a finished run"),
]


# non-finite or out-of-range numbers, every kind of numeric key
NUMBER_CASES = [
    (["optimizer.learning_rate=nan"], "optimizer.learning_rate must be a finite number, got nan"),
    (
        ["optimizer.learning_rate=1e400"],
        "optimizer.learning_rate=1e400: 1e400 is too large for a 64-bit float",
    ),
    (["optimizer.learning_rate=-.inf"], "optimizer.learning_rate must be a finite number"),
    (["optimizer.learning_rate=0"], "optimizer.learning_rate must be positive"),
    (["optimizer.weight_decay=nan"], "optimizer.weight_decay must be a finite number"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay must be >= 0"),
    (["optimizer.groups.g.lr_mult=nan"], "optimizer.groups.g.lr_mult must be a finite number"),
    (["optimizer.groups.g.lr_mult=-1"], "optimizer.groups.g.lr_mult must be >= 0"),
    (["optimizer.kwargs.momentum=nan"], "optimizer.kwargs.momentum must be a finite number"),
    (["optimizer.kwargs.momentum=.inf"], "optimizer.kwargs.momentum must be a finite number"),
    (["optimizer.kwargs.momentum=1.5"], "optimizer.kwargs.momentum must be in [0, 1), got 1.5"),
    (["optimizer.groups.g.kwargs.momentum=-0.1"], "optimizer.groups.g.kwargs.momentum must be"),
    (
        ["optimizer.name=adam", "optimizer.weight_decay=0", "optimizer.kwargs.b2=1.0"],
        "optimizer.kwargs.b2 must be in [0, 1), got 1.0",
    ),
    (
        ["optimizer.name=adam", "optimizer.weight_decay=0", "optimizer.kwargs.eps=-1e-8"],
        "optimizer.kwargs.eps must be >= 0",
    ),
    (
        ["optimizer.schedule=inv", "optimizer.schedule.kwargs.gamma=-0.001"],
        "optimizer.schedule.kwargs.gamma must be >= 0, got -0.001",
    ),
    (
        ["optimizer.schedule=inv", "optimizer.schedule.kwargs.power=nan"],
        "optimizer.schedule.kwargs.power must be a finite number",
    ),
    (
        ["optimizer.schedule=inv", "optimizer.schedule.kwargs.gamma=1e400"],
        "optimizer.schedule.kwargs.gamma=1e400: 1e400 is too large for a 64-bit float",
    ),
    (
        ["optimizer.schedule=cosine_decay_schedule", "optimizer.schedule.kwargs.decay_steps=0"],
        "optimizer.schedule.kwargs.decay_steps must be positive, got 0",
    ),
    (
        ["optimizer.schedule=cosine_decay_schedule", "optimizer.schedule.kwargs.decay_steps=-5"],
        "optimizer.schedule.kwargs.decay_steps must be positive, got -5",
    ),
    (
        [
            "optimizer.schedule=exponential_decay",
            "optimizer.schedule.kwargs.transition_steps=-1",
            "optimizer.schedule.kwargs.decay_rate=0.5",
        ],
        "optimizer.schedule.kwargs.transition_steps must be positive",
    ),
    (
        [
            "optimizer.schedule=warmup_cosine_decay_schedule",
            "optimizer.schedule.kwargs.peak_value=0.1",
            "optimizer.schedule.kwargs.warmup_steps=-5",
            "optimizer.schedule.kwargs.decay_steps=100",
        ],
        "optimizer.schedule.kwargs.warmup_steps must be >= 0, got -5",
    ),
    (["model.bn_eps=-1"], "model.bn_eps must be positive, got -1.0"),
    (["model.bn_eps=0"], "model.bn_eps must be positive"),
    (["model.bn_eps=nan"], "model.bn_eps must be a finite number"),
    (["model.bn_momentum=0"], "model.bn_momentum must be in (0, 1]"),
    (["model.bn_momentum=1.5"], "model.bn_momentum must be in (0, 1]"),
    (["model.discriminator_dropout=1"], "model.discriminator_dropout must be in [0, 1)"),
    (["model.dropout=-.inf"], "model.dropout must be a finite number"),
    (["model.classifier_widths=[256,0]"], "model.classifier_widths must be a non-empty list"),
    (["model.bottleneck_dim=-1"], "model.bottleneck_dim must be >= 0"),
    (["model.discriminator_hidden=0"], "model.discriminator_hidden must be positive"),
    (["cgdm.gd_weight=-0.1"], "cgdm.gd_weight must be >= 0"),
    (["cgdm.warmup_steps=1e3"], "cgdm.warmup_steps must be of type int, got 1000.0 (write 1000)"),
    (["method.name=dann", "dann.grl_max_iter=0"], "dann.grl_max_iter must be positive, got 0"),
    (["method.name=dann", "dann.trade_off=inf"], "dann.trade_off must be a finite number"),
    (["method.name=mcd", "mcd.entropy_weight=.nan"], "mcd.entropy_weight must be a finite"),
    (["method.name=metaalign", "metaalign.meta_lr=nan"], "metaalign.meta_lr must be a finite"),
    (["method.name=metaalign", "metaalign.meta_lr=-1"], "metaalign.meta_lr must be >= 0"),
    (["seed=4294967296"], "seed must be at most 4294967295 (a 32-bit integer)"),
    (["seed=99999999999999999999999"], "seed must be at most 4294967295"),
    (["data.split_seed=-3"], "data.split_seed must be >= 0"),
    (["data.split_seed=4294967296"], "data.split_seed must be at most 4294967295"),
    (["steps=1e9"], "steps must be of type int, got 1000000000.0 (write 1000000000)"),
    (["steps=1.5"], "steps must be of type int, got 1.5"),
    (["steps=10000000000"], "steps must be at most 2147483647 (a 32-bit integer)"),
    (["steps=true"], "steps must be of type int, got True"),
    (["eval_every=-1"], "eval_every must be >= 0"),
    (["checkpoint.every=2.5"], "checkpoint.every must be of type int"),
    (["data.test_fraction=0"], "data.test_fraction must be in (0, 1)"),
    (["data.test_fraction=1"], "data.test_fraction must be in (0, 1)"),
    (["data.eval_batch_size=0"], "data.eval_batch_size must be positive"),
    (["data.num_workers=100000"], "data.num_workers=100000 is more worker processes"),
    (["data.num_workers=-1"], "data.num_workers must be >= 0"),
]

# numbers YAML 1.1 reads other than as the decimal they look like, and names that are not
# plain ASCII or are empty
LITERAL_CASES = [
    (["steps=010"], "010 has a leading zero, which YAML 1.1 reads as the octal number 8; write 10"),
    (["seed=0x10"], "0x10 is hexadecimal, which YAML reads as 16; write the decimal 16"),
    (["steps=0b11"], "0b11 is binary"),
    (["steps=1_000"], "1_000 has an underscore"),
    (["seed=1:30"], "1:30 is read by YAML 1.1 as the base-60 number 90; write 90"),
    (["optimizer.learning_rate=1_0.5"], "has an underscore"),
    (["data.batch_size=08"], "data.batch_size must be of type int, got '08' (write 8)"),
    (["steps=0o10"], "steps must be of type int, got '0o10'"),
    (["model.classifier_widths=[010]"], "010 has a leading zero"),
    (["optimizer.kwargs={{momentum: 0.9, momentum: 0.5}}"], "the key 'momentum' is given twice"),
    (["optimizer.kwargs={{1: 0.9}}"], "the config key 1 under optimizer.kwargs is a number"),
    (["st\u0435ps=3"], "holds the non-ASCII character '\u0435' (U+0435 CYRILLIC SMALL LETTER IE)"),
    (["method.name=cgd\u043c"], "method.name 'cgd\u043c' holds the non-ASCII character"),
    (["method=cgd\u043c"], "method.name 'cgd\u043c' holds the non-ASCII character"),
    (["optimizer.name=\u0455gd"], "optimizer.name '\u0455gd' holds the non-ASCII character"),
    (["model.backbone=l\u0435net"], "model.backbone 'l\u0435net' holds the non-ASCII character"),
    (["optimizer.kwargs.m\u00f6mentum=0.5"], "holds the non-ASCII character '\u00f6'"),
    (["data.source="], "data.source is empty"),
    (["model.backbone="], "model.backbone is empty"),
    (["run_dir="], "run_dir is empty; write run_dir=null (or leave it out) for its default"),
    (["data.root="], "data.root is empty"),
    (["model.pretrained="], "model.pretrained is empty"),
    (["steps..x=3"], "has an empty part"),
]

# config files: duplicate, non-name or non-ASCII keys, ambiguous numbers, unreadable files
FILE_CASES = [
    (["{tmp}/dup.yaml"], "dup.yaml line 3: the key 'steps' is given twice (lines 1 and 3)"),
    (["{tmp}/dup_nested.yaml"], "line 3: the key 'dropout' is given twice (lines 2 and 3)"),
    (["{tmp}/dup_section.yaml"], "line 4: the key 'data' is given twice (lines 1 and 4)"),
    (["{tmp}/int_key.yaml"], "the config key 1 at the top level is a number, not a name"),
    (["{tmp}/null_key.yaml"], "line 1: the key null is read as null, not a name"),
    (["{tmp}/bool_key.yaml"], "line 2: the key true is read as a boolean, not a name"),
    (["{tmp}/int_kwarg_key.yaml"], "the config key 1 under optimizer.kwargs is a number"),
    (["{tmp}/non_ascii_key.yaml"], "line 1: the key 'st\u00e9ps' holds the non-ASCII character"),
    (["{tmp}/non_ascii_name.yaml"], "method.name 'cgd\u043c' holds the non-ASCII character"),
    (["{tmp}/non_ascii_label.yaml"], "is not valid YAML: while scanning an anchor"),
    (["{tmp}/octal.yaml"], "octal.yaml line 1: steps: 010 has a leading zero"),
    (["{tmp}/hex.yaml"], "hex.yaml line 1: seed: 0x10 is hexadecimal"),
    (["{tmp}/sexagesimal.yaml"], "line 2: batch_size: 1:30 is read by YAML 1.1 as the base-60"),
    (["{tmp}/nan.yaml"], "optimizer.learning_rate must be a finite number, got nan"),
    (["{tmp}/huge.yaml"], "line 2: weight_decay: 1e400 is too large for a 64-bit float"),
    (["{tmp}/scalar.yaml"], "must hold a mapping of keys, not a number"),
    (["{tmp}/latin1.yaml"], "latin1.yaml is not UTF-8 text (byte 15); save it as UTF-8"),
    pytest.param(["{tmp}/unreadable.yaml"], "cannot be read: Permission denied", marks=needs_chmod),
    (["{tmp}/a_file.yaml"], "config file not found"),
    (["{tmp}/readonly", "steps=3"], "config file not found"),
]

# sizes the backbone or the machine cannot hold, found before the data loads or compiles
SIZE_CASES = [
    (
        ["data.image_size=12"],
        "data.image_size=12 is too small for model.backbone=lenet: its features come out empty "
        "on 12×12 images (the smallest that works is 16×16); raise data.image_size",
    ),
    (["data.image_size=15"], "(the smallest that works is 16×16)"),
    (["data.image_size=100000"], "data.image_size=100000: the in-memory images of mnist5k"),
    (["data.image_size=3000"], "GiB, more than this machine's"),
    (["data.crop_size=300"], "data.crop_size=300 is larger than data.resize=256"),
    (["model.classifier_widths=[2000000000]"], "this run needs at least"),
    (["data.batch_size=100000000"], "for a batch of 200000000 images"),
    (["model.bottleneck_dim=2000000000"], "this run needs at least"),
    (["method.name=dann", "model.discriminator_hidden=2000000000"], "this run needs at least"),
]

# data paths
DATA_PATH_CASES = [
    (["data.source=folder:{tmp}/nowhere"], "image folder"),
    (["data.source=folder:{tmp}"], "has no images"),
    (["data.source=list:{tmp}/missing.txt"], "image list"),
    (["data.source=list:{tmp}/empty_list.txt"], "lists no images"),
    (["data.target=folder:{tmp}/a_file"], "does not exist"),
    (["model.pretrained={tmp}"], "model.pretrained: no weights file at"),
]

# output paths, checked before anything is built
OUTPUT_PATH_CASES = [
    (["run_dir={tmp}/" + LONG_NAME], "is 300 bytes long, more than this filesystem allows (255)"),
    (["run_dir={tmp}/" + DEEP_PATH], "passes this filesystem's limit of 4096"),
    (["run_dir={tmp}/a_file/run"], "a_file is a file, not a folder; choose another run_dir"),
    (["run_dir={tmp}/dangling"], "dangling is a symlink to"),
    (["run_dir={tmp}/dangling/run"], "which does not exist; create it or choose another run_dir"),
    (["run_dir={tmp}/loop/run"], "loop is a symlink loop; remove it or choose another run_dir"),
    (["run_dir={tmp}/ckpt_is_file"], "checkpoints is a file, but the run writes a folder there"),
    (["run_dir={tmp}/tb_is_file"], "tensorboard is a file, but the run writes a folder there"),
    (["run_dir={tmp}/metrics_is_dir"], "metrics.jsonl is a folder, but the run writes a file"),
    (["run_dir={tmp}/ckpt_dangling"], "checkpoints is a symlink to"),
    (["run_dir={tmp}/loop"], "loop is a symlink loop"),
    pytest.param(["run_dir={tmp}/readonly/run"], "no permission to write in", marks=needs_chmod),
    pytest.param(["run_dir={tmp}/readonly"], "no permission to write in", marks=needs_chmod),
]

FAMILIES = {
    "config": TRAIN_CASES,
    "number": NUMBER_CASES,
    "literal": LITERAL_CASES,
    "file": FILE_CASES,
    "size": SIZE_CASES,
    "data-path": DATA_PATH_CASES,
    "output-path": OUTPUT_PATH_CASES,
}


def _params(families):
    cases = []
    for family, rows in families.items():
        for row in rows:
            param = row if isinstance(row, type(pytest.param())) else pytest.param(*row)
            args = param.values[0]
            cases.append(
                pytest.param(*param.values, marks=param.marks, id=f"{family}:{' '.join(args)}"[:90])
            )
    return cases


def _refuse(name: str):
    def refused(*args, **kwargs):
        raise AssertionError(f"{name} ran: the mistake was not found up front")

    return refused


@pytest.mark.parametrize("args, fragment", _params(FAMILIES))
def test_train_mistake_is_one_line_exit_2_and_writes_nothing(
    args, fragment, finished_run, scene, capsys, monkeypatch
):
    args = [a.format(tmp=scene, run=finished_run) for a in args]
    run_dir = scene / "new_run"
    if not any(a.startswith("run_dir=") for a in args):
        args.append(f"run_dir={run_dir}")
    before, before_run = _tree(scene), _files(finished_run)
    monkeypatch.setattr("uda_jax.train.compile_train_step", _refuse("compile_train_step"))
    monkeypatch.setattr("uda_jax.train.exclusive", _refuse("the run directory lock"))
    code = train_main(args)
    err = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert fragment in err, err
    assert not run_dir.exists()
    assert _tree(scene) == before
    assert _files(finished_run) == before_run


@pytest.mark.parametrize(
    "command, args, fragment",
    [
        ("train", ["run_dir={tmp}/readonly/run"], "no permission to write in {tmp}/readonly;"),
        ("train", ["run_dir={tmp}/readonly"], "no permission to write in {tmp}/readonly;"),
        ("train", ["{tmp}/unreadable.yaml"], "unreadable.yaml cannot be read: Permission denied"),
        ("evaluate", ["{run}", "features={tmp}/readonly/f.npz"], "no permission to write in"),
        ("evaluate", ["{run}", "features={tmp}/readonly.npz"], "exists and is read-only"),
    ],
)
def test_permissions_as_the_system_reports_them(
    command, args, fragment, finished_run, scene, capsys, monkeypatch
):
    """The chmod cases above, with the permission answers of an ordinary user (they are
    skipped as root, whom chmod does not stop)."""
    access, read_bytes = os.access, Path.read_bytes
    denied = (str(scene / "readonly"), str(scene / "readonly.npz"))

    def user_access(path, mode, *rest, **kwargs):
        if str(path) in denied and mode & os.W_OK:
            return False
        return access(path, mode, *rest, **kwargs)

    def user_read_bytes(self):
        if self.name == "unreadable.yaml":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return read_bytes(self)

    monkeypatch.setattr(os, "access", user_access)
    monkeypatch.setattr(Path, "read_bytes", user_read_bytes)
    args = [a.format(tmp=scene, run=finished_run) for a in args]
    if command == "train":
        if not any(a.startswith("run_dir=") for a in args):
            args.append(f"run_dir={scene / 'new_run'}")
        code = train_main(args)
    else:
        code = evaluate_main(args)
    err = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert fragment.format(tmp=scene) in err, err
    assert not (scene / "new_run").exists() and not (scene / "readonly" / "run").exists()


def test_there_are_at_least_100_bad_inputs():
    assert sum(map(len, FAMILIES.values())) + len(EVALUATE_CASES) >= 100


def test_resuming_with_another_config_is_refused(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "unfinished"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "done").unlink()
    before = _files(run_dir)
    assert train_main([*TINY, "seed=7", f"run_dir={run_dir}"]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "holds a run with another config (seed: 0 in the run, 7 now)" in err
    assert _files(run_dir) == before


def test_unreadable_checkpoint_is_refused_and_the_run_dir_left_alone(
    finished_run, tmp_path, capsys
):
    run_dir = tmp_path / "unreadable"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "done").unlink()
    for path in (run_dir / "checkpoints").rglob("*"):
        if path.is_file() and path.parent.name == "state":
            path.write_bytes(b"garbage")
    before = _files(run_dir)
    assert train_main([*TINY, f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: checkpoint ") and "cannot be read" in err[-1]
    assert all(line.startswith("warning: ") for line in err[:-1])
    assert _files(run_dir) == before


def _one_error_line(stderr: str) -> str:
    """The single ``error:`` line of a refused command; any other line is a status line
    (``[  0.3 s] loading ...``) printed before the mistake was found, never a traceback."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert lines and lines[-1].startswith("error: "), stderr
    assert all(line.startswith("[") for line in lines[:-1]), stderr
    return lines[-1]


EVALUATE_CASES = [
    ([], "give a run directory or a checkpoint"),
    (["{tmp}/missing"], "does not exist"),
    (["{tmp}"], "is not a run directory"),
    (["{run}", "stp=3"], "unknown key 'stp' (did you mean 'step'?)"),
    (["{run}", "step=999"], "has no checkpoint of step 999"),
    (["{run}", "step=two"], "step must be of type int"),
    (["{run}", "split=val"], "split must be train or test"),
    (["{run}", "domain=ucidigitz"], "unknown domain 'ucidigitz'"),
    (["{run}", "features={tmp}/no/such/dir/f.npz"], "does not exist"),
    (["{run}", "oops"], "is not key=value"),
    # new: ambiguous numbers and the features path, refused before the evaluation runs
    (["{run}", "step=010"], "010 has a leading zero, which YAML 1.1 reads as the octal number 8"),
    (["{run}", "step=0x2"], "0x2 is hexadecimal"),
    (["{run}", "step=1.5"], "step must be of type int, got '1.5'"),
    (["{run}", "json=maybe"], "json must be of type bool"),
    (["{run}", "features={tmp}"], "is a folder; give a file path ending in .npz"),
    (["{run}", "features={tmp}/features_dir.npz"], "is a folder; give a file path ending in .npz"),
    (["{run}", "features={tmp}/f.txt"], "does not end in .npz (numpy would write"),
    (["{run}", "features={tmp}/f"], "write features="),
    (["{run}", "features="], "features= is empty; give a file path ending in .npz"),
    (["{run}", "features={tmp}/a_file/f.npz"], "a_file is a file, not a folder"),
    (["{run}", "features={tmp}/dangling/f.npz"], "does not exist"),
    (["{run}", "features={tmp}/" + LONG_NAME + ".npz"], "the file name is longer than this"),
    pytest.param(
        ["{run}", "features={tmp}/readonly/f.npz"], "no permission to write in", marks=needs_chmod
    ),
    pytest.param(["{run}", "features={tmp}/readonly.npz"], "is read-only", marks=needs_chmod),
]


@pytest.mark.parametrize("args, fragment", _params({"evaluate": EVALUATE_CASES}))
def test_evaluate_mistake_is_one_line_exit_2(
    args, fragment, finished_run, scene, capsys, monkeypatch
):
    args = [a.format(tmp=scene, run=finished_run) for a in args]
    before, before_run = _tree(scene), _files(finished_run)
    monkeypatch.setattr("uda_jax.evaluate.compile_predict", _refuse("the evaluation"))
    code = evaluate_main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and fragment in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert _tree(scene) == before
    assert _files(finished_run) == before_run


# ----------------------------------------------------------------------------- runs that fail

NAN = ["optimizer.learning_rate=1e12", "steps=30", "log_every=1"]


@pytest.mark.parametrize("every, kept", [(0, None), (1, "step 1")])
def test_nan_says_whether_a_checkpoint_is_kept(every, kept, tmp_path, capsys):
    """Before the first save there is no checkpoint to keep: the message must not claim one."""
    run_dir = tmp_path / "nan"
    args = [*TINY, *NAN, f"checkpoint.every={every}", f"run_dir={run_dir}"]
    assert train_main(args) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: step ") and "Traceback" not in line
    if kept is None:
        assert line.endswith("; no checkpoint was saved yet"), line
        assert "is kept" not in line
        assert not (run_dir / "checkpoints").exists() or not any(
            p.name.isdigit() for p in (run_dir / "checkpoints").iterdir()
        )
    else:
        step = int(line.removeprefix("error: step ").split(":")[0])
        with Checkpointer(run_dir / "checkpoints", _checkpoint_config(run_dir)) as checkpointer:
            last = max(checkpointer.steps())
        assert last < step
        assert line.endswith(f"; the last good checkpoint (step {last}) is kept"), line


def _checkpoint_config(run_dir: Path):
    from uda_jax.config import load_config

    return load_config(run_dir / "config.yaml").checkpoint


def _disk_full(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    """A disk that fills mid-run: one line naming the file and the checkpoint kept, exit 1,
    nothing half-written; the same command resumes once there is space again."""
    run_dir = tmp_path / "full"
    args = [*TINY, "steps=3", "checkpoint.every=1", f"run_dir={run_dir}"]
    save = Checkpointer.save

    def save_until_full(self, step, *rest, **kwargs):
        if step >= 2:
            raise _disk_full(self.directory / str(step))
        return save(self, step, *rest, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", save_until_full)
    assert train_main(args) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == (
        f"error: disk full while writing {run_dir.absolute() / 'checkpoints' / '2'} (free some "
        "space); the last good checkpoint (step 1) is kept; the same command resumes from it"
    )
    assert not (run_dir / "done").exists() and not (run_dir / "results.json").exists()
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.setattr(Checkpointer, "save", save)
    assert train_main(args) == 0
    assert json.loads((run_dir / "results.json").read_text())["resumed_from_step"] == 1


def test_disk_full_while_writing_results_leaves_no_half_written_file(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "full"
    args = [*TINY, f"run_dir={run_dir}"]
    write_text = Path.write_text

    def half_then_full(self, text, *rest, **kwargs):
        if self.name == "results.json.tmp":
            write_text(self, text[: len(text) // 2])
            raise _disk_full(self)
        return write_text(self, text, *rest, **kwargs)

    monkeypatch.setattr(Path, "write_text", half_then_full)
    assert train_main(args) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: disk full while writing {run_dir / 'results.json.tmp'}")
    assert line.endswith(
        "the last good checkpoint (step 2) is kept; the same command resumes from it"
    )
    assert not (run_dir / "results.json").exists()
    assert not (run_dir / "results.json.tmp").exists()
    assert not (run_dir / "done").exists()
    monkeypatch.setattr(Path, "write_text", write_text)
    assert train_main(args) == 0
    assert json.loads((run_dir / "results.json").read_text())["resumed_from_step"] == 2


def test_evaluate_disk_full_leaves_no_features_file(finished_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "features.npz"
    savez = np.savez

    def half_then_full(handle, **arrays):
        handle.write(b"PK\x03\x04 half")
        raise _disk_full(out)

    monkeypatch.setattr(np, "savez", half_then_full)
    assert evaluate_main([str(finished_run), f"features={out}"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"error: disk full while writing {out}; no features file was written"
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(np, "savez", savez)
    assert evaluate_main([str(finished_run), f"features={out}", "json=true"]) == 0
    assert set(np.load(out)) == {"features", "logits", "predictions", "labels"}
