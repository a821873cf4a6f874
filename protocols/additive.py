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
from protocols import masked, store
from protocols.base import BilinearOp, Protocol
from protocols.correlations import ARITH, Request


class Additive(Protocol):
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

    def bilinear(self, x: np.ndarray, y: np.ndarray, op: BilinearOp) -> np.ndarray:
        m = self.material.take(Request("triple", x.shape[1:], y.shape[1:], op=op))
        e, d = self.group.open([(x[0, ...] - m["a"], ARITH), (y[0, ...] - m["b"], ARITH)])
        z = m["c"] + op(e, m["b"]) + op(m["a"], d)
        if self.group.first:
            z += op(e, d)
        return z[None]

    def _masked(self, kind: str, x: np.ndarray, **params: int) -> np.ndarray:
        m = self.material.take(Request(kind, x.shape[1:], **params))
        return masked.run(kind, self.group, x[0, ...], m, **params)[None]

    def trunc(self, x: np.ndarray, frac_bits: int) -> np.ndarray:
        return self._masked("trunc", x, frac_bits=frac_bits)

    def ltz(self, x: np.ndarray) -> np.ndarray:
        return self._masked("ltz", x)

    def relu(self, x: np.ndarray) -> np.ndarray:
        return self._masked("relu", x)
