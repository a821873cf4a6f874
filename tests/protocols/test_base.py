"""The Protocol contract (`protocols/base.py`), for every registered scheme.

One body per property, parametrised over (scheme, n_parties) with `conftest.every_scheme`
(every scheme of the registry at its default party count, additive at 3 and 4 parties too),
over the in-process transport, against plaintext. Ring operations (products, matrix products,
convolutions) must be exact mod 2^64; truncation gives floor or one more for |x| < 2^62;
comparisons are exact on the whole ring; round counts are pinned per scheme
(`conftest.ROUNDS`); and what a party receives during a comparison does not depend on the
secret. Each example is one `run` (threads), so examples are few and batch many values each.

SecretTensor's own operations (linear and structural ones, fixed point, 0-d values) are in
test_tensor.py; maximum and argmax in test_functions.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    ACTIVE_SCHEMES,
    EDGES,
    EXAMPLES,
    P_FLOOR,
    ROUNDS,
    RUNS,
    VALUE_MAX,
    assert_all_parties_agree,
    assert_same_and_uniform,
    bit_uniformity_pvalue,
    busiest_rounds,
    byte_uniformity_pvalue,
    every_scheme,
    every_scheme_once,
    i64,
    op_rounds,
    reveal_all,
    ring_arrays,
    run_secure,
    secret,
    small_dims,
    top_nibble_pvalues,
    transcripts,
    u64,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocols.ops import Conv2d, MatMul

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
    # the matrix product against Python's integers, reduced mod 2^64
    exact = np.array([[sum(int(x[a, t]) * int(y[t, b]) for t in range(k)) % (1 << 64)
                       for b in range(n)] for a in range(m)], dtype=object)
    assert np.array_equal(got[3].astype(object), exact)


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
    assert np.array_equal(want, Conv2d(stride, padding)(weight, x))  # the plaintext op agrees
    got_secret, got_public = assert_all_parties_agree(run_secure(scheme, n_parties, program), 2)
    assert np.array_equal(got_secret, want)
    assert np.array_equal(got_public, want)


# -- truncation -------------------------------------------------------------------------------

signed_values = st.integers(-VALUE_MAX, VALUE_MAX)
#: Schemes whose truncation by f <= this many bits is exact (no carry is left out).
EXACT_TRUNC_BITS = {"replicated_mac": 1}
#: Schemes whose truncation of a multiple of 2^f is exact: the masked truncations (their +1
#: is a carry out of the mask's low bits, which a multiple cannot make). replicated_mac
#: truncates each component and adds 1 for the left-out low carry, so it is floor or one
#: more on multiples too (`Protocol.trunc`'s contract).
INEXACT_ON_MULTIPLES = {"replicated_mac"}


def trunc_edges(f: int) -> list[int]:
    step = 1 << f
    edges = [0, 1, -1, step - 1, step, step + 1, -step + 1, -step, -step - 1, 5 * step,
             -5 * step, VALUE_MAX, -VALUE_MAX, VALUE_MAX - step, -VALUE_MAX + step,
             (1 << 61), -(1 << 61)]
    return [v for v in edges if abs(v) <= VALUE_MAX]  # the promise is for |x| < 2^62 only


def allowed_trunc_errors(scheme: str, f: int) -> set[int]:
    return {0} if f <= EXACT_TRUNC_BITS.get(scheme, -1) else {0, 1}


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
        x = secret(p, values, 0)
        return (reveal_all(x.trunc(f)),
                reveal_all(secret(p, multiples, p.n_parties - 1).trunc(f)),
                reveal_all(x.trunc(1)))

    got, got_multiples, got_one = assert_all_parties_agree(
        run_secure(scheme, n_parties, program), 3)
    error = i64(got) - exact
    assert set(np.unique(error)) <= allowed_trunc_errors(scheme, f), \
        values[(error != 0) & (error != 1)]
    if scheme in INEXACT_ON_MULTIPLES:
        assert set(np.unique(i64(got_multiples) - (multiples >> f))) <= \
            allowed_trunc_errors(scheme, f)
    else:
        assert np.array_equal(i64(got_multiples), multiples >> f)
    assert set(np.unique(i64(got_one) - (values >> 1))) <= allowed_trunc_errors(scheme, 1)


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


# -- comparison -------------------------------------------------------------------------------

def test_edges_include_one_ulp_below_zero_as_the_top_ring_element():
    assert u64(np.array([-1]))[0] == np.uint64((1 << 64) - 1)


@every_scheme
@EXAMPLES
@given(drawn=st.lists(st.integers(-(1 << 63), (1 << 63) - 1), min_size=1, max_size=60))
def test_ltz_and_relu_are_exact(scheme, n_parties, drawn):
    """Exact on the whole ring (`Protocol.ltz` promises [x < 0] for every x)."""
    values = np.array(drawn + EDGES, dtype=np.int64)

    def program(p):
        x = secret(p, values, 0)
        matrix = secret(p, values[:10].reshape(2, 5), p.n_parties - 1)
        return (reveal_all(x.ltz()), reveal_all(x.relu()), reveal_all(matrix.ltz()),
                reveal_all(matrix.relu()))

    reports = run_secure(scheme, n_parties, program)
    for report in reports:
        ltz, relu, ltz_m, relu_m = report.result
        assert np.array_equal(ltz, (values < 0).astype(np.uint64))
        assert np.array_equal(i64(relu), np.maximum(values, 0))
        assert ltz_m.shape == relu_m.shape == (2, 5)
        assert np.array_equal(ltz_m, (values[:10] < 0).astype(np.uint64).reshape(2, 5))
        assert np.array_equal(i64(relu_m), np.maximum(values[:10], 0).reshape(2, 5))


@every_scheme
@settings(max_examples=6, deadline=None)
@given(bits=st.integers(1, 63), data=st.data())
def test_narrowed_ltz_and_relu_are_exact_on_their_range(scheme, n_parties, bits, data):
    """`ltz(x, bits)` promises [x < 0] for every x in [-2^bits, 2^bits), the ends included
    (the masked schemes, rep4 and replicated_mac compare fewer bits; spdz2k all of them)."""
    low, high = -(1 << bits), (1 << bits) - 1
    drawn = data.draw(st.lists(st.integers(low, high), min_size=1, max_size=30))
    values = np.array(drawn + [low, high, low + 1, high - 1, -1, 0], dtype=np.int64)

    def program(p):
        x = secret(p, values, 0)
        return reveal_all(x.ltz(bits)), reveal_all(x.relu(bits))

    for report in run_secure(scheme, n_parties, program):
        ltz, relu = report.result
        assert np.array_equal(ltz, (values < 0).astype(np.uint64))
        assert np.array_equal(i64(relu), np.maximum(values, 0))


# -- the fused linear layer: (op(x, y) + bias) / 2^f in one call ------------------------------

#: Online rounds of a fused product and truncation where a scheme saves some (otherwise a
#: product's and a truncation's): the replicated scheme fuses the product into the
#: truncation's opening (2 instead of 3).
FUSED_ROUNDS = {"replicated": 2}


@every_scheme
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), f=st.integers(1, 20))
def test_matmul_with_bias_then_trunc_is_floor_or_one_more(scheme, n_parties, seed, f):
    rng = np.random.default_rng(seed)
    x = rng.integers(-(1 << 20), 1 << 20, (3, 7))
    w = rng.integers(-(1 << 20), 1 << 20, (7, 4))
    b = rng.integers(-(1 << 40), 1 << 40, (3, 4))
    exact = (x @ w + b) >> f  # int64 is exact here: |x @ w + b| < 2^44

    def program(p):
        xs, ws, bs = secret(p, x, 0), secret(p, w, 1), secret(p, b, 1)
        return reveal_all(xs.bilinear_trunc(ws, MatMul(), bs, f))

    reports = run_secure(scheme, n_parties, program)
    got = i64(reports[0].result)
    assert np.all((got - exact >= 0) & (got - exact <= 1))


@every_scheme
def test_fused_conv_costs_its_pinned_rounds(scheme, n_parties):
    rng = np.random.default_rng(1)
    x = rng.integers(-1000, 1000, (1, 2, 9, 9))
    w = rng.integers(-1000, 1000, (3, 2, 3, 3))
    bias = np.zeros((1, 3, 7, 7), dtype=np.int64)
    want = FUSED_ROUNDS.get(scheme, ROUNDS[scheme]["mul"] + ROUNDS[scheme]["trunc"])

    def program(p):
        xs, ws, bs = secret(p, x, 0), secret(p, w, 1), secret(p, bias, 1)
        channel = getattr(p, "channel", None)  # the planner's dry run has none
        before = channel.traffic.rounds if channel else 0
        out = ws.bilinear_trunc(xs, Conv2d(), bs, 4)
        rounds = channel.traffic.rounds - before if channel else 0
        return reveal_all(out), rounds

    reports = run_secure(scheme, n_parties, program)
    assert max(r.result[1] for r in reports) == want
    assert busiest_rounds(reports) >= want


# -- round counts ------------------------------------------------------------------------------

#: One sub-protocol on inputs x and y of any (even) size
ROUND_OPS = {
    "reveal": lambda x, y: x.reveal(0),
    "reveal again": lambda x, y: y.reveal(1),  # after x.reveal(0)
    "mul": lambda x, y: x * y,
    "matmul": lambda x, y: x.reshape(-1, 1) @ y.reshape(1, -1)[:, :3],
    "conv": lambda x, y: x.reshape(1, 1, 2, -1).conv2d(y.reshape(1, 1, 2, -1)[..., :2, :2],
                                                       padding=(1, 1)),
    "trunc": lambda x, y: x.trunc(16),
    "ltz": lambda x, y: x.ltz(),
    "relu": lambda x, y: x.relu(),
}


@every_scheme
@pytest.mark.parametrize("op", ["input", *ROUND_OPS])
@pytest.mark.parametrize("size", [2, 3000])
def test_round_count_of_each_sub_protocol(scheme, n_parties, op, size):
    """The busiest party's online rounds of each sub-protocol, the same for 2 and 3000
    elements (conftest.ROUNDS)."""
    if op == "input":
        nothing = busiest_rounds(run_secure(scheme, n_parties, lambda p: None))
        one_input = run_secure(scheme, n_parties, lambda p: secret(p, np.zeros(size), 0))
        rounds = busiest_rounds(one_input) - nothing
    else:
        before = ROUND_OPS["reveal"] if op == "reveal again" else None
        rounds = op_rounds(scheme, n_parties, ROUND_OPS[op], size, before)
    assert rounds == ROUNDS[scheme][op]


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


# -- what a party sees during a comparison -----------------------------------------------------

#: spdz2k with 2 parties compares through DCF keys evaluated locally, so one comparison shows
#: a party only two words (the masked input and the opened c = x + r); it compares four
#: copies of the secret at once so that the transcript has more than the helper's minimum of
#: 2 words.
COPIES = {"spdz2k": 4}


@every_scheme_once
def test_messages_during_a_comparison_are_uniform_whatever_the_secret(
        monkeypatch, scheme, n_parties):
    """Word by word, what party 1 receives during `ltz` of x = +5 and of x = -5 has the same
    distribution, and every byte and bit of it is uniform. (In the replicated scheme party 1
    is in the masked pair.) The active schemes' hash digests (rep4's vouching) and MAC-check
    commitments are bytes, not ring words, and are left out of the transcript."""
    copies = COPIES.get(scheme)
    value = (lambda v: [v] * copies) if copies else (lambda v: v)
    words_only = scheme in ACTIVE_SCHEMES
    positive = transcripts(monkeypatch, scheme, n_parties, 1, value(5),
                           ring_words_only=words_only)
    negative = transcripts(monkeypatch, scheme, n_parties, 1, value(-5),
                           ring_words_only=words_only)
    assert positive.shape[1] == (2 * copies if copies else positive.shape[1])
    assert_same_and_uniform(positive, negative)


def test_the_leak_tests_catch_a_leak():
    """Negative control: a 'protocol' that opens x + r with a mask r too short for x (40
    bits for |x| = 2^50, so the sign shows through) fails the tests the real transcripts
    pass."""
    rng = np.random.default_rng(7)
    shape = (RUNS, 4)

    def noise():
        return rng.integers(0, 1 << 64, shape, dtype=np.uint64)

    weak_mask = rng.integers(0, 1 << 40, shape, dtype=np.uint64)
    positive, negative = noise(), noise()
    positive[:, 0] = u64(np.full(RUNS, 1 << 50)) + weak_mask[:, 0]
    negative[:, 0] = u64(np.full(RUNS, -(1 << 50))) + weak_mask[:, 1]
    assert top_nibble_pvalues(positive, negative).min() * shape[1] < P_FLOOR
    assert byte_uniformity_pvalue(positive) < P_FLOOR
    assert bit_uniformity_pvalue(negative) < P_FLOOR
    # and accept honest noise
    assert top_nibble_pvalues(noise(), noise()).min() * shape[1] > P_FLOOR
    assert bit_uniformity_pvalue(noise()) > P_FLOOR
