"""The notebooks in ``notebooks/`` run top to bottom, and every check in them passes.

Each notebook derives an identity and checks it with ``assert``; an exception in any cell fails
the test. The kernel runs the interpreter that runs pytest (``sys.executable``) with the
repository on ``PYTHONPATH`` and as its working directory, so the test needs only the ``dev``
extras (nbclient, nbformat, ipykernel) and no kernel registered in the environment.
"""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["cgdm_gradient_discrepancy.ipynb", "metaalign_meta_gradient.ipynb"]
KERNEL_NAME = "uda-jax-pytest"
CELL_TIMEOUT_S = 300


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
