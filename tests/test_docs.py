"""The documentation: its Python examples run, its config reference is complete, the site builds.

- Every ```` ```python ```` block of ``README.md`` and ``docs/**/*.md`` runs, each in a fresh
  interpreter in a temporary working directory (temporary files and run directories land there).
  Blocks that compile or run a train step are marked slow; they train for a few steps only.
- The config reference is generated at build time by the MkDocs hook ``docs/_hooks/generated.py``
  from :mod:`uda_jax.config_docs`; here it must render every key of the fixed sections and of
  every built-in method's section with a type, a default and a meaning, and every packaged
  config's name.
- ``mkdocs build --strict`` passes: no broken link or anchor, no unresolved cross-reference, no
  docstring warning (skipped when the docs packages are not installed).
- The README stays short, keeps CI's exact test command, and no page cites the project's
  internal notes.
"""

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from uda_jax import config_docs

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
BLOCK_TIMEOUT_S = 600
# A block that compiles or runs a train step takes seconds to minutes: marked slow.
TRAINS = ("train_and_evaluate", "compile_train_step", "jax.jit(", "build_experiment")
# Citations of the project's internal notes, which readers of the documentation do not have.
INTERNAL_CITATION = re.compile(
    r"§|\bPart [IVX]+\b|\bPitfall \d|DESIGN principle|algorithms\.md|(?<!torch_)reference/|\[\d+P\]"
)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line number, source)`` of each top-level ```` ```python ```` block of a Markdown file."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if current is None and line.strip() == "```python":
            current, start = [], number
        elif current is not None and line.strip() == "```":
            blocks.append((start, "\n".join(current) + "\n"))
            current = None
        elif current is not None:
            current.append(line)
    assert current is None, f"{path}: the python block of line {start} is not closed"
    return blocks


def _block_params() -> list:
    params = []
    for page in PAGES:
        for line, source in python_blocks(page):
            name = f"{page.relative_to(REPO)}:{line}"
            marks = [pytest.mark.slow] if any(word in source for word in TRAINS) else []
            params.append(pytest.param(source, id=name, marks=marks))
    return params


@pytest.mark.parametrize("source", _block_params())
def test_python_example_runs(source, tmp_path):
    env = dict(os.environ)  # conftest's CPU platform, data cache and compilation cache
    pythonpath = [str(REPO), env.get("PYTHONPATH", "")]
    env |= {
        "PYTHONPATH": os.pathsep.join(p for p in pythonpath if p),
        "TMPDIR": str(tmp_path),  # tempfile.mkdtemp() in an example lands here
        "JAX_NUMPY_RANK_PROMOTION": "raise",  # the strict numerics of the other tests
        "JAX_NUMPY_DTYPE_PROMOTION": "strict",
    }
    script = tmp_path / "example.py"
    script.write_text(source)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert done.returncode == 0, f"the example failed:\n{done.stdout}\n{done.stderr[-4000:]}"


def test_every_page_has_its_examples_closed_and_found():
    """The extraction sees the examples the pages are known to hold (guards the parser)."""
    found = {page.relative_to(REPO).as_posix(): len(python_blocks(page)) for page in PAGES}
    assert found["docs/python.md"] >= 2 and found["docs/extending.md"] >= 3
    pieces = python_blocks(DOCS / "python.md")[0][1]
    for piece in ("method.hook_due(step)", "method.hook(state", "evaluate_target(state)"):
        assert piece in pieces, f"the loop example of python.md lost {piece!r}"


# ----------------------------------------------------------------------------- config reference


def _hook():
    """The MkDocs hook module (docs/_hooks/generated.py), imported from its file."""
    spec = importlib.util.spec_from_file_location("docs_hook", DOCS / "_hooks" / "generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rendered(page: str) -> str:
    return _hook().render((DOCS / page).read_text())


def test_config_reference_renders_every_key_with_type_default_and_meaning():
    hook = _hook()
    text = _rendered("configuration.md")
    assert "<!-- generated:" not in text
    keys = config_docs.fixed_keys() + [
        key for section in config_docs.method_sections().values() for key in section
    ]
    assert len(keys) > 60
    lines = [line for line in text.splitlines() if line.startswith("| `")]
    rows = {line.split("|")[1].strip().strip("`"): line for line in lines}
    for key in keys:
        assert key.name in rows, f"config key {key.name} is missing from the reference"
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", rows[key.name])[1:-1]]
        assert len(cells) == 4 and all(cells), f"{key.name}: an empty cell in {rows[key.name]!r}"
        assert hook.meaning(key), f"config key {key.name} has no meaning: comment it in the source"
    for name in config_docs.method_sections():
        assert f"### `{name}`" in text, f"method section {name} is missing"


def test_config_reference_follows_the_source():
    """Defaults and types are read from the code, not copied: they match the live classes."""
    hook = _hook()
    from uda_jax.config import Config

    config = Config()
    text = _rendered("configuration.md")
    assert f"| `steps` | int | `{config.steps}` |" in text
    assert f"| `data.batch_size` | int | `{config.data.batch_size}` |" in text
    assert "| `metaalign.order` | first \\| second | `first` |" in text
    assert hook.type_text("typing.Literal['a', 'b']") == "a | b"
    assert hook.default_text(config_docs.Key("x", "str", "'cgdm'", "")) == "cgdm"


def test_packaged_configs_are_listed():
    for page in ("configuration.md", "cli.md"):
        text = _rendered(page)
        for name in config_docs.packaged_configs():
            assert f"`{name}`" in text, f"{page} does not list the packaged config {name}"


# ----------------------------------------------------------------------------- site and pages


def test_mkdocs_build_strict(tmp_path):
    for package in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(package.split(".")[0]) is None:
            pytest.skip(f"{package} is not installed (pip install the docs packages)")
    env = dict(os.environ) | {"NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    config_page = (tmp_path / "site" / "configuration" / "index.html").read_text()
    assert "cgdm.gd_weight" in config_page and "optimizer.schedule.name" in config_page


def test_readme_is_short_and_keeps_the_ci_command():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.startswith("python3 -m venv .venv") and ci in readme
    assert shlex.split(ci)  # one shell line
    prose = re.sub(r"```.*?```", "", readme, flags=re.DOTALL)  # the demo's output may show one
    figure = re.search(r"±|\d\s?%|accurac[a-z]* (of |is )?\d", prose)
    assert figure is None, f"a measured figure in the README's prose: {figure.group()!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_pages_cite_the_papers_not_internal_notes(page):
    found = INTERNAL_CITATION.search(page.read_text())
    assert found is None, f"{page.name} cites {found.group()!r}: say it in words"


def test_every_page_is_in_the_navigation():
    import yaml

    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text().replace("!!", ""))["nav"]

    def files(entry):
        if isinstance(entry, str):
            return [entry]
        if isinstance(entry, dict):
            return [f for value in entry.values() for f in files(value)]
        return [f for item in entry for f in files(item)]

    listed = set(files(nav))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "_hooks" not in p.parts}
    assert pages == listed
