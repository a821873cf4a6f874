"""Bilinear operations (`Mul`, `MatMul`, `Conv2d`) on 128-bit limb-leading arrays, for the
MAC-checked schemes.

The arithmetic and the layout are `mpc.ring128`'s (a plain value (2, *shape), an
authenticated share (4, *shape)); this module adds only what needs the ops' shape rules.
Matrix products and convolutions fold their operands into one (2, m, k) @ (2, k, n) product
of `mpc.ring128.matmul`, which reads the limb planes as they are: no operand or result
changes layout.
"""

from __future__ import annotations

import numpy as np

from mpc import ring128 as r128
from protocols.ops import Conv2d, MatMul, Mul, im2col


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MatMul's shape rules (`protocols.ops.MatMul`) on 128-bit arrays (2, ...)."""
    if a.ndim == 3 and b.ndim == 3:
        return r128.matmul(a, b)
    if b.ndim == 3:  # fold a's leading value axes into its rows
        out = r128.matmul(a.reshape(2, -1, a.shape[-1]), b)
        return out.reshape(2, *a.shape[1:-1], b.shape[2])
    if a.ndim == 3:  # fold b's leading value axes into its columns
        lead, k, n = b.shape[1:-2], b.shape[-2], b.shape[-1]
        cols = np.moveaxis(b.reshape(2, -1, k, n), 2, 1).reshape(2, k, -1)
        out = r128.matmul(a, cols).reshape(2, a.shape[1], -1, n)
        return np.moveaxis(out, 2, 1).reshape(2, *lead, a.shape[1], n)
    raise ValueError(f"matmul of shapes {a.shape[1:]} and {b.shape[1:]} is not supported")


def _conv(op: Conv2d, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Conv2d's product (`protocols.ops.Conv2d`) of weights (2, Cout, Cin, kh, kw) and
    input (2, B, Cin, H, W): both limb planes unfold as one batch of 2B images."""
    cout, cin, kh, kw = w.shape[1:]
    batch = x.shape[1]
    cols = im2col(x.reshape(2 * batch, *x.shape[2:]), (kh, kw), op.stride, op.padding)
    k, length = cols.shape[1:]
    flat = np.moveaxis(cols.reshape(2, batch, k, length), 2, 1).reshape(2, k, batch * length)
    out = r128.matmul(w.reshape(2, cout, k), flat)
    ho, wo = op.out_hw(x.shape[3:5], (kh, kw))
    return np.moveaxis(out.reshape(2, cout, batch, length), 2, 1).reshape(2, batch, cout, ho, wo)


def bilinear(op: Mul | MatMul | Conv2d, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """op(a, b) mod 2^128 for 128-bit plain arrays a, b of shape (2, ...)."""
    if isinstance(op, Mul):
        return r128.mul(a, b)
    if isinstance(op, MatMul):
        return _matmul(a, b)
    if isinstance(op, Conv2d):
        return _conv(op, a, b)
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
