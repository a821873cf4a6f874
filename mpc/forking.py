"""The fork server that party processes start from.

`mpc.launch.run_processes` forks every party from one server process (multiprocessing's
"forkserver") that has imported the `preload` modules: the packages a party runs and the
numba kernels they call, loaded from numba's cache. Started once per launching process, it
makes each later party start in milliseconds, where a fresh interpreter per party pays ~2 s
of imports and kernel loading, all parties at once on the same few cores. The launcher
itself is not forked: it may run threads (and numba's thread pool), which a fork does not
survive. The server keeps the environment it started with.

A party also needs the launching program's main module (a role's function may live
there), which multiprocessing would run again in every party; the server runs it once
(`mpc.preload`, told where it is through `MAIN_ENV` when it starts), so a script that
imports torch at the top does not import it again per party.

This module imports nothing heavy, so a command can start the server first thing and let
the server's imports overlap its own.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from multiprocessing import forkserver, spawn
from multiprocessing.context import BaseContext

#: Modules the server imports before it forks any party (see `preload`).
_PRELOAD: list[str] = ["mpc.preload"]
#: Where the server finds the launching program's main module: multiprocessing's own
#: preparation data (its name, or its file), as JSON.
MAIN_ENV = "SOTTOVOCE_FORK_SERVER_MAIN"


def preload(*modules: str) -> None:
    """Have the server import `modules` too. Modules that launch parties call this when
    they are imported, so that the list is complete before the first launch starts the
    server; a running server keeps what it loaded."""
    _PRELOAD.extend(m for m in modules if m not in _PRELOAD)


def party_context() -> BaseContext:
    """The multiprocessing context whose processes are forks of the server (started here
    if it is not running)."""
    start_server()
    return multiprocessing.get_context("forkserver")


def start_server() -> None:
    """Start the server now if it is not running (cheap when it is)."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(_PRELOAD))
    data = spawn.get_preparation_data("sottovoce-fork-server")
    main = {k: data[k] for k in ("init_main_from_name", "init_main_from_path") if k in data}
    before = os.environ.get(MAIN_ENV)
    os.environ[MAIN_ENV] = json.dumps(main)  # the server copies the environment as it starts
    try:
        forkserver.ensure_running()
    finally:
        if before is None:
            os.environ.pop(MAIN_ENV, None)
        else:
            os.environ[MAIN_ENV] = before
