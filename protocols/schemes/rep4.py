"""4-party replicated sharing mod 2^64, malicious security against one corrupt party.

After Dalskov, Escudero, Keller, "Fantastic Four" (USENIX Security 2021), rep4-ring.

Sharing. x = x_0 + x_1 + x_2 + x_3 and party i holds every x_j with j != i, stored as
components (x_{i+1}, x_{i+2}, x_{i+3}) (indices mod 4): component c of party i is x_{i+1+c}.
Boolean sharings (bit-sliced, 64 bits a word) use the same layout with XOR.

Keys. K_m is shared by the three parties other than m, exactly the holders of x_m, so any
x_m can be drawn from K_m without communication. The lowest member of each triple draws the
key and sends it to the other two, who compare it through the redundancy check below. Values
known to a pair {a, b} (masks of the truncation, halves of random bits) come from the pair's
key (`Runtime.pair_prg`). Each key feeds one AES-CTR stream (created once, not per draw):
every holder of a key makes the same draws, of the same sizes, in the same order, because
all parties run the same program in step.

Joint message passing. Every value a party receives is computable by two parties: one sends
it, the other vouches for it. Vouching goes into a SHA-256 accumulator per pair of parties
(the voucher hashes what it would have sent, the receiver what it got); both ends of every
pair compare digests in one round before anything is revealed (`_check`). Reveal messages
carry their hash in the same round (the receiver compares at once). Input values known to
the owner alone are sent to two parties, who compare them through the same accumulators.
A mismatch raises `CheatingDetected` naming the parties and steps; the detecting party's
channel then closes, so the others stop with `PeerLost`.

Joint input of a value v known to a pair {a, b}, with {c, d} the other two: the sharing has
v_a = v_b = 0; on the first half of the elements v_c is drawn from K_c and a sends
v_d = v - v_c to c (b vouches); on the second half v_d comes from K_d and b sends
v_c = v - v_d to d (a vouches). The receiver sees v minus a mask from a key it lacks.

Products (any bilinear op: elementwise, matmul, conv; and AND over GF(2)). The cross terms
x_c y_d + x_d y_c are known to the pair {a, b} = complement of {c, d}; each diagonal term
x_j y_j is folded into the pair whose complement is {j, j + 1}. Each of the 6 pair sums is
jointly input as above and the 6 sharings are added: one round, each party sends 1.5
elements per output (3 halves) and computes 6 local products.

Privacy. Everything a party receives is either masked by a fresh draw from a key it does
not hold (joint inputs, products), or a masked opening c = v + r with r unknown to it
(truncation, comparison), or an output. Errors a cheater introduces are additive errors on
such masked values, so the cheater's view before the check stays independent of the
secrets; the check runs before any reveal, and any error in a received value is caught by
the honest one of its two sources (one corrupt party cannot be both sender and voucher).

Truncation (2 online rounds; docs/protocols.md identity with r = r_low + 2^63 beta): P0, P1 know
r_low (63 bits, pair key); beta is a random bit unknown to everyone (a daBit: beta = a xor
b with a known to {P0, P1}, b to {P2, P3}, [beta] = [a] + [b] - 2[a][b], offline).
Round 1: P0 and P1 both know u = y_2 + y_3 + r_low + 2^63 (beta_2 + beta_3) and jointly
send it to P2 and P3, who add y_0 + y_1 + 2^63 (beta_0 + beta_1) to get c = y + r: uniform
to them (r unknown to them) and unknown to P0, P1. Round 2: P2, P3 jointly send c's top
bit (= carry xor beta: uniform, beta unknown to all) to P0, P1 and jointly input
(c_low >> f) - 2^(l-f). Then [w] = c_msb + [beta] - 2 c_msb [beta] is local, and
[x >> f] = that input - [r_low >> f] + 2^(63-f) [w] (the [r_low >> f] input is offline).

Comparison (9 rounds; relu also 9): x = A + B with A = x_0 + x_1 known to {P2, P3} and
B = x_2 + x_3 known to {P0, P1}. Round 1 jointly inputs the bit planes of A and B as
boolean sharings; round 2 ANDs them into generate bits (propagate bits are A xor B, free);
rounds 3-8 are the 6 levels of the carry tree over bits 0..62; msb = A_63 xor B_63 xor
carry. Round 9 opens msb xor rho (rho a daBit, offline) to everyone and
[msb] = e + [rho] - 2 e [rho]. ReLU multiplies x by rho in round 1, so
x * msb = e x + (1 - 2e) [x rho] is local and relu costs no extra round.

Values from outside (`input_external`, `reveal_external`; the client and the model owner
are endpoints, not parties). Input of x held by endpoint S: the parties make [r] for free,
r_j expanded from a seed drawn from K_j, so the three holders of r_j have the same seed;
each party sends S the seeds of the three components it holds (one round trip, 12 seeds of
16 bytes in all). S refuses unless the three copies of each seed agree, so with one corrupt
party S learns the true r; it sends c = x - r to every party, and [x] = [r] + c. Each party
vouches for c to every other one through the accumulators, so a party that claims another
c (or a source that sends different ones) fails the check that precedes every reveal.
Output of y to endpoint T: the check first (1 round), then each party sends T its three
components; T takes the three copies of each y_j, refuses unless they agree (naming the
party whose copy differs) and adds them. After the check the honest holders of y_j agree,
and one corrupt party holds no component alone, so all it can do is send a copy that
differs, a choice it makes knowing every honest copy: T refuses or outputs y, whatever y
is (no selective failure). T learns the components, as any party learns them in `reveal`;
the deployment reveals argmax = sum_i i * wins_i with wins_1 a fresh product, whose
components are uniform given their sum. This is the input/output pattern of outsourced
MPC with redundant honest-majority sharing: Jakobsen, Nielsen, Orlandi, "A framework for
outsourced secure computation" (CCSW 2014); Damgard, Damgard, Nielsen, Nordholt, Toft,
"Confidential benchmarking based on multiparty computation" (FC 2016), with the
cross-checked (every value from two or more parties) messages of Gordon, Ranellucci,
Wang, "Secure computation with low communication from cross-checking" (ASIACRYPT 2018).

Offline: 1 round for the triple keys, then 2 rounds for all the plan's daBits and
truncation masks. Reveal: 1 round for the digests (skipped when nothing is unchecked),
1 round for the value (from one holder) with its hash (from the other two).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from mpc.errors import CheatingDetected, ConfigError
from mpc.fixedpoint import MAX_VALUE_BITS
from mpc.net.channel import Channel
from mpc.net.expect import Expect
from mpc.prg import KEY_BYTES, PRG
from mpc.ring import LOW63
from mpc.runtime import Runtime
from protocols import external
from protocols.base import BilinearOp, Protocol, as_ring
from protocols.blocks import binary_rep3, bitslice
from protocols.ops import Mul
from protocols.preprocessing.correlations import FULL_BITS, Request, circuit_width

N = 4
ARITH, BOOL = "arith", "bool"
PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
DIGEST_WORDS = 4
SEED_WORDS = KEY_BYTES // 8  # a PRG seed as ring words
ONE = np.uint64(1)
TOP = np.uint64(63)
MASKED_KINDS = ("trunc", "ltz", "relu")


def _complement(pair: Iterable[int]) -> tuple[int, int]:
    c, d = (j for j in range(N) if j not in pair)
    return c, d


def _add(domain: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b if domain == ARITH else a ^ b


def _sub(domain: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a - b if domain == ARITH else a ^ b


@dataclass(frozen=True)
class And:
    """Bitwise AND of bit-sliced words: the product of GF(2)^64."""

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.bitwise_and(a, b)

    def out_shape(self, sa: tuple, sb: tuple) -> tuple:
        return tuple(np.broadcast_shapes(sa, sb))


@dataclass
class _Item:
    """One value travelling in a round: `sender` sends it to each receiver; `vouchers`, who
    can compute it too, vouch for it (into the accumulators, or at once by hash)."""

    sender: int
    receivers: tuple[int, ...]
    vouchers: tuple[int, ...]
    size: int
    value: np.ndarray | None
    immediate: bool = False  # vouchers send the hash in the same round
    compare: bool = False  # receivers vouch to each other (values known to one party)


class _Round:
    """The items of one communication round, in an order every party agrees on."""

    def __init__(self) -> None:
        self.items: list[_Item] = []
        self.received: dict[int, np.ndarray] = {}

    def add(self, sender: int, receivers: tuple[int, ...], vouchers: tuple[int, ...] | int,
            size: int, value: np.ndarray | None, immediate: bool = False,
            compare: bool = False) -> int:
        vouchers = (vouchers,) if isinstance(vouchers, int) else tuple(vouchers)
        if value is not None:
            value = np.ascontiguousarray(value, dtype=np.uint64).reshape(-1)
            if value.size != size:
                raise ValueError(f"item of {value.size} words, declared {size}")
        self.items.append(_Item(sender, receivers, vouchers, size, value, immediate, compare))
        return len(self.items) - 1

    def get(self, handle: int) -> np.ndarray:
        return self.received[handle]


class Rep4(Protocol):
    name = "rep4"
    components = 3
    default_parties = min_parties = max_parties = N

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.peers = self.others
        self._acc = {p: hashlib.sha256() for p in self.peers}
        self._acc_steps: dict[int, list[str]] = {p: [] for p in self.peers}
        self._unchecked = False
        self._material: dict[Request, deque] = defaultdict(deque)
        self._mask_streams = {m: key.derive("rep4/mask") for m, key in
                              self._set_up_keys().items()}
        self._pair_streams = {p: runtime.pair_prg(p, "rep4/pair") for p in self.peers}

    # -- plumbing: components, randomness, rounds, checks -------------------------------
    def _index(self, j: int) -> int:
        """Which component of this party holds x_j (j != party_id)."""
        return (j - self.party_id - 1) % N

    def _comp(self, x: np.ndarray, j: int) -> np.ndarray:
        return x[self._index(j)]

    def _stack(self, parts: dict[int, np.ndarray]) -> np.ndarray:
        return np.stack([parts[(self.party_id + 1 + c) % N] for c in range(3)])

    def _set_up_keys(self) -> dict[int, PRG]:
        me = self.party_id
        rnd = _Round()
        handles = {}
        chosen = {}
        for m in range(N):
            members = [j for j in range(N) if j != m]
            value = None
            if me == members[0]:
                chosen[m] = self.runtime.private_prg.random_bytes(KEY_BYTES)
                value = np.frombuffer(chosen[m], dtype=np.uint64)
            handles[m] = rnd.add(members[0], tuple(members[1:]), (), KEY_BYTES // 8, value,
                                 compare=True)
        self._exchange(rnd, "triple key set-up")
        keys = {}
        for m in range(N):
            if m == me:
                continue
            raw = chosen[m] if m in chosen else rnd.get(handles[m]).tobytes()
            keys[m] = PRG(raw)
        return keys

    def _mask(self, m: int, size: int) -> np.ndarray | None:
        """Fresh words from K_m (None at party m). Every party calls this in step."""
        if m == self.party_id:
            return None
        return self._mask_streams[m].ring_elements(size)

    def _pair_random(self, pair: tuple[int, int], size: int) -> np.ndarray | None:
        """Fresh words known to the two parties of `pair` (None elsewhere), in step."""
        if self.party_id not in pair:
            return None
        other = pair[1] if self.party_id == pair[0] else pair[0]
        return self._pair_streams[other].ring_elements(size)

    def _vouch(self, peer: int, value: np.ndarray, step: str) -> None:
        self._acc[peer].update(np.ascontiguousarray(value, dtype=np.uint64).tobytes())
        steps = self._acc_steps[peer]
        if not steps or steps[-1] != step:
            steps.append(step)

    def _exchange(self, rnd: _Round, step: str) -> None:
        """One round: send every item this party sends, receive and vouch the rest."""
        me = self.party_id
        outgoing: dict[int, list[np.ndarray]] = defaultdict(list)
        expected: dict[int, int] = defaultdict(int)
        for item in rnd.items:
            if item.size == 0:
                continue
            if me == item.sender:
                for r in item.receivers:
                    outgoing[r].append(item.value)
            if me in item.receivers:
                expected[item.sender] += item.size
            if item.immediate:
                if me in item.vouchers:
                    for r in item.receivers:
                        outgoing[r].append(external.digest(item.value))
                if me in item.receivers:
                    for v in item.vouchers:
                        expected[v] += DIGEST_WORDS
        messages = {p: np.concatenate(parts) for p, parts in outgoing.items()}
        got = self.channel.exchange(messages, sorted(expected),
                                    expect={p: Expect.uint64(w) for p, w in expected.items()},
                                    what=f"in '{step}'")
        offsets: dict[int, int] = defaultdict(int)
        deferred = False
        for k, item in enumerate(rnd.items):
            if item.size == 0:
                rnd.received[k] = np.zeros(0, dtype=np.uint64)
                continue
            if me in item.receivers:
                start = offsets[item.sender]
                value = got[item.sender][start:start + item.size]
                offsets[item.sender] += item.size
                rnd.received[k] = value
                for v in item.vouchers:
                    if item.immediate:
                        start = offsets[v]
                        digest = got[v][start:start + DIGEST_WORDS]
                        offsets[v] += DIGEST_WORDS
                        if not np.array_equal(digest, external.digest(value)):
                            raise CheatingDetected(
                                f"party {me}: in step '{step}' the value from party "
                                f"{item.sender} does not match the hash from party {v}")
                    else:
                        self._vouch(v, value, step)
                if item.compare:
                    for other in item.receivers:
                        if other != me:
                            self._vouch(other, value, step)
            if me in item.vouchers and not item.immediate:
                for r in item.receivers:
                    self._vouch(r, item.value, step)
            deferred = deferred or not item.immediate
        self._unchecked = self._unchecked or deferred

    def _check(self, step: str) -> None:
        """Compare every pair's accumulated digest (one round); abort on any mismatch."""
        if not self._unchecked:
            return
        me = self.party_id
        mine = {p: np.frombuffer(self._acc[p].digest(), dtype=np.uint64).copy()
                for p in self.peers}
        got = self.channel.exchange(mine, expect=mine, what=f"in the check before {step}")
        bad = [p for p in self.peers if not np.array_equal(got[p], mine[p])]
        steps = {p: list(self._acc_steps[p]) for p in bad}
        self._acc = {p: hashlib.sha256() for p in self.peers}
        self._acc_steps = {p: [] for p in self.peers}
        self._unchecked = False
        if bad:
            detail = "; ".join(f"with party {p} (steps: {', '.join(steps[p]) or 'none'})"
                               for p in bad)
            raise CheatingDetected(f"party {me}: redundancy check before {step} failed: "
                                   f"values vouched since the last check differ {detail}")

    # -- joint input and products ---------------------------------------------------------
    def _joint(self, rnd: _Round, value: np.ndarray | None, pair: tuple[int, int],
               domain: str, size: int) -> Callable[..., np.ndarray]:
        """Share a flat `value` known to both parties of `pair`; returns the finisher that
        gives this party's (3, size) shares after the round."""
        me = self.party_id
        a, b = pair
        c, d = _complement(pair)
        n1 = (size + 1) // 2
        mask_c = self._mask(c, n1)
        mask_d = self._mask(d, size - n1)
        piece_c = piece_d = None
        if me in pair:
            value = np.asarray(value, dtype=np.uint64).reshape(-1)
            piece_c = _sub(domain, value[:n1], mask_c)  # v_d on the first half, to c
            piece_d = _sub(domain, value[n1:], mask_d)  # v_c on the second half, to d
        k_c = rnd.add(a, (c,), b, n1, piece_c)
        k_d = rnd.add(b, (d,), a, size - n1, piece_d)

        def finish(out: np.ndarray | None = None) -> np.ndarray:
            """Add this sharing into `out` (3, size), in place; a fresh array by default.
            Only the components of c and d are non-zero, so nothing else is touched."""
            if out is None:
                out = np.zeros((3, size), dtype=np.uint64)
            acc = np.add if domain == ARITH else np.bitwise_xor

            def put(j: int, first: np.ndarray, second: np.ndarray) -> None:
                row = out[self._index(j)]
                acc(row[:n1], first, out=row[:n1])
                acc(row[n1:], second, out=row[n1:])

            if me in pair:
                put(c, mask_c, piece_d)
                put(d, piece_c, mask_d)
            elif me == c:
                put(d, rnd.get(k_c), mask_d)
            else:
                put(c, mask_c, rnd.get(k_d))
            return out

        return finish

    def _and_pairs(self, pairs: list[tuple[np.ndarray, np.ndarray]],
                   step: str) -> list[np.ndarray]:
        """AND of each pair of bit-sliced sharings in one round (the carry tree's step)."""
        rnd = _Round()
        finishes = [self._product(rnd, x, y, And(), BOOL) for x, y in pairs]
        self._exchange(rnd, step)
        return [finish() for finish in finishes]

    def _product(self, rnd: _Round, x: np.ndarray, y: np.ndarray, op: BilinearOp | And,
                 domain: str) -> Callable[[], np.ndarray]:
        """Shares of op(x, y) after the round: six jointly input pair sums."""
        me = self.party_id
        out_shape = tuple(op.out_shape(x.shape[1:], y.shape[1:]))
        size = int(np.prod(out_shape, dtype=np.int64))
        finishers = []
        for pair in PAIRS:
            c, d = _complement(pair)
            value = None
            if me in pair:
                xc, xd, yc, yd = (self._comp(x, c), self._comp(x, d), self._comp(y, c),
                                  self._comp(y, d))
                if (c + 1) % N == d:  # this pair also takes x_c y_c
                    value = _add(domain, op(xc, _add(domain, yc, yd)), op(xd, yc))
                elif (d + 1) % N == c:  # and this one x_d y_d
                    value = _add(domain, op(xc, yd), op(xd, _add(domain, yc, yd)))
                else:
                    value = _add(domain, op(xc, yd), op(xd, yc))
            finishers.append(self._joint(rnd, value, pair, domain, size))

        def finish() -> np.ndarray:
            total = np.zeros((3, size), dtype=np.uint64)
            for f in finishers:
                f(total)
            return total.reshape(3, *out_shape)

        return finish

    def _open_all(self, rnd: _Round, x: np.ndarray, immediate: bool = False
                  ) -> Callable[[], np.ndarray]:
        """Every party t gets x_t from party t+1, vouched by party t+2 (flat words)."""
        size = int(np.prod(x.shape[1:], dtype=np.int64))
        handles = {}
        for t in range(N):
            s, v = (t + 1) % N, (t + 2) % N
            value = self._comp(x, t) if self.party_id in (s, v) else None
            handles[t] = rnd.add(s, (t,), v, size, value, immediate=immediate)
        return lambda: rnd.get(handles[self.party_id])

    # -- preprocessing --------------------------------------------------------------------
    def preprocess(self, plan: list[Request]) -> None:
        """All daBits and truncation masks of the plan, in 2 rounds."""
        requests = [r for r in plan if r.kind in MASKED_KINDS]
        if requests:
            for request, material in zip(requests, self._generate(requests), strict=True):
                self._material[request].append(material)

    def _take(self, request: Request) -> dict[str, np.ndarray]:
        queue = self._material.get(request)
        if queue:
            return queue.popleft()
        return self._generate([request])[0]  # not planned: make it now (2 more rounds)

    def _generate(self, requests: list[Request]) -> list[dict[str, np.ndarray]]:
        rnd = _Round()
        pending = []
        for request in requests:
            n = request.size
            half_a = self._pair_random((0, 1), n)
            half_b = self._pair_random((2, 3), n)
            half_a = None if half_a is None else half_a & ONE
            half_b = None if half_b is None else half_b & ONE
            entry = {"a": self._joint(rnd, half_a, (0, 1), ARITH, n),
                     "b": self._joint(rnd, half_b, (2, 3), ARITH, n)}
            if request.kind == "trunc":
                r_low = self._pair_random((0, 1), n)
                shifted = None
                if r_low is not None:
                    r_low &= LOW63
                    shifted = r_low >> np.uint64(request.frac_bits)
                entry["r_low"] = r_low
                entry["r_low_shifted"] = self._joint(rnd, shifted, (0, 1), ARITH, n)
            else:
                words = bitslice.words_for(n)
                packed_a = None if half_a is None else bitslice.pack_bits(half_a)
                packed_b = None if half_b is None else bitslice.pack_bits(half_b)
                entry["bits_a"] = self._joint(rnd, packed_a, (0, 1), BOOL, words)
                entry["bits_b"] = self._joint(rnd, packed_b, (2, 3), BOOL, words)
            pending.append(entry)
        self._exchange(rnd, "preprocessing: pair inputs")
        rnd = _Round()
        for entry in pending:
            entry["a"], entry["b"] = entry["a"](), entry["b"]()
            entry["ab"] = self._product(rnd, entry["a"], entry["b"], Mul(), ARITH)
        self._exchange(rnd, "preprocessing: daBit products")
        out = []
        for request, entry in zip(requests, pending, strict=True):
            bit = entry["a"] + entry["b"] - np.uint64(2) * entry["ab"]()
            if request.kind == "trunc":
                out.append({"beta": bit, "r_low": entry["r_low"],
                            "r_low_shifted": entry["r_low_shifted"]()})
            else:
                out.append({"rho": bit, "rho_bits": entry["bits_a"]() ^ entry["bits_b"]()})
        return out

    # -- primitives -----------------------------------------------------------------------
    def input(self, value: np.ndarray | None, owner: int, shape: tuple[int, ...]) -> np.ndarray:
        """x_o = 0, x_{o+1} and x_{o+2} from K_{o+1}, K_{o+2}; the owner sends
        x_{o+3} = value - x_{o+1} - x_{o+2} to parties o+1 and o+2, who compare it."""
        value = self.check_owner(owner, value, shape)
        shape = tuple(shape)
        size = int(np.prod(shape, dtype=np.int64))
        j1, j2, j3 = ((owner + k) % N for k in (1, 2, 3))
        m1, m2 = self._mask(j1, size), self._mask(j2, size)
        last = None
        if self.party_id == owner:
            last = value.reshape(-1) - m1 - m2
        rnd = _Round()
        handle = rnd.add(owner, (j1, j2), (), size, last, compare=True)
        self._exchange(rnd, f"input of party {owner}")
        if last is None and self.party_id != j3:
            last = rnd.get(handle).copy()
        parts = {owner: np.zeros(size, dtype=np.uint64), j1: m1, j2: m2, j3: last}
        return self._stack(parts).reshape(3, *shape)

    def reveal(self, x: np.ndarray, to: Iterable[int]) -> np.ndarray | None:
        """Check everything so far, then party t gets x_t from t+1 with its hash from t+2
        and t+3: the target hears from every other party, so if any of them detected
        cheating in the check (and stopped), the target gets no output either."""
        targets = self.check_reveal_targets(to)
        self._check(f"reveal to {list(targets)}")
        me = self.party_id
        shape = x.shape[1:]
        size = int(np.prod(shape, dtype=np.int64))
        rnd = _Round()
        handles = {}
        for t in targets:
            s, v, w = (t + 1) % N, (t + 2) % N, (t + 3) % N
            value = self._comp(x, t) if me != t else None
            handles[t] = rnd.add(s, (t,), (v, w), size, value, immediate=True)
        self._exchange(rnd, "reveal")
        if me not in targets:
            return None
        total = x.reshape(3, -1).sum(axis=0, dtype=np.uint64) + rnd.get(handles[me])
        return total.reshape(shape)

    def add_public(self, x: np.ndarray, value: np.ndarray) -> np.ndarray:
        """The constant joins x_0, held by parties 1, 2, 3."""
        out = x + np.zeros_like(value)
        if self.party_id != 0:
            out[self._index(0)] += value
        return out

    def bilinear(self, x: np.ndarray, y: np.ndarray, op: BilinearOp) -> np.ndarray:
        rnd = _Round()
        finish = self._product(rnd, x, y, op, ARITH)
        self._exchange(rnd, f"{type(op).__name__.lower()}")
        return finish()

    def trunc(self, x: np.ndarray, frac_bits: int) -> np.ndarray:
        shape = x.shape[1:]
        if not 0 <= frac_bits <= MAX_VALUE_BITS:
            raise ValueError(f"cannot truncate by {frac_bits} bits")
        material = self._take(Request("trunc", shape, frac_bits=frac_bits))
        out = self._trunc(x.reshape(3, -1), frac_bits, material)
        return out.reshape(3, *shape)

    def _trunc(self, x: np.ndarray, f: int, m: dict[str, np.ndarray]) -> np.ndarray:
        me = self.party_id
        n = x.shape[1]
        shift = np.uint64(f)
        y = self.add_public(x, np.uint64(1 << MAX_VALUE_BITS))
        beta = m["beta"]
        rnd = _Round()
        u = None
        if me in (0, 1):
            high = (self._comp(beta, 2) + self._comp(beta, 3)) << TOP
            u = self._comp(y, 2) + self._comp(y, 3) + m["r_low"] + high
        to_2 = rnd.add(0, (2,), 1, n, u)
        to_3 = rnd.add(1, (3,), 0, n, u)
        self._exchange(rnd, "trunc: open y + r to parties 2, 3")
        words = bitslice.words_for(n)
        c_msb = packed = public = None
        if me in (2, 3):
            high = (self._comp(beta, 0) + self._comp(beta, 1)) << TOP
            c = rnd.get(to_2 if me == 2 else to_3) + self._comp(y, 0) + self._comp(y, 1) + high
            c_msb = c >> TOP
            packed = bitslice.pack_bits(c_msb)
            public = ((c & LOW63) >> shift) - np.uint64(1 << (MAX_VALUE_BITS - f))
        rnd = _Round()
        to_0 = rnd.add(2, (0,), 3, words, packed)
        to_1 = rnd.add(3, (1,), 2, words, packed)
        finish = self._joint(rnd, public, (2, 3), ARITH, n)
        self._exchange(rnd, "trunc: top bit and correction from parties 2, 3")
        if c_msb is None:
            c_msb = bitslice.unslice_bit(rnd.get(to_0 if me == 0 else to_1), n)
        w = self.add_public(beta * (ONE - np.uint64(2) * c_msb), c_msb)
        return finish() - m["r_low_shifted"] + np.uint64(1 << (63 - f)) * w

    def ltz(self, x: np.ndarray, bits: int = FULL_BITS) -> np.ndarray:
        shape = x.shape[1:]
        material = self._take(Request("ltz", shape, bits=bits))
        return self._compare(x.reshape(3, -1), material, False, bits).reshape(3, *shape)

    def relu(self, x: np.ndarray, bits: int = FULL_BITS) -> np.ndarray:
        shape = x.shape[1:]
        material = self._take(Request("relu", shape, bits=bits))
        return self._compare(x.reshape(3, -1), material, True, bits).reshape(3, *shape)

    def _compare(self, x: np.ndarray, m: dict[str, np.ndarray], relu: bool,
                 bits: int = FULL_BITS) -> np.ndarray:
        """[x < 0] (or relu(x)) for flat x in [-2^bits, 2^bits) (9 rounds over the whole
        ring). Over the whole ring, the top bit of a + b; narrowed, NOT bit k = `bits` of
        y = x + 2^k, from the k + 1 low bits of a and b only (k/63 of the input planes and
        AND gates, one round less each time k halves)."""
        me = self.party_id
        n = x.shape[1]
        k = circuit_width(bits)
        y = x if k == FULL_BITS else self.add_public(x, np.uint64(1 << k))
        words = bitslice.words_for(n)
        planes = (k + 1) * words
        a_bits = b_bits = None
        if me in (2, 3):
            a_bits = bitslice.slice_bits(self._comp(y, 0) + self._comp(y, 1))[:k + 1]
        if me in (0, 1):
            b_bits = bitslice.slice_bits(self._comp(y, 2) + self._comp(y, 3))[:k + 1]
        rnd = _Round()
        fin_a = self._joint(rnd, a_bits, (2, 3), BOOL, planes)
        fin_b = self._joint(rnd, b_bits, (0, 1), BOOL, planes)
        fin_xr = self._product(rnd, x, m["rho"], Mul(), ARITH) if relu else None
        self._exchange(rnd, "comparison: bit inputs")
        a = fin_a().reshape(3, k + 1, words)
        b = fin_b().reshape(3, k + 1, words)
        rnd = _Round()
        fin_g = self._product(rnd, a[:, :k], b[:, :k], And(), BOOL)
        self._exchange(rnd, "comparison: generate bits")
        g, p = fin_g(), a[:, :k] ^ b[:, :k]
        carry = binary_rep3.carry_out(self._and_pairs, g, p, "comparison")
        msb = a[:, k] ^ b[:, k] ^ carry  # narrowed: bit k of y, which is NOT [x < 0]
        rnd = _Round()
        fin_e = self._open_all(rnd, msb ^ m["rho_bits"])
        self._exchange(rnd, "comparison: open msb xor rho")
        masked = msb ^ m["rho_bits"]
        e_words = masked[0] ^ masked[1] ^ masked[2] ^ fin_e()
        if k < FULL_BITS:
            e_words = ~e_words  # [x < 0] xor rho, from NOT [x < 0] xor rho
        e = bitslice.unslice_bit(e_words, n)
        flip = ONE - np.uint64(2) * e
        if not relu:
            return self.add_public(m["rho"] * flip, e)
        return x - (x * e + fin_xr() * flip)

    # -- values from and to endpoints outside the computation (module notes) ----------------
    def input_external(self, source: int, shape: tuple[int, ...]) -> np.ndarray:
        """[r] + c: r from seeds drawn from the triple keys, which every party sends
        `source` for the components it holds; c = x - r from `source`, vouched for to every
        other party (compared at the check before the next reveal)."""
        shape = tuple(shape)
        size = int(np.prod(shape, dtype=np.int64))
        seeds = {j: self._mask(j, SEED_WORDS) for j in range(N)}
        held = [(self.party_id + 1 + c) % N for c in range(3)]
        what = f"input from {self.channel.who(source)}"
        masked = self.channel.receive_external(
            source, shape, f"as the masked {what}", tuple(range(N)),
            outgoing={source: np.concatenate([seeds[j] for j in held])})
        digest = external.digest(masked)
        for peer in self.peers:
            self._vouch(peer, digest, what)
        self._unchecked = True
        parts = {j: PRG(seeds[j].tobytes()).ring_elements(size) for j in held}
        parts[self.party_id] = np.zeros(size, dtype=np.uint64)
        return self.add_public(self._stack(parts).reshape(3, *shape), masked)

    def reveal_external(self, x: np.ndarray, target: int) -> None:
        """Check everything so far, then send `target` this party's three components."""
        self._check(f"the output to {self.channel.who(target)}")
        self.channel.send(target, np.ascontiguousarray(x.reshape(3, -1)))

    @classmethod
    def give_external(cls, channel: Channel, ends: external.Endpoints,
                      value: np.ndarray) -> None:
        """Take the three copies of each mask seed, refuse unless they agree, send x - r."""
        _check_compute(ends)
        external.give_by_seeds(channel, ends, as_ring(np.asarray(value)), N, 3, SEED_WORDS,
                               _copies)

    @classmethod
    def take_external(cls, channel: Channel, ends: external.Endpoints,
                      shape: tuple[int, ...]) -> np.ndarray:
        """Take the three copies of each component, refuse unless they agree, add them."""
        _check_compute(ends)
        return external.take_components(channel, ends, tuple(shape), 3, N, _copies)


def _copies(got: dict[int, np.ndarray], j: int) -> dict[int, np.ndarray]:
    """Component j's copies: party p sends those of components p+1, p+2, p+3 in order."""
    return _confirmed_first({p: rows[(j - p - 1) % N] for p, rows in got.items() if p != j})


def _check_compute(ends: external.Endpoints) -> None:
    if ends.compute != N:
        raise ConfigError(f"rep4 runs on exactly {N} compute parties, not {ends.compute}")


def _confirmed_first(copies: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """The copies with one that another copy confirms first, so that a refusal names the
    party whose copy differs from the others (one corrupt party sends at most one)."""
    for p, value in copies.items():
        if sum(np.array_equal(value, other) for other in copies.values()) >= 2:
            return {p: value, **{q: v for q, v in copies.items() if q != p}}
    return copies
