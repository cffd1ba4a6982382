"""Every user mistake on the command line or in a config: one line, exit code 2, no traceback,
and the run directory untouched (issue: "no traceback for any user mistake")."""

import shutil
from pathlib import Path

import pytest

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


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


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


@pytest.mark.parametrize("args, fragment", TRAIN_CASES)
def test_train_mistake_is_one_line_exit_2_and_writes_nothing(
    args, fragment, finished_run, tmp_path, capsys
):
    _write(tmp_path / "bad.yaml", "steps: [1\nseed: 2\n")
    _write(tmp_path / "list.yaml", "- steps\n- 3\n")
    _write(tmp_path / "nested.yaml", "model:\n  widths: [1, 2]\n")
    _write(tmp_path / "a_file", "")
    args = [a.format(tmp=tmp_path, run=finished_run) for a in args]
    run_dir = tmp_path / "new_run"
    if not any(a.startswith("run_dir=") for a in args) and "=" in args[-1]:
        args.append(f"run_dir={run_dir}")
    before = _files(finished_run)
    code = train_main(args)
    err = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert fragment in err, err
    assert not run_dir.exists()
    assert _files(finished_run) == before


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
    assert err[-1].startswith("error: checkpoint ") and "cannot be restored" in err[-1]
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
]


@pytest.mark.parametrize("args, fragment", EVALUATE_CASES)
def test_evaluate_mistake_is_one_line_exit_2(args, fragment, finished_run, tmp_path, capsys):
    args = [a.format(tmp=tmp_path, run=finished_run) for a in args]
    code = evaluate_main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and fragment in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
