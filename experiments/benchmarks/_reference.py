"""A fixed plaintext workload timed in the same run as every benchmark: the machine's unit.

Figures measured on different days differ by the machine's load and CPU as much as by the
code. Each section that times the secure schemes also reports its figures as multiples of
this unit, measured in the same process minutes apart: a figure that moves while its
multiple stays put is the machine; a multiple that moves is the code. The workload is
independent of this project's code, single-threaded, and touches what the parties spend
their time on: 64-bit integer array arithmetic (numpy), AES-CTR keystream (the PRG's and
TLS's cipher, through `cryptography`), and Python-level dispatch.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from experiments.benchmarks._timing import median_seconds

_KEY, _NONCE = bytes(range(16)), bytes(16)


def _workload() -> int:
    """The same operations every time (about 40 ms on an idle 2-core EPYC)."""
    a = np.arange(1 << 20, dtype=np.uint64)
    b = a * np.uint64(0x9E3779B97F4A7C15)
    for _ in range(8):
        b = (b ^ (b >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9) + a
    stream = Cipher(algorithms.AES(_KEY), modes.CTR(_NONCE)).encryptor()
    keystream = stream.update(bytes(4 << 20))
    total = 0
    for k in range(20_000):
        total += k * k % 7
    return int(b[-1] & np.uint64(255)) + keystream[-1] + total


def machine_unit(repeats: int = 9) -> float:
    """Median seconds of the fixed workload (one warm-up run first)."""
    return median_seconds(_workload, repeats=repeats, warmup=1)
