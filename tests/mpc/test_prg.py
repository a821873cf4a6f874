"""The AES-CTR PRG: determinism, independence, stream consistency, ranges, key agreement."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc.prg import KEY_BYTES, PRG, shared_key

KEY = bytes(range(KEY_BYTES))
OTHER = bytes(range(1, KEY_BYTES + 1))
keys = st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES)


@given(key=keys, n=st.integers(0, 300))
@settings(max_examples=50, deadline=None)
def test_same_key_same_stream(key, n):
    assert np.array_equal(PRG(key).ring_elements(n), PRG(key).ring_elements(n))
    assert PRG(key).random_bytes(n) == PRG(key).random_bytes(n)


def test_known_answer_is_aes_ctr_from_zero():
    """The stream is the AES-128-CTR keystream with a zero counter block (NIST SP 800-38A
    key, first keystream block = AES(key, 0) computed independently via ECB)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(3))
    assert PRG(key).random_bytes(48) == blocks
    assert PRG(key).ring_elements(6).tobytes() == blocks


def test_different_keys_give_different_streams():
    a, b = PRG(KEY).ring_elements(64), PRG(OTHER).ring_elements(64)
    assert not np.array_equal(a, b)
    assert np.count_nonzero(a == b) == 0  # 64-bit collisions are astronomically unlikely


def test_derive_labels_are_independent_and_reproducible():
    base = PRG(KEY)
    x1, x2, y = base.derive("x"), base.derive("x"), base.derive("y")
    assert np.array_equal(x1.ring_elements(32), x2.ring_elements(32))
    assert not np.array_equal(PRG(KEY).derive("x").ring_elements(32),
                              PRG(KEY).derive("y").ring_elements(32))
    assert not np.array_equal(y.ring_elements(32), PRG(KEY).ring_elements(32))
    assert PRG(KEY).derive("x").random_bytes(16) == PRG(KEY).derive(b"x").random_bytes(16)
    # deriving does not advance the parent's stream
    parent = PRG(KEY)
    parent.derive("z").ring_elements(10)
    assert np.array_equal(parent.ring_elements(4), PRG(KEY).ring_elements(4))
    # same label under different keys differs
    assert not np.array_equal(PRG(KEY).derive("x").ring_elements(8),
                              PRG(OTHER).derive("x").ring_elements(8))


@given(key=keys, first=st.integers(0, 40), second=st.integers(0, 40))
@settings(max_examples=50, deadline=None)
def test_stream_is_consistent_across_draw_sizes(key, first, second):
    split = PRG(key)
    a, b = split.ring_elements(first), split.ring_elements(second)
    whole = PRG(key).ring_elements(first + second)
    assert np.array_equal(np.concatenate([a, b]), whole)
    assert split.bytes_drawn == 8 * (first + second)


def test_three_then_five_equals_eight():
    prg = PRG(KEY)
    drawn = np.concatenate([prg.ring_elements(3), prg.ring_elements(5)])
    assert np.array_equal(drawn, PRG(KEY).ring_elements(8))
    mixed = PRG(KEY)
    head = mixed.random_bytes(8)
    rest = mixed.ring_elements((7,))
    assert head + rest.tobytes() == PRG(KEY).ring_elements(8).tobytes()


def test_stream_consistent_across_the_internal_chunk_boundary():
    n = (1 << 20) // 8 + 5  # more than one OpenSSL chunk
    prg = PRG(KEY)
    parts = [prg.ring_elements(1000), prg.ring_elements(n), prg.ring_elements(3)]
    assert np.array_equal(np.concatenate(parts), PRG(KEY).ring_elements(n + 1003))


def test_ring_elements_shape_and_dtype():
    x = PRG(KEY).ring_elements((2, 3, 4))
    assert x.shape == (2, 3, 4) and x.dtype == np.uint64
    assert PRG(KEY).ring_elements(0).shape == (0,)
    assert PRG(KEY).ring_elements((3, 0)).shape == (3, 0)


def test_bits_are_binary_and_balanced():
    bits = PRG(KEY).bits(100_000)
    assert bits.shape == (100_000,) and bits.dtype == np.uint8
    assert set(np.unique(bits).tolist()) == {0, 1}
    # mean of 1e5 fair bits: standard deviation 0.0016; 0.01 is over 6 sigma
    assert abs(bits.mean() - 0.5) < 0.01
    assert PRG(KEY).bits(0).shape == (0,)
    assert PRG(KEY).bits(13).shape == (13,)


@pytest.mark.parametrize("log_bound", [0, 1, 3, 17, 32, 63, 64])
def test_below_bounds(log_bound):
    bound = 1 << log_bound
    values = PRG(KEY).below(bound, 4000)
    assert values.dtype == np.uint64 and values.shape == (4000,)
    if log_bound < 64:
        assert int(values.max()) < bound
    if 3 <= log_bound:
        # the top bit of the range shows up: the whole range is used
        assert int(values.max()) >= bound // 2


@pytest.mark.parametrize("bound", [0, -4, 3, 12, (1 << 64) + 1, 1 << 65])
def test_below_rejects_bad_bounds(bound):
    with pytest.raises(ValueError):
        PRG(KEY).below(bound, 4)


@pytest.mark.parametrize("key", [b"", b"short", bytes(15), bytes(17), bytes(32)])
def test_bad_key_length(key):
    with pytest.raises(ValueError, match="16 bytes"):
        PRG(key)


def test_bytearray_key_and_fresh():
    assert PRG(bytearray(KEY)).random_bytes(8) == PRG(KEY).random_bytes(8)
    assert PRG.fresh().random_bytes(16) != PRG.fresh().random_bytes(16)


def test_negative_draw_rejected():
    with pytest.raises(ValueError):
        PRG(KEY).random_bytes(-1)


@given(a=keys, b=keys, i=st.integers(0, 10), j=st.integers(0, 10))
@settings(max_examples=50)
def test_shared_key_is_symmetric(a, b, i, j):
    if i == j:
        j = i + 1
    k_ij = shared_key(a, b, i, j)
    k_ji = shared_key(b, a, j, i)
    assert k_ij == k_ji and len(k_ij) == KEY_BYTES
    PRG(k_ij)  # usable as a PRG key


def test_shared_key_depends_on_both_contributions():
    a, b, c = bytes(16), bytes([1]) * 16, bytes([2]) * 16
    assert shared_key(a, b, 0, 1) != shared_key(a, c, 0, 1)
    assert shared_key(a, b, 0, 1) != shared_key(c, b, 0, 1)
    assert shared_key(a, b, 0, 1) != shared_key(b, a, 0, 1)  # order is by party id
