"""Imported by the fork server that party processes start from (`mpc.forking`).

It runs the launching program's main module as multiprocessing would in each party
(`mpc.forking.MAIN_ENV`), imports the transport and loads the serial ring kernel from
numba's cache. Only serial kernels are loaded in the server: a parallel kernel starts
numba's OpenMP threads, and a process that forks after that is unsafe (GNU OpenMP aborts
the child).
"""

from __future__ import annotations

import json
import os
from multiprocessing import spawn

from mpc import forking

_main = json.loads(os.environ.pop(forking.MAIN_ENV, "{}"))
if _main:  # a party forked from here finds it loaded and does not run it again
    spawn.prepare(_main)

import mpc.net.tcp  # noqa: E402, F401 - imported for the forked parties
import mpc.runtime  # noqa: E402, F401
from mpc import ring  # noqa: E402

ring.load_serial_kernels()
