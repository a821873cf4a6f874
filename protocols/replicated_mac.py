"""3-party replicated sharing with MACs ("SPDZ-wise replicated"): active security against one
malicious party, honest majority, no dealer.

After Dalskov, Escudero, Keller, "Secure Evaluation of Quantized Neural Networks" (PETS 2020),
MP-SPDZ's sy-rep-ring, and Damgard, Escudero, Frederiksen, Keller, Scholl, Volgushev, "New
Primitives for Actively-Secure MPC over Rings" (S&P 2019). Values live mod 2^64 and are held,
with their MACs, mod 2^128: x~ = x~_0 + x~_1 + x~_2 and m = m_0 + m_1 + m_2 = alpha * x~ mod
2^128, party i holding (x~_i, x~_{i+1}) and (m_i, m_{i+1}). The key alpha is replicated the
same way, alpha_j drawn from the pairwise key k_j (shared by parties j and j-1): nobody knows
it. A share is a uint64 array (8, *shape) = [v_i lo, v_i hi, v_i+1 lo, v_i+1 hi, m_i lo,
m_i hi, m_i+1 lo, m_i+1 hi] in the limb layout of `protocols.ring128_ops`.

Products. [xy] and [alpha xy] = [alpha x] * [y] by the passive replicated multiplication (one
message of the output size to the previous party, for the value and the MAC alike), which is
secure against one malicious party up to an additive error. Every product output (and every
input, and every authenticated bit) goes into a log, so a party that alters any message it
sends in a product makes some logged value's MAC wrong.

Check (before every reveal). The log is compressed round by round: every product round that
follows a logged value also carries a public coin (its three components are drawn from the
pairwise keys; each party receives its missing component from both its neighbours and
compares), and the values logged before that round are folded into a running sum
sum chi_j [z_j] with coefficients chi_j from that coin. The coin is fixed after the values it
weighs (a rushing adversary sees it only after it sent those messages), so memory stays at one
round's working set. At a reveal: one coin round for the rest of the log, then
Y = sum chi_j z_j + rho is opened in full (rho a random authenticated mask made in an earlier
round, so Y is uniform), and sigma = [sum chi_j m_j + m_rho] - [alpha] * Y is opened; accept
iff sigma = 0 mod 2^128. Both openings are redundant (each party receives its missing
component from the two parties that hold it and compares), so a corrupt party cannot bias
them; sigma's components are implied by sigma = 0, so opening them leaks nothing. An error d in
a value (and d' in its MAC) passes only if sum chi_j (alpha d_j - d'_j) = 0 mod 2^128, which
for d != 0 mod 2^64 needs s = 64 more bits of alpha than the adversary can know (SPDZ2k's
argument, probability about 2^-60). Inputs: the owner sends the third component to both
others, who compare it by a running hash in the check's last round.

Reveal to t (after the check): t lacks x_{t+2}; parties t+1 and t+2 both hold it and send its
low limb only (the high limb of x~ carries information about the computation), t compares.
Those messages are sent only after the sender's check passed, so t never outputs while an
honest party aborts.

Truncation and comparison, without a dealer and without masks: the low limbs of the three
components x~_j mod 2^64 are each known to two parties, so their bits are replicated sharings
for free, (bit, 0, 0) placed at component j; one product round gives their MACs
[alpha b] = [alpha] * [b]. A full-adder layer (2 rounds: a b, then c (a xor b), with
xor(u, v) = u + v - 2uv on authenticated 0/1 values mod 2^128) turns x_0 + x_1 + x_2 into
S + 2C. Then, with C' = 2C mod 2^64 and generate/propagate bits g = s c', p = s + c' - 2g:
- ltz (10 rounds): msb = s_63 xor c'_63 xor carry_63, carry_63 from a 6-level carry tree over
  bits 0..62 (combine (g, p)(g', p') = (g + p g', p p'), 2 products per node), exact on the ring;
  relu = x * (1 - msb): 11 rounds.
- trunc (3 + ceil(log2 f) rounds, 7 for f = 16): y = x + 2^62 lies in [0, 2^63) for
  |x| < 2^62, so y's top bit is 0 and the carry out of S + C' is s_63 or c'_63 (one product);
  y >> f = (S >> f) + (C' >> f) + carry_f - 2^(64-f) carry_64 with carry_f the carry into bit f
  (a tree over f bits), and x >> f = (y >> f) - 2^(62-f): exact floor, no probabilistic error.
Costs are measured in tests/test_replicated_mac.py and reported there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from mpc.errors import CheatingDetected, ProtocolError
from mpc.prg import PRG
from mpc.runtime import Runtime
from protocols import ring128_ops as r128
from protocols.base import BilinearOp, Protocol
from protocols.correlations import Request
from protocols.ops import Mul

U64 = np.uint64
ONE = U64(1)
ELL = 62
SHIFTS = np.arange(64, dtype=np.uint64)
POW2 = ONE << SHIFTS
MUL = Mul()
#: Elements per batch of a bit circuit (trunc, ltz, relu). A layer's values are processed in
#: batches of this size, one after the other: each element's bit circuit holds about 40 KB per
#: party at once (bit planes, MACs, products), so the 100k-element first ReLU layer of the
#: reference CNN would need about 4 GB per party in one batch. Rounds grow with the number of
#: batches; memory does not grow with the layer.
CHUNK = 1 << 13


def _auth(value: np.ndarray, mac: np.ndarray) -> np.ndarray:
    return np.concatenate([value, mac])


def _xor(a: np.ndarray, b: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """a xor b for 0/1 values (any 128-bit layout) given their product ab."""
    return r128.sub(r128.add(a, b), r128.scale_pow2(ab, 1))


def _bits(v: np.ndarray) -> np.ndarray:
    """(64, N) bit planes of a uint64 vector (N,)."""
    return (v[None, :] >> SHIFTS[:, None]) & ONE


def _digest(data: bytes | np.ndarray) -> np.ndarray:
    raw = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
    return np.frombuffer(hashlib.sha256(raw).digest(), dtype=np.uint64).copy()


class ReplicatedMac(r128.Ring128Linear, Protocol):
    name = "replicated_mac"
    components = 8

    def __init__(self, runtime: Runtime) -> None:
        if runtime.n_parties != 3:
            raise ValueError(f"replicated_mac runs on exactly 3 parties, not {runtime.n_parties}")
        self.runtime = runtime
        self.party_id = i = runtime.party_id
        self.n_parties = 3
        self.channel = runtime.channel
        self.prev, self.next = (i - 1) % 3, (i + 1) % 3
        # k_i (shared with the previous party) and k_{i+1} (shared with the next one): every
        # party draws the same sizes from both in the same order, so the streams stay in step
        self.key_own = runtime.pair_prg(self.prev, "replicated_mac/k")
        self.key_next = runtime.pair_prg(self.next, "replicated_mac/k")
        self.alpha = np.concatenate([self.key_own.derive("alpha").ring_elements(2),
                                     self.key_next.derive("alpha").ring_elements(2)])
        self._pending: list[np.ndarray] = []  # authenticated (8, n) values not yet weighed
        self._acc = np.zeros(8, dtype=U64)  # sum of chi_j [z_j] over the weighed ones
        self._weighed = False
        self._rho: np.ndarray | None = None  # (8, 1) authenticated mask of the next check
        self._vouch = {p: hashlib.sha256(b"replicated_mac") for p in (self.prev, self.next)}
        self.checks = 0

    # -- randomness ----------------------------------------------------------------------
    def _draw(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """128-bit (2, *shape) from k_i and from k_{i+1}, in step with both neighbours."""
        shape = (2, *shape)
        return self.key_own.ring_elements(shape), self.key_next.ring_elements(shape)

    def _fail(self, what: str) -> CheatingDetected:
        return CheatingDetected(f"party {self.party_id}: {what}")

    # -- local linear arithmetic (mod 2^128, values and MACs alike) -----------------------
    def public_bilinear(self, x: np.ndarray, value: np.ndarray, op: BilinearOp,
                        public_left: bool) -> np.ndarray:
        if isinstance(op, Mul):
            return r128.mul_public(x, value)
        v = r128.lift(value)
        parts = [r128.bilinear(op, v, x[k:k + 2]) if public_left
                 else r128.bilinear(op, x[k:k + 2], v) for k in range(0, 8, 2)]
        return np.concatenate(parts)

    def sum(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        return r128.sum_axes(x, axes, keepdims)

    def constant(self, value: np.ndarray) -> np.ndarray:
        """This party's share of a public value: in component 0 (held by parties 0 and 2),
        alpha_j * value in the MAC components."""
        value = np.asarray(value, dtype=U64)
        v = np.zeros((4, *value.shape), dtype=U64)
        if self.party_id == 0:
            v[0] = value
        elif self.party_id == 2:
            v[2] = value
        mac = r128.mul_public(self.alpha.reshape(4, *(1,) * value.ndim), value)
        return _auth(v, np.broadcast_to(mac, (4, *value.shape)))

    def add_public(self, x: np.ndarray, value: np.ndarray) -> np.ndarray:
        return r128.add(x, self.constant(value))

    # -- communication -------------------------------------------------------------------
    def _recv_check(self, got: np.ndarray, peer: int, size: int, step: str) -> np.ndarray:
        if got.dtype != np.uint64 or got.shape != (size,):
            raise ProtocolError(f"party {peer} sent {got.dtype}{got.shape} in {step}, "
                                f"expected {size} words")
        return got

    def _round(self, products: list[tuple[np.ndarray, np.ndarray, BilinearOp]],
               step: str) -> list[np.ndarray]:
        """One round of passive replicated products op(a, b) of 128-bit replicated values
        (4, ...): z_i = op(a_i, b_i + b_{i+1}) + op(a_{i+1}, b_i) + zero share, sent to the
        previous party. Carries the coin that weighs the values logged before it, and makes
        the next check's mask if there is none."""
        make_rho = self._rho is None
        if make_rho:
            rho_own, rho_next = self._draw((1,))
            rho = np.concatenate([rho_own, rho_next])
            products = [*products, (self.alpha.reshape(4, 1), rho, MUL)]
        coin = self._pending != []
        outs = []
        for a, b, op in products:
            z = r128.add(r128.bilinear(op, a[0:2], r128.add(b[0:2], b[2:4])),
                         r128.bilinear(op, a[2:4], b[0:2]))
            own, nxt = self._draw(z.shape[1:])
            outs.append(r128.sub(r128.add(z, own), nxt))
        flat = [np.ascontiguousarray(z).reshape(-1) for z in outs]
        sizes = [f.size for f in flat]
        outgoing = {self.prev: np.concatenate(flat)}
        if coin:
            k_own, k_next = self._draw((1,))
            outgoing = {self.prev: np.concatenate([outgoing[self.prev], k_next.reshape(-1)]),
                        self.next: k_own.reshape(-1)}
        got = self.channel.exchange(outgoing, (self.prev, self.next) if coin else (self.next,))
        total = sum(sizes)
        from_next = self._recv_check(got[self.next], self.next, total + (2 if coin else 0), step)
        if coin:
            missing = from_next[total:]
            other = self._recv_check(got[self.prev], self.prev, 2, step)
            if not np.array_equal(missing, other):
                raise self._fail(f"in {step} parties {self.prev} and {self.next} sent different "
                                 "coin components")
            self._weigh(k_own.reshape(-1), k_next.reshape(-1), missing)
        results, offset = [], 0
        for z, size in zip(outs, sizes, strict=True):
            received = from_next[offset:offset + size].reshape(z.shape)
            offset += size
            results.append(np.concatenate([z, received]))
        if make_rho:
            self._rho = _auth(rho, results.pop())
            self._log(self._rho)
        return results

    def _amul(self, pairs: list[tuple[np.ndarray, np.ndarray]], step: str,
              op: BilinearOp = MUL) -> list[np.ndarray]:
        """Authenticated products: value op(x, y), MAC op(alpha x, y); one round; logged."""
        products = []
        for x, y in pairs:
            products += [(x[0:4], y[0:4], op), (x[4:8], y[0:4], op)]
        out = self._round(products, step)
        results = [_auth(out[2 * k], out[2 * k + 1]) for k in range(len(pairs))]
        for z in results:
            self._log(z)
        return results

    def _log(self, z: np.ndarray) -> None:
        self._pending.append(z.reshape(8, -1))

    def _weigh(self, own: np.ndarray, nxt: np.ndarray, missing: np.ndarray) -> None:
        """Fold the pending log into the running sum with coefficients from this coin."""
        parts = {self.party_id: own, self.next: nxt, (self.party_id + 2) % 3: missing}
        seed = hashlib.sha256(b"".join(parts[j].tobytes() for j in range(3))).digest()[:16]
        prg = PRG(seed)
        acc = self._acc
        for entry in self._pending:
            chi = prg.ring_elements(entry.shape[1])
            acc = np.concatenate([r128.add(acc[k:k + 2], r128.dot_public(entry[k:k + 2], chi))
                                  for k in range(0, 8, 2)])
        self._acc = acc
        self._pending = []
        self._weighed = True

    def _open_redundant(self, x: np.ndarray, step: str,
                        extra: dict[int, np.ndarray] | None = None) -> np.ndarray:
        """Open a small replicated 128-bit value (4, n) to everyone: each party gets its
        missing component from both holders and compares. `extra` words ride along per peer
        and are compared with `self._vouch` digests."""
        own = np.ascontiguousarray(x[0:2]).reshape(-1)
        nxt = np.ascontiguousarray(x[2:4]).reshape(-1)
        extra = extra or {}
        ext = {p: extra.get(p, np.zeros(0, dtype=U64)) for p in (self.prev, self.next)}
        got = self.channel.exchange({self.prev: np.concatenate([nxt, ext[self.prev]]),
                                     self.next: np.concatenate([own, ext[self.next]])})
        n = own.size
        a = self._recv_check(got[self.next], self.next, n + ext[self.next].size, step)
        b = self._recv_check(got[self.prev], self.prev, n + ext[self.prev].size, step)
        if not np.array_equal(a[:n], b[:n]):
            raise self._fail(f"in {step} parties {self.prev} and {self.next} sent different "
                             "copies of the same component")
        for peer, data in ((self.next, a), (self.prev, b)):
            if not np.array_equal(data[n:], ext[peer]):
                raise self._fail(f"in {step} party {peer} saw a different input than this "
                                 "party (input consistency)")
        missing = a[:n].reshape(x[0:2].shape)
        return r128.add(r128.add(x[0:2], x[2:4]), missing)

    def check(self, step: str) -> None:
        """The batched MAC check of everything logged so far (3 rounds; none if nothing is)."""
        if not self._pending and not self._weighed:
            return
        self.checks += 1
        fail = f"MAC check before {step} failed"
        if self._pending:  # a round with just the coin
            k_own, k_next = self._draw((1,))
            k_own, k_next = k_own.reshape(-1), k_next.reshape(-1)
            got = self.channel.exchange({self.prev: k_next, self.next: k_own})
            a = self._recv_check(got[self.next], self.next, 2, "the check's coin")
            b = self._recv_check(got[self.prev], self.prev, 2, "the check's coin")
            if not np.array_equal(a, b):
                raise self._fail(f"{fail}: parties {self.prev} and {self.next} sent different "
                                 "coin components")
            self._weigh(k_own, k_next, a)
        total = r128.add(self._acc, self._rho.reshape(8))
        y = self._open_redundant(total[0:4].reshape(4, 1), fail).reshape(2)
        sigma = r128.sub(total[4:8], r128.mul(self.alpha, y))
        digests = {p: _digest(self._vouch[p].digest()) for p in (self.prev, self.next)}
        s = self._open_redundant(sigma.reshape(4, 1), fail, digests)
        self._acc = np.zeros(8, dtype=U64)
        self._weighed = False
        self._rho = None
        if s[0, 0] != 0 or s[1, 0] != 0:
            raise self._fail(fail)

    # -- primitives ----------------------------------------------------------------------
    def input(self, value: np.ndarray | None, owner: int, shape: tuple[int, ...]) -> np.ndarray:
        """Owner o: x_o, x_{o+1} from k_o, k_{o+1}; x_{o+2} to both others, who vouch for it
        to each other; then the MAC [alpha] * [x] (2 rounds)."""
        value = self.check_owner(owner, value, shape)
        shape = tuple(shape)
        i = self.party_id
        own, nxt = self._draw(shape)
        n = 2 * int(np.prod(shape, dtype=np.int64))
        if i == owner:
            last = r128.sub(r128.sub(r128.lift(value), own), nxt)
            self.channel.exchange({self.next: last.reshape(-1), self.prev: last.reshape(-1)}, ())
            v = np.concatenate([own, nxt])
        else:
            got = self.channel.exchange({}, (owner,))[owner]
            got = self._recv_check(got, owner, n, f"input of party {owner}")
            other = (owner + 1) % 3 if i == (owner + 2) % 3 else (owner + 2) % 3
            self._vouch[other].update(got.tobytes())
            last = got.reshape(2, *shape)
            # party o+1 holds (x_{o+1}, x_{o+2}), party o+2 holds (x_{o+2}, x_o)
            v = np.concatenate([last, nxt] if i == (owner + 2) % 3 else [own, last])
        alpha = self.alpha.reshape(4, *(1,) * len(shape))
        (mac,) = self._round([(alpha, v, MUL)], f"input of party {owner}")
        x = _auth(v, mac)
        self._log(x)
        return x

    def reveal(self, x: np.ndarray, to: Iterable[int]) -> np.ndarray | None:
        """Check, then each target gets its missing component (low limb) from both holders."""
        targets = self.check_reveal_targets(to)
        self.check(f"a reveal to {list(targets)}")
        i = self.party_id
        outgoing = {}
        for t in targets:
            if t == self.prev:  # t lacks x_{t+2} = x_{i+1}: this party's second component
                outgoing[t] = np.ascontiguousarray(x[2]).reshape(-1)
            elif t == self.next:  # t lacks x_{t+2} = x_i
                outgoing[t] = np.ascontiguousarray(x[0]).reshape(-1)
        sources = (self.prev, self.next) if i in targets else ()
        got = self.channel.exchange(outgoing, sources)
        if i not in targets:
            return None
        size = int(np.prod(x.shape[1:], dtype=np.int64))
        a = self._recv_check(got[self.next], self.next, size, "a reveal")
        b = self._recv_check(got[self.prev], self.prev, size, "a reveal")
        if not np.array_equal(a, b):
            raise self._fail(f"parties {self.prev} and {self.next} revealed different values")
        return (x[0:1] + x[2:3] + a.reshape(1, *x.shape[1:])).reshape(x.shape[1:])

    def bilinear(self, x: np.ndarray, y: np.ndarray, op: BilinearOp) -> np.ndarray:
        (z,) = self._amul([(x, y)], type(op).__name__.lower(), op)
        return z

    # -- bit circuits --------------------------------------------------------------------
    def _full_adder(self, x: np.ndarray, step: str) -> tuple[np.ndarray, np.ndarray]:
        """Authenticated bit planes (8, 64, N) of S and C' = 2C mod 2^64 with
        S + 2C = x_0 + x_1 + x_2 (the low limbs of x's components; 2 rounds)."""
        i = self.party_id
        own_bits, next_bits = _bits(x[0]), _bits(x[2])
        zero = np.zeros_like(own_bits)
        planes = []
        for j in range(3):  # component j's bits: (bits, 0, 0) placed at component j
            lo_own = own_bits if j == i else zero
            lo_next = next_bits if j == (i + 1) % 3 else zero
            planes.append(np.stack([lo_own, zero, lo_next, zero]))
        a, b, c = planes
        alpha = self.alpha.reshape(4, 1, 1)
        ma, mb, mc, ab = self._round([(alpha, a, MUL), (alpha, b, MUL), (alpha, c, MUL),
                                      (a, b, MUL)], f"{step}: bit MACs")
        t = _xor(a, b, ab)
        ct, mct, mab = self._round([(c, t, MUL), (mc, t, MUL), (ma, b, MUL)],
                                   f"{step}: full adder")
        for z in (_auth(a, ma), _auth(b, mb), _auth(c, mc), _auth(ab, mab), _auth(ct, mct)):
            self._log(z)
        mt = _xor(ma, mb, mab)
        s = _auth(_xor(t, c, ct), _xor(mt, mc, mct))
        carry = _auth(r128.add(ab, ct), r128.add(mab, mct))
        cp = np.zeros_like(carry)
        cp[:, 1:] = carry[:, :-1]
        return s, cp

    def _carry(self, g: np.ndarray, p: np.ndarray, step: str) -> np.ndarray:
        """Carry out of the top of bits (axis 1, from bit 0 up) with generate g and propagate
        p (8, n, N): a balanced tree, one product round per level."""
        level = 0
        while g.shape[1] > 1:
            n = g.shape[1]
            pairs = n // 2
            gh, gl = g[:, 1:2 * pairs:2], g[:, 0:2 * pairs:2]
            ph, pl = p[:, 1:2 * pairs:2], p[:, 0:2 * pairs:2]
            level += 1
            if pairs > 1:  # the bottom group's propagate is never needed
                pg, pp = self._amul([(ph, gl), (ph[:, 1:], pl[:, 1:])],
                                    f"{step}: carry level {level}")
                new_p = np.concatenate([np.zeros_like(pp[:, :1]), pp], axis=1)
            else:
                (pg,) = self._amul([(ph, gl)], f"{step}: carry level {level}")
                new_p = np.zeros_like(pg)
            new_g = r128.add(gh, pg)
            if n % 2:
                new_g = np.concatenate([new_g, g[:, -1:]], axis=1)
                new_p = np.concatenate([new_p, p[:, -1:]], axis=1)
            g, p = new_g, new_p
        return g[:, 0]

    def _batched(self, fn, x: np.ndarray) -> np.ndarray:
        """fn over the flat values of x, CHUNK elements at a time."""
        flat = x.reshape(8, -1)
        n = flat.shape[1]
        if n <= CHUNK:
            return fn(flat).reshape(x.shape)
        parts = [fn(flat[:, k:k + CHUNK]) for k in range(0, n, CHUNK)]
        return np.concatenate(parts, axis=1).reshape(x.shape)

    def trunc(self, x: np.ndarray, frac_bits: int) -> np.ndarray:
        f = int(frac_bits)
        if not 0 <= f <= ELL:
            raise ValueError(f"cannot truncate by {f} bits")
        return self._batched(lambda flat: self._trunc(flat, f), x)

    def _trunc(self, x: np.ndarray, f: int) -> np.ndarray:
        y = self.add_public(x, U64(1 << ELL))
        s, cp = self._full_adder(y, "trunc")
        pairs = [(s[:, 63], cp[:, 63])]
        if f > 0:
            pairs.append((s[:, :f], cp[:, :f]))
        out = self._amul(pairs, "trunc: generate bits")
        carry64 = r128.sub(r128.add(s[:, 63], cp[:, 63]), out[0])
        result = r128.sum_axes(r128.mul_public(r128.add(s[:, f:], cp[:, f:]),
                                               POW2[:64 - f, None]), (0,))
        if f > 0:
            g = out[1]
            p = r128.sub(r128.add(s[:, :f], cp[:, :f]), r128.scale_pow2(g, 1))
            result = r128.add(result, self._carry(g, p, "trunc"))
        minus = U64(((1 << 64) - (1 << (64 - f))) % (1 << 64)) if f > 0 else U64(0)
        result = r128.add(result, r128.mul_public(carry64, minus))
        return self.add_public(result, U64((-(1 << (ELL - f))) % (1 << 64)))

    def _msb(self, x: np.ndarray, step: str) -> np.ndarray:
        s, cp = self._full_adder(x, step)
        q, g = self._amul([(s[:, 63], cp[:, 63]), (s[:, :63], cp[:, :63])],
                          f"{step}: generate bits")
        u = _xor(s[:, 63], cp[:, 63], q)
        p = r128.sub(r128.add(s[:, :63], cp[:, :63]), r128.scale_pow2(g, 1))
        carry = self._carry(g, p, step)
        (uc,) = self._amul([(u, carry)], f"{step}: top bit")
        return _xor(u, carry, uc)

    def ltz(self, x: np.ndarray) -> np.ndarray:
        return self._batched(lambda flat: self._msb(flat, "ltz"), x)

    def relu(self, x: np.ndarray) -> np.ndarray:
        return self._batched(self._relu, x)

    def _relu(self, x: np.ndarray) -> np.ndarray:
        keep = self.add_public(self.neg(self._msb(x, "relu")), ONE)
        (z,) = self._amul([(x, keep)], "relu: select")
        return z

    def preprocess(self, plan: list[Request]) -> None:
        """No offline phase: all randomness comes from the pairwise keys."""
