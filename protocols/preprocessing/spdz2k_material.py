"""Authenticated preprocessing for SPDZ2k from a trusted dealer, seed-compressed.

Every field of a request is a 128-bit value x (mod 2^(k+s)) held as additive shares with
MAC shares of alpha * x; alpha is the dealer's MAC key. As in
`protocols.preprocessing.correlations`, all
parties but the last expand their shares from the PRG they share with the dealer; the last
party expands what is free (the value shares of free fields) and receives corrections for
the rest (every MAC share, and the value shares of dependent or known fields), in one
offline message. A field is
  FREE   uniform: the value is the sum of the expanded shares;
  KNOWN  uniform and known to one party (input and output masks): drawn from a second PRG
         that party shares with the dealer;
  DEP    fixed by earlier fields or by the dealer's private randomness (triple products,
         mask bits, truncation parts).
Parties expand lazily, one request at a time in plan order (`LazyStore.take`), so the
material of a whole network never sits expanded in memory.

Comparisons ("ltz", "relu") depend on the party count. With 2 parties they use a
distributed comparison function (`protocols.blocks.dcf`): fields r (free) and r_msb = bit k of r
(dependent), plus DCF keys over k bits for alpha = r mod 2^k with the authenticated payload
(beta, alpha_mac * beta), beta = 1 - 2 r_msb mod 2^128; k = 63 over the whole ring, or the
request's `bits` for a narrowed comparison (`dcf_width`). Each party's root seeds come from
the PRG it shares with the dealer (drawn after the request's fields); the correction words
are common to both keys and not seed-compressible, so the dealer sends the same array of
them (`common_words` per request, in plan order) to both parties, as a second offline
message to the last party and as the only one to party 0. With more parties comparisons
use the carry tree over 64 authenticated mask bits (`fields`), and no DCF words are sent.

The plan comes from `Spdz2kPlanner`, which adds "input" and "reveal" requests (their masks)
to what `protocols.clear.Planner` records. A KNOWN field may be known to an endpoint outside
the computation (id >= the number of compute parties: the client or the model owner of a
deployment, `Protocol.input_external` / `reveal_external`). The dealer shares no PRG with
such an endpoint: it draws that endpoint's masks from a key of its own and sends their
values (mod 2^64) to it, in plan order and before dealing anything else
(`outside_endpoints`, `outside_masks`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mpc import ring128 as r128
from mpc.errors import PreprocessingError
from mpc.net.channel import Channel
from mpc.net.expect import Expect
from mpc.prg import KEY_BYTES, PRG
from mpc.ring import LOW63
from protocols.blocks import dcf, ring128_ops
from protocols.clear import Planner
from protocols.preprocessing.correlations import Request, circuit_width

FREE, KNOWN, DEP = "free", "known", "dep"
#: The 2-party comparison's DCF: inputs c mod 2^63, payload (beta, alpha_mac * beta).
DCF_BITS = 63
DCF_PAYLOAD_WORDS = 4


@dataclass(frozen=True)
class AField:
    name: str
    shape: tuple[int, ...]
    kind: str
    known_to: int = -1

    @property
    def words(self) -> int:
        """uint64 words of one 128-bit array of this field."""
        return 2 * int(np.prod(self.shape, dtype=np.int64))


class Spdz2kPlanner(Planner):
    """The clear planner, also recording inputs and reveals (they consume masks here)."""

    def input(self, value: np.ndarray | None, owner: int, shape: tuple[int, ...]) -> np.ndarray:
        if not 0 <= owner < self.n_parties:
            raise ValueError(f"input owner {owner} is not a party (0..{self.n_parties - 1})")
        self.plan.append(Request("input", tuple(shape), (owner,)))
        return super().input(value, owner, shape)

    def reveal(self, x: np.ndarray, to: Iterable[int]) -> np.ndarray | None:
        targets = self.check_reveal_targets(to)
        self.plan.append(Request("reveal", x.shape[1:], targets))
        return super().reveal(x, to)

    def input_external(self, source: int, shape: tuple[int, ...]) -> np.ndarray:
        """An input mask known to the outside endpoint `source` (see `Spdz2k.input_external`)."""
        self.check_outside(source)
        self.plan.append(Request("input", tuple(shape), (source,)))
        return np.zeros((1, *shape), dtype=np.uint64)

    def reveal_external(self, x: np.ndarray, target: int) -> None:
        """An output mask known to the outside endpoint `target`, and the two MAC checks'
        masks (see `Spdz2k.reveal_external`)."""
        self.check_outside(target)
        self.plan.append(Request("reveal", x.shape[1:], (target,)))

    def check_outside(self, endpoint: int) -> None:
        if endpoint < self.n_parties:
            raise ValueError(f"endpoint {endpoint} is a compute party (0..{self.n_parties - 1}), "
                             "not an endpoint outside the computation: use input / reveal")


# -- the comparison circuit's shape (shared by the dealer and the online phase) -------------

#: Pairs combined at each AND level of the carry tree over 32 groups (31 bit pairs, bit 62).
TREE_PAIRS = (16, 8, 4, 2, 1)


def products_at_level(pairs: int) -> int:
    """Beaver products at a level: every pair's generate, every pair's propagate but the
    bottom one's (never needed), and the top group's two products with t = c63 ^ r63; the
    last level needs only the generate and its product with t."""
    return 2 if pairs == 1 else 2 * pairs + 1


def uses_dcf(request: Request, n_parties: int) -> bool:
    """Whether `request` is a comparison served by DCF keys (2 parties only)."""
    return request.kind in ("ltz", "relu") and n_parties == 2


def dcf_width(request: Request) -> int:
    """The bits a comparison's DCF keys cover: the request's width when narrowed (values in
    [-2^bits, 2^bits) are compared through bit `bits` of x + 2^bits), all 63 low bits
    otherwise; one bit is left whole (its key would have no level to save)."""
    return circuit_width(request.bits)


def common_words(request: Request, n_parties: int) -> int:
    """Words of DCF correction words that both parties receive for `request`."""
    if not uses_dcf(request, n_parties):
        return 0
    return dcf.correction_words(request.size, dcf_width(request), DCF_PAYLOAD_WORDS)


def fields(request: Request, n_parties: int) -> list[AField]:
    """The authenticated fields of a request, in dealing order (comparisons depend on the
    party count: see the module docstring)."""
    kind, shape = request.kind, request.shape
    if kind == "input":
        return [AField("r", shape, KNOWN, request.other[0])]
    if kind == "reveal":
        masks = [AField(f"mask{t}", shape, KNOWN, t) for t in request.other]
        return [*masks, AField("check0", (), FREE), AField("check1", (), FREE)]
    if kind == "triple":
        out = request.op.out_shape(request.shape, request.other)
        return [AField("a", shape, FREE), AField("b", request.other, FREE),
                AField("c", out, DEP)]
    if kind == "trunc":
        return [AField("r", shape, FREE), AField("r_msb", shape, DEP),
                AField("r_low_shifted", shape, DEP)]
    if kind in ("ltz", "relu"):
        n = request.size
        if uses_dcf(request, n_parties):
            out = [AField("r", (n,), FREE), AField("r_msb", (n,), DEP)]
        else:
            out = [AField("bits", (64, n), DEP), AField("pairs", (32, n), DEP)]
            for level, pairs in enumerate(TREE_PAIRS):
                m = products_at_level(pairs)
                out += [AField(f"a{level}", (m, n), FREE), AField(f"b{level}", (m, n), FREE),
                        AField(f"c{level}", (m, n), DEP)]
        if kind == "relu":
            out += [AField("ra", (n,), FREE), AField("rb", (n,), FREE), AField("rc", (n,), DEP)]
        return out
    raise ValueError(f"unknown preprocessing kind {kind!r}")


def _derive(request: Request, name: str, values: dict[str, np.ndarray],
            private: PRG) -> np.ndarray:
    """The dealer's value of a dependent field (128-bit, (2, *shape))."""
    if request.kind == "triple":
        return ring128_ops.bilinear(request.op, values["a"], values["b"])
    if name == "r_msb" and request.kind == "trunc":
        return r128.lift(values["r"][0] >> np.uint64(63))
    if name == "r_msb":  # the 2-party comparisons: the bit their DCF keys end at
        return r128.lift((values["r"][0] >> np.uint64(dcf_width(request))) & np.uint64(1))
    if request.kind == "trunc":
        return r128.lift((values["r"][0] & LOW63) >> np.uint64(request.frac_bits))
    if name == "bits":
        words = private.ring_elements((request.size,))
        return r128.lift((words[None, :] >> np.arange(64, dtype=np.uint64)[:, None])
                         & np.uint64(1))
    if name == "pairs":
        bits = values["bits"][0]
        return r128.lift(np.concatenate([bits[1:62:2] * bits[0:62:2], bits[63:64] * bits[62:63]]))
    if name.startswith("c") or name == "rc":
        prefix = "r" if name == "rc" else ""
        suffix = "" if name == "rc" else name[1:]
        return r128.mul(values[f"{prefix}a{suffix}"], values[f"{prefix}b{suffix}"])
    raise ValueError(f"no rule for field {name} of {request.kind}")


def _draw(prg: PRG, field: AField) -> np.ndarray:
    return prg.ring_elements((2, *field.shape))


def correction_words(request: Request, n_parties: int) -> int:
    """Words the last party receives for `request`: MAC shares always, value shares unless
    the field is free."""
    return sum(f.words * (1 if f.kind == FREE else 2) for f in fields(request, n_parties))


def dcf_payload(r_low: np.ndarray, alpha: np.ndarray, width: int = DCF_BITS) -> np.ndarray:
    """(4, N) payload of the comparison's DCF: beta = 1 - 2 r_k mod 2^128 and alpha * beta,
    for the low limbs r_low (N,) of the masks, the MAC key alpha (2,) and k = `width`."""
    r_k = (r_low >> np.uint64(width)) & np.uint64(1)
    beta = r128.interleave((np.uint64(1) - np.uint64(2) * r_k)[None], (np.uint64(0) - r_k)[None])
    return np.concatenate([beta, r128.mul(alpha.reshape(2, 1), beta)])


def deal_into(request: Request, prgs: list[PRG], known: Sequence[PRG] | Mapping[int, PRG],
              alpha: np.ndarray,
              private: PRG, out: np.ndarray, common: np.ndarray | None = None) -> None:
    """The dealer's side for one request: write the last party's corrections into `out`
    and, for a 2-party comparison, the DCF correction words into `common`. `known[e]` is
    the PRG of the masks known to endpoint e (a compute party, or one outside)."""
    values: dict[str, np.ndarray] = {}
    offset = 0

    def put(array: np.ndarray) -> None:
        nonlocal offset
        flat = array.reshape(-1)
        out[offset:offset + flat.size] = flat
        offset += flat.size

    n_parties = len(prgs)
    for field in fields(request, n_parties):
        if field.kind == FREE:
            shares = [_draw(p, field) for p in prgs]
            value = shares[0]
            for s in shares[1:]:
                value = r128.add(value, s)
        else:
            value = (_draw(known[field.known_to], field) if field.kind == KNOWN
                     else _derive(request, field.name, values, private))
            rest = value
            for p in prgs[:-1]:
                rest = r128.sub(rest, _draw(p, field))
            put(rest)
        values[field.name] = value
        mac = r128.mul(alpha.reshape(2, *(1,) * len(field.shape)), value)
        for p in prgs[:-1]:
            mac = r128.sub(mac, _draw(p, field))
        put(mac)
    if offset != out.size:
        raise AssertionError("correction layout mismatch")
    if uses_dcf(request, n_parties):
        r_low = values["r"][0]
        if common is None or common.size != common_words(request, n_parties):
            raise AssertionError("DCF correction-word layout mismatch")
        width = dcf_width(request)
        low = np.uint64((1 << width) - 1)
        dcf.gen(r_low & low, dcf_payload(r_low, alpha, width), (prgs[0], prgs[1]), width,
                out=common)


def outside_endpoints(plan: list[Request], n_parties: int) -> list[int]:
    """The endpoints outside the computation (ids >= n_parties) that own an input or get
    an output in `plan`."""
    return sorted({e for r in plan if r.kind in ("input", "reveal") for e in r.other
                   if e >= n_parties})


def outside_masks(plan: list[Request], n_parties: int, prgs: Mapping[int, PRG]
                  ) -> Iterator[tuple[int, np.ndarray]]:
    """(endpoint, mask mod 2^64) for every mask known to an outside endpoint, in plan order:
    what the dealer sends it, drawn as `deal_into` draws them from `prgs[endpoint]` (fresh
    copies of the same streams)."""
    for request in plan:
        for field in fields(request, n_parties):
            if field.kind == KNOWN and field.known_to >= n_parties:
                yield field.known_to, _draw(prgs[field.known_to], field)[0]


def serve(plan: list[Request], prgs: list[PRG], known: list[PRG], private: PRG,
          channel: Channel, last_party: int, mac: PRG | None = None) -> int:
    """Dealer: draw alpha (in Z_2^64; from `mac` if given, so that values stored under it
    stay valid across runs), send every outside endpoint its masks (in plan order,
    first: they are small, and the client and the model owner can then go on while the rest
    is dealt), deal the plan, send the last party its corrections and, if the plan has
    2-party comparisons, every party the DCF correction words.
    Returns the number of words sent."""
    n_parties = len(prgs)
    alpha = r128.lift((mac or private).ring_elements((1,)))[:, 0]
    keys = {e: private.random_bytes(KEY_BYTES) for e in outside_endpoints(plan, n_parties)}
    outside_words = 0
    with channel.stage("masks for the outside endpoints"):
        for endpoint, mask in outside_masks(plan, n_parties,
                                            {e: PRG(k) for e, k in keys.items()}):
            channel.send(endpoint, mask)
            outside_words += mask.size
    known = {**dict(enumerate(known)), **{e: PRG(k) for e, k in keys.items()}}
    sizes = [correction_words(r, n_parties) for r in plan]
    common_sizes = [common_words(r, n_parties) for r in plan]
    flat = np.empty(2 + sum(sizes), dtype=np.uint64)
    common = np.empty(sum(common_sizes), dtype=np.uint64)
    alpha_last = alpha
    for p in prgs[:-1]:
        alpha_last = r128.sub(alpha_last, p.ring_elements((2,)))
    flat[:2] = alpha_last
    offset, common_offset = 2, 0
    for request, size, common_size in zip(plan, sizes, common_sizes, strict=True):
        deal_into(request, prgs, known, alpha, private, flat[offset:offset + size],
                  common[common_offset:common_offset + common_size])
        offset += size
        common_offset += common_size
    # the others expand lazily: they get the DCF words or, without any, a one-word message
    # telling them the offline phase is over, so its time is measured for all
    others = common if common.size else np.zeros(1, dtype=np.uint64)
    with channel.stage("preprocessing"):
        channel.send(last_party, flat)
        if common.size:
            channel.send(last_party, common)
        for party in range(n_parties):
            if party != last_party:
                channel.send(party, others)
    return flat.size + common.size + (n_parties - 1) * others.size + outside_words


class LazyStore:
    """One party's material: expanded from its PRGs (and corrections) request by request,
    in plan order, each item once. `used` counts items taken."""

    def __init__(self, plan: list[Request], prg: PRG, known: PRG, party: int,
                 corrections: np.ndarray | None, n_parties: int,
                 common: np.ndarray | None = None) -> None:
        self._plan = list(plan)
        self._n_parties = n_parties
        self._common = common
        self._common_offset = 0
        self._prg = prg
        self._known = known
        self._party = party
        self._corr = corrections
        self._offset = 0
        self.used = 0

    def __len__(self) -> int:
        return len(self._plan) - self.used

    def take(self, request: Request) -> dict[str, np.ndarray]:
        if self.used >= len(self._plan):
            raise PreprocessingError(
                f"no preprocessing material left for {request.kind} {request.shape} "
                f"(item {self.used + 1}); each item is used once, so the computation needs "
                "more than was planned")
        planned = self._plan[self.used]
        if planned != request:
            raise PreprocessingError(
                f"item {self.used + 1} was planned as {planned.kind} {planned.shape} but the "
                f"computation asks for {request.kind} {request.shape}: plan and program differ")
        self.used += 1
        return self._expand(request)

    def _correction(self, field: AField) -> np.ndarray:
        size = field.words
        part = self._corr[self._offset:self._offset + size].reshape(2, *field.shape)
        self._offset += size
        return part

    def _expand(self, request: Request) -> dict[str, np.ndarray]:
        last = self._corr is not None
        material = {}
        for field in fields(request, self._n_parties):
            if field.kind == KNOWN and field.known_to == self._party:
                material[field.name + "_value"] = _draw(self._known, field)
            if field.kind == FREE or not last:
                value = _draw(self._prg, field)
            else:
                value = self._correction(field)
            mac = self._correction(field) if last else _draw(self._prg, field)
            material[field.name] = np.concatenate([value, mac])
        if uses_dcf(request, self._n_parties):
            size = common_words(request, self._n_parties)
            words = self._common[self._common_offset:self._common_offset + size]
            self._common_offset += size
            corrections = dcf.Corrections.from_flat(words, request.size, dcf_width(request),
                                                    DCF_PAYLOAD_WORDS)
            roots = dcf.draw_roots(self._prg, request.size)
            material["dcf"] = dcf.Key(self._party, roots, corrections)
        return material


def receive(plan: list[Request], prg: PRG, known: PRG, party: int, is_last: bool,
            channel: Channel, dealer: int, n_parties: int) -> tuple[np.ndarray, LazyStore]:
    """Party side of the offline phase: this party's alpha share and its material store."""
    n_common = sum(common_words(r, n_parties) for r in plan)
    dcf_words = Expect.uint64(n_common)
    if is_last:
        first = Expect.uint64(2 + sum(correction_words(r, n_parties) for r in plan))
        what = "as the plan's corrections"
    elif n_common:
        first, what = dcf_words, "as DCF correction words"
    else:  # the one-word message that ends the offline phase
        first, what = Expect.uint64(1), "as its end-of-preprocessing message"
    with channel.stage("preprocessing"):
        flat = channel.recv(dealer, expect=first, what=what)
        common = (channel.recv(dealer, expect=dcf_words, what="as DCF correction words")
                  if is_last and n_common else None)
    if not is_last:
        return prg.ring_elements((2,)), LazyStore(plan, prg, known, party, None, n_parties,
                                                  flat if n_common else None)
    return flat[:2].copy(), LazyStore(plan, prg, known, party, flat[2:], n_parties, common)
