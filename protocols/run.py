"""Run a program under a scheme: plan, offline phase (dealer or helper), online phase.

`program(protocol)` is ordinary code over `SecretTensor`s; it runs once on the `Planner`
to list its preprocessing, then on every party. Offline and online time and traffic are
measured separately for every party.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mpc import forking
from mpc.errors import ProtocolError
from mpc.launch import run_processes, run_threads
from mpc.net.channel import Traffic
from mpc.runtime import RunConfig, Runtime
from protocols import registry
from protocols.base import Protocol
from protocols.blocks import bitslice
from protocols.preprocessing.correlations import Request
from protocols.registry import Scheme

# a launch that did not choose its scheme beforehand may run any: parties start with all
forking.preload("protocols.preload", "protocols.preload_all")

Program = Callable[[Protocol], Any]
#: Called with each endpoint's runtime before its role starts (tests install faults with it).
Hook = Callable[[Runtime], None]


@dataclass
class PartyReport:
    """What one party computed and what it cost, offline and online apart."""

    party_id: int
    result: Any
    offline: Traffic
    online: Traffic
    offline_seconds: float
    online_seconds: float
    setup: Traffic = field(default_factory=Traffic)
    setup_seconds: float = 0.0


def plan_of(program: Program, n_parties: int, scheme: str | Scheme) -> list[Request]:
    """The preprocessing `program` needs (setup and online phases) under `scheme`, from a
    dry run on the scheme's planner."""
    planner = registry.get(scheme).protocol.planner(n_parties)
    dry_run = copy.deepcopy(program)  # the dry run must not leave state in the real program
    if hasattr(dry_run, "setup"):
        dry_run.setup(planner)
    dry_run(planner)
    return planner.plan


def party_role(runtime: Runtime, scheme: Scheme, program: Program,
               plan: list[Request], hook: Hook | None = None) -> PartyReport:
    # ring arithmetic wraps mod 2^64 by design; numpy would warn when a 0-d operand makes
    # it compute on scalars
    with np.errstate(over="ignore"):
        return _party_role(runtime, scheme, program, plan, hook)


def _party_role(runtime: Runtime, scheme: Scheme, program: Program,
                plan: list[Request], hook: Hook | None = None) -> PartyReport:
    if hook is not None:
        hook(runtime)
    start = time.perf_counter()
    protocol = prepare(runtime, scheme, plan)
    return run_online(protocol, program, runtime.channel.traffic.copy(),
                      time.perf_counter() - start)


def prepare(runtime: Runtime, scheme: Scheme, plan: list[Request]) -> Protocol:
    """A party's protocol for one run, its offline phase done (`plan`'s material received
    or made): what a service keeps in its pool until a batch needs it."""
    protocol = scheme.protocol(runtime)
    bitslice.slice_bits(np.zeros(64, dtype=np.uint64))  # load the kernel before timing
    with np.errstate(over="ignore"):
        protocol.preprocess(plan)
    return protocol


def run_online(protocol: Protocol, program: Program, offline: Traffic | None = None,
               offline_seconds: float = 0.0) -> PartyReport:
    """The setup (e.g. weights) and online phases of `program` on a prepared protocol."""
    channel = protocol.channel
    runtime = protocol.runtime
    before = channel.traffic.copy()
    middle = time.perf_counter()
    with np.errstate(over="ignore"):
        if hasattr(program, "setup"):  # input-independent work of the program, e.g. weights
            with channel.stage("setup"):
                program.setup(protocol)
            # the online phase starts together: without this barrier a party that finished
            # its setup early would count its wait for the others as online time
            peers = [p for p in range(runtime.n_parties) if p != runtime.party_id]
            with channel.stage("setup"):
                done = np.ones(1, dtype=np.uint8)
                ready = channel.exchange(dict.fromkeys(peers, done), expect=done,
                                         what="as its end-of-setup message")
            for peer, message in ready.items():
                if message[0] != 1:
                    raise ProtocolError(f"{channel.who(peer)} sent {message!r} as its "
                                        "end-of-setup message, expected [1]")
        setup = channel.traffic - before
        after_setup = channel.traffic.copy()
        online_start = time.perf_counter()
        with channel.stage("online"):
            result = program(protocol)
        end = time.perf_counter()
    return PartyReport(runtime.party_id, result, offline if offline is not None else Traffic(),
                       channel.traffic - after_setup, offline_seconds, end - online_start,
                       setup, online_start - middle)


def dealer_role(runtime: Runtime, scheme: Scheme, plan: list[Request],
                hook: Hook | None = None) -> PartyReport:
    """The dealer endpoint: serve `plan` the way `scheme` deals it, then report its cost."""
    if hook is not None:
        hook(runtime)
    start = time.perf_counter()
    scheme.protocol.serve_dealer(runtime, plan)
    return PartyReport(runtime.party_id, None, runtime.channel.traffic.copy(), Traffic(),
                       time.perf_counter() - start, 0.0)


def run(scheme: str | Scheme, program: Program | Sequence[Program],
        n_parties: int | None = None,
        transport: str = "threads", timeout: float = 60.0,
        hook: Hook | None = None, route: Callable[[dict], dict] | None = None
        ) -> list[PartyReport]:
    """Run `program` on every party of `scheme`; reports of the compute parties, then the
    dealer's if the scheme has one.

    `program` may be a list with one program per party, so that each party's process
    receives only its own private inputs; the programs must make the same calls.
    `hook`, if given, is called with every endpoint's runtime before its role starts
    (`protocols.testing.tamper` corrupts a party's messages this way); it must pickle for "tcp".
    """
    scheme = registry.get(scheme)
    n = scheme.party_count(n_parties)
    programs = list(program) if isinstance(program, Sequence) else [
        copy.deepcopy(program) for _ in range(n)]  # parties keep their own state
    if len(programs) != n:
        raise ValueError(f"{len(programs)} programs for {n} parties")
    plan = plan_of(programs[0], n, scheme)
    config = RunConfig(n_parties=n, timeout=timeout, dealer=scheme.dealer)
    roles: list = [functools.partial(party_role, scheme=scheme, program=programs[p], plan=plan,
                                     hook=hook) for p in range(n)]
    if scheme.dealer:
        roles.append(functools.partial(dealer_role, scheme=scheme, plan=plan, hook=hook))
    if transport == "threads":
        return run_threads(roles, config)
    if transport == "tcp":
        return run_processes(roles, config, route=route)
    raise ValueError(f"unknown transport {transport!r}: 'threads' or 'tcp'")
