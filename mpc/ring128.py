"""Z_2^128 arithmetic on limb-leading arrays: the one layout of 128-bit ring elements.

A 128-bit array has a leading axis of even length: entries 0::2 are low limbs and 1::2 the
matching high limbs. A plain value is (2, *shape) = [lo, hi]; an authenticated share (value
and MAC) is (4, *shape) = [value_lo, value_hi, mac_lo, mac_hi], which is two 128-bit numbers
stacked, so every elementwise function below works on both unchanged. Shares of the
MAC-checked schemes keep this layout throughout, so reshapes and indexing act on the trailing
value axes, and the limb planes x[0] and x[1] are contiguous arrays as they stand: the matrix
kernel reads them directly, without converting.

Public operands are uint64 ring elements; they enter as their 128-bit zero extension. That
is sound for SPDZ2k, whose values are only defined mod 2^64: reduction mod 2^64 is a ring
homomorphism from Z_2^128, and MACs stay consistent with the 128-bit values actually held.

Every numba kernel has a numpy twin (``*_numpy``), the tests' oracle next to Python integers
(tests/mpc/test_ring128.py).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

__all__ = [
    "MASK64",
    "Ring128Linear",
    "add",
    "combination",
    "combination_numpy",
    "dot_public",
    "dot_public_numpy",
    "from_pyint",
    "interleave",
    "lift",
    "matmul",
    "matmul_numpy",
    "mul",
    "mul_public",
    "mulhi",
    "mulhi_numpy",
    "mulwide",
    "neg",
    "replicated_product",
    "replicated_product_numpy",
    "scale_pow2",
    "sub",
    "sum_axes",
    "to_pyint",
    "warmup",
]

MASK64 = (1 << 64) - 1
U64 = np.uint64
M16 = U64(0xFFFF)
M32 = U64(0xFFFFFFFF)
S32 = U64(32)
#: Below this many 128-bit multiply-adds a product runs on the calling thread: one costs
#: about four 64-bit ones, and `mpc.ring` keeps 64-bit products under 2^21 serial.
_SERIAL_MACS = 1 << 19
#: Inner dimension from which a product with fewer tiles than threads is split along k.
_SPLIT_MIN_K = 512
#: Inner dimension up to which the numpy twin's grouped 16-bit limb products fit in uint64
#: (4 K (2^16 - 1)^2 < 2^64).
_TWIN_MAX_K = 1 << 30


# -- the 64 x 64 -> 128-bit product -------------------------------------------------------
# numba kernels type every literal as uint64: it turns uint64-int64 arithmetic into float64.


@numba.njit(cache=True, nogil=True, inline="always")
def mulwide(x: np.uint64, y: np.uint64) -> tuple[np.uint64, np.uint64]:  # pragma: no cover
    """Full 64x64 -> 128-bit product (lo, hi) through 32-bit halves (for numba kernels)."""
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


@numba.vectorize(["uint64(uint64, uint64)"], cache=True, nopython=True)
def mulhi(x, y):  # pragma: no cover - numba
    """High 64 bits of x * y, as a numba ufunc (broadcasting; twin: `mulhi_numpy`)."""
    return mulwide(x, y)[1]


def mulhi_numpy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Twin of `mulhi` in numpy (32-bit halves)."""
    x, y = np.asarray(x, dtype=U64), np.asarray(y, dtype=U64)
    xl, xh, yl, yh = x & M32, x >> S32, y & M32, y >> S32
    ll, lh, hl, hh = xl * yl, xl * yh, xh * yl, xh * yh
    mid = (ll >> S32) + (lh & M32) + (hl & M32)
    return hh + (lh >> S32) + (hl >> S32) + (mid >> S32)


# -- layout ---------------------------------------------------------------------------------


def interleave(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Stack low and high limb planes (each (m, *shape)) into (2m, *shape)."""
    lo, hi = np.broadcast_arrays(lo, hi)
    out = np.empty((2 * lo.shape[0], *lo.shape[1:]), dtype=np.uint64)
    out[0::2] = lo
    out[1::2] = hi
    return out


def lift(v: np.ndarray) -> np.ndarray:
    """A uint64 array as 128-bit (2, *shape), zero-extended."""
    v = np.asarray(v, dtype=np.uint64)
    return interleave(v[None], np.zeros_like(v)[None])


def to_pyint(x: np.ndarray) -> np.ndarray:
    """A (2, *shape) array as Python ints in [0, 2^128) (tests)."""
    return x[0].astype(object) + (x[1].astype(object) << 64)


def from_pyint(values: object) -> np.ndarray:
    """Python ints (any sign) mod 2^128 as (2, *shape) (tests)."""
    arr = np.asarray(values, dtype=object) % (1 << 128)
    lo = np.frompyfunc(lambda v: int(v) & MASK64, 1, 1)(arr)
    hi = np.frompyfunc(lambda v: int(v) >> 64, 1, 1)(arr)
    return np.stack([np.asarray(lo).astype(np.uint64), np.asarray(hi).astype(np.uint64)])


def _align(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pad the value axes (after the limb axis) of x and y to equal rank, numpy-style."""
    nd = max(x.ndim, y.ndim)
    x = x.reshape(x.shape[0], *(1,) * (nd - x.ndim), *x.shape[1:])
    y = y.reshape(y.shape[0], *(1,) * (nd - y.ndim), *y.shape[1:])
    return x, y


def _align_public(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """x with value axes padded so a public v (value axes only) broadcasts against them."""
    pad = v.ndim - (x.ndim - 1)
    return x.reshape(x.shape[0], *(1,) * pad, *x.shape[1:]) if pad > 0 else x


# -- elementwise ----------------------------------------------------------------------------


def add(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x + y mod 2^128 (broadcasting over the value axes)."""
    x, y = _align(x, y)
    lo = x[0::2] + y[0::2]
    hi = x[1::2] + y[1::2] + (lo < x[0::2])
    return interleave(lo, hi)


def sub(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x - y mod 2^128 (broadcasting)."""
    x, y = _align(x, y)
    lo = x[0::2] - y[0::2]
    hi = x[1::2] - y[1::2] - (x[0::2] < y[0::2])
    return interleave(lo, hi)


def neg(x: np.ndarray) -> np.ndarray:
    """-x mod 2^128."""
    lo = np.negative(x[0::2])
    hi = np.negative(x[1::2]) - (x[0::2] != 0)
    return interleave(lo, hi)


def mul_public(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """x * v mod 2^128 for a uint64 v (broadcast over x's value axes)."""
    v = np.asarray(v, dtype=np.uint64)
    x = _align_public(x, v)
    lo_in = x[0::2]
    lo = lo_in * v
    hi = mulhi(lo_in, v) + x[1::2] * v
    return interleave(lo, hi)


def mul(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Elementwise x * y mod 2^128 of two 128-bit arrays (broadcasting)."""
    x, y = _align(x, y)
    xl, yl = np.broadcast_arrays(x[0::2], y[0::2])
    lo = xl * yl
    hi = mulhi(xl, yl) + x[0::2] * y[1::2] + x[1::2] * y[0::2]
    return interleave(lo, hi)


def scale_pow2(x: np.ndarray, n: int) -> np.ndarray:
    """x * 2^n mod 2^128 for 0 <= n < 64."""
    if n == 0:
        return x.copy()
    s = U64(n)
    return interleave(x[0::2] << s, (x[1::2] << s) | (x[0::2] >> U64(64 - n)))


def sum_axes(x: np.ndarray, axes: tuple[int, ...], keepdims: bool = False) -> np.ndarray:
    """Sum over value axes `axes` (0-based, excluding the limb axis) mod 2^128.

    Low limbs are summed as 32-bit halves so nothing is lost (up to 2^32 terms)."""
    axes = tuple(a + 1 for a in axes)
    lo = x[0::2]
    s_ll = (lo & M32).sum(axis=axes, keepdims=keepdims, dtype=np.uint64)
    s_lh = (lo >> S32).sum(axis=axes, keepdims=keepdims, dtype=np.uint64)
    s_h = x[1::2].sum(axis=axes, keepdims=keepdims, dtype=np.uint64)
    low = s_ll + (s_lh << S32)
    high = s_h + (s_lh >> S32) + (low < s_ll)
    return interleave(low, high)


class Ring128Linear:
    """Local linear arithmetic as methods, for classes whose share components are 128-bit
    limb pairs, values and MACs alike (the MAC-checked schemes mix it in)."""

    def add(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return add(x, y)

    def sub(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return sub(x, y)

    def neg(self, x: np.ndarray) -> np.ndarray:
        return neg(x)

    def mul_public(self, x: np.ndarray, value: np.ndarray) -> np.ndarray:
        return mul_public(x, value)


# -- fused elementwise kernels --------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _dot_kernel(lo: np.ndarray, hi: np.ndarray, c: np.ndarray) -> tuple:  # pragma: no cover
    acc_lo = np.uint64(0)
    acc_hi = np.uint64(0)
    for j in range(c.shape[0]):
        y = c[j]
        p_lo, p_hi = mulwide(lo[j], y)  # (lo + 2^64 hi) * y mod 2^128
        p_hi += hi[j] * y
        acc_lo += p_lo
        acc_hi += p_hi + np.uint64(acc_lo < p_lo)
    return acc_lo, acc_hi


def dot_public(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """sum_j c_j x_j mod 2^128 for a 128-bit (2, m) array and uint64 coefficients (m,):
    the MAC check's random combination (numba; twin: `dot_public_numpy`)."""
    lo, hi = _dot_kernel(np.ascontiguousarray(x[0]), np.ascontiguousarray(x[1]),
                         np.ascontiguousarray(c, dtype=np.uint64))
    return np.array([lo, hi], dtype=np.uint64)


def dot_public_numpy(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Twin of `dot_public` in numpy."""
    return sum_axes(mul_public(x, c), (0,))


@numba.njit(cache=True, nogil=True)
def _replicated_product_kernel(a: np.ndarray, b: np.ndarray, own: np.ndarray, nxt: np.ndarray,
                               out: np.ndarray) -> None:  # pragma: no cover - numba
    for k in range(out.shape[1]):
        s_lo = b[0, k] + b[2, k]
        s_hi = b[1, k] + b[3, k] + np.uint64(s_lo < b[0, k])
        lo1, hi1 = mulwide(a[0, k], s_lo)
        hi1 += a[0, k] * s_hi + a[1, k] * s_lo
        lo2, hi2 = mulwide(a[2, k], b[0, k])
        hi2 += a[2, k] * b[1, k] + a[3, k] * b[0, k]
        lo = lo1 + lo2
        hi = hi1 + hi2 + np.uint64(lo < lo1)
        t = lo + own[0, k]
        hi = hi + own[1, k] + np.uint64(t < lo)
        lo = t - nxt[0, k]
        hi = hi - nxt[1, k] - np.uint64(t < nxt[0, k])
        out[0, k] = lo
        out[1, k] = hi


def replicated_product(a: np.ndarray, b: np.ndarray, own: np.ndarray,
                       nxt: np.ndarray) -> np.ndarray:
    """a_i (b_i + b_{i+1}) + a_{i+1} b_i + own - nxt mod 2^128, elementwise, for replicated
    128-bit operands (4, ...) (broadcasting) and masks (2, ...) of the output's shape: a
    party's share of a product in one pass (numba; twin: `replicated_product_numpy`)."""
    a, b = _align(a, b)
    shape = np.broadcast_shapes(a.shape[1:], b.shape[1:])
    a = np.broadcast_to(a, (4, *shape)).reshape(4, -1)
    b = np.broadcast_to(b, (4, *shape)).reshape(4, -1)
    out = np.empty((2, a.shape[1]), dtype=np.uint64)
    _replicated_product_kernel(a, b, own.reshape(2, -1), nxt.reshape(2, -1), out)
    return out.reshape(2, *shape)


def replicated_product_numpy(a: np.ndarray, b: np.ndarray, own: np.ndarray,
                             nxt: np.ndarray) -> np.ndarray:
    """Twin of `replicated_product`, composed of `mul`, `add` and `sub`."""
    cross = add(mul(a[0:2], add(b[0:2], b[2:4])), mul(a[2:4], b[0:2]))
    return sub(add(cross, own), nxt)


@numba.njit(cache=True, nogil=True)
def _combination_kernel(xs: np.ndarray, cs: np.ndarray,
                        out: np.ndarray) -> None:  # pragma: no cover - numba
    for limb in range(0, out.shape[0], 2):
        for k in range(out.shape[1]):
            lo = np.uint64(0)
            hi = np.uint64(0)
            for t in range(xs.shape[0]):
                p_lo, p_hi = mulwide(xs[t, limb, k], cs[t])
                p_hi += xs[t, limb + 1, k] * cs[t]
                lo += p_lo
                hi += p_hi + np.uint64(lo < p_lo)
            out[limb, k] = lo
            out[limb + 1, k] = hi


def combination(xs: list[np.ndarray], cs: list[int]) -> np.ndarray:
    """sum_t cs[t] xs[t] mod 2^128 for same-shaped 128-bit arrays (2m, ...) and uint64
    constants, in one pass (numba; twin: `combination_numpy`)."""
    stacked = np.stack([np.ascontiguousarray(x).reshape(x.shape[0], -1) for x in xs])
    out = np.empty(stacked.shape[1:], dtype=np.uint64)
    _combination_kernel(stacked, np.array(cs, dtype=np.uint64), out)
    return out.reshape(xs[0].shape)


def combination_numpy(xs: list[np.ndarray], cs: list[int]) -> np.ndarray:
    """Twin of `combination`, composed of `mul_public` and `add`."""
    total = mul_public(xs[0], U64(cs[0]))
    for x, c in zip(xs[1:], cs[1:], strict=True):
        total = add(total, mul_public(x, U64(c)))
    return total


# -- matrix product -------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _matmul_tile(
    alo: np.ndarray, ahi: np.ndarray, blo: np.ndarray, bhi: np.ndarray, olo: np.ndarray,
    ohi: np.ndarray, i0: int, i1: int, j0: int, j1: int, k0: int, k1: int,
) -> None:  # pragma: no cover - numba
    # olo/ohi[i0:i1, j0:j1] = a[i0:i1, k0:k1] @ b[k0:k1, j0:j1] on separate limb planes. A
    # serial function over contiguous row slices with a zero-based inner loop: written inline
    # in the prange body, or with 2-D indexing from j0, LLVM does not vectorise it (see
    # `mpc.ring._matmul64_tile`). The k-i-j order reuses each loaded row segment of b for
    # every row of the tile while the output tile stays in L1.
    for i in range(i0, i1):
        olo[i, j0:j1] = 0
        ohi[i, j0:j1] = 0
    for k in range(k0, k1):
        bl = blo[k, j0:j1]
        bh = bhi[k, j0:j1]
        for i in range(i0, i1):
            a0 = alo[i, k]
            a1 = ahi[i, k]
            rl = olo[i, j0:j1]
            rh = ohi[i, j0:j1]
            for j in range(rl.shape[0]):
                lo, hi = mulwide(a0, bl[j])
                hi += a0 * bh[j] + a1 * bl[j]
                acc = rl[j] + lo
                rh[j] += hi + np.uint64(acc < lo)
                rl[j] = acc


@numba.njit(cache=True, nogil=True, parallel=True)
def _matmul_kernel(alo: np.ndarray, ahi: np.ndarray, blo: np.ndarray, bhi: np.ndarray,
                   out: np.ndarray) -> None:  # pragma: no cover - numba
    # out[s] = a[:, ks] @ b[ks, :] as (2, m, n) for the s-th of out.shape[0] slices ks of the
    # inner dimension (partial sums, added by the caller; one slice unless there are too few
    # tiles for the threads). Tiles of 8 rows x 256 columns are spread over the threads.
    nsplit = out.shape[0]
    m = out.shape[2]
    n = out.shape[3]
    kdim = alo.shape[1]
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
        k0 = min(s * kchunk, kdim)
        _matmul_tile(alo, ahi, blo, bhi, out[s, 0], out[s, 1], i0, min(i0 + rb, m), j0,
                     min(j0 + cb, n), k0, min(k0 + kchunk, kdim))


def _check_matmul(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != np.uint64 or b.dtype != np.uint64:
        raise TypeError(f"matmul needs uint64 limb arrays, got {a.dtype} and {b.dtype}")
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != 2 or b.shape[0] != 2:
        raise ValueError(f"matmul needs (2, m, k) and (2, k, n) arrays, got {a.shape} and "
                         f"{b.shape}")
    if a.shape[2] != b.shape[1]:
        raise ValueError(f"matmul shape mismatch: {a.shape} @ {b.shape}")
    return a, b


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b mod 2^128 for 128-bit matrices (2, m, k) @ (2, k, n) -> (2, m, n), by a tiled
    numba kernel on the limb planes as they are (twin: `matmul_numpy`)."""
    a, b = _check_matmul(a, b)
    m, k = a.shape[1:]
    n = b.shape[2]
    planes = [np.ascontiguousarray(x[h]) for x in (a, b) for h in (0, 1)]
    threads = numba.get_num_threads()
    if m * k * n < _SERIAL_MACS or threads == 1:
        out = np.empty((2, m, n), dtype=np.uint64)
        if out.size:
            _matmul_tile(*planes, out[0], out[1], 0, m, 0, n, 0, k)
        return out
    tiles = -(-m // 8) * -(-n // 256)
    nsplit = threads if tiles < threads and k >= _SPLIT_MIN_K else 1
    parts = np.empty((nsplit, 2, m, n), dtype=np.uint64)
    _matmul_kernel(*planes, parts)
    out = parts[0]
    for s in range(1, nsplit):
        out = add(out, parts[s])
    return out


def _shifted(p: np.ndarray, t: int) -> np.ndarray:
    """p * 2^t mod 2^128 for a uint64 array p and 0 <= t < 128, as (2, *shape)."""
    zero = np.zeros_like(p)
    if t == 0:
        return interleave(p[None], zero[None])
    if t < 64:
        return interleave((p << U64(t))[None], (p >> U64(64 - t))[None])
    return interleave(zero[None], (p << U64(t - 64))[None])


def matmul_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Twin of `matmul` from exact uint64 `np.matmul` products (no numba).

    With a = a0 + 2^64 a1 and b likewise, a @ b = a0 @ b0 + 2^64 (a0 @ b1 + a1 @ b0) mod
    2^128; the cross terms are wanted mod 2^64 only, so `np.matmul` gives them directly. For
    a0 @ b0 both sides are split into 16-bit limbs: each limb product sums K terms below 2^32,
    and the up to four of equal weight 2^(16 s) stay below 2^64 while K < 2^30."""
    a, b = _check_matmul(a, b)
    if a.shape[2] >= _TWIN_MAX_K:
        raise ValueError(f"matmul_numpy is exact only for inner dimension < 2^30, "
                         f"got {a.shape[2]}")
    la = [(a[0] >> U64(16 * i)) & M16 for i in range(4)]
    lb = [(b[0] >> U64(16 * j)) & M16 for j in range(4)]
    out = np.zeros((2, a.shape[1], b.shape[2]), dtype=np.uint64)
    for s in range(7):
        group = np.zeros(out.shape[1:], dtype=np.uint64)
        for i in range(max(0, s - 3), min(s, 3) + 1):
            group += np.matmul(la[i], lb[s - i])
        out = add(out, _shifted(group, 16 * s))
    out[1] += np.matmul(a[0], b[1]) + np.matmul(a[1], b[0])
    return out


def warmup() -> None:
    """Load the elementwise kernels (numba's cache) before anything is timed."""
    one = np.ones((4, 1), dtype=np.uint64)
    replicated_product(one, one, one[:2], one[:2])
    mulhi(one[0], one[0])
    dot_public(one[:2], one[0])
    combination([one, one], [1, 2])
