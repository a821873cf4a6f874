"""Truncation, comparison and ReLU by masking and opening, among parties holding additive
shares, with material from a dealer (docs/protocols.md, "Truncation" and "Comparison").

Every function takes the group's shares of a flat vector and its material, and returns
the group's additive shares of the result. One round opens the masked value; comparison
then runs a carry tree on bit-sliced XOR shares: the lowest level is free (the dealer
supplies products of neighbouring mask bits), leaving 5 AND rounds, then one round that
opens the result bit masked by a daBit. Truncation: 1 round; LTZ and ReLU: 7 rounds over
the whole ring. A comparison narrowed to values in [-2^bits, 2^bits) runs its carry tree
over `bits` bits only: fewer AND gates and mask bits in proportion, and one AND round less
each time the width halves (6 rounds for 32 bits or fewer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpc.fixedpoint import MAX_VALUE_BITS
from mpc.net.channel import Channel
from mpc.ring import LOW63
from protocols.blocks import bitslice
from protocols.preprocessing.correlations import ARITH, BOOL, FULL_BITS, MSB, comparison_tree

ONE = np.uint64(1)


@dataclass
class AdditiveGroup:
    """The parties of a sharing (by id) and this party's place among them."""

    channel: Channel
    members: tuple[int, ...]
    me: int  # party id of this party

    @property
    def first(self) -> bool:
        """The member that adds public constants."""
        return self.me == self.members[0]

    def open(self, values: list[tuple[np.ndarray, str]]) -> list[np.ndarray]:
        """Open several shared arrays to every member in one round (one message a peer)."""
        flat = [np.ascontiguousarray(v, dtype=np.uint64).reshape(-1) for v, _ in values]
        message = np.concatenate(flat) if len(flat) > 1 else flat[0]
        peers = [p for p in self.members if p != self.me]
        received = self.channel.exchange(dict.fromkeys(peers, message), expect=message,
                                         what="in an opening")
        arith = np.concatenate([np.full(f.size, d == ARITH) for f, (_, d) in
                                zip(flat, values, strict=True)]) if len(flat) > 1 else None
        total = message.copy()
        for peer in peers:
            other = received[peer]
            if arith is None:
                total = total + other if values[0][1] == ARITH else total ^ other
            else:
                total = np.where(arith, total + other, total ^ other)
        out, offset = [], 0
        for f, (v, _) in zip(flat, values, strict=True):
            out.append(total[offset:offset + f.size].reshape(np.shape(v)))
            offset += f.size
        return out

    def const(self, value: np.ndarray) -> np.ndarray:
        """This member's share of a public value: the value for the first, zero otherwise."""
        return value if self.first else np.zeros_like(value)


def trunc_masked(group: AdditiveGroup, x: np.ndarray, m: dict[str, np.ndarray]) -> np.ndarray:
    """This member's share of c = x + 2^62 + r, the value truncation opens."""
    return x + group.const(np.uint64(1 << MAX_VALUE_BITS)) + m["r"]


def trunc_finish(group: AdditiveGroup, c: np.ndarray, m: dict[str, np.ndarray],
                 f: int) -> np.ndarray:
    """Shares of x >> f from the opened c (local): the carry out of y + r_low is
    c_msb ^ r_msb, and y >> f = (c_low >> f) - (r_low >> f) + 2^(63-f) * carry."""
    shift = np.uint64(f)
    c_msb, c_low = c >> MSB, c & LOW63
    w = group.const(c_msb) + m["r_msb"] - np.uint64(2) * c_msb * m["r_msb"]
    public = (c_low >> shift) - np.uint64(1 << (MAX_VALUE_BITS - f))
    return group.const(public) - m["r_low_shifted"] + np.uint64(1 << (63 - f)) * w


def trunc(group: AdditiveGroup, x: np.ndarray, m: dict[str, np.ndarray], f: int) -> np.ndarray:
    """Shares of floor(x / 2^f) or one more, for |x| < 2^62 (one round)."""
    (c,) = group.open([(trunc_masked(group, x, m), ARITH)])
    return trunc_finish(group, c, m, f)


def _and(group: AdditiveGroup, x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray,
         c: np.ndarray) -> np.ndarray:
    """XOR shares of x & y from a boolean Beaver triple (one round)."""
    d, e = group.open([(x ^ a, BOOL), (y ^ b, BOOL)])
    return c ^ (d & b) ^ (e & a) ^ group.const(d & e)


def sign_bits(group: AdditiveGroup, x: np.ndarray, m: dict[str, np.ndarray],
              bits: int = FULL_BITS) -> np.ndarray:
    """Bit-sliced XOR shares (one plane of words) of [x < 0], for -2^bits <= x < 2^bits
    (1 + ceil(log2(ceil(bits / 2))) rounds: 6 over the whole ring).

    With c = x + 2^bits + r opened, y = x + 2^bits lies in [0, 2^(bits + 1)), so x < 0
    exactly when bit `bits` of y = c - r is 0, and that bit is c_bits ^ r_bits ^ [c_low <
    r_low] over the `bits` low bits: the borrow comes from a carry tree over (generate,
    propagate) pairs, top bit down. r is uniform on the whole ring, so c is uniform however
    narrow the comparison: narrowing costs correctness outside the range, never privacy.
    """
    (c,) = group.open([(x + group.const(np.uint64(1 << bits)) + m["r"], ARITH)])
    cp = bitslice.slice_bits(c)
    nc = ~cp
    r_bits, pp = m["r_bits"], m["pair_products"]
    pairs = bits // 2
    hi, lo = slice(1, 2 * pairs, 2), slice(0, 2 * pairs, 2)
    nch, ncl, rh, rl = nc[hi], nc[lo], r_bits[hi], r_bits[lo]
    g = (nch & rh) ^ (ncl & (pp ^ (nch & rl)))
    p = pp ^ (ncl & rh) ^ (nch & rl) ^ group.const(nch & ncl)
    if bits % 2:  # the top low bit makes a group of its own
        top = slice(bits - 1, bits)
        g = np.concatenate([g, nc[top] & r_bits[top]])
        p = np.concatenate([p, r_bits[top] ^ group.const(nc[top])])
    gate = 0
    for count in comparison_tree(bits)[:-1]:
        pairs = count // 2
        g_hi, g_lo = g[1:2 * pairs:2], g[0:2 * pairs:2]
        p_hi, p_lo = p[1:2 * pairs:2], p[0:2 * pairs:2]
        rows = slice(gate, gate + 2 * pairs)
        both = _and(group, np.concatenate([p_hi, p_hi]), np.concatenate([g_lo, p_lo]),
                    m["and_a"][rows], m["and_b"][rows], m["and_c"][rows])
        gate += 2 * pairs
        new_g, new_p = g_hi ^ both[:pairs], both[pairs:]
        if count % 2:
            new_g = np.concatenate([new_g, g[-1:]])
            new_p = np.concatenate([new_p, p[-1:]])
        g, p = new_g, new_p
    return g[0] ^ r_bits[bits] ^ group.const(~cp[bits])


def ltz(group: AdditiveGroup, x: np.ndarray, m: dict[str, np.ndarray],
        bits: int = FULL_BITS) -> np.ndarray:
    """Arithmetic shares of [x < 0] (7 rounds over the whole ring)."""
    signs = sign_bits(group, x, m, bits)
    (e_words,) = group.open([(signs ^ m["rho_bits"], BOOL)])
    e = bitslice.unslice_bit(e_words, x.size)
    return group.const(e) + m["rho"] * (ONE - np.uint64(2) * e)


def relu(group: AdditiveGroup, x: np.ndarray, m: dict[str, np.ndarray],
         bits: int = FULL_BITS) -> np.ndarray:
    """Arithmetic shares of max(x, 0) = x - x * [x < 0] (7 rounds over the whole ring): the
    round that turns the bit arithmetic also opens x minus a mask paired with the daBit, so
    the product is local."""
    signs = sign_bits(group, x, m, bits)
    e_words, d = group.open([(signs ^ m["rho_bits"], BOOL), (x - m["x_mask"], ARITH)])
    e = bitslice.unslice_bit(e_words, x.size)
    x_rho = d * m["rho"] + m["x_mask_rho"]
    x_msb = e * x + (ONE - np.uint64(2) * e) * x_rho
    return x - x_msb


def run(kind: str, group: AdditiveGroup, x: np.ndarray, m: dict[str, np.ndarray],
        frac_bits: int = 0, bits: int = FULL_BITS) -> np.ndarray:
    """Dispatch a masked sub-protocol on shares of any shape; the result has x's shape."""
    if kind == "trunc":
        return trunc(group, x, m, frac_bits)
    fn = {"ltz": ltz, "relu": relu}[kind]
    return fn(group, x.reshape(-1), m, bits).reshape(x.shape)
