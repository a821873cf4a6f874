"""The fork server that party processes start from.

`mpc.launch.run_processes` forks every party from one server process (multiprocessing's
"forkserver") that has imported the `preload` modules: the packages a party runs and the
numba kernels they call, loaded from numba's cache. Started once per launching process, it
makes each later party start in milliseconds, where a fresh interpreter per party pays ~2 s
of imports and kernel loading, all parties at once on the same few cores. The launcher
itself is not forked: it may run threads (and numba's thread pool), which a fork does not
survive. The server keeps the environment it started with.

This module imports nothing heavy, so a command can start the server first thing and let
the server's imports overlap its own.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import forkserver
from multiprocessing.context import BaseContext

#: Modules the server imports before it forks any party (see `preload`).
_PRELOAD: list[str] = ["mpc.preload"]


def preload(*modules: str) -> None:
    """Have the server import `modules` too. Modules that launch parties call this when
    they are imported, so that the list is complete before the first launch starts the
    server; a running server keeps what it loaded."""
    _PRELOAD.extend(m for m in modules if m not in _PRELOAD)


def party_context() -> BaseContext:
    """The multiprocessing context whose processes are forks of the server."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(_PRELOAD))
    return ctx


def start_server() -> None:
    """Start the server now (it starts with the first launch otherwise)."""
    party_context()
    forkserver.ensure_running()
