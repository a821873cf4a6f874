"""n-party additive sharing mod 2^64, passive security, preprocessing from a dealer.

x = x_0 + ... + x_{n-1}. Inputs cost nothing: parties other than the owner expand their
shares from a PRG they share with the owner. Every bilinear operation (product, matrix
product, convolution) is one Beaver round with a triple shaped like its operands.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mpc.errors import ProtocolError
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

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.party_id = runtime.party_id
        self.n_parties = runtime.n_parties
        if self.n_parties < 2:
            raise ValueError("additive sharing needs at least 2 parties")
        self.channel = runtime.channel
        self.others = tuple(p for p in range(self.n_parties) if p != self.party_id)
        self.group = masked.AdditiveGroup(self.channel, tuple(range(self.n_parties)),
                                          self.party_id)
        self._input_prgs = {p: runtime.pair_prg(p, "additive/input") for p in self.others}
        self.material = store.MaterialStore()
        self._fixed: list[tuple[np.ndarray, int, np.ndarray, np.ndarray]] = []

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
        received = self.channel.exchange(outgoing, sources)
        if self.party_id not in targets:
            return None
        total = x[0, ...].copy()
        for peer, share in received.items():
            if share.shape != total.shape or share.dtype != np.uint64:
                raise ProtocolError(f"party {peer} revealed {share.dtype}{share.shape}, "
                                    f"expected uint64{total.shape}")
            total += share
        return total

    def add_public(self, x: np.ndarray, value: np.ndarray) -> np.ndarray:
        return x + value if self.party_id == 0 else x + np.zeros_like(value)

    def fix_operand(self, x: np.ndarray) -> None:
        """Open d = W - b once for an operand used in many products (the model's weights):
        later products with it open only their other operand, against triples that reuse
        the same mask b with fresh a (PROTOCOLS.md, "Beaver"). W stays hidden behind b,
        which is never opened; each clip's input is hidden behind a fresh a."""
        ref = len(self._fixed)
        m = self.material.take(Request("mask", x.shape[1:], ref=ref))
        (d,) = self.group.open([(x[0, ...] - m["b"], ARITH)])
        self._fixed.append((x, ref, m["b"], d))

    def _fixed_of(self, x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray] | None:
        for array, ref, b, d in self._fixed:
            if array is x:
                return ref, b, d
        return None

    def bilinear(self, x: np.ndarray, y: np.ndarray, op: BilinearOp) -> np.ndarray:
        for side, fixed, varying in (("right", y, x), ("left", x, y)):
            found = self._fixed_of(fixed)
            if found is None:
                continue
            ref, b, d = found
            m = self.material.take(Request("fixed_triple", x.shape[1:], y.shape[1:], op=op,
                                           ref=ref, side=side))
            (e,) = self.group.open([(varying[0, ...] - m["a"], ARITH)])
            a = m["a"]
            if side == "right":  # op(e + a, d + b) = c + op(e, b) + op(a, d) + op(e, d)
                z = m["c"] + op(e, b) + op(a, d)
                if self.group.first:
                    z += op(e, d)
            else:  # op(d + b, e + a) = c + op(b, e) + op(d, a) + op(d, e)
                z = m["c"] + op(b, e) + op(d, a)
                if self.group.first:
                    z += op(d, e)
            return z[None]
        m = self.material.take(Request("triple", x.shape[1:], y.shape[1:], op=op))
        e, d = self.group.open([(x[0, ...] - m["a"], ARITH), (y[0, ...] - m["b"], ARITH)])
        z = m["c"] + op(e, m["b"]) + op(m["a"], d)
        if self.group.first:
            z += op(e, d)
        return z[None]

    def _masked(self, kind: str, x: np.ndarray, **params: int) -> np.ndarray:
        m = self.material.take(Request(kind, x.shape[1:], **params))
        return masked.run(kind, self.group, x[0, ...], m, **params)[None]


class AdditivePlanner(Planner):
    """Plans the additive scheme's material, including masks of fixed operands."""

    def __init__(self, n_parties: int = 1) -> None:
        super().__init__(n_parties)
        self._fixed: list[np.ndarray] = []

    def fix_operand(self, x: np.ndarray) -> None:
        self.plan.append(Request("mask", x.shape[1:], ref=len(self._fixed)))
        self._fixed.append(x)

    def bilinear(self, x: np.ndarray, y: np.ndarray, op: BilinearOp) -> np.ndarray:
        for side, fixed in (("right", y), ("left", x)):
            for ref, array in enumerate(self._fixed):
                if array is fixed:
                    self.plan.append(Request("fixed_triple", x.shape[1:], y.shape[1:], op=op,
                                             ref=ref, side=side))
                    return np.zeros((1, *op.out_shape(x.shape[1:], y.shape[1:])),
                                    dtype=np.uint64)
        return super().bilinear(x, y, op)


Additive.planner = AdditivePlanner
