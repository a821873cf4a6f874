"""Benchmark section: ring matrix products at the reference CNN's shapes."""

from __future__ import annotations

import os
from collections.abc import Callable

import numba
import numpy as np

from experiments.benchmarks._timing import median_seconds, table
from mpc import ring as R
from mpc import ring128

# (label, m, k, n): conv layers via im2col (weights @ patches; a batch of B clips multiplies
# the patch columns by B), dense1 as (clips x 9408) @ (9408 x 64).
SHAPES_64 = [
    ("conv1, 1 clip", 8, 25, 12456),
    ("conv1, 8 clips", 8, 25, 8 * 12456),
    ("conv2, 1 clip", 16, 200, 2366),
    ("conv2, 8 clips", 16, 200, 8 * 2366),
    ("dense1, 1 clip", 1, 9408, 64),
    ("dense1, 8 clips", 8, 9408, 64),
]
SHAPES_128 = [SHAPES_64[0], SHAPES_64[2], SHAPES_64[4]]
SMALL_128 = ("small (8x25 @ 25x200)", 8, 25, 200)

IMPLS_64: list[tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]] = [
    ("numpy twin (np.matmul uint64)", R.matmul64_numpy),
    ("numba kernel", R.matmul64_numba),
    ("float64 limbs + BLAS", R.matmul64_limbs),
]


def _operands(
    rng: np.random.Generator, m: int, k: int, n: int, limbs: int
) -> tuple[np.ndarray, np.ndarray]:
    lead = (2,) if limbs == 2 else ()  # mpc.ring128's leading limb axis
    a = rng.integers(0, 1 << 64, lead + (m, k), dtype=np.uint64)
    b = rng.integers(0, 1 << 64, lead + (k, n), dtype=np.uint64)
    return a, b


def _row(label: str, impl: str, macs: int, seconds: float) -> list[object]:
    return [label, impl, f"{seconds * 1e3:.2f}", f"{macs / seconds / 1e9:.3f}"]


def run(quick: bool) -> str:
    """Markdown section "## Ring arithmetic" with matmul timings mod 2^64 and 2^128."""
    repeats = 3 if quick else 7
    load = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    header = ["shape (m x k @ k x n)", "implementation", "median ms", "GMAC/s"]

    rows64: list[list[object]] = []
    for label, m, k, n in SHAPES_64:
        a, b = _operands(rng, m, k, n, 1)
        reference = R.matmul64_numpy(a, b)
        for impl, fn in IMPLS_64:
            if not np.array_equal(fn(a, b), reference):  # also compiles the kernel
                raise AssertionError(f"{impl} disagrees with the numpy twin at {label}")
            seconds = median_seconds(lambda fn=fn, a=a, b=b: fn(a, b), repeats, warmup=1)
            rows64.append(_row(f"{label}: {m}x{k} @ {k}x{n}", impl, m * k * n, seconds))

    rows128: list[list[object]] = []
    for label, m, k, n in SHAPES_128 + [SMALL_128]:
        a, b = _operands(rng, m, k, n, 2)
        if not np.array_equal(ring128.matmul(a, b), ring128.matmul_numpy(a, b)):
            raise AssertionError(f"ring128.matmul disagrees with its numpy twin at {label}")
        seconds = median_seconds(lambda a=a, b=b: ring128.matmul(a, b), repeats, warmup=1)
        rows128.append(_row(f"{label}: {m}x{k} @ {k}x{n}", "numba kernel", m * k * n, seconds))
    label, m, k, n = SMALL_128
    a, b = _operands(rng, m, k, n, 2)
    seconds = median_seconds(lambda: ring128.matmul_numpy(a, b), 1 if quick else 3, warmup=0)
    rows128.append(_row(f"{label}: {m}x{k} @ {k}x{n}", "numpy twin", m * k * n, seconds))

    return (
        "## Ring arithmetic\n\n"
        "Matrix products at the reference CNN's shapes (conv layers as weights @ im2col "
        "patches; a batch of clips widens the patch matrix), random full-range operands from "
        f"`np.random.default_rng(0)`, {repeats} timed runs after one warm-up, numba with "
        f"{numba.get_num_threads()} threads (products under 2^21 multiply-adds, 2^19 mod "
        f"2^128, run serially), 1-minute load average {load:.2f} at the start: the parallel "
        "kernels lose most of their speed when another process competes for the cores. Every "
        "implementation is checked bit-exact against its twin before timing. The default "
        "`matmul64` is the numba kernel.\n\n"
        "### Z_2^64\n\n"
        + table(header, rows64)
        + "\n### Z_2^128 (two uint64 limbs)\n\n"
        "`mpc.ring128.matmul` on limb-leading operands (2, m, k) @ (2, k, n), as the MAC "
        "schemes hold them, checked bit-exact against its numpy twin (sixteen exact uint64 "
        "`np.matmul` products of 16-bit limbs, two more for the high limb) before timing; the "
        "twin is timed only on the small shape.\n\n"
        + table(header, rows128)
    )
