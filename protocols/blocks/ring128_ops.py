"""Z_2^128 arithmetic on limb-leading arrays, for the MAC-checked schemes.

A 128-bit array here has a leading axis of even length: entries 0::2 are low limbs and 1::2
the matching high limbs. A plain value is (2, *shape) = [lo, hi]; an authenticated share
(value and MAC) is (4, *shape) = [value_lo, value_hi, mac_lo, mac_hi], which is two 128-bit
numbers stacked, so every elementwise function below works on both unchanged. This is the
layout `SecretTensor` sees (its structural ops act on the trailing value axes), so shares
never need converting for reshapes or indexing; only the matrix kernels of `mpc.ring`
(trailing limb axis) need a transposed copy.

Public operands are uint64 ring elements; they enter as their 128-bit zero extension. That
is sound for SPDZ2k, whose values are only defined mod 2^64: reduction mod 2^64 is a ring
homomorphism from Z_2^128, and MACs stay consistent with the 128-bit values actually held.
"""

from __future__ import annotations

import numba
import numpy as np

from mpc import ring
from protocols.ops import Conv2d, MatMul, Mul, im2col

U64 = np.uint64
M32 = U64(0xFFFFFFFF)
S32 = U64(32)


@numba.vectorize(["uint64(uint64, uint64)"], cache=True, nopython=True)
def mulhi(x, y):  # pragma: no cover - numba
    """High 64 bits of x * y, as a numba ufunc (broadcasting; twin: `ring.mulhi64`)."""
    return ring.mulwide(x, y)[1]


@numba.njit(cache=True, nogil=True)
def _replicated_product_kernel(a: np.ndarray, b: np.ndarray, own: np.ndarray, nxt: np.ndarray,
                               out: np.ndarray) -> None:  # pragma: no cover - numba
    for k in range(out.shape[1]):
        s_lo = b[0, k] + b[2, k]
        s_hi = b[1, k] + b[3, k] + np.uint64(s_lo < b[0, k])
        lo1, hi1 = ring.mulwide(a[0, k], s_lo)
        hi1 += a[0, k] * s_hi + a[1, k] * s_lo
        lo2, hi2 = ring.mulwide(a[2, k], b[0, k])
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
    party's share of a product in one pass (numba; the same as composing `mul`, `add`)."""
    a, b = _align(a, b)
    shape = np.broadcast_shapes(a.shape[1:], b.shape[1:])
    a = np.broadcast_to(a, (4, *shape)).reshape(4, -1)
    b = np.broadcast_to(b, (4, *shape)).reshape(4, -1)
    out = np.empty((2, a.shape[1]), dtype=np.uint64)
    _replicated_product_kernel(a, b, own.reshape(2, -1), nxt.reshape(2, -1), out)
    return out.reshape(2, *shape)


@numba.njit(cache=True, nogil=True)
def _combination_kernel(xs: np.ndarray, cs: np.ndarray,
                        out: np.ndarray) -> None:  # pragma: no cover - numba
    for limb in range(0, out.shape[0], 2):
        for k in range(out.shape[1]):
            lo = np.uint64(0)
            hi = np.uint64(0)
            for t in range(xs.shape[0]):
                p_lo, p_hi = ring.mulwide(xs[t, limb, k], cs[t])
                p_hi += xs[t, limb + 1, k] * cs[t]
                lo += p_lo
                hi += p_hi + np.uint64(lo < p_lo)
            out[limb, k] = lo
            out[limb + 1, k] = hi


def combination(xs: list[np.ndarray], cs: list[int]) -> np.ndarray:
    """sum_t cs[t] xs[t] mod 2^128 for same-shaped 128-bit arrays (2m, ...) and uint64
    constants, in one pass (numba; the same as composing `mul_public` and `add`)."""
    stacked = np.stack([np.ascontiguousarray(x).reshape(x.shape[0], -1) for x in xs])
    out = np.empty(stacked.shape[1:], dtype=np.uint64)
    _combination_kernel(stacked, np.array(cs, dtype=np.uint64), out)
    return out.reshape(xs[0].shape)


def warmup() -> None:
    """Load the elementwise kernels (numba's cache) before anything is timed."""
    one = np.ones((4, 1), dtype=np.uint64)
    replicated_product(one, one, one[:2], one[:2])
    mulhi(one[0], one[0])
    dot_public(one[:2], one[0])
    combination([one, one], [1, 2])


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


def add(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = _align(x, y)
    lo = x[0::2] + y[0::2]
    hi = x[1::2] + y[1::2] + (lo < x[0::2])
    return interleave(lo, hi)


def sub(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = _align(x, y)
    lo = x[0::2] - y[0::2]
    hi = x[1::2] - y[1::2] - (x[0::2] < y[0::2])
    return interleave(lo, hi)


def neg(x: np.ndarray) -> np.ndarray:
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


@numba.njit(cache=True, nogil=True)
def _dot_kernel(lo: np.ndarray, hi: np.ndarray, c: np.ndarray) -> tuple:  # pragma: no cover
    acc_lo = np.uint64(0)
    acc_hi = np.uint64(0)
    for j in range(c.shape[0]):
        y = c[j]
        p_lo, p_hi = ring.mulwide(lo[j], y)  # (lo + 2^64 hi) * y mod 2^128
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


def to_pyint(x: np.ndarray) -> np.ndarray:
    """A (2, *shape) array as Python ints in [0, 2^128) (tests)."""
    return x[0].astype(object) + (x[1].astype(object) << 64)


def from_pyint(values: object) -> np.ndarray:
    """Python ints (any sign) mod 2^128 as (2, *shape) (tests)."""
    arr = np.asarray(values, dtype=object) % (1 << 128)
    lo = np.frompyfunc(lambda v: int(v) & ring.MASK64, 1, 1)(arr)
    hi = np.frompyfunc(lambda v: int(v) >> 64, 1, 1)(arr)
    return np.stack([np.asarray(lo).astype(np.uint64), np.asarray(hi).astype(np.uint64)])


# -- bilinear operations on 128-bit values ------------------------------------------------

def _trailing(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 0, -1))


def _leading(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, -1, 0))


def _matmul_t(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MatMul's shape rules on trailing-limb arrays."""
    if a.ndim == 3 and b.ndim == 3:
        return ring.matmul128(a, b)
    if b.ndim == 3:
        out = ring.matmul128(np.ascontiguousarray(a).reshape(-1, a.shape[-2], 2), b)
        return out.reshape(*a.shape[:-2], b.shape[1], 2)
    if a.ndim == 3:
        lead, k, n = b.shape[:-3], b.shape[-3], b.shape[-2]
        cols = np.moveaxis(np.ascontiguousarray(b).reshape(-1, k, n, 2), 1, 0).reshape(k, -1, 2)
        out = ring.matmul128(a, np.ascontiguousarray(cols)).reshape(a.shape[0], -1, n, 2)
        return np.moveaxis(out, 1, 0).reshape(*lead, a.shape[0], n, 2)
    raise ValueError(f"matmul of shapes {a.shape[:-1]} and {b.shape[:-1]} is not supported")


def _conv_t(op: Conv2d, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    cout, cin, kh, kw, _ = w.shape
    cols = np.stack([im2col(np.ascontiguousarray(x[..., h]), (kh, kw), op.stride, op.padding)
                     for h in (0, 1)], axis=-1)  # (B, K, L, 2)
    b, k, length, _ = cols.shape
    flat = np.ascontiguousarray(np.moveaxis(cols, 1, 0)).reshape(k, b * length, 2)
    out = ring.matmul128(np.ascontiguousarray(w).reshape(cout, k, 2), flat)
    ho, wo = op.out_hw(x.shape[2:4], (kh, kw))
    return np.moveaxis(out.reshape(cout, b, length, 2), 1, 0).reshape(b, cout, ho, wo, 2)


def bilinear(op: Mul | MatMul | Conv2d, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """op(a, b) mod 2^128 for 128-bit plain arrays a, b of shape (2, ...)."""
    if isinstance(op, Mul):
        return mul(a, b)
    if isinstance(op, MatMul):
        return _leading(_matmul_t(_trailing(a), _trailing(b)))
    if isinstance(op, Conv2d):
        return _leading(_conv_t(op, _trailing(a), _trailing(b)))
    raise TypeError(f"unknown bilinear op {op!r}")


def bilinear_auth(op: Mul | MatMul | Conv2d, a: np.ndarray, b: np.ndarray,
                  secret_left: bool) -> np.ndarray:
    """op on an authenticated (4, ...) operand and a plain (2, ...) one, both limbs of the
    authenticated side (value and MAC) alike: op(a, b) with `a` authenticated if
    `secret_left`, else with `b` authenticated."""
    if secret_left:
        parts = [bilinear(op, a[0:2], b), bilinear(op, a[2:4], b)]
    else:
        parts = [bilinear(op, a, b[0:2]), bilinear(op, a, b[2:4])]
    return np.concatenate(parts)


class Ring128Linear:
    """Local linear arithmetic for schemes whose share components are 128-bit limb pairs
    (values and MACs alike): mixed into their Protocol classes."""

    def add(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return add(x, y)

    def sub(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return sub(x, y)

    def neg(self, x: np.ndarray) -> np.ndarray:
        return neg(x)

    def mul_public(self, x: np.ndarray, value: np.ndarray) -> np.ndarray:
        return mul_public(x, value)
