"""Imported by the fork server that party processes start from (`mpc.forking`).

It imports the transport and loads the serial ring kernel from numba's cache. Only serial
kernels are loaded in the server: a parallel kernel starts numba's OpenMP threads, and a
process that forks after that is unsafe (GNU OpenMP aborts the child).
"""

from __future__ import annotations

import mpc.net.tcp  # noqa: F401 - imported for the forked parties
import mpc.runtime  # noqa: F401
from mpc import ring

ring.load_serial_kernels()
