"""Every teaching notebook in notebooks/ runs top to bottom in a fresh kernel.

The kernel is this interpreter (`sys.executable`, checked from inside the kernel), each
notebook is a fresh copy read from disk and runs in a temporary working directory, and
nothing is written back: the committed outputs are regenerated only by `make notebooks`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

for _module in ("nbclient", "nbformat", "ipykernel", "matplotlib", "torch"):
    pytest.importorskip(_module)

import nbformat  # noqa: E402
from nbclient.exceptions import CellExecutionError  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
CELL_TIMEOUT = 120  # seconds; each notebook takes under 20 s on a 2-core machine


def _load_executor():
    spec = importlib.util.spec_from_file_location("notebook_execute", NOTEBOOKS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


executor = _load_executor()


@pytest.fixture(scope="module")
def kernel_name():
    with executor.this_interpreter_kernel() as name:
        yield name


def test_notebooks_are_found():
    names = [p.name for p in executor.notebooks()]
    assert len(names) >= 4, names
    assert names == sorted(names)


@pytest.mark.parametrize("path", executor.notebooks(), ids=lambda p: p.stem)
def test_notebook_runs(path: Path, kernel_name: str):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []  # run from scratch; the committed outputs play no part
    probe = nbformat.v4.new_code_cell("import sys; print(sys.executable)")
    nb.cells.insert(0, probe)
    try:
        executor.execute(nb, kernel_name, timeout=CELL_TIMEOUT)
    except CellExecutionError as err:
        pytest.fail(f"{path.name}: a cell failed\n{err}", pytrace=False)
    kernel_python = "".join(o.get("text", "") for o in nb.cells[0].outputs).strip()
    assert Path(kernel_python).resolve() == Path(sys.executable).resolve(), \
        f"{path.name} ran under {kernel_python}, not {sys.executable}"
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
              if o.output_type == "error"]
    assert not errors, errors
