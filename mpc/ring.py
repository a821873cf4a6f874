"""Arithmetic in Z_2^64, the hot core of every protocol.

Z_2^64 elements are numpy ``uint64`` arrays: numpy's unsigned arithmetic already wraps
mod 2^64, so add/sub/mul are plain numpy. The only hot kernel is the matrix product (conv and
dense layers), for which numpy has no BLAS path; three exact implementations live here:

* :func:`matmul64_numpy` -- ``np.matmul`` on uint64, the twin and oracle;
* :func:`matmul64_numba` -- a tiled, parallel numba kernel;
* :func:`matmul64_limbs` -- four 16-bit limbs held as float64, ten exact BLAS products.

:func:`matmul64` picks between the last two by shape (see its docstring for measurements).

Z_2^128, which the MAC-checked schemes compute in, is `mpc.ring128`. Nothing here keeps
state: the functions are pure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from numba import prange

__all__ = [
    "MASK64",
    "LIMB_MAX_K",
    "add",
    "arith_rshift64",
    "from_int",
    "lshift",
    "matmul64",
    "matmul64_limbs",
    "matmul64_numba",
    "matmul64_numpy",
    "mul",
    "neg",
    "rshift_logical",
    "signed64",
    "sub",
    "to_pyint",
    "unsigned64",
]

MASK64 = (1 << 64) - 1
#: Largest inner dimension for which a 16x16-bit limb product summed K times stays exact in
#: float64: K * (2^16 - 1)^2 < 2^53 holds for K <= 2^21.
LIMB_MAX_K = 1 << 21
#: Inner dimension up to which groups of limb products may be summed in float64 before
#: converting (up to 4 terms per group: 4 * K * (2^16 - 1)^2 < 2^53).
_LIMB_GROUP_MAX_K = 1 << 19

_U64 = np.uint64
_M16 = np.uint64(0xFFFF)


#: The low 63 bits of a ring element: everything but the sign bit.
LOW63 = np.uint64((1 << 63) - 1)


def _u64(a: Any) -> np.ndarray:
    """``a`` as a uint64 array; refuses other dtypes so that silent casts cannot wrap values."""
    arr = np.asarray(a)
    if arr.dtype != np.uint64:
        raise TypeError(f"expected a uint64 array, got dtype {arr.dtype}")
    return arr


def _check_shift(n: int) -> int:
    n = int(n)
    if n < 0:
        raise ValueError(f"shift amount must be >= 0, got {n}")
    return n


# ---------------------------------------------------------------------------------------------
# Z_2^64: elementwise
# ---------------------------------------------------------------------------------------------


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b mod 2^64 (broadcasting)."""
    return np.add(_u64(a), _u64(b))


def sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a - b mod 2^64 (broadcasting)."""
    return np.subtract(_u64(a), _u64(b))


def neg(a: np.ndarray) -> np.ndarray:
    """-a mod 2^64."""
    return np.negative(_u64(a))


def mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a * b mod 2^64 (elementwise, broadcasting)."""
    return np.multiply(_u64(a), _u64(b))


def lshift(a: np.ndarray, n: int) -> np.ndarray:
    """a * 2^n mod 2^64; n >= 64 gives 0 (numpy/C would shift by n mod 64 instead)."""
    a, n = _u64(a), _check_shift(n)
    if n >= 64:
        return np.zeros_like(a)
    return np.left_shift(a, _U64(n))


def rshift_logical(a: np.ndarray, n: int) -> np.ndarray:
    """floor(a / 2^n) for a read as unsigned; n >= 64 gives 0."""
    a, n = _u64(a), _check_shift(n)
    if n >= 64:
        return np.zeros_like(a)
    return np.right_shift(a, _U64(n))


def signed64(a: np.ndarray) -> np.ndarray:
    """View a uint64 array as two's-complement int64 (no copy)."""
    return _u64(a).view(np.int64)


def unsigned64(a: np.ndarray) -> np.ndarray:
    """View an int64 array as uint64 (no copy); the inverse of :func:`signed64`."""
    arr = np.asarray(a)
    if arr.dtype != np.int64:
        raise TypeError(f"expected an int64 array, got dtype {arr.dtype}")
    return arr.view(np.uint64)


def arith_rshift64(a: np.ndarray, n: int) -> np.ndarray:
    """floor(a / 2^n) for a read as a signed (two's complement) value, back in Z_2^64.

    Shifts of 63 or more give 0 for non-negative and 2^64 - 1 (= -1) for negative values.
    """
    a, n = _u64(a), _check_shift(n)
    return np.right_shift(a.view(np.int64), np.int64(min(n, 63))).view(np.uint64)


def from_int(x: Any) -> np.ndarray:
    """Python int(s) (any size, any sign) or an integer array, reduced mod 2^64, as uint64."""
    arr = np.asarray(x)
    if arr.dtype == np.uint64:
        return arr.copy()
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64).astype(np.uint64) if arr.dtype.kind == "i" else arr.astype(
            np.uint64
        )
    if arr.dtype == object:
        reduced = np.frompyfunc(lambda v: int(v) & MASK64, 1, 1)(arr)
        return np.asarray(reduced, dtype=object).astype(np.uint64)
    raise TypeError(f"from_int needs integers, got dtype {arr.dtype}")


def to_pyint(a: np.ndarray) -> np.ndarray:
    """Object array of Python ints in [0, 2^64): the exact oracle for tests."""
    return _u64(a).astype(object)


# ---------------------------------------------------------------------------------------------
# Z_2^64: matrix product
# ---------------------------------------------------------------------------------------------


def _prep_matmul(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    """Promote 1-D operands like ``np.matmul`` does; report which axes to drop afterwards."""
    a, b = _u64(a), _u64(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul needs operands with at least one dimension")
    squeeze_a = a.ndim == 1
    squeeze_b = b.ndim == 1
    if squeeze_a:
        a = a[None, :]
    if squeeze_b:
        b = b[:, None]
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul shape mismatch: {a.shape} @ {b.shape}")
    return a, b, squeeze_a, squeeze_b


def _finish_matmul(c: np.ndarray, squeeze_a: bool, squeeze_b: bool) -> np.ndarray:
    if squeeze_b:
        c = c[..., 0]
    if squeeze_a:
        c = c[..., 0, :] if not squeeze_b else c[..., 0]
    return c


def _batched(
    kernel2d: Callable[[np.ndarray, np.ndarray], np.ndarray], a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Apply a 2-D uint64 kernel over broadcast leading (batch) dimensions."""
    if a.ndim == 2 and b.ndim == 2:
        return kernel2d(a, b)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a_b = np.broadcast_to(a, batch + a.shape[-2:])
    b_b = np.broadcast_to(b, batch + b.shape[-2:])
    out = np.empty(batch + (a.shape[-2], b.shape[-1]), dtype=np.uint64)
    for idx in np.ndindex(*batch):
        out[idx] = kernel2d(a_b[idx], b_b[idx])
    return out


def matmul64_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.matmul`` on uint64: exact mod 2^64 but without BLAS. Twin and oracle."""
    return np.matmul(_u64(a), _u64(b))


@numba.njit(cache=True, nogil=True)
def _matmul64_tile(
    a: np.ndarray, b: np.ndarray, out: np.ndarray, i0: int, i1: int, j0: int, j1: int, k0: int,
    k1: int,
) -> None:  # pragma: no cover
    # out[i0:i1, j0:j1] = a[i0:i1, k0:k1] @ b[k0:k1, j0:j1]. A separate serial function over
    # contiguous row slices with a zero-based inner loop: written inline in the prange body, or
    # with 2-D indexing from j0, LLVM does not vectorise it (measured 1.2 vs 7 GMAC/s per core).
    for i in range(i0, i1):
        out[i, j0:j1] = 0
    for k in range(k0, k1):
        brow = b[k, j0:j1]
        for i in range(i0, i1):
            aik = a[i, k]
            orow = out[i, j0:j1]
            for j in range(orow.shape[0]):
                orow[j] += aik * brow[j]


@numba.njit(cache=True, nogil=True, parallel=True)
def _matmul64_kernel(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    # out[s] = a[:, ks] @ b[ks, :] for the s-th of out.shape[0] slices ks of the inner dimension
    # (partial sums, added by the caller; one slice unless there are too few tiles for the
    # threads). Tiles of 8 rows x 256 columns are spread over the threads; within a tile the
    # k-i-j order reuses each loaded row segment of `b` for 8 rows while the output tile stays
    # in L1, and the innermost loop is contiguous.
    nsplit, m, n = out.shape
    kdim = a.shape[1]
    rb = 8
    cb = 256
    nti = (m + rb - 1) // rb
    ntj = (n + cb - 1) // cb
    kchunk = (kdim + nsplit - 1) // nsplit
    for t in prange(nsplit * nti * ntj):
        s = t // (nti * ntj)
        r = t % (nti * ntj)
        i0 = (r // ntj) * rb
        j0 = (r % ntj) * cb
        k0 = s * kchunk
        _matmul64_tile(
            a, b, out[s], i0, min(i0 + rb, m), j0, min(j0 + cb, n), k0, min(k0 + kchunk, kdim)
        )


#: Below this many multiply-adds the serial kernel is used: at ~7 GMAC/s per core the product
#: takes well under a millisecond, less than waking (possibly busy) worker threads can save.
_SERIAL_MACS = 1 << 21


def _matmul64_numba_2d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    m, k = a.shape
    n = b.shape[1]
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if m * k * n < _SERIAL_MACS or numba.get_num_threads() == 1:
        out2 = np.empty((m, n), dtype=np.uint64)
        if out2.size:
            _matmul64_tile(a, b, out2, 0, m, 0, n, 0, k)
        return out2
    tiles = -(-m // 8) * -(-n // 256)
    threads = numba.get_num_threads()
    nsplit = threads if tiles < threads and k >= 512 else 1
    out = np.empty((nsplit, m, n), dtype=np.uint64)
    _matmul64_kernel(a, b, out)
    return out[0] if nsplit == 1 else out.sum(axis=0, dtype=np.uint64)


def matmul64_numba(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b mod 2^64 with the parallel numba kernel (batched leading dims broadcast)."""
    a, b, sa, sb = _prep_matmul(a, b)
    return _finish_matmul(_batched(_matmul64_numba_2d, a, b), sa, sb)


def _limbs(x: np.ndarray) -> list[np.ndarray]:
    """Four 16-bit limbs of a uint64 array as float64, least significant first."""
    return [((x >> _U64(16 * i)) & _M16).astype(np.float64) for i in range(4)]


def _to_u64(x: np.ndarray) -> np.ndarray:
    # Values are exact non-negative integers below 2^53: the cast is exact.
    return x.astype(np.uint64)


def matmul64_limbs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b mod 2^64 through float64 BLAS on 16-bit limbs.

    With a = sum a_i 2^(16 i) and b = sum b_j 2^(16 j), a @ b mod 2^64 is the sum of
    (a_i @ b_j) 2^(16 (i + j)) over i + j < 4. Each limb product is a sum of K terms below
    2^32, hence an exact float64 integer while K <= 2^21 (:data:`LIMB_MAX_K`); larger K raises.
    The limbs of the operand with fewer rows/columns are stacked so that each j (or i) needs
    one larger BLAS call instead of up to four small ones. Works on batched operands too.
    """
    a, b, sa, sb = _prep_matmul(a, b)
    return _finish_matmul(_matmul64_limbs_nd(a, b), sa, sb)


def _matmul64_limbs_nd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    k = a.shape[-1]
    if k > LIMB_MAX_K:
        raise ValueError(f"matmul64_limbs is exact only for inner dimension <= 2^21, got {k}")
    if a.size == 0 or b.size == 0:
        return np.matmul(a, b)
    m, n = a.shape[-2], b.shape[-1]
    la, lb = _limbs(a), _limbs(b)
    # parts[s] collects the float products a_i @ b_j with i + j = s.
    parts: list[list[np.ndarray]] = [[] for _ in range(4)]
    if m <= n:
        # Stack a's limbs along rows: [a_0; ...; a_{3-j}] @ b_j gives a_i @ b_j for all i.
        for j in range(4):
            stacked = np.concatenate(la[: 4 - j], axis=-2)
            prod = np.matmul(stacked, lb[j])
            for i in range(4 - j):
                parts[i + j].append(prod[..., i * m : (i + 1) * m, :])
    else:
        for i in range(4):
            stacked = np.concatenate(lb[: 4 - i], axis=-1)
            prod = np.matmul(la[i], stacked)
            for j in range(4 - i):
                parts[i + j].append(prod[..., :, j * n : (j + 1) * n])
    out: np.ndarray | None = None
    for s in range(4):
        if k <= _LIMB_GROUP_MAX_K:
            group = parts[s][0]
            for p in parts[s][1:]:
                group = group + p  # exact: at most 4 terms below 2^51 each
            term = _to_u64(group)
        else:
            term = _to_u64(parts[s][0])
            for p in parts[s][1:]:
                term += _to_u64(p)
        if s:
            term <<= _U64(16 * s)
        out = term if out is None else out + term
    assert out is not None
    return out


def matmul64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b mod 2^64, the default product (batched leading dims broadcast).

    The numba kernel: measured at the reference CNN's shapes it is 5-10x faster than both
    ``np.matmul`` on uint64 and the float64-limb method, whose ten BLAS products plus operand
    splitting cost more than the vectorised (AVX-512 vpmullq) integer loop. See
    experiments/benchmarks/ring.py.
    """
    return matmul64_numba(a, b)


def warmup(threads: int | None = None) -> None:
    """Load the compiled kernels (from numba's cache) before any timed work.

    A fresh process pays several hundred milliseconds on its first call of each kernel;
    party processes call this at start-up so that cost is not charged to the protocol.
    `threads` caps numba's pool (parties sharing a small machine should not oversubscribe).
    """
    if threads is not None:
        set_threads(threads)
    small = np.ones((2, 3), dtype=np.uint64)
    matmul64(small, small.T)
    big = np.ones((64, 256), dtype=np.uint64)
    matmul64(big, np.ones((256, 256), dtype=np.uint64))


def load_serial_kernels() -> None:
    """Load the serial product kernel without touching numba's thread pool, which a process
    that forks parties (`mpc.preload`) must not start."""
    one = np.ones((1, 1), dtype=np.uint64)
    _matmul64_tile(one, one, np.empty((1, 1), dtype=np.uint64), 0, 1, 0, 1, 0, 1)


def set_threads(threads: int) -> None:
    """Cap numba's threads for kernels launched from the calling thread.

    Parties that share a machine's cores should use one each: measured on 2 cores with
    other work running, a 2-thread product of 16x200 @ 200x2366 took 8.4 ms and a
    1-thread one 1.6 ms.
    """
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
