"""Execute the teaching notebooks with this interpreter's ipykernel.

    python notebooks/execute.py             # run every notebook, write the outputs back
    python notebooks/execute.py --check     # run fresh copies, write nothing
    python notebooks/execute.py 02_fixed_point.ipynb   # only the named notebooks

The kernel is always `sys.executable` (a kernelspec made in a temporary directory and put
first on JUPYTER_PATH), never whatever `python3` kernel the user has installed elsewhere.
Each notebook runs with a fresh temporary directory as its working directory, so it cannot
depend on files next to it; the project itself is imported from the (editable) install.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
KERNEL_NAME = "sottovoce-venv"
CELL_TIMEOUT = 120  # seconds per cell


def notebooks() -> list[Path]:
    """The numbered notebooks of this folder, in order."""
    return sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


@contextlib.contextmanager
def this_interpreter_kernel() -> Iterator[str]:
    """A kernelspec running `sys.executable -m ipykernel_launcher`; yields its name."""
    with tempfile.TemporaryDirectory(prefix="sottovoce-kernel-") as tmp:
        spec = Path(tmp) / "kernels" / KERNEL_NAME
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python ({sys.executable})",
            "language": "python",
        }))
        previous = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [tmp, previous]))
        try:
            yield KERNEL_NAME
        finally:
            if previous is None:
                del os.environ["JUPYTER_PATH"]
            else:
                os.environ["JUPYTER_PATH"] = previous


def execute(nb: nbformat.NotebookNode, kernel_name: str,
            timeout: int = CELL_TIMEOUT) -> nbformat.NotebookNode:
    """Run every cell of `nb` in place in a new kernel, in a temporary working directory.

    Raises nbclient's CellExecutionError (naming the cell and the error) if a cell fails.
    """
    with tempfile.TemporaryDirectory(prefix="sottovoce-nb-") as workdir:
        client = NotebookClient(nb, kernel_name=kernel_name, timeout=timeout,
                                record_timing=False,
                                resources={"metadata": {"path": workdir}})
        client.execute()
    # keep the file's kernelspec the ordinary one, not our temporary name
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook file names (default: all)")
    parser.add_argument("--check", action="store_true",
                        help="execute without writing the outputs back")
    args = parser.parse_args(argv)
    paths = [HERE / n for n in args.names] if args.names else notebooks()
    with this_interpreter_kernel() as kernel:
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            start = time.perf_counter()
            execute(nb, kernel)
            seconds = time.perf_counter() - start
            if not args.check:
                nbformat.write(nb, path)
            print(f"{path.name}: {seconds:.1f} s{'' if args.check else ', outputs written'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
