"""Tier 1: Z_2^64 arithmetic against Python integers, and numba vs twins (Z_2^128 is in
test_ring128.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpc import ring as R

M64 = 1 << 64

settings.register_profile("ring", max_examples=40, deadline=None)
settings.load_profile("ring")

EDGES64 = [0, 1, 2, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, 1 << 63, M64 - 1]

val64 = st.one_of(st.sampled_from(EDGES64), st.integers(0, M64 - 1))


def arr64(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.uint64, shape, elements=val64)


@st.composite
def pair64(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4))
    return draw(arr64(shapes.input_shapes[0])), draw(arr64(shapes.input_shapes[1]))


def py(a: np.ndarray) -> np.ndarray:
    return R.to_pyint(a)


def signed(v: int, bits: int = 64) -> int:
    return v - (1 << bits) if v >> (bits - 1) else v


def same(x: np.ndarray, y: np.ndarray) -> bool:
    return x.shape == y.shape and x.dtype == y.dtype and bool(np.array_equal(x, y))


# --- Z_2^64 elementwise ----------------------------------------------------------------------


@given(pair64())
def test_elementwise64_against_python_ints(ab: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = ab
    pa, pb = py(a), py(b)
    assert same(R.add(a, b), R.from_int((pa + pb) % M64))
    assert same(R.sub(a, b), R.from_int((pa - pb) % M64))
    assert same(R.mul(a, b), R.from_int((pa * pb) % M64))
    assert same(R.neg(a), R.from_int((-pa) % M64))


@given(arr64(st.integers(0, 9)), st.integers(0, 70))
def test_shifts64(a: np.ndarray, n: int) -> None:
    pa = py(a)
    assert same(R.lshift(a, n), R.from_int((pa << n) % M64))
    assert same(R.rshift_logical(a, n), R.from_int(pa >> n))
    expected = [(signed(int(v)) >> n) % M64 for v in pa]
    assert same(R.arith_rshift64(a, n), R.from_int(np.array(expected, dtype=object)))


def test_arith_rshift_negative_values() -> None:
    a = R.from_int(np.array([-1, -2, -3, -(1 << 63), -5, 5], dtype=object))
    got = R.signed64(R.arith_rshift64(a, 1))
    assert got.tolist() == [-1, -1, -2, -(1 << 62), -3, 2]
    assert R.signed64(R.arith_rshift64(a, 100)).tolist() == [-1, -1, -1, -1, -1, 0]


def test_negative_shift_rejected() -> None:
    a = np.zeros(3, np.uint64)
    for fn in (R.lshift, R.rshift_logical, R.arith_rshift64):
        with pytest.raises(ValueError):
            fn(a, -1)


def test_wrong_dtype_rejected() -> None:
    with pytest.raises(TypeError):
        R.add(np.zeros(2, np.int64), np.zeros(2, np.uint64))


@given(st.lists(st.integers(-(1 << 140), 1 << 140), min_size=1, max_size=8))
def test_from_int_reduces_mod_2_64(values: list[int]) -> None:
    got = R.from_int(np.array(values, dtype=object))
    assert py(got).tolist() == [v % M64 for v in values]
    assert int(R.from_int(values[0])) == values[0] % M64
    small = np.array([v % (1 << 62) - (1 << 61) for v in values], dtype=np.int64)
    assert py(R.from_int(small)).tolist() == [int(v) % M64 for v in small]


def test_signed_views_round_trip() -> None:
    a = R.from_int(np.array([0, 1, M64 - 1, 1 << 63], dtype=object))
    s = R.signed64(a)
    assert s.tolist() == [0, 1, -1, -(1 << 63)]
    assert same(R.unsigned64(s), a)


# --- Z_2^64 matmul ---------------------------------------------------------------------------

MATMULS64 = [R.matmul64, R.matmul64_numpy, R.matmul64_numba, R.matmul64_limbs]


@st.composite
def matmul_operands(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    m, k, n = (draw(st.integers(1, 7)) for _ in range(3))
    batch = draw(st.sampled_from([(), (2,), (1, 3)]))
    a = draw(arr64(batch + (m, k)))
    b = draw(arr64((k,) if draw(st.booleans()) and not batch else (k, n)))
    return a, b


@given(matmul_operands())
def test_matmul64_all_implementations_against_python(ab: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = ab
    expected = R.from_int(np.matmul(py(a), py(b)) % M64)
    for fn in MATMULS64:
        assert same(fn(a, b), expected), fn.__name__


@pytest.mark.parametrize("fn", MATMULS64)
def test_matmul64_vector_and_batch_broadcast(fn) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, M64, (3, 5), dtype=np.uint64, endpoint=False)
    v = rng.integers(0, M64, 5, dtype=np.uint64)
    w = rng.integers(0, M64, 3, dtype=np.uint64)
    bb = rng.integers(0, M64, (2, 5, 4), dtype=np.uint64)
    assert same(fn(a, v), np.matmul(a, v))
    assert same(fn(w, a), np.matmul(w, a))
    assert same(fn(a, bb), np.matmul(a, bb))
    assert fn(np.zeros((0, 5), np.uint64), np.zeros((5, 2), np.uint64)).shape == (0, 2)
    with pytest.raises(ValueError):
        fn(a, a)


@pytest.mark.parametrize("k", [1, 63, 64, 511, 512, 3000])
def test_matmul64_kernels_agree_on_larger_shapes(k: int) -> None:
    # Shapes that exercise partial tiles, the grouped float sums of the limb method, the serial
    # numba path for small products, the parallel one and (k = 3000, 8 x 256: one tile) its
    # k-split.
    rng = np.random.default_rng(k)
    for m, n in [(1, 3), (9, 300), (3, 70), (8, 256), (9, 1100)]:
        a = rng.integers(0, M64, (m, k), dtype=np.uint64)
        b = rng.integers(0, M64, (k, n), dtype=np.uint64)
        ref = R.matmul64_numpy(a, b)
        assert same(R.matmul64_numba(a, b), ref)
        assert same(R.matmul64_limbs(a, b), ref)
        assert same(R.matmul64(a, b), ref)


def test_matmul64_limbs_large_k_is_exact_in_worst_case() -> None:
    # All limbs 0xFFFF: every float partial sum is at its maximum K (2^16 - 1)^2 < 2^53.
    # (2^64 - 1)^2 = 1 mod 2^64, so each entry of the product is K.
    k = R.LIMB_MAX_K
    a = np.full((1, k), M64 - 1, dtype=np.uint64)
    b = np.full((k, 2), M64 - 1, dtype=np.uint64)
    assert R.matmul64_limbs(a, b).tolist() == [[k, k]]
    assert R.matmul64_numba(a, b).tolist() == [[k, k]]
    with pytest.raises(ValueError, match="2\\^21"):
        R.matmul64_limbs(np.zeros((1, k + 1), np.uint64), np.zeros((k + 1, 1), np.uint64))


@pytest.mark.parametrize("k", [1 << 19, (1 << 19) + 1])
def test_matmul64_limbs_grouped_path_boundary(k: int) -> None:
    # K = 2^19 is the largest inner dimension whose limb products are summed in float before
    # converting; one more takes the per-product path. Row/column 0 hold the worst case.
    rng = np.random.default_rng(k)
    a = rng.integers(0, M64, (2, k), dtype=np.uint64)
    a[0] = M64 - 1
    b = rng.integers(0, M64, (k, 3), dtype=np.uint64)
    b[:, 0] = M64 - 1
    assert same(R.matmul64_limbs(a, b), R.matmul64_numpy(a, b))
    assert int(R.matmul64_limbs(a, b)[0, 0]) == k
