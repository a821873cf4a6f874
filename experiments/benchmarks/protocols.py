"""Benchmark section: sub-protocols and layers of the reference CNN under each scheme.

ReLU on 10^5 elements, the first convolution and the first dense layer (each with its
truncation), over the in-process and the TCP+TLS transports; online and offline apart.
"""

from __future__ import annotations

import functools
import statistics

import numpy as np

from experiments.benchmarks._timing import table
from protocols.run import run as run_scheme
from protocols.tensor import SecretTensor

F = 16
CASES = [("replicated", 3), ("additive", 2)]


def _relu(protocol, values):
    x = SecretTensor.input(protocol, values if protocol.party_id == 0 else None, 0, values.shape)
    return x.relu().reveal(0)


def _conv(protocol, x_val, w_val):
    x = SecretTensor.input(protocol, x_val if protocol.party_id == 0 else None, 0, x_val.shape)
    w = SecretTensor.input(protocol, w_val if protocol.party_id == 1 else None, 1, w_val.shape)
    return x.conv2d(w).trunc(F).reveal(0)


def _dense(protocol, x_val, w_val):
    x = SecretTensor.input(protocol, x_val if protocol.party_id == 0 else None, 0, x_val.shape)
    w = SecretTensor.input(protocol, w_val if protocol.party_id == 1 else None, 1, w_val.shape)
    return (x @ w).trunc(F).reveal(0)


def measure(scheme: str, n: int, program, transport: str, repeats: int) -> dict:
    """Medians over `repeats` runs of the busiest party's online/offline time, plus the
    rounds and bytes of the run (identical across runs)."""
    online, offline, last = [], [], None
    for _ in range(repeats):
        reports = run_scheme(scheme, program, n_parties=n, transport=transport, timeout=120)
        online.append(max(r.online_seconds for r in reports))
        offline.append(max(r.offline_seconds for r in reports))
        last = reports
    return {
        "online_s": statistics.median(online), "offline_s": statistics.median(offline),
        "rounds": max(r.online.rounds for r in last),
        "online_bytes": [r.online.bytes_sent for r in last],
        "offline_bytes": [r.offline.bytes_sent for r in last],
    }


def _fmt_bytes(values: list[int]) -> str:
    return "/".join(f"{v / 1e6:.2f}" for v in values)


def run(quick: bool) -> str:
    rng = np.random.default_rng(0)
    repeats = 2 if quick else 5
    relu_n = 100_000
    relu_x = rng.integers(-(1 << 40), 1 << 40, relu_n).astype(np.uint64)
    conv_x = rng.integers(-(1 << 17), 1 << 17, (1, 1, 40, 350)).astype(np.uint64)
    conv_w = rng.integers(-(1 << 15), 1 << 15, (8, 1, 5, 5)).astype(np.uint64)
    dense_x = rng.integers(-(1 << 17), 1 << 17, (1, 9408)).astype(np.uint64)
    dense_w = rng.integers(-(1 << 12), 1 << 12, (9408, 64)).astype(np.uint64)
    jobs = [
        ("ReLU, 10^5 elements", functools.partial(_relu, values=relu_x), relu_n),
        ("conv1 (1x40x350 * 8x1x5x5) + trunc", functools.partial(_conv, x_val=conv_x,
                                                                  w_val=conv_w), None),
        ("dense1 (1x9408 @ 9408x64) + trunc", functools.partial(_dense, x_val=dense_x,
                                                                 w_val=dense_w), None),
    ]
    rows = []
    for name, program, elements in jobs:
        for scheme, n in CASES:
            for transport in ("threads", "tcp"):
                m = measure(scheme, n, program, transport, repeats if transport == "threads"
                            else max(2, repeats // 2))
                rate = f"{elements / m['online_s'] / 1e6:.2f} M/s" if elements else ""
                rows.append([name, f"{scheme} ({n}P)", transport,
                             f"{m['online_s'] * 1e3:.1f}", f"{m['offline_s'] * 1e3:.1f}",
                             m["rounds"], _fmt_bytes(m["online_bytes"]),
                             _fmt_bytes(m["offline_bytes"]), rate])
    header = ["operation", "scheme", "transport", "online ms", "offline ms", "rounds",
              "online MB sent per party", "offline MB sent per party", "ReLU rate"]
    return ("## Sub-protocols and layers\n\nInputs are random ring elements in range. Bytes "
            "are frame bytes sent by each party (the dealer last, for additive); TLS adds "
            "its own framing on TCP. Input sharing is not timed separately here.\n\n"
            + table(header, rows))
