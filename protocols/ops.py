"""Bilinear operations on ring elements: the `op` of the one Beaver routine.

Elementwise product, matrix product and convolution are all bilinear, so a Beaver triple
(a, b, op(a, b)) shaped like the operands serves each; a convolution's triple is shaped like
its input and weights, so opening costs the input's size, not the unfolded patches'.
Ops are small frozen dataclasses: hashable (plans compare them) and picklable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpc import ring


@dataclass(frozen=True)
class Mul:
    """Elementwise product (with numpy broadcasting)."""

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.multiply(a, b, dtype=np.uint64)

    def out_shape(self, sa: tuple, sb: tuple) -> tuple:
        return tuple(np.broadcast_shapes(sa, sb))


@dataclass(frozen=True)
class MatMul:
    """Matrix product of a (..., m, k) and b (k, n), or a (m, k) and b (..., k, n)."""

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.ndim == 2 and b.ndim == 2:
            return ring.matmul64(a, b)
        if b.ndim == 2:  # fold a's leading axes into its rows: one 2-D product
            out = ring.matmul64(a.reshape(-1, a.shape[-1]), b)
            return out.reshape(*a.shape[:-1], b.shape[1])
        if a.ndim == 2:  # fold b's leading axes into its columns
            lead, k, n = b.shape[:-2], b.shape[-2], b.shape[-1]
            cols = np.moveaxis(b.reshape(-1, k, n), 1, 0).reshape(k, -1)
            out = ring.matmul64(a, cols).reshape(a.shape[0], -1, n)
            return np.moveaxis(out, 1, 0).reshape(*lead, a.shape[0], n)
        raise ValueError(f"matmul of shapes {a.shape} and {b.shape} is not supported")

    def out_shape(self, sa: tuple, sb: tuple) -> tuple:
        if len(sb) == 2:
            return (*sa[:-1], sb[1])
        return (*sb[:-2], sa[0], sb[-1])


def im2col(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
           padding: tuple[int, int]) -> np.ndarray:
    """Patches of x (B, C, H, W) as columns: (B, C*kh*kw, Ho*Wo). Linear, so shares unfold
    like values."""
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    b, c, h, w = x.shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(f"kernel {kernel} does not fit input {x.shape[2:]} with padding "
                         f"{padding}")
    s0, s1, s2, s3 = x.strides
    windows = np.lib.stride_tricks.as_strided(
        x, shape=(b, c, kh, kw, ho, wo), strides=(s0, s1, s2, s3, s2 * sh, s3 * sw),
        writeable=False)
    return windows.reshape(b, c * kh * kw, ho * wo)


@dataclass(frozen=True)
class Conv2d:
    """Convolution of weights (Cout, Cin, kh, kw) with input (B, Cin, H, W), cross-correlation
    as in PyTorch, computed as one matrix product over unfolded patches."""

    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    def __call__(self, weight: np.ndarray, x: np.ndarray) -> np.ndarray:
        cout, cin, kh, kw = weight.shape
        cols = im2col(x, (kh, kw), self.stride, self.padding)  # (B, K, L)
        b, k, length = cols.shape
        flat = np.ascontiguousarray(np.moveaxis(cols, 1, 0)).reshape(k, b * length)
        out = ring.matmul64(weight.reshape(cout, k), flat).reshape(cout, b, length)
        ho, wo = self.out_hw(x.shape[2:], (kh, kw))
        return np.ascontiguousarray(np.moveaxis(out, 1, 0)).reshape(b, cout, ho, wo)

    def out_hw(self, hw: tuple, kernel: tuple) -> tuple[int, int]:
        return tuple((n + 2 * p - k) // s + 1
                     for n, p, k, s in zip(hw, self.padding, kernel, self.stride, strict=True))

    def out_shape(self, sw: tuple, sx: tuple) -> tuple:
        return (sx[0], sw[0], *self.out_hw(sx[2:], sw[2:]))
