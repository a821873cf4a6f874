"""3-party replicated sharing mod 2^64, passive security, honest majority, no dealer.

x = x_0 + x_1 + x_2 and party i holds (x_i, x_{i+1}). Key k_j is shared by parties j and
j-1, so party i holds k_i and k_{i+1}; zero-sharings and input shares come from them.
Bilinear operations are local plus one message to the previous party.

Truncation and comparison run as 2-party masked protocols between P0 and P1, whose
additive shares are free to form (P0: x_0 + x_1, P1: x_2), with P2 dealing their mask
material during the offline phase from the keys it shares with each; a last round turns
the result back into replicated shares. P2 never sees a masked opening, and P0 and P1 see
only values masked by randomness that P2 alone knows: secure against any one passive party.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mpc.net.expect import Expect
from mpc.runtime import Runtime
from protocols.base import BilinearOp, MaskedPrimitives, Protocol
from protocols.blocks import masked
from protocols.preprocessing import store
from protocols.preprocessing.correlations import Request

HELPER = 2
PAIR = (0, 1)


class Replicated(MaskedPrimitives, Protocol):
    name = "replicated"
    components = 2
    default_parties = min_parties = max_parties = 3

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        i = self.party_id
        self.prev, self.next = (i - 1) % 3, (i + 1) % 3
        # k_i (shared with the previous party) and k_{i+1} (shared with the next one)
        self.key_own = runtime.pair_prg(self.prev, "replicated/k")
        self.key_next = runtime.pair_prg(self.next, "replicated/k")
        self.group = masked.AdditiveGroup(self.channel, PAIR, i)

    # -- offline ------------------------------------------------------------------------
    def preprocess(self, plan: list[Request]) -> None:
        """P2 deals the mask material of P0 and P1; bilinear requests need none."""
        plan = [r for r in plan if r.kind != "triple"]
        if self.party_id == HELPER:
            prgs = [self.runtime.pair_prg(p, "replicated/helper") for p in PAIR]
            store.serve(plan, prgs, self.channel, last_party=PAIR[-1])
        else:
            prg = self.runtime.pair_prg(HELPER, "replicated/helper")
            self.material = store.receive(plan, prg, self.party_id == PAIR[-1], self.channel,
                                          HELPER)

    # -- primitives ---------------------------------------------------------------------
    def input(self, value: np.ndarray | None, owner: int, shape: tuple[int, ...]) -> np.ndarray:
        """Owner o: x_o from k_o, x_{o+1} from k_{o+1}, sends x_{o+2} to both others."""
        value = self.check_owner(owner, value, shape)
        shape = tuple(shape)
        i = self.party_id
        if i == owner:
            x_own = self.key_own.ring_elements(shape)
            x_next = self.key_next.ring_elements(shape)
            x_last = value - x_own - x_next
            self.channel.exchange({self.next: x_last, self.prev: x_last}, ())
            return np.stack([x_own, x_next])
        # party o+1 holds (x_{o+1}, x_{o+2}), x_{o+1} from k_{o+1} = its own key; party o+2
        # holds (x_{o+2}, x_o), x_o from k_o = its next key
        follows = i == (owner + 1) % 3
        mine = (self.key_own if follows else self.key_next).ring_elements(shape)
        other = self.channel.exchange({}, (owner,), expect=Expect.uint64(shape),
                                      what="as its input")[owner]
        return np.stack([mine, other] if follows else [other, mine])

    def reveal(self, x: np.ndarray, to: Iterable[int]) -> np.ndarray | None:
        """Party t lacks x_{t+2}; party t+1 holds it as its second component."""
        targets = self.check_reveal_targets(to)
        i = self.party_id
        outgoing = {self.prev: x[1, ...]} if self.prev in targets else {}
        sources = (self.next,) if i in targets else ()
        received = self.channel.exchange(outgoing, sources, expect=Expect.uint64(x.shape[1:]),
                                         what="in a reveal")
        if i not in targets:
            return None
        return x[0, ...] + x[1, ...] + received[self.next]

    def add_public(self, x: np.ndarray, value: np.ndarray) -> np.ndarray:
        """The constant joins x_0, held by party 0 (first) and party 2 (second)."""
        out = x + np.zeros_like(value)
        if self.party_id == 0:
            out[0] += value
        elif self.party_id == 2:
            out[1] += value
        return out

    def _zero_sharing(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.key_own.ring_elements(shape) - self.key_next.ring_elements(shape)

    def bilinear(self, x: np.ndarray, y: np.ndarray, op: BilinearOp) -> np.ndarray:
        """z_i = x_i (y_i + y_{i+1}) + x_{i+1} y_i + zero-share; send z_i to party i-1."""
        z = op(x[0, ...], y[0, ...] + y[1, ...]) + op(x[1, ...], y[0, ...])
        z += self._zero_sharing(z.shape)
        received = self.channel.exchange({self.prev: z}, (self.next,), expect=z)[self.next]
        return np.stack([z, received])

    def bilinear_trunc(self, x: np.ndarray, y: np.ndarray, op: BilinearOp,
                       bias: np.ndarray | None, frac_bits: int) -> np.ndarray:
        """Product, bias and truncation in two rounds instead of three.

        The local products (plus bias and a zero-sharing) are a 3-out-of-3 sharing z_0 + z_1
        + z_2. In one round P2 sends z_2 to P0 and P1 while they swap their masked shares,
        so both learn c = z + 2^62 + r; then the usual reshare. z_2 carries the zero-sharing
        term F(k_2) - F(k_0): P0 lacks k_2 and P1 lacks k_0, so to each it is uniform.
        """
        i = self.party_id
        z = op(x[0, ...], y[0, ...] + y[1, ...]) + op(x[1, ...], y[0, ...])
        z += self._zero_sharing(z.shape)
        if bias is not None:
            z += bias[0, ...]  # the bias's x_i component: the three sum to the bias
        if i == HELPER:
            self.channel.exchange({0: z, 1: z}, ())
            return self._reshare(None, z.shape)
        m = self.material.take(Request("trunc", z.shape, frac_bits=frac_bits))
        other = PAIR[1 - i]
        masked_share = masked.trunc_masked(self.group, z, m)
        got = self.channel.exchange({other: masked_share}, (other, HELPER), expect=z)
        c = masked_share + got[other] + got[HELPER]
        return self._reshare(masked.trunc_finish(self.group, c, m, frac_bits), z.shape)

    def _masked(self, kind: str, x: np.ndarray, **params: int) -> np.ndarray:
        i = self.party_id
        if i == HELPER:
            return self._reshare(None, x.shape[1:])
        additive = x[0, ...] + x[1, ...] if i == 0 else x[1, ...]
        m = self.material.take(Request(kind, x.shape[1:], **params))
        result = masked.run(kind, self.group, additive, m, **params)
        return self._reshare(result, x.shape[1:])

    def _reshare(self, t: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
        """2-party additive (P0, P1) -> replicated: z_0 from k_0, z_2 from k_2, and P0, P1
        swap t_0 - z_0 and t_1 - z_2 to learn z_1 (one round; P2 only draws)."""
        i = self.party_id
        if i == HELPER:  # holds (z_2, z_0): k_2 is its own key, k_0 its next
            return np.stack([self.key_own.ring_elements(shape), self.key_next.ring_elements(shape)])
        if i == 0:  # z_0 from k_0 (own key, shared with P2)
            z0 = self.key_own.ring_elements(shape)
            mine = t - z0
            other = self.channel.exchange({1: mine}, (1,))[1]
            return np.stack([z0, mine + other])
        z2 = self.key_next.ring_elements(shape)  # party 1: k_2 is its next key
        mine = t - z2
        other = self.channel.exchange({0: mine}, (0,))[0]
        return np.stack([mine + other, z2])
