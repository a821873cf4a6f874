"""The distributed comparison function (protocols.blocks.dcf): correctness against Python ints
(random and edge inputs, every input for small n, payloads that carry across the 64-bit
limb), the fixed-key hash against one-block AES, and what one key alone shows (its root
seed is its PRG's, independent of alpha; its correction words and its output look uniform
whatever alpha is)."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc import ring128 as r128
from mpc.prg import PRG
from protocols.blocks import dcf

EXAMPLES = settings(max_examples=25, deadline=None)
SIGMAS = 5.5  # per bit-frequency test; about 1300 of them, so a false alarm is ~5e-5
M128 = 1 << 128


def payload_ints(payload: np.ndarray) -> np.ndarray:
    """(C, N) Python ints of a limb-leading (2C, N) payload."""
    return np.stack([r128.to_pyint(payload[2 * j:2 * j + 2])
                     for j in range(payload.shape[0] // 2)])


def reconstruct(k0: dcf.Key, k1: dcf.Key, xs: np.ndarray) -> np.ndarray:
    y0, y1 = dcf.eval(0, k0, xs), dcf.eval(1, k1, xs)
    return payload_ints(r128.add(y0, y1))


def expected(payload: np.ndarray, alphas: np.ndarray, xs: np.ndarray) -> np.ndarray:
    less = xs.astype(object) < alphas.astype(object)
    return np.where(less[None, :], payload_ints(payload), 0)


def random_below(prg: PRG, n_bits: int, size: int) -> np.ndarray:
    return prg.ring_elements((size,)) >> np.uint64(64 - n_bits)


# -- correctness ------------------------------------------------------------------------------
@EXAMPLES
@given(n_bits=st.integers(1, 64), size=st.integers(1, 40), components=st.integers(1, 3),
       seed=st.binary(min_size=16, max_size=16), data=st.data())
def test_eval_shares_sum_to_payload_below_alpha(n_bits, size, components, seed, data):
    prg = PRG(seed)
    top = (1 << n_bits) - 1
    alphas = random_below(prg, n_bits, size)
    alphas[0] = 0  # nothing is below 0
    alphas[-1] = top
    picked = data.draw(st.lists(st.integers(0, top), min_size=size, max_size=size), label="x")
    xs = np.array(picked, dtype=np.uint64)
    # edge cases at the points where the answer changes
    kinds = np.arange(size) % 5
    a = alphas.astype(object)
    edge = np.array([int(v) for v in np.select(
        [kinds == 0, kinds == 1, kinds == 2, kinds == 3],
        [a, (a - 1) % (top + 1), a * 0, a * 0 + top], xs.astype(object))], dtype=np.uint64)
    payload = prg.ring_elements((2 * components, size))
    k0, k1 = dcf.gen(alphas, payload, prg, n_bits=n_bits)
    for points in (xs, edge):
        assert np.array_equal(reconstruct(k0, k1, points), expected(payload, alphas, points))


@pytest.mark.parametrize("n_bits", [1, 2, 4, 5, 6])
def test_every_alpha_and_every_input_for_small_n(n_bits):
    domain = 1 << n_bits
    alphas = np.repeat(np.arange(domain, dtype=np.uint64), domain)
    xs = np.tile(np.arange(domain, dtype=np.uint64), domain)
    prg = PRG.fresh()
    payload = prg.ring_elements((4, alphas.size))
    k0, k1 = dcf.gen(alphas, payload, (prg, PRG.fresh()), n_bits=n_bits)
    assert np.array_equal(reconstruct(k0, k1, xs), expected(payload, alphas, xs))


@EXAMPLES
@given(values=st.lists(st.sampled_from([1, (1 << 64) - 1, 1 << 64, M128 - 1, (1 << 127) + 1,
                                        (1 << 64) + 1, M128 - (1 << 64)]),
                       min_size=2, max_size=12),
       seed=st.binary(min_size=16, max_size=16))
def test_payloads_that_carry_across_the_limb(values, seed):
    """The shares are uniform mod 2^128, so their sum carries into the high limb about half
    the time for any payload; these payloads sit next to the limb boundary and the top."""
    prg = PRG(seed)
    size = len(values)
    payload = np.concatenate([r128.from_pyint(values), r128.from_pyint(values[::-1])])
    alphas = random_below(prg, 63, size)
    xs = np.where(np.arange(size) % 2 == 0, alphas - np.uint64(1), alphas)  # below, equal
    alphas[0] = np.uint64(5)
    xs[0] = np.uint64(4)
    k0, k1 = dcf.gen(alphas, payload, prg)
    y0, y1 = dcf.eval(0, k0, xs), dcf.eval(1, k1, xs)
    assert np.array_equal(reconstruct(k0, k1, xs), expected(payload, alphas, xs))
    assert [int(v) for v in payload_ints(r128.add(y0, y1))[:, 0]] == [values[0], values[-1]]


def test_a_large_batch_at_63_bits():
    prg = PRG.fresh()
    size = 5000
    alphas = random_below(prg, 63, size)
    xs = np.concatenate([random_below(prg, 63, size // 2), alphas[size // 2:]])
    xs[size // 2::2] -= np.uint64(1)
    payload = prg.ring_elements((4, size))
    k0, k1 = dcf.gen(alphas, payload, (prg, PRG.fresh()))
    got = reconstruct(k0, k1, xs)
    assert np.array_equal(got, expected(payload, alphas, xs))
    assert 0.3 < np.mean(got[0] != 0) < 0.85  # both answers occur


@EXAMPLES
@given(n_bits=st.integers(1, 64), size=st.integers(1, 30), components=st.integers(1, 2),
       seed=st.binary(min_size=16, max_size=16))
def test_the_level_kernels_match_their_numpy_twins(n_bits, size, components, seed):
    """gen and eval with the numba per-level kernels and with their numpy twins give the same
    words, bit for bit (keys from the same PRG streams)."""
    alphas = random_below(PRG(seed), n_bits, size)
    payload = PRG(seed).derive("payload").ring_elements((2 * components, size))
    xs = np.where(np.arange(size) % 2 == 0, alphas, random_below(PRG(seed).derive("x"),
                                                                 n_bits, size))
    keys = [dcf.gen(alphas, payload, PRG(seed), n_bits=n_bits, kernel=k) for k in (True, False)]
    for name in ("seed", "value", "bits", "leaf"):
        assert np.array_equal(getattr(keys[0][0].corrections, name),
                              getattr(keys[1][0].corrections, name)), name
    for b in (0, 1):
        assert np.array_equal(dcf.eval(b, keys[0][b], xs, kernel=True),
                              dcf.eval(b, keys[0][b], xs, kernel=False))
    assert np.array_equal(reconstruct(*keys[1], xs), expected(payload, alphas, xs))


# -- the PRG and the key layout -----------------------------------------------------------------
def test_fixed_key_hash_is_aes_xor_input_block_by_block():
    h = dcf.FixedKeyHash(2)
    blocks = PRG.fresh().ring_elements((5, 2))
    payload = h.payload(blocks)
    enc = h.encrypt(blocks)
    seeds, bits = dcf._mmo_seed(enc, blocks)
    assert np.array_equal(enc[1:] ^ blocks, np.moveaxis(payload.reshape(2, 2, 5), 1, 2))
    for label, got in [("seed", None), ("payload/0", payload[0:2]), ("payload/1", payload[2:4])]:
        encryptor = Cipher(algorithms.AES(dcf._fixed_key(label)), modes.ECB()).encryptor()
        for i, block in enumerate(blocks):
            raw = encryptor.update(block.tobytes())
            want = np.frombuffer(raw, dtype=np.uint64) ^ block
            if got is None:
                assert bits[i] == want[0] & np.uint64(1)
                assert seeds[i, 0] == want[0] & ~np.uint64(1) and seeds[i, 1] == want[1]
            else:
                assert np.array_equal(got[:, i], want)


def test_corrections_live_in_the_flat_buffer_given():
    prg = PRG.fresh()
    size, n_bits, words = 7, 10, 4
    out = np.empty(dcf.correction_words(size, n_bits, words), dtype=np.uint64)
    k0, k1 = dcf.gen(random_below(prg, n_bits, size), prg.ring_elements((words, size)), prg,
                     n_bits=n_bits, out=out)
    assert k0.corrections is k1.corrections
    again = dcf.Corrections.from_flat(out, size, n_bits, words)
    for name in ("seed", "value", "bits", "leaf"):
        assert np.shares_memory(getattr(k0.corrections, name), out)
        assert np.array_equal(getattr(again, name), getattr(k0.corrections, name))
    assert not np.any(k0.root[:, 0] & np.uint64(1))  # seeds keep their lowest bit clear
    with pytest.raises(ValueError):
        dcf.Corrections.from_flat(out[1:], size, n_bits, words)


def test_bad_arguments_are_refused():
    prg = PRG.fresh()
    with pytest.raises(ValueError, match="fit"):
        dcf.gen(np.array([16], dtype=np.uint64), np.zeros((2, 1), np.uint64), prg, n_bits=4)
    with pytest.raises(ValueError, match="payload"):
        dcf.gen(np.array([1], dtype=np.uint64), np.zeros((3, 1), np.uint64), prg, n_bits=4)
    with pytest.raises(ValueError):
        dcf.gen(np.array([1], dtype=np.uint64), np.zeros((2, 1), np.uint64), prg, n_bits=65)
    k0, _ = dcf.gen(np.array([1, 2], dtype=np.uint64), np.zeros((2, 2), np.uint64), prg, 4)
    with pytest.raises(ValueError):
        dcf.eval(0, k0, np.zeros(3, dtype=np.uint64))
    with pytest.raises(ValueError):
        dcf.eval(2, k0, np.zeros(2, dtype=np.uint64))


# -- what one key shows -------------------------------------------------------------------------
def test_a_key_root_is_its_prg_stream_whatever_alpha_and_payload():
    """Party b's only own key part is drawn from the PRG it shares with the dealer, before
    and independently of alpha and the payload: a party can expand it itself."""
    key0, key1 = PRG.fresh(), PRG.fresh()
    roots = []
    for alpha, beta in [(0, 1), ((1 << 63) - 1, 7), (12345, (1 << 64) - 1)]:
        k0, k1 = dcf.gen(np.full(3, alpha, dtype=np.uint64),
                         np.full((4, 3), beta, dtype=np.uint64),
                         (PRG(key0._key), PRG(key1._key)))
        roots.append((k0.root, k1.root))
    for r0, r1 in roots:
        assert np.array_equal(r0, dcf.draw_roots(PRG(key0._key), 3))
        assert np.array_equal(r1, dcf.draw_roots(PRG(key1._key), 3))


def bit_frequencies(words: np.ndarray) -> np.ndarray:
    """Frequency of each of the 64 bit positions over all words."""
    flat = words.reshape(-1)
    return np.array([np.mean((flat >> np.uint64(i)) & np.uint64(1)) for i in range(64)])


def key_view(alpha: int, beta: int, size: int, n_bits: int, own: bytes, party: int
             ) -> dict[str, np.ndarray]:
    """What `party` sees of `size` keys for the same (alpha, beta) besides its root seeds,
    which come from the PRG key `own` (the same for every alpha); the other party's from a
    fresh PRG."""
    prgs = (PRG(own), PRG.fresh()) if party == 0 else (PRG.fresh(), PRG(own))
    keys = dcf.gen(np.full(size, alpha, dtype=np.uint64), np.full((4, size), beta, np.uint64),
                   prgs, n_bits=n_bits)
    cw = keys[party].corrections
    bits = np.stack([(cw.bits >> np.uint64(i)) & np.uint64(1) for i in range(n_bits)])
    return {"seed": cw.seed[..., 1], "seed_low": cw.seed[..., 0] >> np.uint64(1),
            "value": cw.value, "leaf": cw.leaf, "bits": bits}


@pytest.mark.parametrize("party", [0, 1])
def test_one_key_looks_the_same_for_any_alpha(party):
    """Correction words for alpha = 0 and alpha = 2^n - 1 (opposite paths at every level),
    given the same own root seeds, and party `party`'s outputs at inputs below and above
    alpha: every bit position of every part is uniform (5.5 sigma, ~1300 tests) and the two alphas'
    frequencies agree, so one key or one output does not show alpha or beta."""
    size, n_bits = 3000, 12
    own = PRG.fresh().random_bytes(16)
    views = [key_view(0, 1, size, n_bits, own, party),
             key_view((1 << n_bits) - 1, (1 << 64) - 1, size, n_bits, own, party)]
    for view in views:
        for name, words in view.items():
            if name == "bits":
                freq = np.array([words.mean()])
                count = words.size
            else:
                freq = bit_frequencies(words)
                if name == "seed_low":
                    freq = freq[:63]
                count = words.size
            sigma = 0.5 / np.sqrt(count)
            assert np.all(np.abs(freq - 0.5) < SIGMAS * sigma), name
    for name in views[0]:  # the same distribution for both alphas (difference of two means)
        a, b = (bit_frequencies(v[name]) if name != "bits" else np.array([v[name].mean()])
                for v in views)
        sigma = 0.5 * np.sqrt(2 / views[0][name].size)
        assert np.all(np.abs(a - b) < SIGMAS * sigma), name
    prg = PRG.fresh()
    alphas = np.full(size, 1 << 20, dtype=np.uint64)
    k = dcf.gen(alphas, np.ones((4, size), np.uint64), (prg, PRG.fresh()), n_bits=40)[party]
    for xs in (np.zeros(size, np.uint64), np.full(size, (1 << 40) - 1, np.uint64)):
        out = dcf.eval(party, k, xs)
        freq = bit_frequencies(out)
        assert np.all(np.abs(freq - 0.5) < SIGMAS * 0.5 / np.sqrt(out.size))
