"""SPDZ2k: n-party additive sharing with MACs, active security with a trusted dealer.

Cramer, Damgard, Escudero, Scholl, Xing, "SPDZ2k: Efficient MPC mod 2^k for Dishonest
Majority", CRYPTO 2018. Values live mod 2^k (k = 64) and are held, with their MACs, mod
2^(k+s) (s = 64): party i holds x_i and m_i with sum x_i = x~, sum m_i = alpha * x~ mod 2^128,
x = x~ mod 2^64, for a global key alpha in Z_2^s of which party i holds alpha_i (mod 2^128).

Trust model: every compute party may be malicious (any number of them, dishonest majority);
the dealer is NOT: it knows alpha and every mask, and deals the authenticated material
(`protocols.preprocessing.spdz2k_material`). What a cheating party can do is make the run abort: any
deviation in a message makes the honest parties stop before any output is revealed
(probability of escaping about 2^-s per check), with `CheatingDetected` where a check
fails, or `PeerLost` / `PeerTimeout` if the cheater then leaves or goes silent; aborting
is not prevented.

A share is a uint64 array (4, *shape): [value_lo, value_hi, mac_lo, mac_hi] (see
`mpc.ring128`), so `SecretTensor`'s structural ops work unchanged.

Offline: the dealer's messages (`protocols.preprocessing.spdz2k_material.serve`), then one
round in which
every party tells the others it holds its material, so the offline phase ends for all when
the last party has it (the 2-party DCF words are hundreds of MB, sent to each party in turn).

Online protocol (rounds are for one call, counted by the channel):
- input by owner o (1 round): a dealer mask [r] whose value r only o knows; o sends
  e = v - r mod 2^64 to all, everyone sets [v] = [r] + e. Each party hashes every e it saw;
  the hashes are compared in the next check, so an owner cannot send different e to different
  parties.
- partial opening (used below, always of a value masked by fresh dealer randomness): every
  party sends the low limb of its value share to every other, logged for the MAC check.
- bilinear (mul, matmul, conv; 1 round): Beaver with an authenticated triple shaped like
  the operands, [z] = [c] + e (x) [b] + [a] (x) d + e (x) d, computed mod 2^128.
- trunc (1 round): the MSB-corrected identity of docs/protocols.md with authenticated r, r_msb,
  r_low >> f; c = x + 2^62 + r opened mod 2^64.
- comparison: c = x + r opened (r a dealer mask), then, with c_63 / r_63 the top bits and
  c_low / r_low the low 63 bits, msb(x) = c_63 xor r_63 xor [c_low < r_low] (the borrow
  into bit 63 of c - r). relu = x * (1 - msb): one more Beaver product. The borrow is
  computed by one of two paths, chosen by the party count (never as a fallback):
  * 2 parties, ltz 1 round, relu 2: function secret sharing (Boyle, Gilboa, Ishai, TCC
    2019; the DCF of Boyle et al., EUROCRYPT 2021, `protocols.blocks.dcf`). The trusted dealer
    deals authenticated [r] and [r_63] and DCF keys for alpha = r_low whose payload is the
    authenticated value beta = 1 - 2 r_63 (value and MAC alpha_mac * beta, split additively
    between the two keys' outputs). Each party evaluates its key at the public c_low and
    gets its authenticated share of w * beta, w = [c_low < r_low]; then u = r_63 + w beta
    = r_63 xor w and msb = c_63 + (1 - 2 c_63) u are local. Security: the keys reveal
    nothing of r to one party (DCF security); c is uniform. A cheating party can deviate
    only in its openings (caught as any opening) or by using a wrong DCF output, i.e.
    adding an error (d, d_mac) to its share; it does not know alpha_mac, so d_mac = alpha * d
    happens with probability about 2^-s, and the error flows linearly (and through Beaver
    products) into later openings and outputs, where the batched MAC check catches it before
    any reveal, exactly as for any other altered authenticated share.
  * 3 or more parties, ltz 6 rounds, relu 7: a carry tree. The 64 mask bits are dealt as
    authenticated arithmetic sharings (an edaBit), r = sum 2^i r_i; with t = c_63 xor r_63
    the borrow is a tree over (generate, propagate) pairs with arithmetic ANDs (Beaver
    products of 0/1 values); its lowest level is free because the dealer also deals
    r_{2j+1} r_{2j} (and r_63 r_62), leaving 5 product rounds over the whole layer. The top
    group also carries t * (G, P), so msb = t + G - 2 t G needs no extra round.
- reveal to T: check everything opened so far (5 rounds, 4 once a check has run), open
  y - r_t for each target t (1 round; r_t known to t only), check that opening (4 rounds),
  then every party confirms to the targets (1 round) and t unmasks locally: 11 rounds for
  the first reveal, 10 for later ones.
The batched MAC check is in `protocols.blocks.mac`. Openings after the last reveal are never
checked; they cannot influence any output.

Values from outside (`input_external`, `reveal_external`; the client and the model owner of
a deployment, endpoints >= n that compute nothing). Client inputs masked by dealer
randomness known to the client are the method of Damgard, Damgard, Nielsen, Nordholt,
Toft, "Confidential benchmarking based on multiparty computation", FC 2016; here the mask
is authenticated under the SPDZ2k key as every other input mask is.
- input from source S (2 rounds at the parties): the dealer deals an authenticated [r]
  whose value r it sends to S (not to any compute party); S sends c = x - r mod 2^64 to
  every party; the parties compare hashes of c (`protocols.external.confirm_same`, 1 round)
  and set [x] = [r] + c, logging c in the transcript the MAC check compares. S's value is
  then authenticated exactly like a party's input: a party that uses any other c, or
  shifts its share of [x] later, adds an error the MACs catch (it would have to guess
  alpha) at the check before the output, and a source that sent different c to different
  parties is caught at once.
- output to target T (11 rounds, 10 after an earlier check): the dealer deals an
  authenticated [s] with s sent to T only; the parties MAC-check everything opened so far,
  open z = y + s (uniform to them), MAC-check that opening, and only then each sends z to
  T. T takes s from the dealer and every party's z, and returns z - s if all the copies
  agree, else refuses naming two parties whose copies differ. An honest party's copy is
  right whenever it is sent (both checks passed), so with at least one honest compute
  party T never accepts a wrong y: a deviating party can only make T refuse (or make the
  honest parties abort, so T misses a copy). Neither depends on y: the deviating party
  knows z, so it knows beforehand whether its copy differs from the honest ones; and an
  error it adds to a share reaches an opening, where the check catches it with a
  probability independent of the secret values. So refusal tells it nothing about y (no
  selective-failure bit).
- privacy: c and z are uniform to the compute parties (r and s are fresh dealer
  randomness); the dealer sees neither c nor z. The dealer is trusted, as for everything
  else here: to deal correctly (a wrong r or s sent to S or T would change x or y) and to
  collude with nobody (it knows alpha, r and s). Its messages to S and T are sent in plan
  order before the rest of the dealing (`spdz2k_material.serve`), so they read them in
  the order they give and take values.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mpc import ring128 as r128
from mpc.errors import CheatingDetected, ConfigError
from mpc.fixedpoint import MAX_VALUE_BITS
from mpc.net.channel import Channel
from mpc.net.expect import Expect
from mpc.ring import LOW63
from mpc.runtime import Runtime
from protocols import external
from protocols.base import BilinearOp, Protocol, as_ring
from protocols.blocks import dcf
from protocols.blocks.mac import MacChecker
from protocols.blocks.ring128_ops import bilinear_auth
from protocols.ops import Mul
from protocols.preprocessing import spdz2k_material as material
from protocols.preprocessing.correlations import FULL_BITS, Request

U64 = np.uint64
ONE = U64(1)
POW2 = (ONE << np.arange(64, dtype=np.uint64))


class Spdz2k(r128.Ring128Linear, Protocol):
    name = "spdz2k"
    components = 4
    needs_dealer = True
    default_parties = 2
    min_parties = 2

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.alpha = np.zeros(2, dtype=np.uint64)
        self.material = material.LazyStore([], None, None, self.party_id, None, self.n_parties)
        self.mac = MacChecker(self.channel, self.party_id, self.n_parties, self.alpha,
                              runtime.private_prg)

    # -- offline -------------------------------------------------------------------------
    def preprocess(self, plan: list[Request]) -> None:
        dealer = self.runtime.dealer_id
        self.alpha, self.material = material.receive(
            plan, self.runtime.pair_prg(dealer, "spdz2k/dealer"),
            self.runtime.pair_prg(dealer, "spdz2k/known"), self.party_id,
            self.party_id == self.n_parties - 1, self.channel, dealer, self.n_parties)
        self.mac = MacChecker(self.channel, self.party_id, self.n_parties, self.alpha,
                              self.runtime.private_prg)
        if self.n_parties == 2:
            dcf.warmup()  # the comparison kernels: loaded offline, not in the first ReLU
        # the offline phase ends when every party holds its material: the dealer's messages
        # (hundreds of MB of DCF words with 2 parties) reach the parties one after the other,
        # and without this the first one done would count the wait as online time
        with self.channel.stage("preprocessing"):
            done = np.ones(1, dtype=U64)
            ready = self.channel.exchange(dict.fromkeys(self.others, done), expect=done,
                                          what="as its end-of-preprocessing message")
        for peer, message in ready.items():
            if message[0] != 1:
                raise CheatingDetected(f"party {peer} altered its end-of-preprocessing message")

    @classmethod
    def planner(cls, n_parties: int) -> material.Spdz2kPlanner:
        """The clear planner plus inputs and reveals, which consume masks here."""
        return material.Spdz2kPlanner(n_parties)

    @classmethod
    def serve_dealer(cls, runtime: Runtime, plan: list[Request]) -> None:
        """The dealer's offline phase, with the MAC key and authenticated material."""
        n = runtime.n_parties
        prgs = [runtime.pair_prg(p, "spdz2k/dealer") for p in range(n)]
        known = [runtime.pair_prg(p, "spdz2k/known") for p in range(n)]
        mac = (None if runtime.mac_keys is None
               else runtime.mac_prg(runtime.party_id, "spdz2k/alpha"))
        material.serve(plan, prgs, known, runtime.private_prg, runtime.channel, n - 1, mac)

    # -- local linear arithmetic (mod 2^128, value and MAC alike) -------------------------
    def public_bilinear(self, x: np.ndarray, value: np.ndarray, op: BilinearOp,
                        public_left: bool) -> np.ndarray:
        if isinstance(op, Mul):
            return r128.mul_public(x, value)
        if public_left:
            return bilinear_auth(op, r128.lift(value), x, secret_left=False)
        return bilinear_auth(op, x, r128.lift(value), secret_left=True)

    def sum(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        return r128.sum_axes(x, axes, keepdims)

    def constant(self, value: np.ndarray) -> np.ndarray:
        """This party's authenticated share of a public value: the value itself at party 0,
        alpha_i * value in the MAC everywhere."""
        value = np.asarray(value, dtype=np.uint64)
        plain = r128.lift(value) if self.party_id == 0 else np.zeros((2, *value.shape), U64)
        mac = r128.mul_public(self.alpha.reshape(2, *(1,) * value.ndim), value)
        return np.concatenate([plain, mac])

    def add_public(self, x: np.ndarray, value: np.ndarray) -> np.ndarray:
        return r128.add(x, self.constant(value))

    # -- communication -------------------------------------------------------------------
    def open(self, items: list[np.ndarray]) -> list[np.ndarray]:
        """Partially open authenticated values mod 2^64 (one round), logging them for the
        MAC check. Only ever call this on values masked by fresh dealer randomness."""
        lows = [np.ascontiguousarray(x[0]).reshape(-1) for x in items]
        message = np.concatenate(lows) if len(lows) > 1 else lows[0]
        received = self.channel.exchange(dict.fromkeys(self.others, message), expect=message,
                                         what="in an opening")
        total = message.copy()
        for share in received.values():
            total += share
        out, offset = [], 0
        for x, low in zip(items, lows, strict=True):
            value = total[offset:offset + low.size].reshape(x.shape[1:])
            offset += low.size
            self.mac.record(x, value)
            out.append(value)
        return out

    def input(self, value: np.ndarray | None, owner: int, shape: tuple[int, ...]) -> np.ndarray:
        value = self.check_owner(owner, value, shape)
        m = self.material.take(Request("input", tuple(shape), (owner,)))
        if self.party_id == owner:
            e = value - m["r_value"][0]
            self.channel.exchange(dict.fromkeys(self.others, e), receive_from=())
        else:
            e = self.channel.exchange({}, receive_from=(owner,), expect=Expect.uint64(shape),
                                      what="as its input")[owner]
        self.mac.broadcast_seen(e)
        return self.add_public(m["r"], e)

    def reveal(self, x: np.ndarray, to: Iterable[int]) -> np.ndarray | None:
        targets = self.check_reveal_targets(to)
        m = self.material.take(Request("reveal", x.shape[1:], targets))
        self.mac.check(m["check0"], "the computation before a reveal")
        opened = self.open([self.sub(x, m[f"mask{t}"]) for t in targets])
        self.mac.check(m["check1"], "opening an output")
        # every party confirms to the targets that its checks passed, so a target never
        # unmasks while an honest party aborts (agreement on abort)
        sources = self.others if self.party_id in targets else ()
        confirmations = self.channel.exchange(
            {t: np.ones(1, dtype=np.uint8) for t in targets if t != self.party_id}, sources,
            expect=Expect.uint8(1), what="as its confirmation of the checks")
        for peer, ok in confirmations.items():
            if ok[0] != 1:
                raise CheatingDetected(f"MAC check failed after opening an output: party "
                                       f"{peer} did not confirm it")
        if self.party_id not in targets:
            return None
        mine = opened[targets.index(self.party_id)]
        return mine + m[f"mask{self.party_id}_value"][0]

    # -- values from and to endpoints outside the computation (client, model owner) -------
    # See "Values from outside" in the module docstring for the protocol and its argument.
    def _check_outside(self, endpoint: int) -> None:
        if endpoint < self.n_parties:
            raise ValueError(f"endpoint {endpoint} is a compute party, not an endpoint "
                             "outside the computation: use input / reveal")

    def input_external(self, source: int, shape: tuple[int, ...]) -> np.ndarray:
        """[x] = [r] + c: [r] dealt with r known to `source` (the dealer sent it r), c = x - r
        from `source`; the parties confirm they all got the same c (1 round each)."""
        shape = tuple(shape)
        self._check_outside(source)
        m = self.material.take(Request("input", shape, (source,)))
        c = self.channel.receive_external(source, shape, "as its masked input",
                                          tuple(range(self.n_parties)))
        external.confirm_same(self.channel, tuple(range(self.n_parties)), c,
                              f"masked input from {self.channel.who(source)}")
        self.mac.broadcast_seen(c)
        return self.add_public(m["r"], c)

    def reveal_external(self, x: np.ndarray, target: int) -> None:
        """Check every opening so far, open z = y + s (s known to `target` only, uniform to
        the parties), check that opening, then send z to `target`: a party sends only after
        both checks passed, so every copy the target gets from an honest party is right."""
        self._check_outside(target)
        m = self.material.take(Request("reveal", x.shape[1:], (target,)))
        self.mac.check(m["check0"], "the computation before an output")
        (z,) = self.open([self.add(x, m[f"mask{target}"])])
        self.mac.check(m["check1"], "opening an output")
        self.channel.send(target, z)

    @classmethod
    def give_external(cls, channel: Channel, ends: external.Endpoints,
                      value: np.ndarray) -> None:
        """The source: r from the dealer, then c = x - r to every compute party."""
        value, dealer = as_ring(np.asarray(value)), _dealer_of(ends)
        r = channel.recv(dealer, expect=Expect.uint64(value.shape),
                         what="as the mask of this input")
        channel.exchange(dict.fromkeys(ends.parties, value - r), ())

    @classmethod
    def take_external(cls, channel: Channel, ends: external.Endpoints,
                      shape: tuple[int, ...]) -> np.ndarray:
        """The target: s from the dealer, z from every compute party; y = z - s if all the
        copies agree, else a `ProtocolError` naming two parties that sent different ones."""
        shape, dealer = tuple(shape), _dealer_of(ends)
        s = channel.recv(dealer, expect=Expect.uint64(shape), what="as the mask of this output")
        copies = channel.exchange({}, ends.parties, expect=Expect.uint64(shape),
                                  what="as its masked result")
        return external.agreed(copies, channel, "masked results") - s

    # -- products --------------------------------------------------------------------------
    def _beaver(self, x: np.ndarray, y: np.ndarray, m: dict[str, np.ndarray], op: BilinearOp,
                names: tuple[str, str, str] = ("a", "b", "c")) -> np.ndarray:
        a, b, c = (m[k] for k in names)
        e, d = self.open([self.sub(x, a), self.sub(y, b)])
        if isinstance(op, Mul):
            z = r128.add(r128.add(c, r128.mul_public(b, e)), r128.mul_public(a, d))
        else:
            z = r128.add(c, bilinear_auth(op, r128.lift(e), b, secret_left=False))
            z = r128.add(z, bilinear_auth(op, a, r128.lift(d), secret_left=True))
        return self.add_public(z, op(e, d))

    def bilinear(self, x: np.ndarray, y: np.ndarray, op: BilinearOp) -> np.ndarray:
        m = self.material.take(Request("triple", x.shape[1:], y.shape[1:], op=op))
        return self._beaver(x, y, m, op)

    def bilinear_trunc(self, x: np.ndarray, y: np.ndarray, op: BilinearOp,
                       bias: np.ndarray | None, frac_bits: int) -> np.ndarray:
        z = self.bilinear(x, y, op)
        return self.trunc(z if bias is None else self.add(z, bias), frac_bits)

    # -- truncation ------------------------------------------------------------------------
    def trunc(self, x: np.ndarray, frac_bits: int) -> np.ndarray:
        f = int(frac_bits)
        if not 0 <= f < MAX_VALUE_BITS:
            raise ValueError(f"cannot truncate by {f} bits")
        m = self.material.take(Request("trunc", x.shape[1:], frac_bits=f))
        (c,) = self.open([self.add_public(self.add(x, m["r"]), U64(1 << MAX_VALUE_BITS))])
        c_msb, c_low = c >> U64(63), c & LOW63
        # w = c_msb xor r_msb, the carry out of y + r_low
        w = self.add_public(r128.mul_public(m["r_msb"], ONE - U64(2) * c_msb), c_msb)
        y_shift = r128.sub(r128.mul_public(w, U64(1 << (63 - f))), m["r_low_shifted"])
        return self.add_public(y_shift, (c_low >> U64(f)) - U64(1 << (MAX_VALUE_BITS - f)))

    # -- comparison ------------------------------------------------------------------------
    def _msb(self, x: np.ndarray, m: dict, request: Request) -> np.ndarray:
        """Authenticated shares (4, N) of [x < 0] for each of N values x (4, N): the DCF
        path with 2 parties, the carry tree (over the whole ring) with more (see the module
        docstring)."""
        if self.n_parties == 2:
            return self._msb_dcf(x, m, material.dcf_width(request))
        return self._msb_carry_tree(x, m)

    def _msb_dcf(self, x: np.ndarray, m: dict, k: int) -> np.ndarray:
        """2 parties, 1 round: open c = x + r, evaluate this party's DCF key at c_low. Over
        the whole ring (k = 63) the result is the top bit of x; narrowed, x + 2^k is masked,
        and [x < 0] is NOT its bit k (values in [-2^k, 2^k))."""
        narrowed = k < material.DCF_BITS
        y = self.add_public(x, U64(1 << k)) if narrowed else x
        (c,) = self.open([self.add(y, m["r"])])
        ck = (c >> U64(k)) & ONE
        # shares of w * (1 - 2 r_k), w = [c_low < r_low] over the k low bits, value and MAC
        wb = dcf.eval(self.party_id, m["dcf"], c & U64((1 << k) - 1))
        u = r128.add(m["r_msb"], wb)  # r_k xor w
        bit = self.add_public(r128.mul_public(u, ONE - U64(2) * ck), ck)
        return self.add_public(self.neg(bit), ONE) if narrowed else bit

    def _msb_carry_tree(self, x: np.ndarray, m: dict[str, np.ndarray]) -> np.ndarray:
        """3 or more parties: the carry tree over the 64 dealt mask bits."""
        bits, pp = m["bits"], m["pairs"]  # (4, 64, N), (4, 32, N)
        r = r128.sum_axes(r128.mul_public(bits, POW2[:, None]), (0,))
        (c,) = self.open([self.add(x, r)])
        cb = (c[None, :] >> np.arange(64, dtype=U64)[:, None]) & ONE  # (64, N) public bits
        nc = ONE - cb
        s = U64(2) * cb - ONE  # +-1: p_i = nc_i + s_i r_i
        mp, const, add, sub = r128.mul_public, self.constant, r128.add, r128.sub
        hi, lo = slice(1, 62, 2), slice(0, 62, 2)
        rh, rl, q = bits[:, hi], bits[:, lo], pp[:, :31]
        nch, ncl, sh, sl = nc[hi], nc[lo], s[hi], s[lo]
        # level 0, local: generate/propagate of 31 bit pairs, from the dealt pair products
        g_pairs = add(add(mp(rh, nch), mp(rl, nch * ncl)), mp(q, sh * ncl))
        p_pairs = add(add(add(const(nch * ncl), mp(rl, nch * sl)), mp(rh, sh * ncl)),
                      mp(q, sh * sl))
        # the top group is bit 62 alone; t = c63 xor r63 rides along with it
        r62, r63, q2 = bits[:, 62], bits[:, 63], pp[:, 31]
        c63, nc62, s62, s63 = cb[63], nc[62], s[62], s[63]
        g_top = mp(r62, nc62)
        p_top = add(const(nc62), mp(r62, s62))
        t = sub(const(c63), mp(r63, s63))
        tg = sub(mp(r62, c63 * nc62), mp(q2, s63 * nc62))
        tp = sub(sub(add(const(c63 * nc62), mp(r62, c63 * s62)), mp(r63, s63 * nc62)),
                 mp(q2, s63 * s62))
        g = np.concatenate([g_pairs, g_top[:, None]], axis=1)
        p = np.concatenate([p_pairs, p_top[:, None]], axis=1)
        for level, pairs in enumerate(material.TREE_PAIRS):
            gh, gl, ph, pl = g[:, 1::2], g[:, 0::2], p[:, 1::2], p[:, 0::2]
            names = (f"a{level}", f"b{level}", f"c{level}")
            if pairs == 1:
                left = np.stack([ph[:, 0], tp], axis=1)
                right = np.stack([gl[:, 0], gl[:, 0]], axis=1)
                prod = self._beaver(left, right, m, Mul(), names)
                g_final = add(gh[:, 0], prod[:, 0])
                tg = add(tg, prod[:, 1])
                break
            left = np.concatenate([ph, ph[:, 1:], tp[:, None], tp[:, None]], axis=1)
            right = np.concatenate([gl, pl[:, 1:], gl[:, -1:], pl[:, -1:]], axis=1)
            prod = self._beaver(left, right, m, Mul(), names)
            g = add(gh, prod[:, :pairs])
            unused = np.zeros_like(prod[:, :1])  # the bottom group's propagate: never needed
            p = np.concatenate([unused, prod[:, pairs:2 * pairs - 1]], axis=1)
            tg = add(tg, prod[:, 2 * pairs - 1])
            tp = prod[:, 2 * pairs]
        # msb = t xor borrow = t + g - 2 t g
        return sub(add(t, g_final), mp(tg, U64(2)))

    def ltz(self, x: np.ndarray, bits: int = FULL_BITS) -> np.ndarray:
        """With 2 parties the DCF keys cover `bits` bits; with more, the whole ring."""
        request = Request("ltz", x.shape[1:], bits=bits)
        m = self.material.take(request)
        flat = x.reshape(4, -1)
        return self._msb(flat, m, request).reshape(x.shape)

    def relu(self, x: np.ndarray, bits: int = FULL_BITS) -> np.ndarray:
        """With 2 parties the DCF keys cover `bits` bits; with more, the whole ring."""
        request = Request("relu", x.shape[1:], bits=bits)
        m = self.material.take(request)
        flat = x.reshape(4, -1)
        keep = self.add_public(self.neg(self._msb(flat, m, request)), ONE)
        return self._beaver(flat, keep, m, Mul(), ("ra", "rb", "rc")).reshape(x.shape)


def _dealer_of(ends: external.Endpoints) -> int:
    if ends.dealer is None:
        raise ConfigError("spdz2k's values from and to outside endpoints need the dealer")
    return ends.dealer
