"""n-party additive sharing mod 2^64, passive security, preprocessing from a dealer.

x = x_0 + ... + x_{n-1}. Inputs cost nothing: parties other than the owner expand their
shares from a PRG they share with the owner. Every bilinear operation (product, matrix
product, convolution) is one Beaver round with a triple shaped like its operands.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mpc.net.expect import Expect
from mpc.runtime import Runtime
from protocols.base import BilinearOp, MaskedPrimitives, Protocol
from protocols.blocks import masked
from protocols.clear import Planner
from protocols.preprocessing import store
from protocols.preprocessing.correlations import ARITH, Request


class Additive(MaskedPrimitives, Protocol):
    name = "additive"
    components = 1
    needs_dealer = True
    default_parties = 2
    min_parties = 2

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.group = masked.AdditiveGroup(self.channel, tuple(range(self.n_parties)),
                                          self.party_id)
        self._input_prgs = {p: runtime.pair_prg(p, "additive/input") for p in self.others}
        self._fixed = FixedOperands()
        self._opened: list[tuple[np.ndarray, np.ndarray]] = []  # (b, d = W - b) per operand

    def preprocess(self, plan: list[Request]) -> None:
        dealer = self.runtime.dealer_id
        self.material = store.receive(plan, self.runtime.pair_prg(dealer, "dealer"),
                                      self.party_id == self.n_parties - 1, self.channel, dealer)

    def input(self, value: np.ndarray | None, owner: int, shape: tuple[int, ...]) -> np.ndarray:
        value = self.check_owner(owner, value, shape)
        if self.party_id != owner:
            return self._input_prgs[owner].ring_elements(tuple(shape))[None]
        share = value.copy()
        for peer in self.others:
            share -= self._input_prgs[peer].ring_elements(tuple(shape))
        return share[None]

    def reveal(self, x: np.ndarray, to: Iterable[int]) -> np.ndarray | None:
        targets = self.check_reveal_targets(to)
        outgoing = {t: x[0, ...] for t in targets if t != self.party_id}
        sources = self.others if self.party_id in targets else ()
        received = self.channel.exchange(outgoing, sources, expect=Expect.uint64(x.shape[1:]),
                                         what="in a reveal")
        if self.party_id not in targets:
            return None
        total = x[0, ...].copy()
        for share in received.values():
            total += share
        return total

    def add_public(self, x: np.ndarray, value: np.ndarray) -> np.ndarray:
        return x + value if self.party_id == 0 else x + np.zeros_like(value)

    @classmethod
    def planner(cls, n_parties: int) -> AdditivePlanner:
        """The clear planner, asking for fixed-operand masks and triples as `bilinear` does."""
        return AdditivePlanner(n_parties)

    def fix_operand(self, x: np.ndarray) -> None:
        """Open d = W - b once for an operand used in many products (the model's weights):
        later products with it open only their other operand, against triples that reuse
        the same mask b with fresh a (docs/protocols.md, "Beaver"). W stays hidden behind b,
        which is never opened; each clip's input is hidden behind a fresh a."""
        m = self.material.take(self._fixed.declare(x))
        (d,) = self.group.open([(x[0, ...] - m["b"], ARITH)])
        self._opened.append((m["b"], d))

    def bilinear(self, x: np.ndarray, y: np.ndarray, op: BilinearOp) -> np.ndarray:
        request = self._fixed.request(x, y, op)
        m = self.material.take(request)
        if request.kind == "triple":
            e, d = self.group.open([(x[0, ...] - m["a"], ARITH), (y[0, ...] - m["b"], ARITH)])
            z = m["c"] + op(e, m["b"]) + op(m["a"], d)
            if self.group.first:
                z += op(e, d)
            return z[None]
        b, d = self._opened[request.ref]
        a = m["a"]
        varying = x if request.side == "right" else y
        (e,) = self.group.open([(varying[0, ...] - a, ARITH)])
        if request.side == "right":  # op(e + a, d + b) = c + op(e, b) + op(a, d) + op(e, d)
            z = m["c"] + op(e, b) + op(a, d)
            if self.group.first:
                z += op(e, d)
        else:  # op(d + b, e + a) = c + op(b, e) + op(d, a) + op(d, e)
            z = m["c"] + op(b, e) + op(d, a)
            if self.group.first:
                z += op(d, e)
        return z[None]

    def _masked(self, kind: str, x: np.ndarray, **params: int) -> np.ndarray:
        m = self.material.take(Request(kind, x.shape[1:], **params))
        return masked.run(kind, self.group, x[0, ...], m, **params)[None]


class FixedOperands:
    """Operands declared fixed (the model's weights), known by identity, and the request a
    product with them takes. The scheme and its planner both ask this object, so the plan
    and the online phase cannot disagree on which material a product uses."""

    def __init__(self) -> None:
        self._arrays: list[np.ndarray] = []

    def declare(self, x: np.ndarray) -> Request:
        """Register `x` as fixed; the request for its mask."""
        self._arrays.append(x)
        return Request("mask", x.shape[1:], ref=len(self._arrays) - 1)

    def request(self, x: np.ndarray, y: np.ndarray, op: BilinearOp) -> Request:
        """A fixed-operand triple if x or y was declared (y first), else a plain triple."""
        for side, operand in (("right", y), ("left", x)):
            for ref, array in enumerate(self._arrays):
                if array is operand:
                    return Request("fixed_triple", x.shape[1:], y.shape[1:], op=op, ref=ref,
                                   side=side)
        return Request("triple", x.shape[1:], y.shape[1:], op=op)


class AdditivePlanner(Planner):
    """The clear planner with the additive scheme's fixed-operand requests."""

    def __init__(self, n_parties: int = 1) -> None:
        super().__init__(n_parties)
        self._fixed = FixedOperands()

    def fix_operand(self, x: np.ndarray) -> None:
        self.plan.append(self._fixed.declare(x))

    def bilinear(self, x: np.ndarray, y: np.ndarray, op: BilinearOp) -> np.ndarray:
        self.plan.append(self._fixed.request(x, y, op))
        return np.zeros((1, *op.out_shape(x.shape[1:], y.shape[1:])), dtype=np.uint64)
