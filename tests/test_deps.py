"""Dependencies that fit: every third-party package uda_jax imports is declared in
``pyproject.toml`` (in the core, or in the extra that guards it, and then imported lazily), and
the heavy optional stack (TensorFlow Datasets) stays out of the core.
"""

import ast
import functools
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from uda_jax.config import DataConfig
from uda_jax.data.sources import load_data_domain
from uda_jax.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PROJECT = "uda-jax"

# Import names whose distribution is named otherwise (the rest: packages_distributions(), else
# the import name itself).
DISTRIBUTION_OF = {
    "PIL": "pillow",
    "absl": "absl-py",
    "ml_dtypes": "ml-dtypes",
    "orbax": "orbax-checkpoint",
    "sklearn": "scikit-learn",
    "tensorboardX": "tensorboardx",
    "tensorflow_datasets": "tensorflow-datasets",
    "yaml": "pyyaml",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(spec: str) -> tuple[str, set[str]]:
    """``"name[extra,...] >=1; marker"`` → (normalised name, {extras})."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", spec)
    assert match, f"unparsable requirement {spec!r}"
    extras = {_normalise(e) for e in (match.group(2) or "").split(",") if e.strip()}
    return _normalise(match.group(1)), extras


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    """The core distributions and, per extra, the distributions it adds (self-references to
    ``uda-jax[...]`` expanded)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {_requirement(spec)[0] for spec in project["dependencies"]}
    raw = {
        _normalise(extra): [_requirement(spec) for spec in specs]
        for extra, specs in project.get("optional-dependencies", {}).items()
    }

    def expand(extra: str, seen: frozenset[str] = frozenset()) -> set[str]:
        names: set[str] = set()
        for name, nested in raw[extra]:
            if name == PROJECT:
                for inner in nested - seen:
                    names |= expand(inner, seen | {extra})
            else:
                names.add(name)
        return names

    return core, {extra: expand(extra) for extra in raw}


def _third_party_imports() -> dict[str, list[tuple[str, bool]]]:
    """Top-level third-party module → [(``file:line``, imported inside a function)]."""
    found: dict[str, list[tuple[str, bool]]] = {}

    def visit(node: ast.AST, path: Path, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            modules: list[str] = []
            if isinstance(child, ast.Import):
                modules = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                modules = [child.module]
            for module in modules:
                top = module.split(".")[0]
                if top != "uda_jax" and top not in sys.stdlib_module_names:
                    where = f"{path.relative_to(REPO)}:{child.lineno}"
                    found.setdefault(top, []).append((where, nested))
            visit(child, path, nested)

    for path in sorted((REPO / "uda_jax").rglob("*.py")):
        visit(ast.parse(path.read_text(), str(path)), path, False)
    return found


@functools.cache
def _installed_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # slow: read once


def _distribution(module: str) -> str:
    if module in DISTRIBUTION_OF:
        return _normalise(DISTRIBUTION_OF[module])
    installed = _installed_distributions().get(module)
    return _normalise(installed[0] if installed else module)


def test_every_third_party_import_is_declared():
    core, extras = _declared()
    imports = _third_party_imports()
    assert {"jax", "numpy", "tensorflow_datasets"} <= set(imports)  # the scan sees them
    problems = []
    for module, places in sorted(imports.items()):
        dist = _distribution(module)
        if dist in core:
            continue
        guarding = sorted(extra for extra, names in extras.items() if dist in names)
        eager = [where for where, lazy in places if not lazy]
        if not guarding:
            problems.append(f"{module} ({dist}, {places[0][0]}) is in no dependency list")
        elif eager:
            problems.append(
                f"{module} is only in the extras {guarding} but imported at module level: {eager}"
            )
    assert not problems, "\n".join(problems)


def test_tfds_is_an_extra_and_dev_pulls_it():
    core, extras = _declared()
    assert "tensorflow-datasets" not in core
    assert "tensorflow-datasets" in extras["tfds"]
    assert "tensorflow-datasets" in extras["dev"]  # the TFDS tests use tfds.testing.mock_data
    assert "tensorboard" in extras["tensorboard"] and "tensorboardx" in core
    assert {"nbclient", "ipykernel"} <= extras["notebooks"]


@pytest.mark.parametrize("spec", ["tfds:mnist", "tfds:domainnet/sketch"])
def test_tfds_domain_without_tfds_is_one_line_naming_the_extra(spec, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
    with pytest.raises(UserError) as error:
        load_data_domain(spec, DataConfig(source=spec, root=str(tmp_path)))
    message = str(error.value)
    assert "\n" not in message
    assert spec in message and 'pip install "uda-jax[tfds]"' in message


def test_tfds_domain_not_prepared_says_how_to_prepare_it(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(UserError) as error:
        load_data_domain("tfds:mnist", DataConfig(source="tfds:mnist", root=str(tmp_path)))
    message = str(error.value)
    assert "\n" not in message and "not prepared" in message
    assert "tfds build mnist --file_format=array_record" in message
    assert "download" not in message  # no key or flag for that exists in a config


def test_importing_the_trainer_does_not_import_tfds():
    code = (
        "import sys, uda_jax.train, uda_jax.evaluate, uda_jax.data.sources;"
        "print('tensorflow_datasets' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
