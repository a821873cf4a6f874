"""Transports: one-round latency and bulk throughput, in-process and TCP+TLS on loopback.

The parties time their own loops and return the timings, so thread or process start-up,
certificate creation and the TLS handshakes are not in the numbers.
"""

from __future__ import annotations

import functools
import statistics
import time

import numpy as np

from experiments.benchmarks._timing import table
from mpc.launch import run_processes, run_threads
from mpc.runtime import RunConfig, Runtime

LATENCY_PARTIES = 3
THROUGHPUT_BYTES = 8 * 2**20


def latency_role(rt: Runtime, rounds: int, warmup: int = 20) -> list[float]:
    """Seconds per round of exchanging one uint64 (8 bytes) with every peer."""
    channel = rt.channel
    outgoing = dict.fromkeys(channel.peers, np.zeros(1, dtype=np.uint64))
    for _ in range(warmup):
        channel.exchange(outgoing)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        channel.exchange(outgoing)
        times.append(time.perf_counter() - start)
    return times


def throughput_role(rt: Runtime, nbytes: int, repeats: int) -> list[float]:
    """Seconds per exchange of `nbytes` each way between parties 0 and 1."""
    channel = rt.channel
    peer = 1 - rt.party_id
    data = np.arange(nbytes // 8, dtype=np.uint64)
    channel.exchange({peer: data[:1]})  # both sides ready
    channel.exchange({peer: data})  # warm: buffers, page faults
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        channel.exchange({peer: data})
        times.append(time.perf_counter() - start)
    return times


def _launch(transport: str, roles: list, timeout: float) -> list:
    config = RunConfig(n_parties=len(roles), timeout=timeout)
    if transport == "in-process":
        return run_threads(roles, config)
    return run_processes(roles, config, connect_timeout=30)


def run(quick: bool) -> str:
    rounds = 300 if quick else 3000
    repeats = 3 if quick else 10
    rows = []
    for transport in ("in-process", "TCP+TLS 1.3"):
        lat = _launch(transport, [functools.partial(latency_role, rounds=rounds)]
                      * LATENCY_PARTIES, timeout=60)
        per_round = statistics.median(lat[0])
        thr = _launch(transport, [functools.partial(throughput_role, nbytes=THROUGHPUT_BYTES,
                                                    repeats=repeats)] * 2, timeout=60)
        seconds = statistics.median(thr[0])
        rows.append([transport, f"{per_round * 1e6:.0f}",
                     f"{seconds * 1e3:.1f}", f"{THROUGHPUT_BYTES / seconds / 1e6:.0f}"])
    return ("## Transport\n\n"
            f"Latency: {LATENCY_PARTIES} parties, each round one `exchange` of an 8-byte "
            f"array with every peer, median of {rounds} rounds (party 0). Throughput: 2 "
            f"parties exchanging {THROUGHPUT_BYTES // 2**20} MiB each way at once, median "
            f"of {repeats} exchanges; MB/s is per direction. In-process parties are threads "
            "of one process (queues, frames encoded as on the wire); TCP parties are "
            "separate processes on loopback with mutual TLS 1.3. Timed inside the parties: "
            "start-up and handshakes are excluded.\n\n"
            + table(["transport", "latency µs/round", "8 MiB exchange ms",
                     "throughput MB/s"], rows))
