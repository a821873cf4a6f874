"""Correlated randomness: what each preprocessing request contains, and how it is made.

A request names a kind and the shapes it serves. Its material is a set of fields, each
shared additively (arithmetic, mod 2^64) or by XOR (boolean words). Free fields are
random: every party expands its share from the PRG it shares with the dealer. Dependent
fields (a Beaver product, the bits of a mask) are fixed by the free ones: all parties but
the last expand their share too, and the last receives a correction from the dealer. So the
dealer sends one array per dependent field to one party, and nothing to the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from mpc.prg import PRG
from mpc.ring import LOW63
from protocols.blocks import bitslice
from protocols.ops import Conv2d, MatMul, Mul

ARITH, BOOL = "arith", "bool"
MSB = np.uint64(63)
#: The widest comparison: every value of Z_2^64 read as a signed number. A comparison of
#: `bits` < 63 is exact for -2^bits <= x < 2^bits and costs bits/63 of the full one.
FULL_BITS = 63


def circuit_width(bits: int) -> int:
    """The width a bit circuit narrowed to `bits` runs over: `bits`, except that one bit is
    left whole (a one-bit carry tree has no level to save, and the binary circuits need at
    least two low bits)."""
    return bits if 2 <= bits < FULL_BITS else FULL_BITS


@dataclass(frozen=True)
class Request:
    """One item of preprocessing: `kind` in {"triple", "trunc", "ltz", "relu", "mask",
    "fixed_triple"}.

    triple: op, shape of the left operand, shape of the right operand.
    trunc: shape, fractional bits. ltz/relu: shape (one comparison per element) and `bits`,
    the width compared: values must lie in [-2^bits, 2^bits).
    mask: a random b shaped like an operand that stays fixed (model weights): d = W - b is
    opened once, number `ref`. fixed_triple: a triple whose fixed operand (`side` "left" or
    "right") reuses mask `ref`, so only the other operand is opened: c = op(b, a) or op(a, b).
    """

    kind: str
    shape: tuple[int, ...]
    other: tuple[int, ...] = ()
    op: Mul | MatMul | Conv2d | None = None
    frac_bits: int = 0
    ref: int = -1
    side: str = ""
    bits: int = FULL_BITS

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= FULL_BITS:
            raise ValueError(f"a comparison of {self.bits} bits: choose 1..{FULL_BITS}")

    @property
    def label(self) -> str:
        """The kind, shape and the parameters that tell two requests apart, for messages."""
        extra = ""
        if self.kind == "trunc":
            extra = f" by {self.frac_bits} bits"
        elif self.kind in ("ltz", "relu") and self.bits != FULL_BITS:
            extra = f" over {self.bits} bits"
        return f"{self.kind} {self.shape}{extra}"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class Field:
    name: str
    domain: str  # ARITH or BOOL
    shape: tuple[int, ...]


def comparison_tree(bits: int = FULL_BITS) -> list[int]:
    """Group counts level by level: the `bits` low bits make ceil(bits / 2) groups after the
    free pair level (63 bits: 32), then halve (an odd top group passes through) to one."""
    counts = [(bits + 1) // 2]
    while counts[-1] > 1:
        counts.append((counts[-1] + 1) // 2)
    return counts


def and_gates_per_comparison(bits: int = FULL_BITS) -> int:
    """Two ANDs per combine (generate and propagate) over the tree above."""
    return sum(2 * (c // 2) for c in comparison_tree(bits)[:-1])


def fields(request: Request) -> tuple[list[Field], list[Field]]:
    """The (free, dependent) fields of a request, in the order they are drawn."""
    kind, shape = request.kind, request.shape
    if kind == "triple":
        out = request.op.out_shape(request.shape, request.other)
        return ([Field("a", ARITH, shape), Field("b", ARITH, request.other)],
                [Field("c", ARITH, out)])
    if kind == "mask":
        return [Field("b", ARITH, shape)], []
    if kind == "fixed_triple":
        left, right = request.shape, request.other
        out = request.op.out_shape(left, right)
        varying = right if request.side == "left" else left
        return [Field("a", ARITH, varying)], [Field("c", ARITH, out)]
    if kind == "trunc":
        return ([Field("r", ARITH, shape)],
                [Field("r_msb", ARITH, shape), Field("r_low_shifted", ARITH, shape)])
    if kind in ("ltz", "relu"):
        words, bits = bitslice.words_for(request.size), request.bits
        gates = and_gates_per_comparison(bits)
        free = [Field("r", ARITH, (request.size,)), Field("rho_bits", BOOL, (words,)),
                Field("and_a", BOOL, (gates, words)), Field("and_b", BOOL, (gates, words))]
        # bits 0..`bits` of r, and the products of the neighbouring low pairs
        dependent = [Field("r_bits", BOOL, (bits + 1, words)),
                     Field("pair_products", BOOL, (bits // 2, words)),
                     Field("and_c", BOOL, (gates, words)), Field("rho", ARITH, (request.size,))]
        if kind == "relu":
            free.append(Field("x_mask", ARITH, (request.size,)))
            dependent.append(Field("x_mask_rho", ARITH, (request.size,)))
        return free, dependent
    raise ValueError(f"unknown preprocessing kind {kind!r}")


def _dependent_values(request: Request, v: dict[str, np.ndarray],
                      masks: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    kind = request.kind
    if kind == "triple":
        return {"c": request.op(v["a"], v["b"])}
    if kind == "mask":
        masks[request.ref] = v["b"]
        return {}
    if kind == "fixed_triple":
        b = masks[request.ref]
        return {"c": request.op(b, v["a"]) if request.side == "left" else request.op(v["a"], b)}
    if kind == "trunc":
        r = v["r"]
        return {"r_msb": r >> MSB, "r_low_shifted": (r & LOW63) >> np.uint64(request.frac_bits)}
    bits = bitslice.slice_bits(v["r"])[:request.bits + 1]
    low = 2 * (request.bits // 2)
    rho = bitslice.unslice_bit(v["rho_bits"], request.size)
    out = {"r_bits": bits, "pair_products": bits[1:low:2] & bits[0:low:2],
           "and_c": v["and_a"] & v["and_b"], "rho": rho}
    if kind == "relu":
        out["x_mask_rho"] = v["x_mask"] * rho
    return out


def _draw(prg: PRG, field: Field) -> np.ndarray:
    return prg.ring_elements(field.shape)


def _combine(domain: str, shares: list[np.ndarray]) -> np.ndarray:
    total = shares[0].copy()
    for share in shares[1:]:
        if domain == ARITH:
            total += share
        else:
            total ^= share
    return total


def deal(request: Request, prgs: list[PRG], masks: dict[int, np.ndarray] | None = None
         ) -> list[np.ndarray]:
    """The dealer's side: the corrections the last party receives, one per dependent field.

    `masks` carries the fixed-operand masks from "mask" requests to the "fixed_triple"
    requests that reuse them: pass one dict for a whole plan."""
    free, dependent = fields(request)
    values = {f.name: _combine(f.domain, [_draw(p, f) for p in prgs]) for f in free}
    targets = _dependent_values(request, values, {} if masks is None else masks)
    corrections = []
    for field in dependent:
        others = [_draw(p, field) for p in prgs[:-1]]
        target = targets[field.name].reshape(field.shape)
        if not others:
            corrections.append(target)
        elif field.domain == ARITH:
            corrections.append(target - _combine(ARITH, others))
        else:
            corrections.append(target ^ _combine(BOOL, others))
    return corrections


def expand(request: Request, prg: PRG, is_last: bool,
           corrections: Callable[[Field], np.ndarray]) -> dict[str, np.ndarray]:
    """A party's side: its shares of every field, drawn in the dealer's order."""
    free, dependent = fields(request)
    material = {f.name: _draw(prg, f) for f in free}
    for field in dependent:
        material[field.name] = corrections(field) if is_last else _draw(prg, field)
    return material


def correction_words(request: Request) -> int:
    """How many uint64 words of corrections the dealer sends for `request`."""
    return sum(int(np.prod(f.shape, dtype=np.int64)) for f in fields(request)[1])


def split_corrections(plan: list[Request], flat: np.ndarray) -> Iterator[list[np.ndarray]]:
    """Cut the dealer's one flat message back into per-request, per-field arrays."""
    offset = 0
    for request in plan:
        arrays = []
        for field in fields(request)[1]:
            size = int(np.prod(field.shape, dtype=np.int64))
            arrays.append(flat[offset:offset + size].reshape(field.shape))
            offset += size
        yield arrays
    if offset != flat.size:
        raise ValueError(f"dealer sent {flat.size} words, the plan needs {offset}")
