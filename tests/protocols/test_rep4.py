"""Tier 2 for `rep4` (4 parties, one malicious): every primitive against plaintext, the
sharing layout, pinned round counts, and the reference CNN against torch.

Tampering (a corrupt party) is tested in `test_tamper.py`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from nn_helpers import top2_margin, torch_logits
from protocol_helpers import VALUE_MAX, busiest_rounds, i64, reveal_all, run_secure, secret, u64

from experiments.models import INPUT_SHAPE, reference_cnn
from nn.importer import from_torch
from nn.inference import classify
from protocols.functions import argmax, maximum
from protocols.ops import Conv2d
from protocols.schemes.rep4 import Rep4
from protocols.tensor import SecretTensor

SCHEME, N = "rep4", 4
EXAMPLES = settings(max_examples=10, deadline=None)
EDGES = [0, 1, -1, 2, -2, VALUE_MAX, -VALUE_MAX, VALUE_MAX - 1, -VALUE_MAX + 1,
         1 << 61, -(1 << 61), (1 << 63) - 1, -(1 << 63), (1 << 62), -(1 << 62)]

ring_values = st.integers(0, (1 << 64) - 1)


def ring_arrays(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.uint64, shape, elements=ring_values)


def run4(program):
    return run_secure(SCHEME, N, program)


def everyone_agrees(reports) -> object:
    first = reports[0].result
    for report in reports[1:]:
        for mine, theirs in zip(first, report.result, strict=True):
            assert np.array_equal(mine, theirs)
    return first


# -- sharing -----------------------------------------------------------------------------------

def test_registered_with_four_parties():
    from protocols.run import DEFAULT_PARTIES, SCHEMES
    assert SCHEMES["rep4"] is Rep4 and DEFAULT_PARTIES["rep4"] == 4


@EXAMPLES
@given(data=st.data())
def test_input_then_reveal_gives_the_value_back(data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=5), label="shape")
    values = [data.draw(ring_arrays(shape), label=f"value of party {o}") for o in range(N)]

    def program(p):
        return [reveal_all(secret(p, values[o], o)) for o in range(N)]

    opened = everyone_agrees(run4(program))
    for got, want in zip(opened, values, strict=True):
        assert got.dtype == np.uint64 and got.shape == want.shape
        assert np.array_equal(got, want)


@EXAMPLES
@given(values=hnp.arrays(np.uint64, st.integers(1, 20), elements=ring_values),
       owner=st.integers(0, N - 1))
def test_every_share_is_held_consistently_by_its_three_holders(values, owner):
    """Party i's component c is x_{i+1+c}; the three holders of each x_j agree, and the four
    x_j add up to the value."""

    def program(p):
        x = secret(p, values, owner)
        y = x * x  # a product's shares too
        return x.share, y.share

    reports = run4(program)
    for which, want in ((0, values), (1, values * values)):
        held: dict[int, list[np.ndarray]] = {j: [] for j in range(N)}
        for report in reports:
            i = report.party_id
            for c in range(3):
                held[(i + 1 + c) % N].append(report.result[which][c])
        for j in range(N):
            assert len(held[j]) == 3
            assert all(np.array_equal(held[j][0], h) for h in held[j][1:])
        total = sum((held[j][0] for j in range(N)), np.zeros_like(want))
        assert np.array_equal(total, want)


def test_reveal_reaches_only_the_named_parties():
    value = u64(np.arange(-3, 3))

    def program(p):
        x = secret(p, value, 2)
        return x.reveal(to=3), x.reveal(to=[0, 1])

    reports = run4(program)
    for report in reports:
        to_last, to_first_two = report.result
        assert (to_last is not None) == (report.party_id == 3)
        assert (to_first_two is not None) == (report.party_id in (0, 1))
        for got in (to_last, to_first_two):
            if got is not None:
                assert np.array_equal(got, value)


# -- linear and bilinear ---------------------------------------------------------------------

@EXAMPLES
@given(data=st.data())
def test_linear_operations_are_exact(data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=5), label="shape")
    x, y = data.draw(ring_arrays(shape)), data.draw(ring_arrays(shape))
    c = data.draw(ring_arrays(shape))

    def program(p):
        a, b = secret(p, x, 0), secret(p, y, 3)
        return (reveal_all(a + b), reveal_all(a - b), reveal_all(a + c), reveal_all(c - a),
                reveal_all(a * c), reveal_all(-a), reveal_all(a.sum(axis=0)))

    add, sub, add_c, c_sub, mul_c, neg, total = everyone_agrees(run4(program))
    assert np.array_equal(add, x + y) and np.array_equal(sub, x - y)
    assert np.array_equal(add_c, x + c) and np.array_equal(c_sub, c - x)
    assert np.array_equal(mul_c, x * c) and np.array_equal(neg, np.negative(x))
    assert np.array_equal(total, x.sum(axis=0, dtype=np.uint64))


@EXAMPLES
@given(data=st.data())
def test_products_are_exact(data):
    m, k, n = (data.draw(st.integers(1, 4)) for _ in range(3))
    x, y = data.draw(ring_arrays((m, k))), data.draw(ring_arrays((m, k)))
    w = data.draw(ring_arrays((k, n)))
    image = data.draw(ring_arrays((2, 2, 5, 4)))
    kernel = data.draw(ring_arrays((3, 2, 3, 2)))

    def program(p):
        a, b, c = secret(p, x, 0), secret(p, y, 1), secret(p, w, 2)
        img, ker = secret(p, image, 1), secret(p, kernel, 3)
        return (reveal_all(a * b), reveal_all(a @ c), reveal_all(img.conv2d(ker)),
                reveal_all(img.conv2d(ker, padding=(1, 1), stride=(2, 1))))

    prod, mat, conv, conv_padded = everyone_agrees(run4(program))
    assert np.array_equal(prod, x * y)
    want = np.array([[sum(int(x[i, t]) * int(w[t, j]) for t in range(k)) % (1 << 64)
                      for j in range(n)] for i in range(m)], dtype=object)
    assert np.array_equal(mat.astype(object), want)
    assert np.array_equal(conv, Conv2d()(kernel, image))
    assert np.array_equal(conv_padded, Conv2d((2, 1), (1, 1))(kernel, image))


# -- truncation ------------------------------------------------------------------------------

@EXAMPLES
@given(drawn=st.lists(st.integers(-VALUE_MAX, VALUE_MAX), min_size=1, max_size=50),
       frac_bits=st.integers(1, 40))
def test_trunc_is_floor_or_one_more(drawn, frac_bits):
    values = np.array(drawn + [0, 1, -1, VALUE_MAX, -VALUE_MAX], dtype=np.int64)

    def program(p):
        return reveal_all(secret(p, values, 1).trunc(frac_bits))

    got = i64(everyone_agrees(run4(program)))
    floor = np.array([v >> frac_bits for v in values.tolist()], dtype=np.int64)
    assert np.all((got == floor) | (got == floor + 1)), (got - floor)


def test_trunc_rounds_up_about_half_the_time():
    values = np.arange(-2000, 2000, dtype=np.int64) * 977

    def program(p):
        return reveal_all(secret(p, values, 0).trunc(8))

    got = i64(run4(program)[0].result)
    up = got - (values >> 8)
    assert set(np.unique(up)) <= {0, 1}
    assert 0.3 < up.mean() < 0.7


def test_unplanned_trunc_and_relu_make_their_material_online():
    """Calls the plan did not list (the planner sees none here) still work, at 2 extra
    rounds each for the daBits."""
    values = np.array([-5 << 20, 7 << 20, 0, -1], dtype=np.int64)

    def program(p):
        x = secret(p, values, 0)
        if isinstance(p, Rep4):
            return reveal_all(x.trunc(20)), reveal_all(x.relu())
        return None

    for report in run4(program):
        t, r = report.result
        assert np.all(np.abs(i64(t) - (values >> 20)) <= 1)
        assert np.array_equal(i64(r), np.maximum(values, 0))


# -- comparison ------------------------------------------------------------------------------

@EXAMPLES
@given(drawn=st.lists(st.integers(-VALUE_MAX, VALUE_MAX), min_size=1, max_size=80))
def test_ltz_and_relu_are_exact(drawn):
    values = np.array(drawn + EDGES, dtype=np.int64)

    def program(p):
        x = secret(p, values, 0)
        matrix = secret(p, values[:10].reshape(2, 5), 3)
        return (reveal_all(x.ltz()), reveal_all(x.relu()), reveal_all(matrix.ltz()),
                reveal_all(matrix.relu()))

    for report in run4(program):
        ltz, relu, ltz_m, relu_m = report.result
        assert np.array_equal(ltz, (values < 0).astype(np.uint64))
        assert np.array_equal(i64(relu), np.maximum(values, 0))
        assert np.array_equal(ltz_m, (values[:10] < 0).astype(np.uint64).reshape(2, 5))
        assert np.array_equal(i64(relu_m), np.maximum(values[:10], 0).reshape(2, 5))


@EXAMPLES
@given(data=st.data())
def test_maximum_and_argmax_agree_with_numpy(data):
    rows = data.draw(st.integers(1, 3), label="rows")
    classes = data.draw(st.integers(1, 9), label="classes")
    bound = (1 << 61) - 1
    flat = data.draw(st.lists(st.integers(-bound, bound), min_size=rows * classes,
                              max_size=rows * classes, unique=True), label="values")
    values = np.array(flat, dtype=np.int64).reshape(rows, classes)

    def program(p):
        x = secret(p, values, 0)
        return reveal_all(maximum(x)), reveal_all(argmax(x)), reveal_all(argmax(x[0]))

    for report in run4(program):
        biggest, index, first = report.result
        assert np.array_equal(i64(biggest), values.max(axis=-1))
        assert np.array_equal(index, np.argmax(values, axis=-1).astype(np.uint64))
        assert int(first) == int(np.argmax(values[0]))


def test_argmax_breaks_ties_towards_the_first_index():
    values = np.array([[3, 3, 1, 0], [-2, 5, 5, 5], [7, 7, 7, 7], [0, -1, 4, 4]],
                      dtype=np.int64)
    got = run4(lambda p: reveal_all(argmax(secret(p, values, 0))))[0].result
    assert np.array_equal(got, np.argmax(values, axis=-1).astype(np.uint64))


# -- rounds and traffic ----------------------------------------------------------------------

#: online rounds of each step, for the busiest party
ROUNDS = {"input": 1, "mul": 1, "matmul": 1, "trunc": 2, "ltz": 9, "relu": 9,
          "check+reveal": 2, "reveal again": 1}


def _rounds(body, size: int = 3) -> int:
    values = np.arange(size, dtype=np.int64) - size // 2

    def base(p):
        return secret(p, values, 0), secret(p, values, 1)

    def with_body(p):
        x, y = base(p)
        body(x, y)

    return busiest_rounds(run4(with_body)) - busiest_rounds(run4(base))


@pytest.mark.parametrize("size", [1, 5000])
def test_round_counts_are_pinned_and_do_not_grow_with_size(size):
    assert busiest_rounds(run4(lambda p: secret(p, np.zeros(size), 0))) == ROUNDS["input"]
    assert _rounds(lambda x, y: x * y, size) == ROUNDS["mul"]
    assert _rounds(lambda x, y: x.reshape(-1, 1) @ y.reshape(1, -1)[:, :3], size) == \
        ROUNDS["matmul"]
    assert _rounds(lambda x, y: x.trunc(16), size) == ROUNDS["trunc"]
    assert _rounds(lambda x, y: x.ltz(), size) == ROUNDS["ltz"]
    assert _rounds(lambda x, y: x.relu(), size) == ROUNDS["relu"]
    assert _rounds(lambda x, y: x.reveal(0), size) == ROUNDS["check+reveal"]
    assert _rounds(lambda x, y: (x.reveal(0), y.reveal(1)), size) == \
        ROUNDS["check+reveal"] + ROUNDS["reveal again"]


def test_argmax_takes_one_comparison_depth():
    classes = 8
    rounds = _rounds(lambda x, y: argmax(x.reshape(1, -1)), classes)
    assert rounds == ROUNDS["ltz"] + int(np.ceil(np.log2(classes - 1)))


def test_offline_phase_is_three_rounds_and_traffic_is_balanced():
    """Key set-up (1 round) plus daBits and masks for the whole plan (2 rounds); a product
    costs each party 1.5 words per output element plus framing."""
    size = 4000

    def program(p):
        x, y = secret(p, np.arange(size), 0), secret(p, np.arange(size), 1)
        (x * y).trunc(8).relu()

    reports = run4(program)
    assert all(r.offline.rounds == 3 for r in reports)

    def only_mul(p):
        x, y = secret(p, np.arange(size), 0), secret(p, np.arange(size), 1)
        if not isinstance(p, Rep4):
            return None
        before = p.channel.traffic.bytes_sent
        x * y
        return p.channel.traffic.bytes_sent - before

    sent = [r.result for r in run4(only_mul)]
    for b in sent:
        assert 1.5 * 8 * size <= b <= 1.5 * 8 * size + 400


# -- the reference CNN -----------------------------------------------------------------------

def test_reference_cnn_labels_equal_torch():
    torch.manual_seed(1234)
    module = reference_cnn(8).eval()
    model, report = from_torch(module, INPUT_SHAPE)
    assert report.agreement == 1.0
    candidates = np.random.default_rng(11).normal(size=(16, *INPUT_SHAPE))
    reference = torch_logits(module, candidates)
    keep = np.flatnonzero(top2_margin(reference) > 2e-3)[:4]
    assert len(keep) == 4
    result = classify(model, candidates[keep], scheme=SCHEME, reveal_logits=True)
    np.testing.assert_array_equal(result.labels, reference[keep].argmax(axis=1))
    assert np.abs(result.logits - reference[keep]).max() <= 1e-3
    assert len(result.parties) == N


def test_secret_tensor_wraps_rep4_shares():
    def program(p):
        x = secret(p, np.arange(6).reshape(2, 3), 0)
        assert isinstance(x, SecretTensor)
        assert x.share.shape == ((3, 2, 3) if isinstance(p, Rep4) else (1, 2, 3))
        return reveal_all(x.T)

    got = run4(program)[0].result
    assert np.array_equal(got, u64(np.arange(6).reshape(2, 3).T))
