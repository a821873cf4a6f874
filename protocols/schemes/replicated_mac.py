"""3-party replicated sharing with MACs ("SPDZ-wise replicated"): active security against one
malicious party, honest majority, no dealer.

After Dalskov, Escudero, Keller, "Secure Evaluation of Quantized Neural Networks" (PETS 2020),
MP-SPDZ's sy-rep-ring, and Damgard, Escudero, Frederiksen, Keller, Scholl, Volgushev, "New
Primitives for Actively-Secure MPC over Rings" (S&P 2019). Values live mod 2^64 and are held,
with their MACs, mod 2^128: x~ = x~_0 + x~_1 + x~_2 and m = m_0 + m_1 + m_2 = alpha * x~ mod
2^128, party i holding (x~_i, x~_{i+1}) and (m_i, m_{i+1}). The key alpha is replicated the
same way, alpha_j drawn from the pairwise key k_j (shared by parties j and j-1): nobody knows
it. A share is a uint64 array (8, *shape) = [v_i lo, v_i hi, v_i+1 lo, v_i+1 hi, m_i lo,
m_i hi, m_i+1 lo, m_i+1 hi] in the limb layout of `mpc.ring128`.

Products. [xy] and [alpha xy] = [alpha x] * [y] by the passive replicated multiplication (one
message of the output size to the previous party, for the value and the MAC alike), which is
secure against one malicious party up to an additive error. Every product output (and every
input, and every authenticated bit) goes into a log, so a party that alters any message it
sends in a product makes some logged value's MAC wrong.

Check (before every reveal). First the binary gates logged since the last check are verified
(3 rounds, `BinaryRep3.verify`); its opened and zero-checked values go into the digests
compared at the end of this check. Then the arithmetic log, compressed round by round: every
product round that follows a logged value also carries a public coin (its three components
are drawn from the pairwise keys; each party receives its missing component from both its
neighbours and compares), and the values logged before that round are folded into a running sum
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

Truncation and comparison, without a dealer and without masks. The low limbs of the three
components x~_j mod 2^64 are each known to two parties, so their bits are binary replicated
sharings for free, (bits, 0, 0) placed at component j; the circuits run on those, packed 64
values a word, in `protocols.blocks.binary_rep3`, whose AND gates (one bit sent per gate) are all
verified by cut-and-bucket triple sacrifice at the next check (about 10 more bits a gate). A
full-adder layer (1 round) turns x_0 + x_1 + x_2 into S + 2C; with C' = 2C mod 2^64,
generate bits g = s c' and propagate bits p = s xor c':
- ltz (11 rounds): msb = s_63 xor C_62 xor carry_63, carry_63 from a 6-level carry tree over
  bits 0..62 (combine (g, p)(g', p') = (g xor p g', p p'), 2 ANDs per node). Narrowed to x
  in [-2^k, 2^k), the same circuit runs on the k + 1 low bits of y = x + 2^k, whose bit k
  is 0 exactly when x < 0: k/63 of the gates (and one round less each time k halves);
- trunc (5 rounds): y = x + 2^62 lies in [0, 2^63) for |x| < 2^62, and y >> f =
  sum_j (y_j >> f) + c - 2^(64-f) w exactly, with c = C_(f-1) + carry_f(S + C') and
  w = (s_63 or C_62) + C_63 (one AND: y's top bit is 0, so s_63 xor C_62 xor carry_63 = 0);
  the sum_j (y_j >> f) are components, authenticated by one product. carry_f would need a
  carry tree over the low f bits; it is left out and 1 added instead, so x >> f comes out
  as the floor or one more (the contract of `Protocol.trunc`), never further off.
Bits come back to the ring authenticated (3 rounds, 5 products a bit; 3 bits for trunc, 1
for ltz): a = b_0 + b_1 + b_2 is a replicated sharing of an integer in {0..3} with the binary
components as its components; its MAC [alpha] [a], then [a^2] and [a^3] as authenticated
products (value x y, MAC (alpha x) y), and b = a mod 2 = C1 a + C2 a^2 + C3 a^3 (exact on
{0..3}, 3 invertible mod 2^64). A party that uses a different bit in either world than its
honest co-holder only adds an error to its messages, which the gate verification or the MAC
check catches. ReLU's selection x (1 - msb) rides in the last conversion round (it needs
msb's value, not its MAC).

Values from outside (`input_external`, `reveal_external`; the client and the model owner
are endpoints, not parties). Input of x held by endpoint S: each party draws a seed from
each of its two pairwise keys, so the two holders of component j (parties j and j-1, key
k_j) have the same seed, expands r~_j (128 bits) from it and sends S both seeds (16 bytes
each). S refuses unless the two copies of each seed agree (one corrupt party cannot change
both), takes r = sum_j r~_j mod 2^64 (the low limbs) and sends c = x - r mod 2^64 to every
party. The parties make [alpha r~] by one product round (in parallel with S's round trip)
and log [r~] for the MAC check, as `input` does; then [x] = [r~] + c, whose MAC adds
alpha_j c locally (`add_public`): a correct authenticated sharing of r~ + c = x mod 2^64.
Each party vouches for c to both others in the digests compared at the next check, so a
party that claims another c fails it before anything is revealed. Output of y to endpoint
T: the MAC check first, then each party sends T the low limbs of its two components; T
takes both copies of each y_j, refuses unless they agree and adds them mod 2^64. After the
check the honest holders agree; a corrupt party can only send copies that differ, knowing
every honest copy (it holds both components it sends), so T refuses or outputs y whatever
y is: no selective-failure bit. T learns the three low limbs, as a party learns its
missing one in `reveal`; the deployment's argmax output is sum_i i * wins_i with wins_1 a
fresh product, whose components are uniform given their sum. This is client-server MPC
with redundant honest-majority sharing (Araki, Furukawa, Lindell, Nof, Ohara, "High-
throughput semi-honest secure three-party computation with an honest majority", CCS 2016;
Furukawa, Lindell, Nof, Weinstein, "High-throughput secure three-party computation for
malicious adversaries and an honest majority", EUROCRYPT 2017), with inputs entered as
[r] + c under a MAC in the way of Damgard, Damgard, Nielsen, Nordholt, Toft, "Confidential
benchmarking based on multiparty computation" (FC 2016) and Jakobsen, Nielsen, Orlandi,
"A framework for outsourced secure computation" (CCSW 2014).
Costs are measured in tests/protocols/test_replicated_mac.py and reported there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from mpc import ring128 as r128
from mpc.errors import CheatingDetected, ConfigError
from mpc.fixedpoint import MAX_VALUE_BITS
from mpc.net.channel import Channel
from mpc.net.expect import Expect
from mpc.prg import KEY_BYTES, PRG
from mpc.runtime import Runtime
from protocols import external
from protocols.base import BilinearOp, Protocol, as_ring
from protocols.blocks import binary_rep3, bitslice, ring128_ops
from protocols.blocks.binary_rep3 import BinaryRep3, carry_out, majority
from protocols.ops import Mul
from protocols.preprocessing.correlations import FULL_BITS, Request, circuit_width

U64 = np.uint64
ONE = U64(1)
SEED_WORDS = KEY_BYTES // 8  # a PRG seed as ring words
MUL = Mul()
#: Elements per batch of a comparison or truncation. A batch holds its bit planes, logged AND
#: gates and conversion products at once, a few hundred bytes an element per party; batches
#: bound memory for large batches of clips (one clip of the reference CNN fits in one).
CHUNK = 1 << 17
_ALL_ONES = ~U64(0)  # a public word of ones: XOR with it negates 64 packed bits
#: b = a mod 2 for a in {0, 1, 2, 3} as C1 a + C2 a^2 + C3 a^3 (mod 2^64, 3 is invertible)
_INV3 = pow(3, -1, 1 << 64)
C1, C2, C3 = (U64((2 + 4 * _INV3) % (1 << 64)), U64((1 << 64) - 3), U64((2 * _INV3) % (1 << 64)))


def _auth(value: np.ndarray, mac: np.ndarray) -> np.ndarray:
    return np.concatenate([value, mac])


def _cubic(a: np.ndarray, a2: np.ndarray, a3: np.ndarray) -> np.ndarray:
    """C1 a + C2 a^2 + C3 a^3 on 128-bit arrays (values or MACs alike)."""
    return r128.combination([a, a2, a3], [C1, C2, C3])


class ReplicatedMac(r128.Ring128Linear, Protocol):
    name = "replicated_mac"
    components = 8
    default_parties = min_parties = max_parties = 3

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        i = self.party_id
        self.prev, self.next = (i - 1) % 3, (i + 1) % 3
        # k_i (shared with the previous party) and k_{i+1} (shared with the next one): every
        # party draws the same sizes from both in the same order, so the streams stay in step
        self.key_own = runtime.pair_prg(self.prev, "replicated_mac/k")
        self.key_next = runtime.pair_prg(self.next, "replicated_mac/k")
        self.alpha = np.concatenate([
            runtime.mac_prg(self.prev, "replicated_mac/k").derive("alpha").ring_elements(2),
            runtime.mac_prg(self.next, "replicated_mac/k").derive("alpha").ring_elements(2)])
        self._pending: list[np.ndarray] = []  # authenticated (8, n) values not yet weighed
        self._acc = np.zeros(8, dtype=U64)  # sum of chi_j [z_j] over the weighed ones
        self._weighed = False
        self._rho: np.ndarray | None = None  # (8, 1) authenticated mask of the next check
        self._vouch = {p: hashlib.sha256(b"replicated_mac") for p in (self.prev, self.next)}
        self.checks = 0
        self.binary = BinaryRep3(self.channel, i, runtime.pair_prg(self.prev, "replicated_mac/b"),
                                 runtime.pair_prg(self.next, "replicated_mac/b"))
        binary_rep3.warmup()  # numba's first calls belong to set-up, not to the online phase
        r128.warmup()

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
        parts = [ring128_ops.bilinear(op, v, x[k:k + 2]) if public_left
                 else ring128_ops.bilinear(op, x[k:k + 2], v) for k in range(0, 8, 2)]
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
            if isinstance(op, Mul):
                own, nxt = self._draw(np.broadcast_shapes(a.shape[1:], b.shape[1:]))
                outs.append(r128.replicated_product(a, b, own, nxt))
                continue
            z = r128.add(ring128_ops.bilinear(op, a[0:2], r128.add(b[0:2], b[2:4])),
                         ring128_ops.bilinear(op, a[2:4], b[0:2]))
            own, nxt = self._draw(z.shape[1:])
            outs.append(r128.sub(r128.add(z, own), nxt))
        flat = [np.ascontiguousarray(z).reshape(-1) for z in outs]
        sizes = [f.size for f in flat]
        outgoing = {self.prev: np.concatenate(flat)}
        if coin:
            k_own, k_next = self._draw((1,))
            outgoing = {self.prev: np.concatenate([outgoing[self.prev], k_next.reshape(-1)]),
                        self.next: k_own.reshape(-1)}
        total = sum(sizes)
        expect = {self.next: Expect.uint64(total + (2 if coin else 0)),
                  self.prev: Expect.uint64(2)}
        got = self.channel.exchange(outgoing, (self.prev, self.next) if coin else (self.next,),
                                    expect=expect, what=f"in {step}")
        from_next = got[self.next]
        if coin:
            missing = from_next[total:]
            other = got[self.prev]
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
        n = own.size
        got = self.channel.exchange({self.prev: np.concatenate([nxt, ext[self.prev]]),
                                     self.next: np.concatenate([own, ext[self.next]])},
                                    expect={p: Expect.uint64(n + ext[p].size) for p in ext},
                                    what=f"in {step}")
        a, b = got[self.next], got[self.prev]
        if not np.array_equal(a[:n], b[:n]):
            raise self._fail(f"in {step} parties {self.prev} and {self.next} sent different "
                             "copies of the same component")
        for peer, data in ((self.next, a), (self.prev, b)):
            if not np.array_equal(data[n:], ext[peer]):
                raise self._fail(f"in {step} party {peer} vouched for a different transcript "
                                 "than this party (an input or an opened binary value)")
        missing = a[:n].reshape(x[0:2].shape)
        return r128.add(r128.add(x[0:2], x[2:4]), missing)

    def check(self, step: str) -> None:
        """Verify the binary gates and MAC-check everything logged so far (3 rounds for the
        binary part if any gate is logged, then up to 3); none if nothing is logged."""
        if not self._pending and not self._weighed and not self.binary.pending:
            return
        self.checks += 1
        fail = f"MAC check before {step} failed"
        self.binary.verify(f"the check before {step}")
        if self._rho is None:  # binary gates only: a round that makes the check's mask
            self._round([], fail)
        if self._pending:  # a round with just the coin
            k_own, k_next = self._draw((1,))
            k_own, k_next = k_own.reshape(-1), k_next.reshape(-1)
            got = self.channel.exchange({self.prev: k_next, self.next: k_own},
                                        expect=Expect.uint64(2), what="in the check's coin")
            a, b = got[self.next], got[self.prev]
            if not np.array_equal(a, b):
                raise self._fail(f"{fail}: parties {self.prev} and {self.next} sent different "
                                 "coin components")
            self._weigh(k_own, k_next, a)
        total = r128.add(self._acc, self._rho.reshape(8))
        y = self._open_redundant(total[0:4].reshape(4, 1), fail).reshape(2)
        sigma = r128.sub(total[4:8], r128.mul(self.alpha, y))
        poison = self.binary.poison
        digests = {p: external.digest(self._vouch[p].digest() + self.binary.vouch[p].digest())
                   for p in (self.prev, self.next)}
        if poison is not None:  # make both neighbours fail the comparison too
            digests = {p: d ^ ONE for p, d in digests.items()}
        try:
            s = self._open_redundant(sigma.reshape(4, 1), fail, digests)
        except CheatingDetected:
            if poison is None:
                raise
            s = None
        if poison is not None:
            raise self._fail(f"{fail}: {poison}")
        self.binary.compared()
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
            got = self.channel.exchange({}, (owner,), expect=Expect.uint64(n),
                                        what=f"in the input of party {owner}")[owner]
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
        size = int(np.prod(x.shape[1:], dtype=np.int64))
        got = self.channel.exchange(outgoing, sources, expect=Expect.uint64(size),
                                    what="in a reveal")
        if i not in targets:
            return None
        a, b = got[self.next], got[self.prev]
        if not np.array_equal(a, b):
            raise self._fail(f"parties {self.prev} and {self.next} revealed different values")
        return (x[0:1] + x[2:3] + a.reshape(1, *x.shape[1:])).reshape(x.shape[1:])

    def bilinear(self, x: np.ndarray, y: np.ndarray, op: BilinearOp) -> np.ndarray:
        (z,) = self._amul([(x, y)], type(op).__name__.lower(), op)
        return z

    # -- bit circuits --------------------------------------------------------------------
    def _addends(self, x: np.ndarray) -> list[np.ndarray]:
        """Binary sharings (2, 64, W) of the low limbs of x's three value components: each is
        known to the two holders of its component, so slicing it into bit planes is free."""
        own, nxt = bitslice.slice_bits(x[0]), bitslice.slice_bits(x[2])
        return [self.binary.components(own, nxt, j) for j in range(3)]

    def _lift(self, planes: list[np.ndarray], n: int) -> np.ndarray:
        """The 128-bit replicated sharing (4, k n) of a = b_0 + b_1 + b_2 in {0..3} for each of
        the first n bits of each binary plane (2, W): its components are the binary ones."""
        own = np.concatenate([bitslice.unslice_bit(plane[0], n) for plane in planes])
        nxt = np.concatenate([bitslice.unslice_bit(plane[1], n) for plane in planes])
        zero = np.zeros_like(own)
        return np.stack([own, zero, nxt, zero])

    def _b2a(self, planes: list[np.ndarray], n: int, step: str,
             extra=None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Authenticated 0/1 values (8, k n) of binary bits (3 rounds): a = b_0 + b_1 + b_2,
        then b = a mod 2 = C1 a + C2 a^2 + C3 a^3, exact on {0..3}, with a^2 and a^3 as
        authenticated products (value x y, MAC (alpha x) y). `extra(b_value)` may add
        products to the last round that need only b's value; their outputs are returned."""
        a = self._lift(planes, n)
        alpha = self.alpha.reshape(4, 1)
        m_a, a2 = self._round([(alpha, a, MUL), (a, a, MUL)], f"{step}: bits to ring 1")
        m_a2, a3 = self._round([(m_a, a, MUL), (a2, a, MUL)], f"{step}: bits to ring 2")
        value = _cubic(a, a2, a3)
        more = extra(value) if extra is not None else []
        m_a3, *outs = self._round([(m_a2, a, MUL), *more], f"{step}: bits to ring 3")
        for v, m in ((a, m_a), (a2, m_a2), (a3, m_a3)):
            self._log(_auth(v, m))
        return _auth(value, _cubic(m_a, m_a2, m_a3)), outs

    def _sign(self, x: np.ndarray, step: str, bits: int = FULL_BITS) -> np.ndarray:
        """The binary [x < 0] (2, W) for x in [-2^bits, 2^bits): over the whole ring the top
        bit of x; narrowed, NOT bit `bits` of y = x + 2^bits (module notes)."""
        k = circuit_width(bits)
        if k == FULL_BITS:
            return self._bit(x, FULL_BITS, step)
        y = self.add_public(x, U64(1 << k))
        return binary_rep3.xor_public(self._bit(y, k, step), _ALL_ONES, self.party_id)

    def _bit(self, x: np.ndarray, k: int, step: str) -> np.ndarray:
        """The binary bit k (2, W) of x_0 + x_1 + x_2 mod 2^64 (8 rounds for k = 63): a
        full-adder layer to S + 2C, then s_k xor C_(k-1) xor the carry into bit k of S + 2C,
        all from the k + 1 low bits."""
        a, b, c = self._addends(x)
        s = a ^ b ^ c
        carry = majority(self.binary, a[:, :k], b[:, :k], c[:, :k], f"{step}: full adder")
        (g,) = self.binary.and_([(s[:, 1:k], carry[:, :k - 1])], f"{step}: generate bits")
        zero = np.zeros_like(g[:, :1])
        g = np.concatenate([zero, g], axis=1)  # bit 0 of 2C is 0, so it generates nothing
        p = s[:, :k] ^ np.concatenate([zero, carry[:, :k - 1]], axis=1)
        return s[:, k] ^ carry[:, k - 1] ^ carry_out(self.binary.and_, g, p, step)

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
        if not 0 <= f <= MAX_VALUE_BITS:
            raise ValueError(f"cannot truncate by {f} bits")
        if f == 0:
            return x.copy()
        return self._batched(lambda flat: self._trunc(flat, f), x)

    def _trunc(self, x: np.ndarray, f: int) -> np.ndarray:
        """floor(x / 2^f) or one more, for |x| < 2^62 (5 rounds). With y = x + 2^62 in
        [0, 2^63) and its components y_j: y >> f = sum_j (y_j >> f) + c - 2^(64-f) w, where
        c = floor(sum_j (y_j mod 2^f) / 2^f) = C_(f-1) + d and w (the wrap of the sum) =
        (s_63 or C_62) + C_63, from the full adder S + 2C of bits f-1, 62 and 63; d, the carry
        out of the low f bits of S + 2C, is left out and 1 added, so the result is the floor
        plus 1 - d (exact for f = 1, where d = 0). The sum_j (y_j >> f) are components,
        authenticated by one product."""
        n = x.shape[1]
        y = self.add_public(x, U64(1 << MAX_VALUE_BITS))
        a, b, c = self._addends(y)
        rows = [f - 1, 62, 63]
        low, c62, c63 = majority(self.binary, a[:, rows], b[:, rows], c[:, rows],
                                 "trunc: full adder").transpose(1, 0, 2)
        s63 = a[:, 63] ^ b[:, 63] ^ c[:, 63]
        (both,) = self.binary.and_([(s63, c62)], "trunc: wrap")
        wrap_low = s63 ^ c62 ^ both  # s_63 or C_62: y's top bit is 0 (see the module notes)
        shifted = [x_lo >> U64(f) for x_lo in (y[0], y[2])]
        zero = np.zeros_like(shifted[0])
        t = np.stack([shifted[0], zero, shifted[1], zero])
        alpha = self.alpha.reshape(4, 1)
        bits, (m_t,) = self._b2a([low, wrap_low, c63], n, "trunc",
                                 lambda _: [(alpha, t, MUL)])
        t = _auth(t, m_t)
        self._log(t)
        bits = bits.reshape(8, 3, n)
        wraps = r128.mul_public(r128.add(bits[:, 1], bits[:, 2]), U64(1 << (64 - f)))
        result = r128.sub(r128.add(t, bits[:, 0]), wraps)
        up = 1 if f > 1 else 0  # f = 1: bit 0 of S + C' never carries (C' is even)
        return self.add_public(result, U64((up - (1 << (MAX_VALUE_BITS - f))) % (1 << 64)))

    def ltz(self, x: np.ndarray, bits: int = FULL_BITS) -> np.ndarray:
        return self._batched(lambda flat: self._ltz(flat, bits), x)

    def _ltz(self, x: np.ndarray, bits: int) -> np.ndarray:
        bit, _ = self._b2a([self._sign(x, "ltz", bits)], x.shape[1], "ltz")
        return bit

    def relu(self, x: np.ndarray, bits: int = FULL_BITS) -> np.ndarray:
        return self._batched(lambda flat: self._relu(flat, bits), x)

    def _relu(self, x: np.ndarray, bits: int) -> np.ndarray:
        """x (1 - msb): the selection rides in the last conversion round (11 rounds)."""
        n = x.shape[1]
        one = self.constant(np.ones(n, dtype=U64))[0:4]

        def select(msb: np.ndarray) -> list:
            keep = r128.sub(one, msb)
            return [(x[0:4], keep, MUL), (x[4:8], keep, MUL)]

        _, (z, m_z) = self._b2a([self._sign(x, "relu", bits)], n, "relu", select)
        out = _auth(z, m_z)
        self._log(out)
        return out

    def preprocess(self, plan: list[Request]) -> None:
        """No offline phase: all randomness comes from the pairwise keys."""

    # -- values from and to endpoints outside the computation (module notes) ----------------
    def input_external(self, source: int, shape: tuple[int, ...]) -> np.ndarray:
        """[r~] + c: r~ from one seed per pairwise key, which both holders of each component
        send `source`; its MAC by one product round, logged; c = x - r mod 2^64 from
        `source`, vouched for to both other parties (compared at the next check)."""
        shape = tuple(shape)
        # one 128-bit element from each key: SEED_WORDS words, a PRG seed
        own_seed, next_seed = (s.reshape(SEED_WORDS) for s in self._draw((1,)))
        what = f"input from {self.channel.who(source)}"
        self.channel.send(source, np.concatenate([own_seed, next_seed]))
        v = np.concatenate([PRG(seed.tobytes()).ring_elements((2, *shape))
                            for seed in (own_seed, next_seed)])
        alpha = self.alpha.reshape(4, *(1,) * len(shape))
        (mac,) = self._round([(alpha, v, MUL)], f"the mask of the {what}")
        r = _auth(v, mac)
        self._log(r)
        masked = self.channel.receive_external(source, shape, f"as the masked {what}",
                                               (0, 1, 2))
        self._vouch_received(masked)
        return self.add_public(r, masked)

    def _vouch_received(self, data: np.ndarray) -> None:
        """Vouch for `data`, received from outside, to both other parties (in the digests
        the next check compares)."""
        digest = external.digest(data).tobytes()
        for peer in (self.prev, self.next):
            self._vouch[peer].update(digest)

    def reveal_external(self, x: np.ndarray, target: int) -> None:
        """MAC-check everything so far, then send `target` the low limbs of this party's two
        components (x~_i, x~_{i+1})."""
        self.check(f"the output to {self.channel.who(target)}")
        self.channel.send(target, np.ascontiguousarray(np.stack([x[0], x[2]]).reshape(2, -1)))

    @classmethod
    def give_external(cls, channel: Channel, ends: external.Endpoints,
                      value: np.ndarray) -> None:
        """Take both copies of each mask seed, refuse unless they agree, send x - r (the
        low limbs of r~: its first `size` words, as r~_j is (2, size) [lo, hi])."""
        _check_compute(ends)
        external.give_by_seeds(channel, ends, as_ring(np.asarray(value)), 3, 2, SEED_WORDS,
                               _copies)

    @classmethod
    def take_external(cls, channel: Channel, ends: external.Endpoints,
                      shape: tuple[int, ...]) -> np.ndarray:
        """Take both copies of each component's low limb, refuse unless they agree, add."""
        _check_compute(ends)
        return external.take_components(channel, ends, tuple(shape), 2, 3, _copies)


def _copies(got: dict[int, np.ndarray], j: int) -> dict[int, np.ndarray]:
    """Component j's copies: the first of party j's two, the second of party j-1's."""
    return {j: got[j][0], (j - 1) % 3: got[(j - 1) % 3][1]}


def _check_compute(ends: external.Endpoints) -> None:
    if ends.compute != 3:
        raise ConfigError(f"replicated_mac runs on exactly 3 compute parties, not "
                          f"{ends.compute}")
