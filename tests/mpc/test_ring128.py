"""Tier 1 for `mpc.ring128` (Z_2^128 on limb-leading arrays): every operation against Python
integers mod 2^128, and every numba kernel against its numpy twin, the matrix product on
shapes that reach each of its paths (serial, tiled in parallel, split along k) with inner
dimensions into the thousands."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpc import ring128 as r128

EXAMPLES = settings(max_examples=8, deadline=None)
MORE = settings(max_examples=40, deadline=None)
M64 = 1 << 64
M128 = 1 << 128
EDGES64 = [0, 1, 2, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, 1 << 63, M64 - 1]
EDGES128 = EDGES64 + [M64, M64 + 1, (1 << 127) - 1, 1 << 127, M128 - 1]
ring_values = st.integers(0, M64 - 1)
wide_values = st.integers(0, M128 - 1)
edgy64 = st.one_of(st.sampled_from(EDGES64), ring_values)
edgy128 = st.one_of(st.sampled_from(EDGES128), wide_values)


def wide(shape, data, label, elements=wide_values):
    """A drawn (2, *shape) array and its Python ints."""
    ints = data.draw(hnp.arrays(object, shape, elements=elements), label=label)
    return r128.from_pyint(ints), ints


def same(x: np.ndarray, y: np.ndarray) -> bool:
    return x.shape == y.shape and x.dtype == y.dtype and bool(np.array_equal(x, y))


def random_wide(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, M64, (2, *shape), dtype=np.uint64)


# -- layout and conversions ---------------------------------------------------------------


def test_layout_lift_and_python_int_conversions():
    lo = np.array([[1, 2], [3, 4]], dtype=np.uint64)
    hi = np.array([[5, 6], [7, 8]], dtype=np.uint64)
    x = r128.interleave(lo, hi)
    assert x.shape == (4, 2) and x.dtype == np.uint64
    assert x[0::2].tolist() == lo.tolist() and x[1::2].tolist() == hi.tolist()
    assert r128.to_pyint(x[0:2]).tolist() == [1 + (5 << 64), 2 + (6 << 64)]
    v = np.array([0, 1, M64 - 1], dtype=np.uint64)
    assert same(r128.lift(v), np.stack([v, np.zeros_like(v)]))
    assert r128.to_pyint(r128.lift(v)).tolist() == [0, 1, M64 - 1]
    values = [-1, -2, 5, -(1 << 130), 1 << 127, M128 + 3]
    assert r128.to_pyint(r128.from_pyint(values)).tolist() == [v % M128 for v in values]
    assert r128.from_pyint([M64 + 7]).tolist() == [[7], [1]]


# -- elementwise ----------------------------------------------------------------------------


@EXAMPLES
@given(data=st.data())
def test_ring128_elementwise_matches_python_ints(data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
    x, xi = wide(shape, data, "x")
    y, yi = wide(shape, data, "y")
    v = data.draw(hnp.arrays(np.uint64, shape, elements=ring_values))
    vi = v.astype(object)
    assert np.array_equal(r128.to_pyint(r128.add(x, y)), (xi + yi) % M128)
    assert np.array_equal(r128.to_pyint(r128.sub(x, y)), (xi - yi) % M128)
    assert np.array_equal(r128.to_pyint(r128.neg(x)), (-xi) % M128)
    assert np.array_equal(r128.to_pyint(r128.mul(x, y)), (xi * yi) % M128)
    assert np.array_equal(r128.to_pyint(r128.mul_public(x, v)), (xi * vi) % M128)
    assert np.array_equal(r128.to_pyint(r128.scale_pow2(x, 37)), (xi << 37) % M128)
    total = r128.sum_axes(x, tuple(range(len(shape))))
    assert int(r128.to_pyint(total)) == int(xi.sum()) % M128
    assert np.array_equal(r128.to_pyint(r128.sum_axes(x, (0,), True)),
                          xi.sum(axis=0, keepdims=True) % M128)


@MORE
@given(data=st.data())
def test_elementwise_broadcasts_and_carries_at_the_edges(data):
    """Edge values (carries across the 64-bit limb) in shapes that broadcast, on plain (2, ...)
    and on authenticated (4, ...) arrays (two numbers stacked)."""
    shapes = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3))
    sx, sy = shapes.input_shapes
    x, xi = wide(sx, data, "x", edgy128)
    y, yi = wide(sy, data, "y", edgy128)
    for op, expect in ((r128.add, xi + yi), (r128.sub, xi - yi), (r128.mul, xi * yi)):
        got = op(x, y)
        assert got.shape == (2, *shapes.result_shape)
        assert np.array_equal(r128.to_pyint(got), np.asarray(expect % M128)), op.__name__
    x2, xi2 = wide(sx, data, "x2", edgy128)
    y2, yi2 = wide(sy, data, "y2", edgy128)
    stacked = r128.mul(np.concatenate([x, x2]), np.concatenate([y, y2]))
    assert np.array_equal(r128.to_pyint(stacked[2:4]), np.asarray(xi2 * yi2 % M128))
    assert np.array_equal(r128.to_pyint(r128.neg(np.concatenate([x, x2]))[2:4]),
                          np.asarray(-xi2 % M128))
    v = data.draw(hnp.arrays(np.uint64, sy, elements=edgy64), label="v")
    got = r128.mul_public(x, v)
    assert np.array_equal(r128.to_pyint(got), np.asarray(xi * v.astype(object) % M128))


@MORE
@given(data=st.data(), n=st.integers(0, 63))
def test_scale_pow2_every_shift(data, n):
    x, xi = wide((5,), data, "x", edgy128)
    assert np.array_equal(r128.to_pyint(r128.scale_pow2(x, n)), (xi << n) % M128)


def test_sum_axes_carries_through_many_full_terms():
    n = 3000
    x = r128.from_pyint([M128 - 1] * n).reshape(2, 3, n // 3)
    assert int(r128.to_pyint(r128.sum_axes(x, (0, 1)))) == (n * (M128 - 1)) % M128
    per_row = r128.to_pyint(r128.sum_axes(x, (1,)))
    assert per_row.tolist() == [(n // 3) * (M128 - 1) % M128] * 3


@MORE
@given(x=hnp.arrays(np.uint64, st.integers(0, 20), elements=edgy64),
       y=hnp.arrays(np.uint64, st.integers(0, 20), elements=edgy64))
def test_mulhi_kernel_matches_its_twin_and_python_ints(x, y):
    n = min(x.size, y.size)
    x, y = x[:n], y[:n]
    want = [(int(a) * int(b)) >> 64 for a, b in zip(x, y, strict=True)]
    assert r128.mulhi(x, y).tolist() == want
    assert r128.mulhi_numpy(x, y).tolist() == want
    assert same(r128.mulhi(x[:, None], y[None, :]), r128.mulhi_numpy(x[:, None], y[None, :]))


def test_linear_mixin_is_the_module_functions():
    rng = np.random.default_rng(4)
    x, y = random_wide(rng, 3, 2), random_wide(rng, 3, 2)
    v = rng.integers(0, M64, (3, 2), dtype=np.uint64)
    linear = r128.Ring128Linear()
    assert same(linear.add(x, y), r128.add(x, y))
    assert same(linear.sub(x, y), r128.sub(x, y))
    assert same(linear.neg(x), r128.neg(x))
    assert same(linear.mul_public(x, v), r128.mul_public(x, v))


# -- fused kernels against their twins ------------------------------------------------------


@EXAMPLES
@given(data=st.data())
def test_dot_kernel_matches_its_twin_and_python_ints(data):
    m = data.draw(st.integers(0, 40))
    x, xi = wide((m,), data, "x")
    c = data.draw(hnp.arrays(np.uint64, (m,), elements=ring_values))
    got = r128.dot_public(x, c)
    assert np.array_equal(got, r128.dot_public_numpy(x, c))
    assert int(r128.to_pyint(got)) == int((xi * c.astype(object)).sum()) % M128


@EXAMPLES
@given(data=st.data())
def test_replicated_product_kernel_matches_composed_operations(data):
    """`replicated_product` (numba, one pass) against mul/add/sub and Python ints, with the
    first operand broadcast as the MAC key is."""
    m = data.draw(st.integers(1, 30))

    def replicated(label):  # two 128-bit components (4, m) and their Python ints (2, m)
        x, xi = wide((2, m), data, label)
        return r128.interleave(x[0], x[1]), xi

    a, ai = replicated("a")
    b, bi = replicated("b")
    own, oi = wide((m,), data, "own")
    nxt, ni = wide((m,), data, "next")
    for left in (a, a[:, :1]):
        want = r128.sub(r128.add(r128.add(r128.mul(left[0:2], r128.add(b[0:2], b[2:4])),
                                          r128.mul(left[2:4], b[0:2])), own), nxt)
        assert np.array_equal(r128.replicated_product(left, b, own, nxt), want)
        assert np.array_equal(r128.replicated_product_numpy(left, b, own, nxt), want)
    got = r128.to_pyint(r128.replicated_product(a, b, own, nxt))
    assert np.array_equal(got, (ai[0] * (bi[0] + bi[1]) + ai[1] * bi[0] + oi - ni) % M128)


@EXAMPLES
@given(data=st.data())
def test_combination_kernel_matches_composed_operations(data):
    m = data.draw(st.integers(1, 20))
    xs = [wide((2, m), data, f"x{t}")[0].reshape(4, m) for t in range(3)]
    cs = data.draw(st.lists(ring_values, min_size=3, max_size=3), label="constants")
    want = r128.add(r128.add(r128.mul_public(xs[0], np.uint64(cs[0])),
                             r128.mul_public(xs[1], np.uint64(cs[1]))),
                    r128.mul_public(xs[2], np.uint64(cs[2])))
    assert np.array_equal(r128.combination(xs, cs), want)
    assert np.array_equal(r128.combination_numpy(xs, cs), want)


@MORE
@given(data=st.data())
def test_combination_matches_python_ints(data):
    m = data.draw(st.integers(1, 6))
    terms = data.draw(st.integers(1, 4))
    xs, xis = zip(*(wide((m,), data, f"x{t}", edgy128) for t in range(terms)), strict=True)
    cs = data.draw(st.lists(edgy64, min_size=terms, max_size=terms), label="constants")
    want = sum(c * xi for c, xi in zip(cs, xis, strict=True)) % M128
    assert np.array_equal(r128.to_pyint(r128.combination(list(xs), cs)), want)


def test_warmup_loads_the_kernels():
    r128.warmup()


# -- matrix product ------------------------------------------------------------------------


@MORE
@given(st.integers(0, 5), st.integers(0, 6), st.integers(0, 5), st.data())
def test_matmul_matches_python_ints(m, k, n, data):
    a, ai = wide((m, k), data, "a", edgy128)
    b, bi = wide((k, n), data, "b", edgy128)
    want = np.matmul(ai, bi) % M128 if k else np.zeros((m, n), dtype=object)
    for fn in (r128.matmul, r128.matmul_numpy):
        got = fn(a, b)
        assert got.shape == (2, m, n) and got.dtype == np.uint64, fn.__name__
        assert np.array_equal(r128.to_pyint(got), want), fn.__name__


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """numba's pool capped at 1 (every product serial) or 2 threads (tiles and k-split)."""
    before = numba.get_num_threads()
    numba.set_num_threads(min(request.param, numba.config.NUMBA_NUM_THREADS))
    yield numba.get_num_threads()
    numba.set_num_threads(before)


@pytest.mark.parametrize("k", [1, 63, 511, 512, 3000, 9408])
def test_matmul_kernel_matches_its_twin_on_larger_shapes(k, threads):
    """Partial tiles, the serial path for small products, the parallel one and, for the
    one-tile shapes with 2 threads (8 x 256 from k = 512, 1 x 64 at k = 9408), its split
    along k."""
    rng = np.random.default_rng(k)
    for m, n in [(1, 3), (1, 64), (3, 70), (8, 256), (9, 300)]:
        a, b = random_wide(rng, m, k), random_wide(rng, k, n)
        assert same(r128.matmul(a, b), r128.matmul_numpy(a, b)), (m, n)


def test_matmul_kernel_matches_its_twin_at_the_cnn_shapes(threads):
    """conv1 and conv2 of the reference CNN (weights @ im2col patches) and its dense layer."""
    rng = np.random.default_rng(12)
    for m, k, n in [(8, 25, 12456), (16, 200, 2366), (1, 9408, 64)]:
        a, b = random_wide(rng, m, k), random_wide(rng, k, n)
        assert same(r128.matmul(a, b), r128.matmul_numpy(a, b)), (m, k, n)


def test_matmul_worst_case_values_with_thousands_of_terms(threads):
    # Every limb at its maximum: (2^128 - 1)^2 = 1 mod 2^128, so every entry is k; the twin's
    # limb sums are at their largest.
    k = 5000
    a = np.full((2, 3, k), M64 - 1, dtype=np.uint64)
    b = np.full((2, k, 300), M64 - 1, dtype=np.uint64)
    for fn in (r128.matmul, r128.matmul_numpy):
        got = fn(a, b)
        assert got[0].tolist() == [[k] * 300] * 3 and not got[1].any(), fn.__name__
    lo_only = a.copy()
    lo_only[1] = 0  # (2^64 - 1)(2^128 - 1) = -(2^64 - 1) mod 2^128
    want = (k * (M64 - 1) * (M128 - 1)) % M128
    assert set(r128.to_pyint(r128.matmul(lo_only, b)).reshape(-1).tolist()) == {want}
    assert set(r128.to_pyint(r128.matmul_numpy(lo_only, b)).reshape(-1).tolist()) == {want}


def test_matmul_reads_views_and_rejects_bad_operands():
    rng = np.random.default_rng(8)
    a, b = random_wide(rng, 6, 40), random_wide(rng, 80, 5)
    view_a, view_b = a[:, ::2], b[:, ::2]  # non-contiguous limb planes
    assert same(r128.matmul(view_a, view_b), r128.matmul_numpy(view_a, view_b))
    share = np.concatenate([a, random_wide(rng, 6, 40)])  # (4, ...): its halves are numbers
    assert same(r128.matmul(share[2:4], view_b), r128.matmul_numpy(share[2:4], view_b))
    assert r128.matmul(np.zeros((2, 0, 4), np.uint64), np.zeros((2, 4, 3), np.uint64)).shape \
        == (2, 0, 3)
    with pytest.raises(ValueError, match="mismatch"):
        r128.matmul(a, a)
    with pytest.raises(ValueError):
        r128.matmul(a[0], b[0])  # no limb axis
    with pytest.raises(ValueError):
        r128.matmul(np.concatenate([a, a]), b[:, :40])  # (4, ...) is two numbers, not one
    with pytest.raises(TypeError):
        r128.matmul(a.astype(np.int64), b[:, :40])
