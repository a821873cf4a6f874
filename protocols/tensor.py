"""`SecretTensor`: a numpy-like tensor of shares, written once for every scheme.

Arithmetic is in the ring Z_2^64: public operands are ring elements (encode reals with
`mpc.fixedpoint.FixedPoint` first) and products of fixed-point values need `trunc`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from protocols.base import Protocol, as_ring
from protocols.ops import Conv2d, MatMul, Mul
from protocols.preprocessing.correlations import FULL_BITS


class SecretTensor:
    """A party's shares of a tensor, shape (components, *shape), bound to its protocol."""

    __array_priority__ = 1000  # numpy defers to our reflected operators

    def __init__(self, protocol: Protocol, share: np.ndarray) -> None:
        if share.dtype != np.uint64 or share.shape[:1] != (protocol.components,):
            raise ValueError(f"share of {share.dtype}{share.shape} does not fit "
                             f"{protocol.name} ({protocol.components} components)")
        self.protocol = protocol
        self.share = share

    # -- creation and output -------------------------------------------------------------
    @classmethod
    def input(cls, protocol: Protocol, value: np.ndarray | None, owner: int,
              shape: Iterable[int]) -> SecretTensor:
        """Share `value` held by party `owner`; the others pass None and the shape."""
        return cls(protocol, protocol.input(value, owner, tuple(shape)))

    @classmethod
    def input_external(cls, protocol: Protocol, source: int, shape: Iterable[int]
                       ) -> SecretTensor:
        """Share a value held by endpoint `source` outside the compute parties (a client or a
        model owner), with the scheme's integrity guarantees for such values."""
        return cls(protocol, protocol.input_external(source, tuple(shape)))

    def reveal_external(self, target: int) -> None:
        """Open to endpoint `target` outside the compute parties; nobody else learns it."""
        self.protocol.reveal_external(self.share, target)

    def reveal(self, to: int | Iterable[int]) -> np.ndarray | None:
        """Open to the named parties only; the others get None."""
        targets = (to,) if isinstance(to, int) else tuple(to)
        value = self.protocol.reveal(self.share, targets)
        return None if value is None else np.asarray(value, dtype=np.uint64)  # 0-d stays an array

    # -- shape ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.share.shape[1:]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def _wrap(self, share: np.ndarray) -> SecretTensor:
        return SecretTensor(self.protocol, np.ascontiguousarray(share))

    def reshape(self, *shape: int) -> SecretTensor:
        if len(shape) == 1 and isinstance(shape[0], tuple | list):
            shape = tuple(shape[0])
        return self._wrap(self.share.reshape(self.share.shape[0], *shape))

    def flatten(self, start_dim: int = 0) -> SecretTensor:
        return self.reshape(*self.shape[:start_dim], -1)

    def transpose(self, *axes: int) -> SecretTensor:
        axes = axes or tuple(reversed(range(self.ndim)))
        return self._wrap(self.share.transpose(0, *(a % self.ndim + 1 for a in axes)))

    @property
    def T(self) -> SecretTensor:  # noqa: N802 - numpy's name
        return self.transpose()

    def __getitem__(self, key: object) -> SecretTensor:
        key = key if isinstance(key, tuple) else (key,)
        return self._wrap(self.share[(slice(None), *key)])

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
            ) -> SecretTensor:
        if axis is None:
            axis = tuple(range(self.ndim))
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        return self._wrap(self.protocol.sum(self.share, tuple(a % self.ndim for a in axes),
                                            keepdims))

    @staticmethod
    def concatenate(tensors: list[SecretTensor], axis: int = 0) -> SecretTensor:
        first = tensors[0]
        return first._wrap(np.concatenate([t.share for t in tensors],
                                          axis=axis % first.ndim + 1))

    # -- linear arithmetic ---------------------------------------------------------------
    def __add__(self, other: object) -> SecretTensor:
        if isinstance(other, SecretTensor):
            return self._wrap(self.protocol.add(self.share, other.share))
        return self._wrap(self.protocol.add_public(self.share, as_ring(other)))

    __radd__ = __add__

    def __neg__(self) -> SecretTensor:
        return self._wrap(self.protocol.neg(self.share))

    def __sub__(self, other: object) -> SecretTensor:
        if isinstance(other, SecretTensor):
            return self._wrap(self.protocol.sub(self.share, other.share))
        return self + (np.uint64(0) - as_ring(other))

    def __rsub__(self, other: object) -> SecretTensor:
        return (-self) + other

    def __mul__(self, other: object) -> SecretTensor:
        if isinstance(other, SecretTensor):
            return self._wrap(self.protocol.bilinear(self.share, other.share, Mul()))
        return self._wrap(self.protocol.mul_public(self.share, as_ring(other)))

    __rmul__ = __mul__

    def __matmul__(self, other: object) -> SecretTensor:
        if isinstance(other, SecretTensor):
            return self._wrap(self.protocol.bilinear(self.share, other.share, MatMul()))
        return self._wrap(self.protocol.public_bilinear(self.share, as_ring(other), MatMul(),
                                                        public_left=False))

    def __rmatmul__(self, other: object) -> SecretTensor:
        return self._wrap(self.protocol.public_bilinear(self.share, as_ring(other), MatMul(),
                                                        public_left=True))

    def conv2d(self, weight: SecretTensor | np.ndarray, stride: tuple[int, int] = (1, 1),
               padding: tuple[int, int] = (0, 0)) -> SecretTensor:
        """Cross-correlation of this (B, C, H, W) input with weights (Cout, C, kh, kw)."""
        op = Conv2d(tuple(stride), tuple(padding))
        if isinstance(weight, SecretTensor):
            return self._wrap(self.protocol.bilinear(weight.share, self.share, op))
        return self._wrap(self.protocol.public_bilinear(self.share, as_ring(weight), op,
                                                        public_left=True))

    def bilinear_trunc(self, other: SecretTensor, op: object, bias: SecretTensor | None,
                       frac_bits: int) -> SecretTensor:
        """(op(self, other) + bias) / 2^frac_bits with secret operands: a linear layer with
        its single truncation, fused where the scheme can save a round. `bias` must already
        have the output's shape."""
        share = self.protocol.bilinear_trunc(self.share, other.share, op,
                                             None if bias is None else bias.share, frac_bits)
        return self._wrap(share)

    # -- non-linear ----------------------------------------------------------------------
    def trunc(self, frac_bits: int) -> SecretTensor:
        """Divide by 2^frac_bits (probabilistic: floor or one more)."""
        return self._wrap(self.protocol.trunc(self.share, frac_bits))

    def ltz(self, bits: int = FULL_BITS) -> SecretTensor:
        """The bit [x < 0] for each element, as ring elements 0/1; `bits` narrows the
        comparison to values in [-2^bits, 2^bits) where the scheme can (see Protocol.ltz)."""
        return self._wrap(self.protocol.ltz(self.share, bits))

    def relu(self, bits: int = FULL_BITS) -> SecretTensor:
        """max(x, 0) for each element (`bits` as for `ltz`)."""
        return self._wrap(self.protocol.relu(self.share, bits))

    def __repr__(self) -> str:
        return f"SecretTensor(shape={self.shape}, scheme={self.protocol.name})"
