"""Arithmetic in Z_2^64 and Z_2^128, the hot core of every protocol.

Z_2^64 elements are numpy ``uint64`` arrays: numpy's unsigned arithmetic already wraps
mod 2^64, so add/sub/mul are plain numpy. The only hot kernel is the matrix product (conv and
dense layers), for which numpy has no BLAS path; three exact implementations live here:

* :func:`matmul64_numpy` -- ``np.matmul`` on uint64, the twin and oracle;
* :func:`matmul64_numba` -- a tiled, parallel numba kernel;
* :func:`matmul64_limbs` -- four 16-bit limbs held as float64, ten exact BLAS products.

:func:`matmul64` picks between the last two by shape (see its docstring for measurements).

Z_2^128 elements are uint64 arrays with a trailing axis of length 2, ``x[..., 0]`` the low
limb and ``x[..., 1]`` the high limb (needed by the MAC-checked schemes, which compute mod
2^(64+64)). Every operation has a numba kernel (``cache=True``) and a numpy twin used as test
oracle next to plain Python integers.

Nothing here keeps state: the functions are pure, and :data:`RING64` / :data:`RING128` are
immutable bundles of them so protocol code can be written once for both rings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numba
import numpy as np
from numba import prange

__all__ = [
    "MASK64",
    "LIMB_MAX_K",
    "RING64",
    "RING128",
    "Ring",
    "RingPRG",
    "add",
    "add128",
    "add128_numpy",
    "arith_rshift64",
    "from_int",
    "from_int128",
    "low64",
    "lshift",
    "lshift128",
    "lshift128_numpy",
    "matmul64",
    "matmul64_limbs",
    "matmul64_numba",
    "matmul64_numpy",
    "matmul128",
    "matmul128_numpy",
    "mul",
    "mul128",
    "mul128_numpy",
    "mulhi64",
    "neg",
    "neg128",
    "neg128_numpy",
    "rshift_logical",
    "rshift_logical128",
    "rshift_logical128_numpy",
    "signed64",
    "sub",
    "sub128",
    "sub128_numpy",
    "to128",
    "to_pyint",
    "to_pyint128",
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
_M32 = np.uint64(0xFFFFFFFF)
_M16 = np.uint64(0xFFFF)


class RingPRG(Protocol):
    """What :meth:`Ring.random` needs from a PRG (the AES-CTR PRG provides it)."""

    def ring_elements(self, shape: tuple[int, ...]) -> np.ndarray: ...


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


# ---------------------------------------------------------------------------------------------
# Z_2^128: two uint64 limbs in a trailing axis
# ---------------------------------------------------------------------------------------------


def _u128(a: Any) -> np.ndarray:
    arr = _u64(a)
    if arr.ndim == 0 or arr.shape[-1] != 2:
        raise ValueError(f"a Z_2^128 array needs a trailing axis of length 2, got {arr.shape}")
    return arr


def to128(a: np.ndarray) -> np.ndarray:
    """Zero-extend a uint64 array to Z_2^128 (new trailing limb axis)."""
    a = _u64(a)
    return np.stack([a, np.zeros_like(a)], axis=-1)


def low64(x: np.ndarray) -> np.ndarray:
    """x mod 2^64 of a Z_2^128 array (a copy of the low limb)."""
    return _u128(x)[..., 0].copy()


def from_int128(x: Any) -> np.ndarray:
    """Python int(s) of any size and sign (or an integer array) mod 2^128, as limb pairs."""
    arr = np.asarray(x)
    if arr.dtype.kind in "iu" and arr.dtype != object:
        lo = arr.astype(np.int64).astype(np.uint64) if arr.dtype.kind == "i" else arr.astype(
            np.uint64
        )
        hi = np.where(arr < 0, _U64(MASK64), _U64(0)).astype(np.uint64)
        return np.stack([lo, hi], axis=-1)
    if arr.dtype != object and arr.dtype.kind != "b":
        raise TypeError(f"from_int128 needs integers, got dtype {arr.dtype}")
    obj = np.asarray(arr, dtype=object)
    lo = np.frompyfunc(lambda v: int(v) & MASK64, 1, 1)(obj)
    hi = np.frompyfunc(lambda v: (int(v) >> 64) & MASK64, 1, 1)(obj)
    return np.stack(
        [np.asarray(lo, dtype=object).astype(np.uint64), np.asarray(hi, dtype=object).astype(
            np.uint64)],
        axis=-1,
    )


def to_pyint128(x: np.ndarray) -> np.ndarray:
    """Object array of Python ints in [0, 2^128) (drops the limb axis): the test oracle."""
    x = _u128(x)
    return x[..., 0].astype(object) + (x[..., 1].astype(object) << 64)


def _flat_pair(
    a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Broadcast two Z_2^128 arrays and flatten them to contiguous (n, 2) views."""
    a, b = _u128(a), _u128(b)
    shape = np.broadcast_shapes(a.shape, b.shape)
    fa = np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1, 2)
    fb = np.ascontiguousarray(np.broadcast_to(b, shape)).reshape(-1, 2)
    return fa, fb, shape


# numba kernels work on flattened (n, 2) arrays; every literal is typed as uint64 because numba
# turns uint64-int64 arithmetic into float64.


@numba.njit(cache=True, nogil=True, inline="always")
def _mulwide(x: np.uint64, y: np.uint64) -> tuple[np.uint64, np.uint64]:  # pragma: no cover
    """Full 64x64 -> 128-bit product (lo, hi) through 32-bit halves."""
    m32 = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    xl = x & m32
    xh = x >> s32
    yl = y & m32
    yh = y >> s32
    ll = xl * yl
    lh = xl * yh
    hl = xh * yl
    hh = xh * yh
    mid = (ll >> s32) + (lh & m32) + (hl & m32)
    lo = (ll & m32) | (mid << s32)
    hi = hh + (lh >> s32) + (hl >> s32) + (mid >> s32)
    return lo, hi


mulwide = _mulwide  # the 64x64 -> 128-bit product, for kernels in other modules


@numba.njit(cache=True, nogil=True)
def _add128_kernel(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    for t in range(a.shape[0]):
        lo = a[t, 0] + b[t, 0]
        out[t, 1] = a[t, 1] + b[t, 1] + np.uint64(lo < a[t, 0])
        out[t, 0] = lo


@numba.njit(cache=True, nogil=True)
def _sub128_kernel(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    for t in range(a.shape[0]):
        borrow = np.uint64(a[t, 0] < b[t, 0])
        out[t, 1] = a[t, 1] - b[t, 1] - borrow
        out[t, 0] = a[t, 0] - b[t, 0]


@numba.njit(cache=True, nogil=True)
def _neg128_kernel(a: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    zero = np.uint64(0)
    for t in range(a.shape[0]):
        borrow = np.uint64(a[t, 0] != zero)
        out[t, 1] = zero - a[t, 1] - borrow
        out[t, 0] = zero - a[t, 0]


@numba.njit(cache=True, nogil=True)
def _mul128_kernel(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    # (a1 2^64 + a0)(b1 2^64 + b0) = a0 b0 + 2^64 (a0 b1 + a1 b0) mod 2^128
    for t in range(a.shape[0]):
        lo, hi = _mulwide(a[t, 0], b[t, 0])
        out[t, 0] = lo
        out[t, 1] = hi + a[t, 0] * b[t, 1] + a[t, 1] * b[t, 0]


@numba.njit(cache=True, nogil=True)
def _lshift128_kernel(a: np.ndarray, n: np.uint64, out: np.ndarray) -> None:  # pragma: no cover
    # 0 < n < 128 (the wrapper handles 0 and >= 128)
    s64 = np.uint64(64)
    for t in range(a.shape[0]):
        lo = a[t, 0]
        hi = a[t, 1]
        if n < s64:
            out[t, 1] = (hi << n) | (lo >> (s64 - n))
            out[t, 0] = lo << n
        else:
            out[t, 1] = lo << (n - s64)
            out[t, 0] = np.uint64(0)


@numba.njit(cache=True, nogil=True)
def _rshift128_kernel(a: np.ndarray, n: np.uint64, out: np.ndarray) -> None:  # pragma: no cover
    # 0 < n < 128 (the wrapper handles 0 and >= 128)
    s64 = np.uint64(64)
    for t in range(a.shape[0]):
        lo = a[t, 0]
        hi = a[t, 1]
        if n < s64:
            out[t, 0] = (lo >> n) | (hi << (s64 - n))
            out[t, 1] = hi >> n
        else:
            out[t, 0] = hi >> (n - s64)
            out[t, 1] = np.uint64(0)


@numba.njit(cache=True, nogil=True)
def _matmul128_tile(
    alo: np.ndarray, ahi: np.ndarray, blo: np.ndarray, bhi: np.ndarray, olo: np.ndarray,
    ohi: np.ndarray, i0: int, i1: int, j0: int, j1: int,
) -> None:  # pragma: no cover
    # Limb planes are separate contiguous arrays so that the inner loop vectorises (see
    # _matmul64_tile for why this is a serial function over row slices).
    for i in range(i0, i1):
        olo[i, j0:j1] = 0
        ohi[i, j0:j1] = 0
    for k in range(alo.shape[1]):
        bl = blo[k, j0:j1]
        bh = bhi[k, j0:j1]
        for i in range(i0, i1):
            a0 = alo[i, k]
            a1 = ahi[i, k]
            rl = olo[i, j0:j1]
            rh = ohi[i, j0:j1]
            for j in range(rl.shape[0]):
                lo, hi = _mulwide(a0, bl[j])
                hi += a0 * bh[j] + a1 * bl[j]
                acc = rl[j] + lo
                rh[j] += hi + np.uint64(acc < lo)
                rl[j] = acc


@numba.njit(cache=True, nogil=True, parallel=True)
def _matmul128_kernel(
    alo: np.ndarray, ahi: np.ndarray, blo: np.ndarray, bhi: np.ndarray, olo: np.ndarray,
    ohi: np.ndarray,
) -> None:  # pragma: no cover
    # Tiles of 8 rows x 256 columns spread over the threads, as in the 64-bit kernel.
    m, n = olo.shape
    rb = 8
    cb = 256
    nti = (m + rb - 1) // rb
    ntj = (n + cb - 1) // cb
    for t in prange(nti * ntj):
        i0 = (t // ntj) * rb
        j0 = (t % ntj) * cb
        _matmul128_tile(alo, ahi, blo, bhi, olo, ohi, i0, min(i0 + rb, m), j0, min(j0 + cb, n))


def add128(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b mod 2^128 (broadcasting over the leading axes)."""
    fa, fb, shape = _flat_pair(a, b)
    out = np.empty_like(fa)
    _add128_kernel(fa, fb, out)
    return out.reshape(shape)


def sub128(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a - b mod 2^128 (broadcasting)."""
    fa, fb, shape = _flat_pair(a, b)
    out = np.empty_like(fa)
    _sub128_kernel(fa, fb, out)
    return out.reshape(shape)


def neg128(a: np.ndarray) -> np.ndarray:
    """-a mod 2^128."""
    a = _u128(a)
    fa = np.ascontiguousarray(a).reshape(-1, 2)
    out = np.empty_like(fa)
    _neg128_kernel(fa, out)
    return out.reshape(a.shape)


def mul128(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a * b mod 2^128 (elementwise, broadcasting)."""
    fa, fb, shape = _flat_pair(a, b)
    out = np.empty_like(fa)
    _mul128_kernel(fa, fb, out)
    return out.reshape(shape)


def _shift128(a: np.ndarray, n: int, kernel) -> np.ndarray:
    """Apply a 128-bit shift kernel by n bits; n == 0 copies, n >= 128 gives 0."""
    a, n = _u128(a), _check_shift(n)
    if n == 0:
        return a.copy()
    if n >= 128:
        return np.zeros_like(a)
    fa = np.ascontiguousarray(a).reshape(-1, 2)
    out = np.empty_like(fa)
    kernel(fa, _U64(n), out)
    return out.reshape(a.shape)


def lshift128(a: np.ndarray, n: int) -> np.ndarray:
    """a * 2^n mod 2^128; n >= 128 gives 0."""
    return _shift128(a, n, _lshift128_kernel)


def rshift_logical128(a: np.ndarray, n: int) -> np.ndarray:
    """floor(a / 2^n) for a read as unsigned 128-bit; n >= 128 gives 0."""
    return _shift128(a, n, _rshift128_kernel)


def _prep_matmul128(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _u128(a), _u128(b)
    if a.ndim < 3 or b.ndim < 3:
        raise ValueError("matmul128 needs operands of shape (..., m, k, 2) and (..., k, n, 2)")
    if a.shape[-2] != b.shape[-3]:
        raise ValueError(f"matmul128 shape mismatch: {a.shape} @ {b.shape}")
    return a, b


def _matmul128_2d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    m, n = a.shape[0], b.shape[1]
    olo = np.empty((m, n), dtype=np.uint64)
    ohi = np.empty((m, n), dtype=np.uint64)
    if olo.size:
        planes = [np.ascontiguousarray(x[..., h]) for x in (a, b) for h in (0, 1)]
        # a 128-bit MAC costs about four 64-bit ones
        if m * a.shape[1] * n < _SERIAL_MACS // 4 or numba.get_num_threads() == 1:
            _matmul128_tile(*planes, olo, ohi, 0, m, 0, n)
        else:
            _matmul128_kernel(*planes, olo, ohi)
    return np.stack([olo, ohi], axis=-1)


def matmul128(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b mod 2^128 for (..., m, k, 2) @ (..., k, n, 2), parallel numba kernel."""
    a, b = _prep_matmul128(a, b)
    if a.ndim == 3 and b.ndim == 3:
        return _matmul128_2d(a, b)
    batch = np.broadcast_shapes(a.shape[:-3], b.shape[:-3])
    a_b = np.broadcast_to(a, batch + a.shape[-3:])
    b_b = np.broadcast_to(b, batch + b.shape[-3:])
    out = np.empty(batch + (a.shape[-3], b.shape[-2], 2), dtype=np.uint64)
    for idx in np.ndindex(*batch):
        out[idx] = _matmul128_2d(a_b[idx], b_b[idx])
    return out


# --- numpy twins (vectorised, no numba): the oracles next to Python ints ---------------------


def mulhi64(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """High 64 bits of the full 128-bit product of two uint64 arrays (numpy, 32-bit halves)."""
    x, y = _u64(x), _u64(y)
    s32 = _U64(32)
    xl, xh, yl, yh = x & _M32, x >> s32, y & _M32, y >> s32
    ll, lh, hl, hh = xl * yl, xl * yh, xh * yl, xh * yh
    mid = (ll >> s32) + (lh & _M32) + (hl & _M32)
    return hh + (lh >> s32) + (hl >> s32) + (mid >> s32)


def add128_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Twin of :func:`add128` in plain numpy."""
    a, b = _u128(a), _u128(b)
    with np.errstate(over="ignore"):  # 0-d inputs become numpy scalars, which warn
        lo = a[..., 0] + b[..., 0]
        hi = a[..., 1] + b[..., 1] + (lo < a[..., 0]).astype(np.uint64)
    return np.stack([lo, hi], axis=-1)


def sub128_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Twin of :func:`sub128` in plain numpy."""
    a, b = _u128(a), _u128(b)
    with np.errstate(over="ignore"):  # 0-d inputs become numpy scalars, which warn
        lo = a[..., 0] - b[..., 0]
        hi = a[..., 1] - b[..., 1] - (a[..., 0] < b[..., 0]).astype(np.uint64)
    return np.stack([lo, hi], axis=-1)


def neg128_numpy(a: np.ndarray) -> np.ndarray:
    """Twin of :func:`neg128` in plain numpy."""
    return sub128_numpy(np.zeros_like(_u128(a)), a)


def mul128_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Twin of :func:`mul128` in plain numpy."""
    a, b = _u128(a), _u128(b)
    a0, a1, b0, b1 = a[..., 0], a[..., 1], b[..., 0], b[..., 1]
    with np.errstate(over="ignore"):  # 0-d inputs become numpy scalars, which warn
        lo = a0 * b0
        hi = mulhi64(a0, b0) + a0 * b1 + a1 * b0
    return np.stack(np.broadcast_arrays(lo, hi), axis=-1)


def lshift128_numpy(a: np.ndarray, n: int) -> np.ndarray:
    """Twin of :func:`lshift128` through Python ints (slow; tests only)."""
    return from_int128(to_pyint128(a) << _check_shift(n))


def rshift_logical128_numpy(a: np.ndarray, n: int) -> np.ndarray:
    """Twin of :func:`rshift_logical128` through Python ints (slow; tests only)."""
    return from_int128(to_pyint128(a) >> _check_shift(n))


def matmul128_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Twin of :func:`matmul128` through Python-int object arrays (slow; tests and benchmark)."""
    a, b = _prep_matmul128(a, b)
    return from_int128(np.matmul(to_pyint128(a), to_pyint128(b)))


# ---------------------------------------------------------------------------------------------
# Ring bundles
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ring:
    """Z_2^bits with the operations protocols need, so scheme code is written once.

    Elements are ``uint64`` arrays; for ``bits == 128`` they carry a trailing limb axis of
    length 2 (``limbs``). ``element_shape(x)`` gives the logical shape without that axis.
    """

    bits: int

    def __post_init__(self) -> None:
        if self.bits not in (64, 128):
            raise ValueError(f"only Z_2^64 and Z_2^128 are supported, got bits={self.bits}")

    @property
    def dtype(self) -> np.dtype:
        """Storage dtype of every limb (always uint64)."""
        return np.dtype(np.uint64)

    @property
    def limbs(self) -> int:
        """uint64 words per element: 1 for Z_2^64, 2 (trailing axis) for Z_2^128."""
        return self.bits // 64

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    def _wide(self) -> bool:
        return self.bits == 128

    def storage_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Array shape holding elements of logical shape ``shape``."""
        return tuple(shape) + ((2,) if self._wide() else ())

    def element_shape(self, x: np.ndarray) -> tuple[int, ...]:
        """Logical shape of a ring array (without the limb axis)."""
        return x.shape[:-1] if self._wide() else x.shape

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return add128(a, b) if self._wide() else add(a, b)

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return sub128(a, b) if self._wide() else sub(a, b)

    def neg(self, a: np.ndarray) -> np.ndarray:
        return neg128(a) if self._wide() else neg(a)

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return mul128(a, b) if self._wide() else mul(a, b)

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return matmul128(a, b) if self._wide() else matmul64(a, b)

    def lshift(self, a: np.ndarray, n: int) -> np.ndarray:
        return lshift128(a, n) if self._wide() else lshift(a, n)

    def rshift_logical(self, a: np.ndarray, n: int) -> np.ndarray:
        return rshift_logical128(a, n) if self._wide() else rshift_logical(a, n)

    def from_int(self, x: Any) -> np.ndarray:
        return from_int128(x) if self._wide() else from_int(x)

    def to_pyint(self, a: np.ndarray) -> np.ndarray:
        return to_pyint128(a) if self._wide() else to_pyint(a)

    def zeros(self, shape: tuple[int, ...] | int) -> np.ndarray:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return np.zeros(self.storage_shape(shape), dtype=np.uint64)

    def random(self, shape: tuple[int, ...] | int, prg: RingPRG) -> np.ndarray:
        """Uniform elements from ``prg.ring_elements`` (two words per element for 128 bits)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        out = _u64(prg.ring_elements(self.storage_shape(shape)))
        if out.shape != self.storage_shape(shape):
            raise ValueError(f"PRG returned shape {out.shape}, wanted {self.storage_shape(shape)}")
        return out


RING64 = Ring(64)
RING128 = Ring(128)


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


def set_threads(threads: int) -> None:
    """Cap numba's threads for kernels launched from the calling thread.

    Parties that share a machine's cores should use one each: measured on 2 cores with
    other work running, a 2-thread product of 16x200 @ 200x2366 took 8.4 ms and a
    1-thread one 1.6 ms.
    """
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
