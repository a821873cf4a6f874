"""Files written so that a reader sees all of one or none of it, readable by the owner only."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_npz(path: Path, arrays: dict[str, np.ndarray], compressed: bool = False) -> None:
    """`arrays` as an .npz at `path`: written to a temporary file beside it (mode 0600),
    flushed to disk, then renamed into place, so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            (np.savez_compressed if compressed else np.savez)(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
