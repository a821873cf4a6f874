"""Run one callable per party: as threads over queues, or as processes over TCP+TLS.

`roles[i]` is what endpoint i runs, called with its `Runtime`; the launchers return the
roles' results in order or raise the first failure, and never wait forever: every party
has the channel timeout, and the process launcher also has an overall deadline.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mpc import forking, ring
from mpc.errors import PartyFailed, PeerLost, SottovoceError
from mpc.net.certs import TlsFiles, make_certificates
from mpc.net.inprocess import InProcessNetwork
from mpc.runtime import RunConfig, Runtime, make_runtime

Role = Callable[[Runtime], Any]


def _first_failure(errors: dict[int, BaseException], observed: frozenset[int] = frozenset()
                   ) -> tuple[int, BaseException]:
    """The root cause: a party the launcher saw die or hang (`observed`: the others' timeouts
    and lost links follow from it), else the first (in the order failures came in) that
    failed on its own (a bad frame, a timeout, a failed check), else the first that lost a
    peer. The other parties' errors are added to it as notes, so what each of them saw (and
    at which step) is kept."""
    own = {p: e for p, e in errors.items() if p not in observed and not isinstance(e, PeerLost)}
    pool = {p: e for p, e in errors.items() if p in observed} or own or errors
    party = next(iter(pool))
    error = pool[party]
    for other, exc in errors.items():
        if other != party and hasattr(error, "add_note"):
            error.add_note(f"party {other}: {type(exc).__name__}: {exc}")
    return party, error


def run_threads(roles: Sequence[Role], config: RunConfig) -> list[Any]:
    """Run every role in a thread of this process, linked by in-process queues."""
    network = InProcessNetwork(len(roles))
    results: list[Any] = [None] * len(roles)
    errors: dict[int, BaseException] = {}

    def body(party: int) -> None:
        channel = network.channel(party, timeout=config.timeout, names=config.endpoint_names())
        try:
            ring.set_threads(config.threads)  # numba's setting is per calling thread
            results[party] = roles[party](make_runtime(channel, config))
        except BaseException as exc:  # reported to the caller below
            errors[party] = exc
            channel.abort(exc)  # the peers learn why, and pass the root cause on
        finally:
            channel.close()

    threads = [threading.Thread(target=body, args=(p,), name=f"party-{p}", daemon=True)
               for p in range(len(roles))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        party, error = _first_failure(errors)
        if isinstance(error, SottovoceError):
            raise error
        raise PartyFailed(party, error) from error
    return results


def _process_main(party: int, role_file: str, config: RunConfig, tls: TlsFiles,
                  port_queue: Any, address_conn: Any, result_queue: Any,
                  connect_timeout: float) -> None:
    """Entry point of one party process: listen, report the port, connect, run, report."""
    from mpc.net import tcp

    channel = None
    try:
        with open(role_file, "rb") as handle:
            role = pickle.load(handle)
        os.unlink(role_file)
        ring.warmup(threads=config.threads)
        listener = tcp.listen(("127.0.0.1", 0))
        port_queue.put((party, listener.getsockname()[1]))
        if not address_conn.poll(connect_timeout):
            raise TimeoutError("launcher sent no address list")
        addresses = address_conn.recv()
        channel = tcp.connect(party, addresses, tls, listener=listener, timeout=config.timeout,
                              connect_timeout=connect_timeout, names=config.endpoint_names(),
                              keepalive=True)
        listener.close()
        result = role(make_runtime(channel, config))
        # the queue pickles in a feeder thread that only prints a failure, leaving the
        # launcher waiting for its deadline: pickle here so a failure is this party's error
        pickle.dumps(result)
        result_queue.put((party, "ok", result, channel.traffic))
    except BaseException as exc:  # sent to the launcher, which raises it
        trace = traceback.format_exc()
        if channel is not None:
            channel.abort(exc)
        try:
            error = pickle.loads(pickle.dumps(exc))
        except Exception:  # the exception itself does not pickle
            error = RuntimeError(repr(exc))
        result_queue.put((party, "error", error, trace))
    finally:
        if channel is not None:
            channel.close()


def run_processes(roles: Sequence[Role], config: RunConfig, cert_dir: str | Path | None = None,
                  connect_timeout: float = 30.0, deadline: float | None = None,
                  route: Callable[[dict], dict] | None = None) -> list[Any]:
    """Run every role in its own process, linked by TCP with mutual TLS on loopback.

    Roles must be picklable (module-level functions or functools.partial of them).
    Every party's key is made fresh in `cert_dir` (a private temporary folder by default)
    and each party pins every other's, as in a deployment; parties send keep-alives, so
    one that computes for longer than the timeout is waited for. `route`
    maps the parties' listening addresses to the addresses peers should dial (a simulated
    network puts relays in between); parties still listen where they are.
    """
    n = len(roles)
    ctx = forking.party_context()
    with tempfile.TemporaryDirectory(prefix="sottovoce-certs-") as tmp:
        tls = make_certificates(cert_dir or tmp, n)
        port_queue, result_queue = ctx.Queue(), ctx.Queue()
        pipes = [ctx.Pipe(duplex=False) for _ in range(n)]
        # Roles travel through files in the private temporary folder, not the start pipe:
        # CPython writes the start payload before it closes the child's end, so a child that
        # dies at start-up would leave the launcher blocked forever on a large payload.
        role_files = []
        for p in range(n):
            role_file = Path(tmp) / f"role-{p}.pickle"
            with open(role_file, "wb") as handle:
                pickle.dump(roles[p], handle, protocol=pickle.HIGHEST_PROTOCOL)
            role_files.append(str(role_file))
        procs = [ctx.Process(target=_process_main, name=f"sottovoce-party-{p}", daemon=True,
                             args=(p, role_files[p], config, tls[p], port_queue, pipes[p][0],
                                   result_queue, connect_timeout))
                 for p in range(n)]
        for proc in procs:
            proc.start()
        try:
            return _collect(procs, pipes, port_queue, result_queue, connect_timeout,
                            deadline if deadline is not None else
                            connect_timeout + 4 * config.timeout + 120, route,
                            grace=config.timeout + 2)
        finally:
            for proc in procs:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
                    proc.join()


def _collect(procs: list, pipes: list, port_queue: Any, result_queue: Any,
             connect_timeout: float, total_seconds: float,
             route: Callable[[dict], dict] | None = None, grace: float = 60.0) -> list[Any]:
    n = len(procs)
    ports: dict[int, int] = {}
    start = time.monotonic()
    while len(ports) < n:
        # the first launch also starts the fork server, which imports everything
        remaining = connect_timeout + 60 - (time.monotonic() - start)
        if remaining <= 0:
            raise PartyFailed(min(set(range(n)) - ports.keys()), "did not start")
        try:
            party, port = port_queue.get(timeout=min(remaining, 1.0))
            ports[party] = port
        except Exception:
            dead = [p for p, proc in enumerate(procs) if p not in ports and not proc.is_alive()]
            if dead:
                raise PartyFailed(dead[0], "process exited before it started listening") from None
    addresses = {p: ("127.0.0.1", ports[p]) for p in range(n)}
    if route is not None:
        addresses = route(addresses)
    for _, sender in pipes:
        sender.send(addresses)
    results: list[Any] = [None] * n
    errors: dict[int, BaseException] = {}
    done: set[int] = set()
    observed: set[int] = set()  # failures the launcher saw itself: a crash, a hang
    failed_at: float | None = None
    while len(done) < n:
        if errors and failed_at is None:
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > grace:
            # a party that neither finishes nor notices the failure (it stopped reading its
            # links) would keep the launcher waiting for the deadline: stop it
            for p in sorted(set(range(n)) - done):
                errors[p] = PartyFailed(p, f"neither finished nor failed within {grace:g} s "
                                           f"after party {next(iter(errors))} failed; "
                                           "stopped")
                observed.add(p)
                done.add(p)
                procs[p].kill()
            break
        remaining = total_seconds - (time.monotonic() - start)
        if remaining <= 0:
            raise PartyFailed(min(set(range(n)) - done), "did not finish before the deadline")
        try:
            party, status, value, extra = result_queue.get(timeout=min(remaining, 1.0))
        except Exception:
            crashed = [p for p, proc in enumerate(procs)
                       if p not in done and not proc.is_alive() and proc.exitcode != 0]
            for p in crashed:
                errors[p] = PeerLost(f"party {p}'s process exited with code "
                                     f"{procs[p].exitcode}")
                observed.add(p)
                done.add(p)
            continue
        done.add(party)
        if status == "ok":
            results[party] = value
        else:
            errors[party] = value
    if errors:
        party, error = _first_failure(errors, frozenset(observed))
        if isinstance(error, SottovoceError):
            raise error
        raise PartyFailed(party, error)
    return results
