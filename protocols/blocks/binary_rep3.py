"""Packed binary replicated sharing for 3 parties, with every AND gate verified: the bit
circuits of `replicated_mac` (comparison, truncation) at one bit per gate instead of a
128-bit authenticated product per gate.

A shared bit vector is x = x_0 xor x_1 xor x_2, party i holding (x_i, x_{i+1}) as a uint64
array (2, *shape), 64 bits a word (see `protocols.blocks.bitslice`). XOR and operations with public
words are local. AND is Araki et al.'s replicated product (CCS 2016): z_i = x_i y_i xor
x_i y_{i+1} xor x_{i+1} y_i xor F(k_i) xor F(k_{i+1}), sent to the previous party: one bit per
gate, and a malicious party can only add an error of its choice to the result (an "additive
attack"), because every input it uses is also held by an honest party.

Verification (Furukawa, Lindell, Nof, Weinstein, EUROCRYPT 2017; Araki et al., S&P 2017:
"cut-and-bucket"). Every circuit AND (x, y, z) is logged. At a check:
1. random triples (a, b, c = a AND b) are made with the same product (a and b from the
   pairwise keys), one round;
2. a public coin (one round, drawn after those messages were sent) permutes the triples' words;
3. the first `OPENED` words are opened and must satisfy c = a AND b (cut-and-choose); the rest
   form buckets of B words; the first triple of each bucket is checked against the other B-1
   by sacrifice (open rho = a xor a', sigma = b xor b', then c xor c' xor sigma a' xor rho b'
   xor rho sigma must be 0), and each circuit AND word is checked against one bucket's first
   triple the same way (open rho = x xor a, sigma = y xor b; z xor c xor sigma a xor rho b xor
   rho sigma must be 0). All openings go in one round.
Openings are redundant: party i gets its missing component from the previous party and
both parties that hold that component hash it into the stream they later compare ("vouch").
Values that must be zero are compared by hash alone: v_i xor v_{i+1} (party i) against
v_{i+2} (party i+1), for every neighbouring pair, so both honest parties see any error.
The vouch digests are compared in the caller's final check round, before anything is
revealed, and an opened triple that fails locally poisons this party's digests, so its
honest neighbour aborts too.

Words, not bits, are permuted (a bit-level shuffle of 10^8 items would cost seconds). Each
bit position then runs its own bucketing experiment over the same permutation of words, so
the adversary's chance is at most that of one experiment over `buckets` items: a bad triple
passes only if its whole bucket is bad, probability about buckets * B! / (buckets B)^B for
the cheapest attack (B bad items). `bucket_size` picks the smallest B that keeps this under
2^-40, with at least `MIN_BUCKETS` buckets (B = 3 from 494,304 buckets, about 2^18.9, less
than one clip of the reference CNN; B = 4 at the minimum). `bucket_plan` may pad to reach a
smaller B when that costs less traffic.

Known limit of the module alone: its vouches are compared only by the caller's check, so an
opening after the last check is unprotected; `ReplicatedMac` opens binary values only inside
`verify` and always checks before it reveals.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import numba
import numpy as np

from mpc.net.channel import Channel
from mpc.net.expect import Expect
from mpc.prg import PRG
from protocols.blocks import bitslice

U64 = np.uint64
STAT_BITS = 40
MIN_BUCKETS = 1 << 14
OPENED = 64  # words opened by the cut-and-choose (64 triples at each bit position)
#: Logged AND words after which the log is verified at once (the verification's working set is
#: about 150 bytes a word per party), so memory does not grow with the computation.
VERIFY_EVERY = 1 << 20


def bucket_size(buckets: int) -> int:
    """Smallest bucket size B >= 2 with buckets * B! / (buckets * B)^B <= 2^-STAT_BITS."""
    for b in range(2, 32):
        log2_win = (math.log2(buckets) + math.log2(math.factorial(b))
                    - b * math.log2(buckets * b))
        if log2_win <= -STAT_BITS:
            return b
    raise ValueError(f"no bucket size reaches 2^-{STAT_BITS} with {buckets} buckets")


def min_buckets(size: int) -> int:
    """The fewest buckets at which bucket size `size` keeps the bound under 2^-STAT_BITS."""
    low, high = 1, 1 << 40
    while low < high:
        mid = (low + high) // 2
        if bucket_size(mid) <= size:
            high = mid
        else:
            low = mid + 1
    return low


def bucket_plan(gates: int) -> tuple[int, int]:
    """(buckets, B) for verifying `gates` words at the least traffic: B triples a bucket and
    2 (B - 1) opened words for its sacrifices. Padding up to the buckets a smaller B needs
    can be cheaper than a larger B (from about 2^18.4 gate words, B = 3 on buckets padded
    to 2^18.9 beats B = 4); never fewer than MIN_BUCKETS."""
    need = max(gates, MIN_BUCKETS)
    largest = bucket_size(need)
    plans = [(max(need, min_buckets(b)), b) for b in range(max(2, largest - 2), largest + 1)]
    return min(plans, key=lambda plan: plan[0] * (3 * plan[1] - 2))


@numba.njit(cache=True, nogil=True)
def _fisher_yates(randomness: np.ndarray) -> np.ndarray:  # pragma: no cover - numba
    n = randomness.size
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = randomness[i] % np.uint64(i + 1)
        tmp = perm[i]
        perm[i] = perm[j]
        perm[j] = tmp
    return perm


def permutation(seed: bytes, n: int) -> np.ndarray:
    """A uniform permutation of range(n) from a public coin (Fisher-Yates on AES output;
    the modulo bias is below n / 2^64)."""
    return _fisher_yates(PRG(seed[:16]).ring_elements(n))


def warmup() -> None:
    """Load this module's compiled kernels (numba's cache) before anything is timed."""
    permutation(bytes(16), 2)
    bitslice.slice_bits(np.zeros(1, dtype=U64))
    pair = np.zeros((2, OPENED + 2), dtype=U64)
    rows = _scatter_rows(pair, pair, pair, permutation(bytes(16), OPENED + 2))
    gates = np.zeros((1, 6), dtype=U64)
    _must_be_zero(rows, gates, _openings(rows, gates, 1, 2)[0], 1, 2, True, False)


def xor_public(x: np.ndarray, value: np.ndarray, party_id: int) -> np.ndarray:
    """x xor a public word array: it joins component 0 (party 0's first, party 2's second)."""
    out = x.copy()
    if party_id == 0:
        out[0] ^= value
    elif party_id == 2:
        out[1] ^= value
    return out


class BinaryRep3:
    """One party's side of the verified binary sharing; `channel` carries its messages."""

    def __init__(self, channel: Channel, party_id: int, key_own: PRG, key_next: PRG) -> None:
        self.channel = channel
        self.party_id = i = party_id
        self.prev, self.next = (i - 1) % 3, (i + 1) % 3
        self.key_own, self.key_next = key_own, key_next  # k_i and k_{i+1}
        self.vouch = {p: hashlib.sha256(b"binary_rep3") for p in (self.prev, self.next)}
        self.poison: str | None = None  # the first failure seen locally
        self._compared = True
        self._log: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._logged_words = 0
        self.verified_words = 0

    @property
    def pending(self) -> bool:
        """Whether logged gates await verification, or verified ones (and openings) await the
        comparison of vouch digests, which only the caller's check does."""
        return bool(self._log) or not self._compared

    def compared(self) -> None:
        """The caller compared the vouch digests (and honoured `poison`)."""
        self._compared = True

    # -- sharing -------------------------------------------------------------------------
    def components(self, own: np.ndarray | None, nxt: np.ndarray | None,
                   component: int) -> np.ndarray:
        """The sharing of a value known to the two holders of `component` (party j and j-1):
        the value there, zero in the other components. `own`/`nxt` are this party's copies
        of its first/second component (only the one that is `component` is used)."""
        template = own if own is not None else nxt
        out = np.zeros((2, *template.shape), dtype=U64)
        if component == self.party_id:
            out[0] = own
        elif component == self.next:
            out[1] = nxt
        return out

    def random(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.stack([self.key_own.ring_elements(shape), self.key_next.ring_elements(shape)])

    # -- AND -----------------------------------------------------------------------------
    def _products(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                  step: str) -> list[np.ndarray]:
        """The replicated AND of each pair, one round, not logged."""
        outs = []
        for x, y in pairs:
            if x.shape != y.shape:
                raise ValueError(f"AND of shapes {x.shape} and {y.shape}")
            z = (x[0] & (y[0] ^ y[1])) ^ (x[1] & y[0])
            z ^= self.key_own.ring_elements(z.shape)
            z ^= self.key_next.ring_elements(z.shape)
            outs.append(z)
        flat = np.concatenate([z.reshape(-1) for z in outs]) if outs else np.zeros(0, U64)
        got = self.channel.exchange({self.prev: flat}, (self.next,),
                                    expect=Expect.uint64(flat.size), what=f"in {step}")[self.next]
        results, offset = [], 0
        for z in outs:
            results.append(np.stack([z, got[offset:offset + z.size].reshape(z.shape)]))
            offset += z.size
        return results

    def and_(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]],
             step: str) -> list[np.ndarray]:
        """x AND y for each pair (one round); every gate is logged for verification."""
        results = self._products(pairs, step)
        for (x, y), z in zip(pairs, results, strict=True):
            # copies: a caller may reuse its arrays in place after the AND
            self._log.append((x.reshape(2, -1).copy(), y.reshape(2, -1).copy(),
                              z.reshape(2, -1).copy()))
            self._logged_words += z[0].size
        if self._logged_words >= VERIFY_EVERY:
            self.verify(f"{step} (log full)")
        return results

    # -- opening and zero checks ---------------------------------------------------------
    def _open(self, v: np.ndarray, step: str) -> np.ndarray:
        """Open (2, m) to everyone: own component to the next party; the received one is
        vouched for with the next party, which holds it too."""
        self._compared = False
        got = self.channel.exchange({self.next: np.ascontiguousarray(v[0])}, (self.prev,),
                                    expect=Expect.uint64(v.shape[1]),
                                    what=f"in {step}")[self.prev]
        self.vouch[self.next].update(got.tobytes())
        self.vouch[self.prev].update(np.ascontiguousarray(v[1]).tobytes())
        return v[0] ^ v[1] ^ got

    def _fail(self, what: str) -> None:
        """Poison this party's digests, keeping the first cause for the error message."""
        if self.poison is None:
            self.poison = what

    def _expect_zero(self, v: np.ndarray) -> None:
        """Vouch that the shared (2, m) is zero: v_i xor v_{i+1} here must equal v_{i+2} at
        the next party, and v_{i+1} here must equal v_{i-1} xor v_i at the previous one."""
        self.vouch[self.next].update((v[0] ^ v[1]).tobytes())
        self.vouch[self.prev].update(np.ascontiguousarray(v[1]).tobytes())

    def _coin(self, step: str) -> bytes:
        """A public coin from the three pairwise keys: each component is sent by both of its
        holders to the party lacking it, who compares (one round)."""
        own, nxt = self.key_own.random_bytes(16), self.key_next.random_bytes(16)
        got = self.channel.exchange(
            {self.prev: np.frombuffer(nxt, np.uint8), self.next: np.frombuffer(own, np.uint8)},
            expect=Expect.uint8(16), what=f"as a coin in {step}")
        a, b = got[self.next], got[self.prev]
        if not np.array_equal(a, b):
            self._fail(f"{step}: parties {self.prev} and {self.next} sent different coins")
        parts = {self.party_id: own, self.next: nxt, self.prev: a.tobytes()}
        return hashlib.sha256(b"".join(parts[j] for j in range(3))).digest()

    # -- verification --------------------------------------------------------------------
    def verify(self, step: str) -> None:
        """Check every logged AND (3 rounds; none if nothing is logged). A failure shows in
        this party's vouch digests (compared by the caller) or poisons them.

        Triples are held as rows (a_i, a_i+1, b_i, b_i+1, c_i, c_i+1), and triple k goes to
        row perm[k] (the inverse of a uniform permutation is uniform): one pass of sequential
        reads and one 48-byte write per word."""
        if not self._log:
            return
        gates = np.empty((sum(e[0].shape[1] for e in self._log), 6), dtype=U64)
        offset = 0
        for entry in self._log:
            width = entry[0].shape[1]
            for k, part in enumerate(entry):
                gates[offset:offset + width, 2 * k:2 * k + 2] = part.T
            offset += width
        self._log, self._logged_words = [], 0
        n = gates.shape[0]
        buckets, size = bucket_plan(n)
        total = OPENED + buckets * size
        a, b = self.random((total,)), self.random((total,))
        (c,) = self._products([(a, b)], f"{step}: verification triples")
        rows = _scatter_rows(a, b, c, permutation(self._coin(f"{step}: bucket coin"), total))
        del a, b, c

        opening = _openings(rows, gates, buckets, size)
        opened = self._open(opening, f"{step}: verification openings")
        cut_a, cut_b, cut_c = (opened[k * OPENED:(k + 1) * OPENED] for k in range(3))
        if not np.array_equal(cut_c, cut_a & cut_b):
            self._fail(f"{step}: an opened triple is not a AND b (cut-and-choose)")
        self._expect_zero(_must_be_zero(rows, gates, opened, buckets, size,
                                        self.party_id == 0, self.party_id == 2))
        self.verified_words += n

@numba.njit(cache=True, nogil=True)
def _scatter_rows(a: np.ndarray, b: np.ndarray, c: np.ndarray,
                  perm: np.ndarray) -> np.ndarray:  # pragma: no cover - numba
    """Rows (total, 6): row perm[k] = (a_0, a_1, b_0, b_1, c_0, c_1) of triple k."""
    rows = np.empty((perm.size, 6), dtype=np.uint64)
    for k in range(perm.size):
        r = perm[k]
        rows[r, 0] = a[0, k]
        rows[r, 1] = a[1, k]
        rows[r, 2] = b[0, k]
        rows[r, 3] = b[1, k]
        rows[r, 4] = c[0, k]
        rows[r, 5] = c[1, k]
    return rows


@numba.njit(cache=True, nogil=True)
def _openings(rows: np.ndarray, gates: np.ndarray, buckets: int,
              size: int) -> np.ndarray:  # pragma: no cover - numba
    """What the verification opens, (2, m): the cut-and-choose triples' a, b, c; for each
    bucket and each triple t after its first f, rho = a_f xor a_t then sigma = b_f xor b_t;
    for each circuit gate k, x_k xor a_f(k) then y_k xor b_f(k)."""
    n = gates.shape[0]
    pairs = buckets * (size - 1)
    out = np.empty((2, 3 * OPENED + 2 * pairs + 2 * n), dtype=np.uint64)
    for h in range(2):
        for k in range(3):
            for w in range(OPENED):
                out[h, k * OPENED + w] = rows[w, 2 * k + h]
    base = 3 * OPENED
    for q in range(buckets):
        f = OPENED + q * size
        for t in range(1, size):
            j = base + q * (size - 1) + t - 1
            for h in range(2):
                out[h, j] = rows[f, h] ^ rows[f + t, h]
                out[h, j + pairs] = rows[f, 2 + h] ^ rows[f + t, 2 + h]
    base += 2 * pairs
    for k in range(n):
        f = OPENED + k * size
        for h in range(2):
            out[h, base + k] = gates[k, h] ^ rows[f, h]
            out[h, base + n + k] = gates[k, 2 + h] ^ rows[f, 2 + h]
    return out


@numba.njit(cache=True, nogil=True)
def _must_be_zero(rows: np.ndarray, gates: np.ndarray, opened: np.ndarray, buckets: int,
                  size: int, holds_first: bool,
                  holds_second: bool) -> np.ndarray:  # pragma: no cover - numba
    """The shares (2, m) that are zero iff every sacrifice and every gate check passes:
    c_f xor c_t xor sigma a_t xor rho b_t xor rho sigma for each bucket's pairs, then
    z xor c_f xor sigma a_f xor rho b_f xor rho sigma for each gate (the public term
    joins component 0, held first by party 0 and second by party 2)."""
    n = gates.shape[0]
    pairs = buckets * (size - 1)
    out = np.empty((2, pairs + n), dtype=np.uint64)
    base = 3 * OPENED
    for q in range(buckets):
        f = OPENED + q * size
        for t in range(1, size):
            j = q * (size - 1) + t - 1
            rho = opened[base + j]
            sigma = opened[base + pairs + j]
            for h in range(2):
                v = (rows[f, 4 + h] ^ rows[f + t, 4 + h] ^ (sigma & rows[f + t, h])
                     ^ (rho & rows[f + t, 2 + h]))
                if (h == 0 and holds_first) or (h == 1 and holds_second):
                    v ^= rho & sigma
                out[h, j] = v
    base += 2 * pairs
    for k in range(n):
        f = OPENED + k * size
        rho = opened[base + k]
        sigma = opened[base + n + k]
        for h in range(2):
            v = gates[k, 4 + h] ^ rows[f, 4 + h] ^ (sigma & rows[f, h]) ^ (rho & rows[f, 2 + h])
            if (h == 0 and holds_first) or (h == 1 and holds_second):
                v ^= rho & sigma
            out[h, pairs + k] = v
    return out


# -- circuits ------------------------------------------------------------------------------

def majority(engine: BinaryRep3, a: np.ndarray, b: np.ndarray, c: np.ndarray,
             step: str) -> np.ndarray:
    """maj(a, b, c) = ((a xor c) AND (b xor c)) xor c: the carry of a full adder (1 round)."""
    (t,) = engine.and_([(a ^ c, b ^ c)], step)
    return t ^ c


def carry_out(and_pairs: Callable[[list[tuple[np.ndarray, np.ndarray]], str],
                                  list[np.ndarray]],
              g: np.ndarray, p: np.ndarray, step: str) -> np.ndarray:
    """The carry out of the top of an addition with generate bits g and propagate bits p
    (components, L, W), bit 0 first: a balanced tree, one round per level, (g, p) o (g', p')
    = (g xor p g', p p') (g and p g' never both 1, so xor is or). `and_pairs(pairs, step)`
    is the scheme's AND of each pair of bit-sliced sharings, one round for all of them
    (`BinaryRep3.and_` here, rep4's redundant products there)."""
    level = 0
    while g.shape[1] > 1:
        L = g.shape[1]
        pairs = L // 2
        g_hi, g_lo = g[:, 1:2 * pairs:2], g[:, 0:2 * pairs:2]
        p_hi, p_lo = p[:, 1:2 * pairs:2], p[:, 0:2 * pairs:2]
        level += 1
        step_here = f"{step}: carry level {level}"
        if pairs > 1:  # the bottom group's propagate is never needed
            pg, pp = and_pairs([(p_hi, g_lo), (p_hi[:, 1:], p_lo[:, 1:])], step_here)
            new_p = np.concatenate([np.zeros_like(pp[:, :1]), pp], axis=1)
        else:
            (pg,) = and_pairs([(p_hi, g_lo)], step_here)
            new_p = np.zeros_like(pg)
        new_g = g_hi ^ pg
        if L % 2:
            new_g = np.concatenate([new_g, g[:, -1:]], axis=1)
            new_p = np.concatenate([new_p, p[:, -1:]], axis=1)
        g, p = new_g, new_p
    return g[:, 0]
