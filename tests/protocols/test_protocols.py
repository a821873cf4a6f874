"""Tier 2: every scheme and party count over the in-process transport, against plaintext.

One body per property, parametrised over (scheme, n_parties). Ring operations (linear ones,
products, matrix products, convolutions) must be exact mod 2^64; truncation gives floor or
one more; fixed-point results stay within the error the encoding and truncation allow.
Each example is one `run` (threads), so examples are few and batch many values each.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from protocol_helpers import (
    SCHEME_PARTIES,
    VALUE_MAX,
    busiest_rounds,
    every_scheme,
    i64,
    reveal_all,
    run_secure,
    secret,
    u64,
)

from mpc.fixedpoint import FixedPoint

EXAMPLES = settings(max_examples=12, deadline=None)

ring_values = st.integers(0, (1 << 64) - 1)
small_dims = st.integers(1, 4)


def ring_arrays(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.uint64, shape, elements=ring_values)


def assert_all_parties_agree(reports, n_outputs: int) -> list[np.ndarray]:
    """Results revealed to everyone are identical at every party; return party 0's."""
    first = reports[0].result
    assert len(first) == n_outputs
    for report in reports[1:]:
        for mine, theirs in zip(first, report.result, strict=True):
            assert np.array_equal(mine, theirs)
    return first


# -- sharing and reconstruction --------------------------------------------------------------

@every_scheme
@EXAMPLES
@given(data=st.data())
def test_input_then_reveal_gives_the_value_back(scheme, n_parties, data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=5), label="shape")
    values = [data.draw(ring_arrays(shape), label=f"value of party {o}")
              for o in range(n_parties)]

    def program(p):
        return [reveal_all(secret(p, values[o], o)) for o in range(p.n_parties)]

    reports = run_secure(scheme, n_parties, program)
    opened = assert_all_parties_agree(reports, n_parties)
    for got, want in zip(opened, values, strict=True):
        assert got.dtype == np.uint64 and got.shape == want.shape
        assert np.array_equal(got, want)


@every_scheme
def test_reveal_reaches_only_the_named_parties(scheme, n_parties):
    value = u64(np.arange(-3, 3))

    def program(p):
        x = secret(p, value, 0)
        return x.reveal(to=p.n_parties - 1), x.reveal(to=[0, 1])

    reports = run_secure(scheme, n_parties, program)
    for report in reports:
        last, pair = report.result
        if report.party_id == n_parties - 1:
            assert np.array_equal(last, value)
        else:
            assert last is None
        if report.party_id in (0, 1):
            assert np.array_equal(pair, value)
        else:
            assert pair is None


def test_shares_alone_look_nothing_like_the_value():
    """A single party's share of a constant input is not the value (it is PRG output)."""
    value = np.zeros(64, dtype=np.uint64)

    def program(p):
        return secret(p, value, 0).share.copy()

    reports = run_secure("additive", 2, program)
    assert not np.array_equal(reports[1].result[0], value)
    assert np.array_equal(reports[0].result[0] + reports[1].result[0], value)


# -- linear operations -----------------------------------------------------------------------

@every_scheme
@EXAMPLES
@given(data=st.data())
def test_linear_and_structural_operations_are_exact(scheme, n_parties, data):
    shape = (data.draw(small_dims, label="rows"), data.draw(small_dims, label="cols"))
    x, y, c = (data.draw(ring_arrays(shape), label=name) for name in "xyc")
    k = data.draw(st.integers(-(1 << 63), (1 << 63) - 1), label="public scalar")
    ku = np.uint64(k % (1 << 64))

    def program(p):
        sx, sy = secret(p, x, 0), secret(p, y, p.n_parties - 1)
        outs = [sx + sy, sx - sy, -sx, sx + c, c + sx, sx - c, c - sx, sx + k,
                sx * k, k * sx, sx * c, c * sx,
                sx.sum(), sx.sum(axis=0), sx.sum(axis=1, keepdims=True), sx.sum(axis=-1),
                sx.reshape(-1), sx.reshape(shape[1], shape[0]), sx.flatten(), sx.T,
                sx.transpose(1, 0), sx[0], sx[:, -1], sx[..., ::2], sx[::-1, :1],
                (sx - sy * 3 + 7).T[0]]
        return [reveal_all(o) for o in outs]

    with np.errstate(over="ignore"):
        want = [x + y, x - y, np.negative(x), x + c, c + x, x - c, c - x, x + ku,
                x * ku, ku * x, x * c, c * x,
                x.sum(dtype=np.uint64), x.sum(axis=0, dtype=np.uint64),
                x.sum(axis=1, keepdims=True, dtype=np.uint64), x.sum(axis=-1, dtype=np.uint64),
                x.reshape(-1), x.reshape(shape[1], shape[0]), x.reshape(-1), x.T, x.T, x[0],
                x[:, -1], x[..., ::2], x[::-1, :1], (x - y * np.uint64(3) + np.uint64(7)).T[0]]
    got = assert_all_parties_agree(run_secure(scheme, n_parties, program), len(want))
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == np.shape(w), i
        assert np.array_equal(g, w), i


# -- products ---------------------------------------------------------------------------------

@every_scheme
@EXAMPLES
@given(data=st.data())
def test_products_and_matrix_products_are_exact_in_the_ring(scheme, n_parties, data):
    m, k, n, j = (data.draw(small_dims, label=d) for d in "mknj")
    x = data.draw(ring_arrays((m, k)), label="x")
    z = data.draw(ring_arrays((m, k)), label="z")
    y = data.draw(ring_arrays((k, n)), label="y")
    pub = data.draw(ring_arrays((k, n)), label="public right")
    pub_left = data.draw(ring_arrays((j, m)), label="public left")
    batch = data.draw(ring_arrays((2, m, k)), label="batched left")
    batch_right = data.draw(ring_arrays((2, k, n)), label="batched right")
    row = data.draw(ring_arrays((k,)), label="broadcast row")

    def program(p):
        sx, sz, sy = secret(p, x, 0), secret(p, z, 1), secret(p, y, p.n_parties - 1)
        sb, sbr = secret(p, batch, 1), secret(p, batch_right, 0)
        srow = secret(p, row, p.n_parties - 1)
        outs = [sx * sz, sx * sx, sx * srow, sx @ sy, sx @ pub, pub_left @ sx, sb @ sy,
                sx @ sbr, (sx * sz) @ sy]
        return [reveal_all(o) for o in outs]

    want = [x * z, x * x, x * row, np.matmul(x, y), np.matmul(x, pub), np.matmul(pub_left, x),
            np.matmul(batch, y), np.matmul(x, batch_right), np.matmul(x * z, y)]
    got = assert_all_parties_agree(run_secure(scheme, n_parties, program), len(want))
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape, i
        assert np.array_equal(g, w), i


def conv_reference(weight: np.ndarray, x: np.ndarray, stride: tuple[int, int],
                   padding: tuple[int, int]) -> np.ndarray:
    """Cross-correlation by loops over output positions, in uint64 (wraps mod 2^64)."""
    cout, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], cout, ho, wo), dtype=np.uint64)
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, None, :, i * sh:i * sh + kh, j * sw:j * sw + kw]  # (B, 1, C, kh, kw)
            out[:, :, i, j] = (patch * weight[None]).sum(axis=(2, 3, 4), dtype=np.uint64)
    return out


@every_scheme
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_conv2d_with_secret_weights_and_input(scheme, n_parties, data):
    b, cin, cout = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), \
        data.draw(st.integers(1, 3))
    kh, kw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    stride = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    padding = (data.draw(st.integers(0, 1)), data.draw(st.integers(0, 1)))
    h, w = data.draw(st.integers(kh, 6)), data.draw(st.integers(kw, 6))
    weight = data.draw(ring_arrays((cout, cin, kh, kw)), label="weight")
    x = data.draw(ring_arrays((b, cin, h, w)), label="input")

    def program(p):
        sw, sx = secret(p, weight, 1), secret(p, x, 0)
        return [reveal_all(sx.conv2d(sw, stride, padding)),
                reveal_all(sx.conv2d(weight, stride, padding))]

    want = conv_reference(weight, x, stride, padding)
    got_secret, got_public = assert_all_parties_agree(run_secure(scheme, n_parties, program), 2)
    assert np.array_equal(got_secret, want)
    assert np.array_equal(got_public, want)


# -- truncation -------------------------------------------------------------------------------

signed_values = st.integers(-VALUE_MAX, VALUE_MAX)


def trunc_edges(f: int) -> list[int]:
    step = 1 << f
    edges = [0, 1, -1, step - 1, step, step + 1, -step + 1, -step, -step - 1, 5 * step,
             -5 * step, VALUE_MAX, -VALUE_MAX, VALUE_MAX - step, -VALUE_MAX + step,
             (1 << 61), -(1 << 61)]
    return [v for v in edges if abs(v) <= VALUE_MAX]  # the promise is for |x| < 2^62 only


@every_scheme
@EXAMPLES
@given(data=st.data(), f=st.integers(0, 60))
def test_trunc_is_floor_or_one_more_up_to_2_62(scheme, n_parties, data, f):
    drawn = data.draw(st.lists(signed_values, min_size=1, max_size=40), label="values")
    values = np.array(drawn + trunc_edges(f), dtype=np.int64)
    exact = values >> f  # floor(x / 2^f) for negative x too
    multiples = (values >> f) << f  # low f bits clear: no mask carry, so exact
    multiples = multiples[np.abs(multiples) <= VALUE_MAX]

    def program(p):
        return (reveal_all(secret(p, values, 0).trunc(f)),
                reveal_all(secret(p, multiples, p.n_parties - 1).trunc(f)))

    got, got_multiples = assert_all_parties_agree(run_secure(scheme, n_parties, program), 2)
    error = i64(got) - exact
    assert set(np.unique(error)) <= {0, 1}, values[(error != 0) & (error != 1)]
    assert np.array_equal(i64(got_multiples), multiples >> f)


@every_scheme
def test_trunc_rounds_up_about_half_the_time(scheme, n_parties):
    """The +1 comes from the mask's low bits: for x = 2^(f-1) it is a fair coin."""
    f = 8
    values = np.full(2000, (1 << f) // 2, dtype=np.int64)  # low bits 1000 0000: p(+1) = 1/2

    def program(p):
        return reveal_all(secret(p, values, 0).trunc(f))

    got = i64(run_secure(scheme, n_parties, program)[0].result)
    assert set(np.unique(got)) <= {0, 1}
    assert 800 < int(got.sum()) < 1200  # mean 1000, sd 22: 9 sd either side


# -- fixed point against floats -------------------------------------------------------------

@every_scheme
@EXAMPLES
@given(data=st.data())
def test_fixed_point_arithmetic_within_its_error_bound(scheme, n_parties, data):
    fp = FixedPoint(frac_bits=16, int_bits=31)
    f, ulp = fp.frac_bits, 2.0 ** -fp.frac_bits
    reals = st.floats(-100, 100, allow_nan=False, allow_infinity=False)
    m, k, n = (data.draw(small_dims, label=d) for d in "mkn")
    xf = data.draw(hnp.arrays(np.float64, (m, k), elements=reals), label="x")
    yf = data.draw(hnp.arrays(np.float64, (m, k), elements=reals), label="y")
    wf = data.draw(hnp.arrays(np.float64, (k, n), elements=reals), label="w")
    cf = data.draw(reals, label="public constant")
    x, y, w = fp.encode(xf), fp.encode(yf), fp.encode(wf)
    c = fp.encode(np.array(cf))

    def program(p):
        sx, sy, sw = secret(p, x, 0), secret(p, y, 1), secret(p, w, p.n_parties - 1)
        outs = [sx + sy, sx - sy, sx + c, (sx * sy).trunc(f), (sx * c).trunc(f),
                (sx @ sw).trunc(f), ((sx * sy).trunc(f) @ sw).trunc(f)]
        return [reveal_all(o) for o in outs]

    got = [fp.decode(g) for g in
           assert_all_parties_agree(run_secure(scheme, n_parties, program), 7)]
    xe, ye, we, ce = fp.decode(x), fp.decode(y), fp.decode(w), float(fp.decode(c))
    # encoding: |x~ - x| <= ulp/2 each; truncation: floor or one more, so within 1 ulp
    enc = ulp / 2
    assert np.abs(got[0] - (xf + yf)).max() <= 2 * enc + 1e-9
    assert np.abs(got[1] - (xf - yf)).max() <= 2 * enc + 1e-9
    assert np.abs(got[2] - (xf + cf)).max() <= 2 * enc + 1e-9
    # a product of encoded values is exact before truncation: only the truncation errs
    assert np.abs(got[3] - xe * ye).max() <= ulp + 1e-9
    assert np.abs(got[3] - xf * yf).max() <= ulp + enc * (np.abs(xf) + np.abs(yf) + enc).max()
    assert np.abs(got[4] - xe * ce).max() <= ulp + 1e-9
    assert np.abs(got[5] - xe @ we).max() <= ulp + 1e-7
    bound = ulp * (1 + np.abs(we).sum(axis=0).max()) + ulp + 1e-7
    assert np.abs(got[6] - (xe * ye) @ we).max() <= bound


# -- round counts ------------------------------------------------------------------------------

ROUNDS = {  # busiest compute party's online rounds for each sub-protocol
    "additive": {"input": 0, "reveal": 1, "mul": 1, "matmul": 1, "conv": 1, "trunc": 1},
    "replicated": {"input": 1, "reveal": 1, "mul": 1, "matmul": 1, "conv": 1, "trunc": 2},
}


def one_operation(op: str, size: int = 6):
    """A program that inputs x (and y) and then runs `op` once; "inputs" stops after the
    inputs, "nothing" does nothing."""
    x_value = u64(np.arange(size) - size // 2)
    y_value = x_value[::-1].copy()

    def program(p):
        if op == "nothing":
            return None
        x = secret(p, x_value, 0)
        if op == "input":
            return None
        y = secret(p, y_value, p.n_parties - 1)
        if op == "reveal":
            x.reveal(0)
        elif op == "mul":
            x * y
        elif op == "matmul":
            x.reshape(2, size // 2) @ y.reshape(size // 2, 2)
        elif op == "conv":
            x.reshape(1, 1, 2, size // 2).conv2d(y.reshape(1, 1, 2, size // 2)[..., :2, :2],
                                                 padding=(1, 1))
        elif op == "trunc":
            x.trunc(16)
        return None

    return program


@every_scheme
@pytest.mark.parametrize("op", ["input", "reveal", "mul", "matmul", "conv", "trunc"])
def test_round_count_of_each_sub_protocol(scheme, n_parties, op):
    baseline = one_operation("nothing" if op == "input" else "inputs")
    base = busiest_rounds(run_secure(scheme, n_parties, baseline))
    with_op = busiest_rounds(run_secure(scheme, n_parties, one_operation(op)))
    assert with_op - base == ROUNDS[scheme][op]


@every_scheme
def test_rounds_do_not_grow_with_the_layer_size(scheme, n_parties):
    def layer(size):
        def program(p):
            x = secret(p, np.arange(size) - size // 2, 0)
            w = secret(p, np.ones(size, dtype=np.int64), p.n_parties - 1)
            return reveal_all((x * w).trunc(4)).shape
        return program

    small = busiest_rounds(run_secure(scheme, n_parties, layer(1)))
    large = busiest_rounds(run_secure(scheme, n_parties, layer(20_000)))
    assert small == large


# -- 0-d values -------------------------------------------------------------------------------

@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize(("scheme", "n_parties"), [*SCHEME_PARTIES, ("rep4", 4), ("spdz2k", 2),
                                                   ("replicated_mac", 3)])
def test_zero_dimensional_values_wrap_without_warnings(scheme, n_parties):
    big = (1 << 64) - 5

    def program(p):
        x = secret(p, np.array(big, dtype=np.uint64), 0)
        return reveal_all(x * x + x)

    got = run_secure(scheme, n_parties, program)[0].result
    assert isinstance(got, np.ndarray) and got.shape == ()
    assert int(got) == (big * big + big) % (1 << 64)
