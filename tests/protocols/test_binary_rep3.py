"""Tests of `protocols.blocks.binary_rep3`: packed binary replicated sharing for 3 parties whose AND
gates are verified by cut-and-bucket triple sacrifice.

Pure functions first (bucket sizes against the exact bound, the public-coin permutation, the
two numba kernels against numpy twins written from their docstrings, and a three-party
simulation of the kernels on honest and on bad triples). Then the engine `protocol.binary` of
`replicated_mac` over the real in-process runtime: AND, majority and carry_out against
plaintext, followed by the check that verifies the gate log. Last, active security: every
single altered message of every party makes the run abort, aimed alterations of the
verification's own messages are caught, and a failed cut-and-choose at one party makes both
of its neighbours abort (the "poison").
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from itertools import pairwise

import numpy as np
import pytest
from conftest import run_secure
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpc.errors import CheatingDetected, ProtocolError
from mpc.net.expect import Expect
from mpc.net.inprocess import InProcessNetwork
from mpc.prg import PRG
from protocols.blocks import binary_rep3 as br
from protocols.blocks import bitslice
from protocols.blocks.binary_rep3 import (
    MIN_BUCKETS,
    OPENED,
    STAT_BITS,
    BinaryRep3,
    bucket_size,
    carry_out,
    majority,
    permutation,
    xor_public,
)
from protocols.run import run
from protocols.schemes.replicated_mac import ReplicatedMac
from protocols.testing.tamper import Tamper, honest_message_counts

U64 = np.uint64
SCHEME, N = "replicated_mac", 3
EXAMPLES = settings(max_examples=6, deadline=None)
words = st.integers(0, (1 << 64) - 1)


def word_arrays(shape) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.uint64, shape, elements=words)


def random_words(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(0, 1 << 64, size=shape, dtype=np.uint64)


# -- bucket sizes ------------------------------------------------------------------------------

def safe(buckets: int, size: int) -> bool:
    """buckets * size! / (buckets * size)^size <= 2^-STAT_BITS, in exact integers."""
    return (buckets * math.factorial(size)) << STAT_BITS <= (buckets * size) ** size


def threshold(size: int) -> int:
    """The fewest buckets at which `size` is safe (safety grows with the bucket count)."""
    lo, hi = 1, 1 << 60
    while lo < hi:
        mid = (lo + hi) // 2
        if safe(mid, size):
            hi = mid
        else:
            lo = mid + 1
    return lo


@settings(max_examples=200, deadline=None)
@given(buckets=st.integers(1, 1 << 48) | st.sampled_from([MIN_BUCKETS, 1 << 20, 1 << 39]))
def test_bucket_size_is_the_smallest_safe_size(buckets):
    size = bucket_size(buckets)
    assert size >= 2
    assert safe(buckets, size)
    assert size == 2 or not safe(buckets, size - 1)


@pytest.mark.parametrize("size", [2, 3, 4, 5, 6])
def test_bucket_size_switches_exactly_at_the_exact_bound(size):
    """At the first bucket count where `size` is safe, and one bucket below it (the float
    computation in bucket_size must not be off by one at the boundary)."""
    t = threshold(size)
    assert t > 1 and threshold(size + 1) < t
    assert bucket_size(t) == size
    assert bucket_size(t - 1) == size + 1


def test_bucket_size_pinned_values():
    assert bucket_size(MIN_BUCKETS) == 4
    assert bucket_size(1 << 20) == 3
    assert bucket_size(1 << 39) == 2
    assert bucket_size(1) == 31  # one bucket needs almost all of range(2, 32)


@settings(max_examples=100, deadline=None)
@given(a=st.integers(1, 1 << 45), b=st.integers(1, 1 << 45))
def test_bucket_size_does_not_grow_with_the_bucket_count(a, b):
    small, large = sorted((a, b))
    assert bucket_size(small) >= bucket_size(large)


def test_bucket_size_is_non_increasing_over_a_sweep():
    for counts in ([1 << k for k in range(46)], list(range(1, 3000))):
        sizes = [bucket_size(c) for c in counts]
        assert all(x >= y for x, y in pairwise(sizes))
    assert bucket_size(1 << 45) == 2


# -- the public-coin permutation -----------------------------------------------------------------

def fisher_yates_reference(seed: bytes, n: int) -> list[int]:
    """Fisher-Yates on the AES stream of the coin's first 16 bytes, in Python ints."""
    randomness = PRG(seed[:16]).ring_elements(n)
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(randomness[i]) % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


@settings(max_examples=40, deadline=None)
@given(seed=st.binary(min_size=16, max_size=32), n=st.integers(0, 400))
def test_permutation_is_a_deterministic_permutation(seed, n):
    perm = permutation(seed, n)
    assert perm.shape == (n,)
    assert sorted(perm.tolist()) == list(range(n))
    assert np.array_equal(permutation(seed, n), perm)
    assert perm.tolist() == fisher_yates_reference(seed, n)
    # the coin is a 32-byte digest; only its first 16 bytes key the PRG
    assert np.array_equal(permutation(seed[:16] + bytes(16), n), perm)


@settings(max_examples=40, deadline=None)
@given(first=st.binary(min_size=16, max_size=16), second=st.binary(min_size=16, max_size=16))
def test_different_seeds_give_different_permutations(first, second):
    if first == second:
        return
    # two equal uniform permutations of 64 items: probability 1/64!, never
    assert not np.array_equal(permutation(first, 64), permutation(second, 64))


def chi_square(counts: Counter, cells: list, total: int) -> float:
    expected = total / len(cells)
    return sum((counts[c] - expected) ** 2 / expected for c in cells)


def test_permutation_is_close_to_uniform():
    """Fixed seeds, so deterministic. The bounds (chi-square 40 on 3 and 5 degrees of freedom)
    fail only for a grossly biased shuffle (p < 1e-7 for a uniform one)."""
    seeds = [k.to_bytes(16, "little") for k in range(4000)]
    where = Counter(int(np.flatnonzero(permutation(s, 4) == 0)[0]) for s in seeds)
    assert chi_square(where, list(range(4)), len(seeds)) < 40, where
    last = Counter(int(permutation(s, 4)[3]) for s in seeds)
    assert chi_square(last, list(range(4)), len(seeds)) < 40, last
    seeds = [(k + 10**6).to_bytes(16, "big") for k in range(3000)]
    whole = Counter(tuple(permutation(s, 3).tolist()) for s in seeds)
    cells = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    assert set(whole) == set(cells)
    assert chi_square(whole, cells, len(seeds)) < 40, whole


# -- the numba kernels against numpy ---------------------------------------------------------------

def openings_reference(rows: np.ndarray, gates: np.ndarray, buckets: int,
                       size: int) -> np.ndarray:
    """(2, m): cut-and-choose a, b, c; every bucket's rho = a_f ^ a_t (all of them), then
    sigma = b_f ^ b_t; every gate's x ^ a_f(k), then y ^ b_f(k), f(k) the first triple of
    bucket k."""
    n = gates.shape[0]
    block = rows[OPENED:OPENED + buckets * size].reshape(buckets, size, 6)
    firsts = rows[OPENED + size * np.arange(n, dtype=np.int64)]
    out = []
    for h in range(2):
        cut = [rows[:OPENED, 2 * k + h] for k in range(3)]
        rho = (block[:, :1, h] ^ block[:, 1:, h]).reshape(-1)
        sigma = (block[:, :1, 2 + h] ^ block[:, 1:, 2 + h]).reshape(-1)
        out.append(np.concatenate([*cut, rho, sigma, gates[:, h] ^ firsts[:, h],
                                   gates[:, 2 + h] ^ firsts[:, 2 + h]]))
    return np.stack(out)


def must_be_zero_reference(rows: np.ndarray, gates: np.ndarray, opened: np.ndarray,
                           buckets: int, size: int, holds_first: bool,
                           holds_second: bool) -> np.ndarray:
    """(2, pairs + n): c_f ^ c_t ^ sigma a_t ^ rho b_t (^ rho sigma in component 0) for each
    bucket pair, then z ^ c_f ^ sigma a_f ^ rho b_f (^ rho sigma) for each gate."""
    n = gates.shape[0]
    pairs = buckets * (size - 1)
    base = 3 * OPENED
    rho = opened[base:base + pairs].reshape(buckets, size - 1)
    sigma = opened[base + pairs:base + 2 * pairs].reshape(buckets, size - 1)
    g_rho = opened[base + 2 * pairs:base + 2 * pairs + n]
    g_sigma = opened[base + 2 * pairs + n:base + 2 * pairs + 2 * n]
    block = rows[OPENED:OPENED + buckets * size].reshape(buckets, size, 6)
    first, rest = block[:, :1], block[:, 1:]
    firsts = rows[OPENED + size * np.arange(n, dtype=np.int64)]
    out = []
    for h, public in ((0, holds_first), (1, holds_second)):
        v = (first[..., 4 + h] ^ rest[..., 4 + h] ^ (sigma & rest[..., h])
             ^ (rho & rest[..., 2 + h]))
        w = (gates[:, 4 + h] ^ firsts[:, 4 + h] ^ (g_sigma & firsts[:, h])
             ^ (g_rho & firsts[:, 2 + h]))
        if public:
            v = v ^ (rho & sigma)
            w = w ^ (g_rho & g_sigma)
        out.append(np.concatenate([v.reshape(-1), w]))
    return np.stack(out)


def layout(buckets: int, size: int, n: int) -> tuple[int, int]:
    """(words of the openings, words that must be zero)."""
    pairs = buckets * (size - 1)
    return 3 * OPENED + 2 * pairs + 2 * n, pairs + n


@settings(max_examples=25, deadline=None)
@given(buckets=st.integers(1, 24), size=st.integers(2, 5), data=st.data(),
       seed=st.integers(0, 2**32 - 1))
def test_kernels_match_numpy(buckets, size, data, seed):
    n = data.draw(st.integers(0, buckets), label="gates")
    rng = np.random.default_rng(seed)
    rows = random_words(rng, (OPENED + buckets * size, 6))
    gates = random_words(rng, (n, 6))
    m, zeros = layout(buckets, size, n)

    got = br._openings(rows, gates, buckets, size)
    assert got.dtype == np.uint64 and got.shape == (2, m)
    assert np.array_equal(got, openings_reference(rows, gates, buckets, size))

    opened = random_words(rng, m)
    for holds_first in (False, True):
        for holds_second in (False, True):
            got = br._must_be_zero(rows, gates, opened, buckets, size, holds_first, holds_second)
            want = must_be_zero_reference(rows, gates, opened, buckets, size, holds_first,
                                          holds_second)
            assert got.dtype == np.uint64 and got.shape == (2, zeros)
            assert np.array_equal(got, want)


def replicate(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Party i's (x_i, x_{i+1}) from the three components."""
    return [np.stack([parts[i], parts[(i + 1) % 3]]) for i in range(3)]


def split(value: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Three components whose xor is `value`."""
    a, b = random_words(rng, value.shape), random_words(rng, value.shape)
    return [a, b, value ^ a ^ b]


def simulate(rows_parts, gate_parts, buckets, size):
    """Run both kernels at the three parties as `verify` does: (opened, zero shares)."""
    rows = [np.ascontiguousarray(r) for r in rows_parts]
    gates = [np.ascontiguousarray(g) for g in gate_parts]
    openings = [br._openings(rows[i], gates[i], buckets, size) for i in range(3)]
    for i in range(3):  # the openings are a replicated sharing too
        assert np.array_equal(openings[i][1], openings[(i + 1) % 3][0])
    opened = openings[0][0] ^ openings[1][0] ^ openings[2][0]
    zero = [br._must_be_zero(rows[i], gates[i], opened, buckets, size, i == 0, i == 2)
            for i in range(3)]
    for i in range(3):
        assert np.array_equal(zero[i][1], zero[(i + 1) % 3][0])
    return opened, zero[0][0] ^ zero[1][0] ^ zero[2][0]


def party_rows(a, b, c) -> list[np.ndarray]:
    """Party i's rows (a_i, a_i+1, b_i, b_i+1, c_i, c_i+1) from three component lists."""
    return [np.stack([a[i], a[(i + 1) % 3], b[i], b[(i + 1) % 3], c[i], c[(i + 1) % 3]],
                     axis=1) for i in range(3)]


@settings(max_examples=20, deadline=None)
@given(buckets=st.integers(1, 12), size=st.integers(2, 4), data=st.data(),
       seed=st.integers(0, 2**32 - 1))
def test_kernels_accept_good_triples_and_locate_one_bad_bit(buckets, size, data, seed):
    """Three parties' kernels on real sharings: honest triples and gates give zero everywhere
    (and the cut-and-choose triples open to a, b, a AND b); one flipped bit in a triple's or a
    gate's c shows at that bit of exactly the checks that use it."""
    n = data.draw(st.integers(0, buckets), label="gates")
    rng = np.random.default_rng(seed)
    total = OPENED + buckets * size
    a, b = random_words(rng, total), random_words(rng, total)
    x, y = random_words(rng, n), random_words(rng, n)
    a_parts, b_parts, c_parts = split(a, rng), split(b, rng), split(a & b, rng)
    x_parts, y_parts, z_parts = split(x, rng), split(y, rng), split(x & y, rng)
    pairs = buckets * (size - 1)

    opened, zero = simulate(party_rows(a_parts, b_parts, c_parts),
                            party_rows(x_parts, y_parts, z_parts), buckets, size)
    assert np.array_equal(opened[:OPENED], a[:OPENED])
    assert np.array_equal(opened[OPENED:2 * OPENED], b[:OPENED])
    assert np.array_equal(opened[2 * OPENED:3 * OPENED], (a & b)[:OPENED])
    assert zero.shape == (pairs + n,) and not zero.any()

    bit = U64(1) << U64(data.draw(st.integers(0, 63), label="bit"))
    component = data.draw(st.integers(0, 2), label="component")
    where = data.draw(st.sampled_from(["cut", "triple", "gate"] if n else ["cut", "triple"]),
                      label="where")
    bad_c, bad_z = [c.copy() for c in c_parts], [z.copy() for z in z_parts]
    expected = np.zeros(pairs + n, dtype=U64)
    if where == "cut":
        word = data.draw(st.integers(0, OPENED - 1), label="word")
        bad_c[component][word] ^= bit
    elif where == "triple":
        q = data.draw(st.integers(0, buckets - 1), label="bucket")
        t = data.draw(st.integers(0, size - 1), label="position in bucket")
        bad_c[component][OPENED + q * size + t] ^= bit
        if t == 0:  # the bucket's first triple: every sacrifice of the bucket and its gate
            expected[q * (size - 1):(q + 1) * (size - 1)] = bit
            if q < n:
                expected[pairs + q] = bit
        else:
            expected[q * (size - 1) + t - 1] = bit
    else:
        k = data.draw(st.integers(0, n - 1), label="gate")
        bad_z[component][k] ^= bit
        expected[pairs + k] = bit
    opened, zero = simulate(party_rows(a_parts, b_parts, bad_c),
                            party_rows(x_parts, y_parts, bad_z), buckets, size)
    assert np.array_equal(zero, expected)
    cut_fails = not np.array_equal(opened[2 * OPENED:3 * OPENED],
                                   opened[:OPENED] & opened[OPENED:2 * OPENED])
    assert cut_fails == (where == "cut")


# -- local pieces of the engine ----------------------------------------------------------------

KEYS = [bytes([k]) * 16 for k in (11, 22, 33)]


def local_engines() -> list[BinaryRep3]:
    """Three engines with the pairwise keys of a real run but no channel (local calls only)."""
    return [BinaryRep3(None, i, PRG(KEYS[i]), PRG(KEYS[(i + 1) % 3])) for i in range(3)]


@settings(max_examples=20, deadline=None)
@given(value=word_arrays(st.integers(1, 6)), component=st.integers(0, 2))
def test_components_place_the_value_in_one_component(value, component):
    engines = local_engines()
    junk = ~value
    shares = []
    for engine in engines:
        i = engine.party_id
        own = value if i == component else junk
        nxt = value if engine.next == component else junk
        share = engine.components(own, nxt, component)
        assert share.dtype == np.uint64 and share.shape == (2, *value.shape)
        shares.append(share)
        # the copy that is not this component may be absent
        if i == component:
            assert np.array_equal(engine.components(value, None, component), share)
        elif engine.next == component:
            assert np.array_equal(engine.components(None, value, component), share)
    for i in range(3):
        assert np.array_equal(shares[i][1], shares[(i + 1) % 3][0])
        want = value if i == component else np.zeros_like(value)
        assert np.array_equal(shares[i][0], want)


@settings(max_examples=20, deadline=None)
@given(value=word_arrays(st.integers(1, 5)), public=word_arrays(st.integers(1, 5)),
       seed=st.integers(0, 2**32 - 1))
def test_xor_public_adds_the_word_once(value, public, seed):
    public = np.resize(public, value.shape)
    shares = replicate(split(value, np.random.default_rng(seed)))
    before = [share.copy() for share in shares]
    out = [xor_public(shares[i], public, i) for i in range(3)]
    for i in range(3):
        assert np.array_equal(out[i][1], out[(i + 1) % 3][0])
        assert np.array_equal(shares[i], before[i])  # a copy: the input is unchanged
    assert np.array_equal(out[0][0] ^ out[1][0] ^ out[2][0], value ^ public)
    assert np.array_equal(out[1], shares[1])  # party 1 holds neither copy of component 0


def test_random_sharings_are_replicated():
    engines = local_engines()
    shares = [engine.random((3, 2)) for engine in engines]
    for i in range(3):
        assert shares[i].shape == (2, 3, 2) and shares[i].dtype == np.uint64
        assert np.array_equal(shares[i][1], shares[(i + 1) % 3][0])
    assert len({s[0].tobytes() for s in shares}) == 3


def test_local_errors():
    engine = local_engines()[0]
    assert not engine.pending and engine.verified_words == 0
    engine.verify("nothing logged")  # no channel needed: nothing is sent
    assert engine.verified_words == 0 and engine.poison is None
    with pytest.raises(ValueError, match="AND of shapes"):
        engine.and_([(np.zeros((2, 3), U64), np.zeros((2, 4), U64))], "bad")
    assert not engine.pending
    # the engine's receives state the words they expect; the channel refuses anything else
    network = InProcessNetwork(2)
    sender, receiver = network.channel(1, timeout=5), network.channel(0, timeout=5)
    words = Expect.uint64(3)
    sender.send(0, np.zeros(3, U64))
    assert receiver.recv(1, expect=words, what="in fine").shape == (3,)
    for bad in (np.zeros(2, U64), np.zeros(3, np.int64), np.zeros((3, 1), U64)):
        sender.send(0, bad)
        with pytest.raises(ProtocolError, match="party 1 sent"):
            receiver.recv(1, expect=words, what="in a step")


# -- end to end over the 3-party runtime ---------------------------------------------------------

def shared(engine: BinaryRep3, parts: list[np.ndarray]) -> np.ndarray:
    """The sharing with components `parts`, built with `components`: each party passes junk
    for the copies it does not hold, which must be ignored."""
    i = engine.party_id
    out = np.zeros((2, *parts[0].shape), dtype=U64)
    for j, part in enumerate(parts):
        junk = ~part
        out ^= engine.components(part if j == i else junk,
                                 part if j == (i + 1) % 3 else junk, j)
    return out


def shared_all(engine: BinaryRep3, parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [shared(engine, part) for part in parts]


def two_words(seed: int, shape) -> tuple[np.ndarray, np.ndarray, list[list[np.ndarray]]]:
    """Random words x and y of `shape` and the components of a sharing of each."""
    rng = np.random.default_rng(seed)
    x, y = random_words(rng, shape), random_words(rng, shape)
    return x, y, [split(x, rng), split(y, rng)]


def run_binary(body) -> list:
    """body(protocol) at each party of a replicated_mac run; the planner's dry run (not a
    ReplicatedMac) gets None. Returns the parties' results."""

    def program(p):
        if not isinstance(p, ReplicatedMac):
            return None
        return body(p)

    reports = run_secure(SCHEME, N, program)
    return [r.result for r in reports]


def open_words(engine: BinaryRep3, x: np.ndarray, step: str) -> np.ndarray:
    return engine._open(x.reshape(2, -1), step).reshape(x.shape[1:])


def check_and_count(p, step: str) -> dict:
    """p.check(step) with the binary counters around it."""
    engine = p.binary
    before = {"pending": engine.pending, "verified": engine.verified_words,
              "logged": engine._logged_words}
    p.check(step)
    return {**before, "verified_after": engine.verified_words, "pending_after": engine.pending,
            "poison": engine.poison}


def assert_checked(counts: dict, logged: int) -> None:
    assert counts["pending"] and not counts["pending_after"]
    assert counts["logged"] == logged
    assert counts["verified_after"] - counts["verified"] == logged
    assert counts["poison"] is None


def assert_replicated(shares: list[np.ndarray], value: np.ndarray) -> None:
    for i in range(3):
        assert np.array_equal(shares[i][1], shares[(i + 1) % 3][0])
    assert np.array_equal(shares[0][0] ^ shares[1][0] ^ shares[2][0], value)


@EXAMPLES
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_and_of_shared_words(data, seed):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4), label="shape")
    x, y, u, v = (data.draw(word_arrays(shape), label=name) for name in "xyuv")
    rng = np.random.default_rng(seed)
    parts = {name: split(value, rng) for name, value in zip("xyuv", (x, y, u, v), strict=True)}
    size = int(np.prod(shape))

    def body(p):
        engine = p.binary
        sx, sy, su, sv = (shared(engine, parts[name]) for name in "xyuv")
        rounds, sent = p.channel.traffic.rounds, p.channel.traffic.messages_sent
        z, w = engine.and_([(sx, sy), (su, sv)], "two ANDs")
        cost = (p.channel.traffic.rounds - rounds, p.channel.traffic.messages_sent - sent)
        opened = open_words(engine, z, "open z"), open_words(engine, w, "open w")
        opened_x = open_words(engine, xor_public(sx, v, p.party_id), "open x ^ v")
        return cost, sx, z, w, opened, opened_x, check_and_count(p, "the test")

    results = run_binary(body)
    for cost, _, _, _, (z, w), opened_x, counts in results:
        assert cost == (1, 1)  # both products in one message to the previous party
        assert np.array_equal(z, x & y) and np.array_equal(w, u & v)
        assert np.array_equal(opened_x, x ^ v)
        assert_checked(counts, 2 * size)
    assert_replicated([r[1] for r in results], x)
    assert_replicated([r[2] for r in results], x & y)
    assert_replicated([r[3] for r in results], u & v)


@EXAMPLES
@given(a=word_arrays(st.integers(1, 5)), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_majority_of_three_words(a, data, seed):
    b = data.draw(word_arrays(a.shape), label="b")
    c = data.draw(word_arrays(a.shape), label="c")
    rng = np.random.default_rng(seed)
    parts = [split(v, rng) for v in (a, b, c)]

    def body(p):
        engine = p.binary
        rounds = p.channel.traffic.rounds
        m = majority(engine, *shared_all(engine, parts), "majority")
        rounds = p.channel.traffic.rounds - rounds
        return rounds, m, open_words(engine, m, "open"), check_and_count(p, "the test")

    results = run_binary(body)
    want = (a & b) | (a & c) | (b & c)
    for rounds, _, opened, counts in results:
        assert rounds == 1
        assert np.array_equal(opened, want)
        assert_checked(counts, a.size)
    assert_replicated([r[1] for r in results], want)


def tree_gates(length: int) -> int:
    """AND words of carry_out's tree per word column: p_hi g_lo for every pair, p_hi p_lo
    for every pair but the bottom one (whose propagate is never needed)."""
    total = 0
    while length > 1:
        pairs = length // 2
        total += 2 * pairs - 1
        length = pairs + length % 2
    return total


@settings(max_examples=10, deadline=None)
@given(bits=st.integers(1, 64) | st.sampled_from([63, 64]), columns=st.integers(1, 2),
       data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_carry_out_is_the_carry_of_an_addition(bits, columns, data, seed):
    """64 * columns additions of two shared `bits`-bit numbers given as bit planes: the carry
    out of the top bit against Python ints (lanes 0..3 are the edge cases: a carry through a
    full propagate chain, none, a generate at the top, none)."""
    lanes = 64 * columns
    top = (1 << bits) - 1
    numbers = st.lists(st.integers(0, top), min_size=lanes, max_size=lanes)
    a_values, b_values = data.draw(numbers, label="a"), data.draw(numbers, label="b")
    a_values[:4] = [top, top, 1 << (bits - 1), 0]
    b_values[:4] = [1, 0, 1 << (bits - 1), top]
    want = np.array([(x + y) >> bits for x, y in zip(a_values, b_values, strict=True)],
                    dtype=U64)
    assert want[:4].tolist() == [1, 0, 1, 0]
    rng = np.random.default_rng(seed)
    planes = [bitslice.slice_bits(np.array(v, dtype=U64))[:bits] for v in (a_values, b_values)]
    parts = [split(plane, rng) for plane in planes]

    def body(p):
        engine = p.binary
        a, b = shared_all(engine, parts)
        (g,) = engine.and_([(a, b)], "generate")
        rounds = p.channel.traffic.rounds
        carry = carry_out(engine.and_, g, a ^ b, "add")
        rounds = p.channel.traffic.rounds - rounds
        return carry.shape, rounds, open_words(engine, carry, "open"), check_and_count(p, "t")

    for shape, rounds, opened, counts in run_binary(body):
        assert shape == (2, columns)
        assert rounds == math.ceil(math.log2(bits))  # one round per level of the tree
        assert np.array_equal(bitslice.unslice_bit(opened, lanes), want)
        assert_checked(counts, (bits + tree_gates(bits)) * columns)


def test_checks_verify_only_what_was_logged_since_the_last_one():
    x, y, parts = two_words(5, 7)

    def body(p):
        engine = p.binary
        a, b = shared_all(engine, parts)
        (z,) = engine.and_([(a, b)], "first")
        first = check_and_count(p, "first check")
        (w,) = engine.and_([(z[:, :3], b[:, :3])], "second")
        engine.and_([(w, w)], "third")
        second = check_and_count(p, "second check")
        checks = p.checks
        p.check("nothing logged")  # returns at once, sends nothing
        return first, second, checks, p.checks, open_words(engine, w, "open")

    for first, second, checks, checks_after, opened in run_binary(body):
        assert_checked(first, 7)
        assert_checked(second, 6)
        assert second["verified_after"] == 13
        assert checks == checks_after == 2
        assert np.array_equal(opened, x[:3] & y[:3])


def test_a_full_log_is_verified_inside_the_and(monkeypatch):
    monkeypatch.setattr(br, "VERIFY_EVERY", 10)
    x, y, parts = two_words(6, 6)

    def body(p):
        engine = p.binary
        a, b = shared_all(engine, parts)
        engine.and_([(a, b)], "first")  # 6 words: below the limit
        after_first = engine.pending, engine.verified_words
        rounds = p.channel.traffic.rounds
        (z,) = engine.and_([(a, b)], "second")  # 12 words: verified at once (3 more rounds)
        after_second = engine.pending, engine.verified_words, p.channel.traffic.rounds - rounds
        opened = open_words(engine, z, "open")
        p.check("test")  # the digests of that verification are compared only here
        return after_first, after_second, opened, engine.poison, engine.pending

    for after_first, after_second, opened, poison, pending in run_binary(body):
        assert after_first == (True, 0)
        # verified, but still pending: its digests await the caller's comparison
        assert after_second == (True, 12, 4)
        assert np.array_equal(opened, x & y) and poison is None and not pending


def test_a_verification_inside_the_and_is_still_compared_at_the_check(monkeypatch):
    """With the log verified inside an AND and nothing else logged, the check must still
    compare the digests: an altered AND message is caught (the review finding behind
    `BinaryRep3.pending` counting unconfirmed verifications)."""
    monkeypatch.setattr(br, "VERIFY_EVERY", 4)
    x, y, parts = two_words(8, 6)

    def body(p):
        if not isinstance(p, ReplicatedMac):
            return None
        a, b = shared_all(p.binary, parts)
        p.binary.and_([(a, b)], "gate")
        p.check("test")
        return not p.binary.pending

    assert all(run_binary(body))
    tamper = Tamper(1, 0, mode="flip", position=3, bit=2)  # party 1's AND message
    with pytest.raises(CheatingDetected):
        run(SCHEME, body, hook=tamper, timeout=20)
    assert tamper.fired


def test_verification_messages_and_their_sizes():
    """verify sends: the triples' products (OPENED + buckets B words) to the previous party,
    the coin's components (16 bytes) to both neighbours, the openings (3 OPENED +
    2 buckets (B - 1) + 2 n words) to the next party: 3 rounds."""
    x, y, parts = two_words(7, (2, 5))

    def body(p):
        engine = p.binary
        a, b = shared_all(engine, parts)
        engine.and_([(a, b)], "and")
        sent = []
        original = p.channel._send

        def record(peer, array):
            sent.append((peer, np.asarray(array).dtype.str, np.asarray(array).size))
            original(peer, array)

        p.channel._send = record
        rounds = p.channel.traffic.rounds
        engine.verify("test")
        rounds = p.channel.traffic.rounds - rounds
        p.channel._send = original
        return p.party_id, sent, rounds, engine.verified_words

    size = bucket_size(MIN_BUCKETS)
    triples = OPENED + MIN_BUCKETS * size
    openings = 3 * OPENED + 2 * MIN_BUCKETS * (size - 1) + 2 * 10
    for i, sent, rounds, verified in run_binary(body):
        prev, nxt = (i - 1) % 3, (i + 1) % 3
        assert sent == [(prev, "<u8", triples), (prev, "|u1", 16), (nxt, "|u1", 16),
                        (nxt, "<u8", openings)]
        assert rounds == 3 and verified == 10


# -- active security: altered messages ------------------------------------------------------------

TAMPER_WORDS = 3
_rng = np.random.default_rng(2024)
X_PARTS, Y_PARTS, W_PARTS = (split(random_words(_rng, TAMPER_WORDS), _rng) for _ in range(3))


def tamper_body(p) -> str:
    """Two ANDs in one round, a majority, then the check (and nothing after it)."""
    engine = p.binary
    x, y, w = (shared(engine, parts) for parts in (X_PARTS, Y_PARTS, W_PARTS))
    z, u = engine.and_([(x, y), (y, w)], "two ANDs")
    majority(engine, z, u, x, "majority")
    p.check("the test")
    return "passed"


def tamper_program(p):
    return tamper_body(p) if isinstance(p, ReplicatedMac) else None


#: messages each party sends in tamper_program: 2 product rounds; the check: verification 4
#: (products, the coin to both neighbours, openings), the mask's product 1, the coin 2, the
#: two redundant openings 4
MESSAGES = 2 + 4 + 1 + 2 + 4
CASES = [(party, index, mode) for party in range(3) for index in range(MESSAGES)
         for mode in ("add", "flip")]


def test_the_tamper_program_message_count_is_pinned():
    """The enumeration below covers every message only while this count holds."""
    reports = run_secure(SCHEME, N, tamper_program)
    assert [r.result for r in reports] == ["passed"] * 3
    assert honest_message_counts(reports) == [MESSAGES] * 3


@pytest.mark.parametrize(("party", "index", "mode"), CASES,
                         ids=[f"P{p}-m{k}-{mode}" for p, k, mode in CASES])
def test_any_altered_message_aborts(party, index, mode):
    """Add to a word near the start, or flip a bit near the end, of any one message."""
    if mode == "add":
        tamper = Tamper(party, index, delta=1 + index, position=index)
    else:
        tamper = Tamper(party, index, mode="flip", position=-1 - index, bit=index)
    with pytest.raises(CheatingDetected):
        run(SCHEME, tamper_program, hook=tamper, timeout=20)
    assert len(tamper.fired) == 1 and tamper.fired[0][1] == index


def recording_body(p):
    """tamper_body, recording the index of the first message each engine call sends."""
    engine = p.binary
    log = []
    for name in ("_products", "_coin", "_open"):
        method = getattr(engine, name)

        def wrapper(*args, _method=method, _name=name):
            log.append((_name, args[-1], p.channel.traffic.messages_sent))
            return _method(*args)

        setattr(engine, name, wrapper)
    tamper_body(p)
    return log


@functools.cache
def verification_indices() -> tuple[dict[str, int], ...]:
    """Per party: the index of the verification's triples, coin and openings messages, from
    an honest run (computed once, when a test first needs it)."""
    logs = run_binary(recording_body)
    out = []
    for log in logs:
        found = {}
        for _, step, index in log:
            for key, marker in (("triples", "verification triples"), ("coin", "bucket coin"),
                                ("openings", "verification openings")):
                if marker in step:
                    found[key] = index
        assert [name for name, _, _ in log] == ["_products", "_products", "_products",
                                                "_coin", "_open"]
        out.append(found)
    return tuple(out)


PAIRS = MIN_BUCKETS * (bucket_size(MIN_BUCKETS) - 1)
GATE_WORDS = 3 * TAMPER_WORDS
TRIPLE_WORDS = OPENED + MIN_BUCKETS * bucket_size(MIN_BUCKETS)
REGIONS = {  # first word of each part of the openings message
    "cut a": 0, "cut b": OPENED, "cut c": 2 * OPENED, "rho": 3 * OPENED,
    "sigma": 3 * OPENED + PAIRS, "gate x": 3 * OPENED + 2 * PAIRS,
    "gate y": 3 * OPENED + 2 * PAIRS + GATE_WORDS,
}


def test_verification_messages_follow_the_products():
    assert list(verification_indices()) == [{"triples": 2, "coin": 3, "openings": 5}] * 3


def assert_aborts(tamper: Tamper) -> None:
    with pytest.raises(CheatingDetected):
        run(SCHEME, tamper_program, hook=tamper, timeout=20)
    assert len(tamper.fired) == 1


@settings(max_examples=12, deadline=None)
@given(party=st.integers(0, 2), word=st.integers(0, TRIPLE_WORDS - 1)
       | st.sampled_from([0, OPENED - 1, OPENED, TRIPLE_WORDS - 1]),
       bit=st.integers(0, 63))
def test_a_bit_error_in_the_verification_triples_is_caught(party, word, bit):
    """A wrong c in any triple: in the cut-and-choose or in any bucket position."""
    assert_aborts(Tamper(party, verification_indices()[party]["triples"], mode="flip",
                         position=8 * word + bit // 8, bit=bit % 8))


@pytest.mark.parametrize("region", sorted(REGIONS))
@pytest.mark.parametrize("party", range(3))
def test_a_bit_error_in_the_verification_openings_is_caught(region, party):
    start = REGIONS[region]
    for offset, bit in ((0, 0), (1, 63)):
        assert_aborts(Tamper(party, verification_indices()[party]["openings"], mode="flip",
                             position=8 * (start + offset) + bit // 8, bit=bit % 8))


@pytest.mark.parametrize("party", range(3))
def test_an_altered_bucket_coin_is_caught(party):
    """Either of the coin's two messages (to the previous party, then to the next one)."""
    first = verification_indices()[party]["coin"]
    for index, position, bit in ((first, 5, 2), (first + 1, 15, 7)):
        assert_aborts(Tamper(party, index, mode="flip", position=position, bit=bit))


# -- poisoning -------------------------------------------------------------------------------------

def outcome_program(p):
    """tamper_body, but each party reports its own CheatingDetected instead of raising (the
    binary verification's failures all surface in the check's last round, so every party
    gets there)."""
    if not isinstance(p, ReplicatedMac):
        return None
    try:
        tamper_body(p)
    except CheatingDetected as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("party", range(3))
@pytest.mark.parametrize("word", [0, OPENED - 1])
def test_a_failed_cut_and_choose_poisons_both_neighbours(party, word):
    """Party `party` adds to one opened c of the cut-and-choose it sends to the next party,
    whose cut-and-choose then fails. Both neighbours of that party abort: the sender too,
    although its own transcripts with both parties agree (it learns of the failure only
    from the poisoned digests)."""
    poisoned = (party + 1) % 3
    tamper = Tamper(party, verification_indices()[party]["openings"], delta=(1 << 17) + 1,
                    position=2 * OPENED + word)
    outcomes = [r.result for r in run(SCHEME, outcome_program, hook=tamper, timeout=20)]
    assert len(tamper.fired) == 1
    assert all(o is not None for o in outcomes), outcomes
    assert "cut-and-choose" in outcomes[poisoned]
    for neighbour in (party, (party + 2) % 3):
        assert f"party {poisoned} vouched for a different transcript" in outcomes[neighbour]


def coin_outcome_program(p):
    """outcome_program, also reporting the poison each party had right after the bucket coin
    (later failures of the same verification overwrite that message)."""
    if not isinstance(p, ReplicatedMac):
        return None
    engine = p.binary
    after_coin = []
    coin = engine._coin

    def recording_coin(step):
        value = coin(step)
        after_coin.append(engine.poison)
        return value

    engine._coin = recording_coin
    return outcome_program(p), after_coin


@pytest.mark.parametrize("party", range(3))
def test_an_inconsistent_coin_poisons_the_receiver(party):
    """Party `party` sends a wrong coin component to its previous party only (its first coin
    message): that party notices the two copies differ and poisons its digests, and every
    party aborts."""
    receiver = (party - 1) % 3
    tamper = Tamper(party, verification_indices()[party]["coin"], mode="flip", position=0, bit=0)
    results = [r.result for r in run(SCHEME, coin_outcome_program, hook=tamper, timeout=20)]
    assert tamper.fired == [(receiver, verification_indices()[party]["coin"])]
    outcomes = [outcome for outcome, _ in results]
    assert all(o is not None for o in outcomes), outcomes
    for i, (_, after_coin) in enumerate(results):
        assert len(after_coin) == 1
        if i == receiver:
            assert "sent different coins" in after_coin[0]
        else:
            assert after_coin[0] is None
    assert "MAC check before the test failed" in outcomes[receiver]


def test_honest_outcome_program_passes_everywhere():
    assert [r.result for r in run_secure(SCHEME, N, outcome_program)] == [None] * 3
