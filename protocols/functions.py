"""Functions built from the primitives: maximum and argmax over the last axis.

Argmax compares every pair of classes in one batched comparison (one comparison depth for
all C(C-1)/2 pairs) instead of log2(C) sequential tournament levels, then multiplies each
class's C-1 "beats" bits in a tree of ceil(log2(C-1)) product rounds.
"""

from __future__ import annotations

import numpy as np

from protocols.preprocessing.correlations import FULL_BITS
from protocols.tensor import SecretTensor


def _product_tree(bits: SecretTensor) -> SecretTensor:
    """Product over the last axis of 0/1 values (exact: no truncation needed)."""
    while bits.shape[-1] > 1:
        half = bits.shape[-1] // 2
        prod = bits[..., :half] * bits[..., half:2 * half]
        if bits.shape[-1] % 2:
            prod = SecretTensor.concatenate([prod, bits[..., -1:]], axis=-1)
        bits = prod
    return bits[..., 0]


def argmax(x: SecretTensor, bits: int = FULL_BITS) -> SecretTensor:
    """Shares of the index of the largest entry along the last axis (first one on ties).
    `bits` bounds the pairwise differences: each lies in [-2^bits, 2^bits)."""
    classes = x.shape[-1]
    if classes == 1:
        return x[..., 0] * 0
    left, right = np.triu_indices(classes, k=1)
    less = (x[..., left] - x[..., right]).ltz(bits)  # [x_i < x_j] for each pair i < j
    beats = 1 - less  # i beats j (ties go to the lower index)
    # wins[..., i, :] lists the C-1 pair outcomes that must all favour class i
    pair_of = {}
    for p, (i, j) in enumerate(zip(left, right, strict=True)):
        pair_of[(i, j)] = p
    columns, from_less = [], []
    for i in range(classes):
        for j in range(classes):
            if i != j:
                columns.append(pair_of[(min(i, j), max(i, j))])
                from_less.append(i > j)  # class i is the right side: it wins when less
    columns = np.array(columns)
    from_less = np.array(from_less)
    picked_beats = beats[..., columns]
    picked_less = less[..., columns]
    mask = from_less.astype(np.uint64)
    outcome = picked_beats * (1 - mask) + picked_less * mask  # public weights: local
    wins = _product_tree(outcome.reshape(*x.shape[:-1], classes, classes - 1))
    return (wins * np.arange(classes, dtype=np.uint64)).sum(axis=-1)


def maximum(x: SecretTensor, bits: int = FULL_BITS) -> SecretTensor:
    """Shares of the maximum along the last axis by a halving tree: max(a, b) =
    b + (a - b) * [a >= b]; each level is one comparison (of differences in [-2^bits,
    2^bits)) and one product."""
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:2 * half]
        diff = a - b
        keep_a = 1 - diff.ltz(bits)
        best = b + diff * keep_a
        if x.shape[-1] % 2:
            best = SecretTensor.concatenate([best, x[..., -1:]], axis=-1)
        x = best
    return x[..., 0]
