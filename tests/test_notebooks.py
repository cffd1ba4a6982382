"""The notebooks in ``notebooks/`` run top to bottom, and every check in them passes.

Each notebook derives an identity and checks it with ``assert`` (a derivation notebook also
draws a figure of what it checks); an exception in any cell fails the test. The kernel runs the
interpreter that runs pytest (``sys.executable``) with the repository on ``PYTHONPATH`` and as
its working directory, so the test needs only the ``dev`` extras (nbclient, nbformat, ipykernel)
and no kernel registered in the environment.
"""

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
# the derivation notebooks, each with the official code of the paper it derives from
DERIVATIONS = {
    "cgdm_gradient_discrepancy.ipynb": "https://github.com/lijin118/CGDM",
    "metaalign_meta_gradient.ipynb": "https://github.com/microsoft/MetaAlign",
}
NOTEBOOKS = [*DERIVATIONS, "tutorial.ipynb"]
KERNEL_NAME = "uda-jax-pytest"
CELL_TIMEOUT_S = 300
# Citations of the project's internal notes, which readers of the notebooks do not have: the
# notebooks explain in words and cite the papers and their official code instead.
INTERNAL_CITATION = re.compile(
    r"§|\bPart [IVX]+\b|\bPitfall \d|DESIGN principle|algorithms\.md|reference/|\[\d+P\]"
)


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory) -> list[str]:
    """A private kernelspec directory whose one kernel is this interpreter."""
    root = tmp_path_factory.mktemp("kernels")
    (root / KERNEL_NAME).mkdir()
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pytest's Python",
        "language": "python",
        "env": {"PYTHONPATH": pythonpath, "JAX_PLATFORMS": "cpu"},
    }
    (root / KERNEL_NAME / "kernel.json").write_text(json.dumps(spec))
    return [str(root)]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_saved_without_outputs(name):
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "clear the outputs"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_cites_the_papers_not_internal_notes(name):
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    for index, cell in enumerate(nb.cells):
        found = INTERNAL_CITATION.search(cell.source)
        assert found is None, f"cell {index} cites {found.group()!r}: say it in words"
    if name in DERIVATIONS:  # the introduction cites the paper and its official code
        assert DERIVATIONS[name] in nb.cells[0].source and "CVPR 2021" in nb.cells[0].source


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_and_its_checks_pass(name, kernel_dirs):
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    manager = AsyncKernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs)
    )
    client = NotebookClient(
        nb, km=manager, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    printed = "".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )
    assert "OK:" in printed
    figures = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    if name in DERIVATIONS:  # a figure of what the notebook checks, drawn inline
        assert figures, "a derivation notebook shows a figure of what it checks"
