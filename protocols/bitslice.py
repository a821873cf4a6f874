"""Bit-slicing: bit i of 64 different values in one uint64 word.

A boolean circuit then runs on whole layers with a handful of word operations per gate:
`slice_bits(x)` has shape (64, W) with W = ceil(N/64), plane i holding bit i of every value.
"""

from __future__ import annotations

import numpy as np


def words_for(count: int) -> int:
    """Words needed to hold one bit of `count` values."""
    return (count + 63) // 64


def slice_bits(values: np.ndarray) -> np.ndarray:
    """(N,) uint64 values -> (64, W) planes; plane i, word w, bit j is bit i of value 64w+j."""
    flat = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1)
    n = flat.size
    padded = np.zeros(words_for(n) * 64, dtype=np.uint64)
    padded[:n] = flat
    bits = np.unpackbits(padded.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    planes = np.packbits(np.ascontiguousarray(bits.T), axis=1, bitorder="little")
    return planes.view(np.uint64)


def unslice_bit(plane: np.ndarray, count: int) -> np.ndarray:
    """One plane of W words -> the (count,) bits it holds, as uint64 zeros and ones."""
    bits = np.unpackbits(np.ascontiguousarray(plane, dtype=np.uint64).view(np.uint8),
                         bitorder="little")
    return bits[:count].astype(np.uint64)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(N,) zeros and ones -> one plane of W words (inverse of `unslice_bit`)."""
    flat = np.asarray(bits).reshape(-1).astype(np.uint8)
    padded = np.zeros(words_for(flat.size) * 64, dtype=np.uint8)
    padded[:flat.size] = flat
    return np.packbits(padded, bitorder="little").view(np.uint64)
