"""SPDZ2k (2 and 3 parties, trusted dealer, MACs mod 2^128): every op against plaintext, the
128-bit bilinear ops against Python ints (the 128-bit arithmetic is in
tests/mpc/test_ring128.py), the dealt material's MACs, rounds per op.

The shared bodies of test_base.py, test_tensor.py and test_functions.py run every op under
spdz2k (2 parties) too. The tamper sweep is in tests/protocols/test_tamper.py, MAC-forgery
and DCF-error tests in tests/protocols/test_mac.py, the reference CNN against torch in
tests/nn/test_inference.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import VALUE_MAX, i64, reveal_all, secret, u64
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpc import ring128 as r128
from mpc.errors import PreprocessingError
from mpc.prg import PRG
from protocols import functions
from protocols.blocks.ring128_ops import bilinear
from protocols.ops import Conv2d, MatMul, Mul
from protocols.preprocessing import spdz2k_material as material
from protocols.preprocessing.correlations import Request
from protocols.run import run

EXAMPLES = settings(max_examples=8, deadline=None)
PARTIES = pytest.mark.parametrize("n", [2, 3])
M128 = 1 << 128
ring_values = st.integers(0, (1 << 64) - 1)
wide_values = st.integers(0, M128 - 1)
signed_values = st.integers(-VALUE_MAX, VALUE_MAX)


def run_all(n: int, program) -> list:
    """Compute parties' results (revealed to all, so identical everywhere); check they agree."""
    reports = run("spdz2k", program, n_parties=n)[:n]
    first = reports[0].result
    for report in reports[1:]:
        for mine, theirs in zip(first, report.result, strict=True):
            assert np.array_equal(mine, theirs)
    return first


def wide(shape, data, label):
    ints = data.draw(hnp.arrays(object, shape, elements=wide_values), label=label)
    return r128.from_pyint(ints), ints


# -- 128-bit bilinear ops against Python ints -------------------------------------------------
@EXAMPLES
@given(data=st.data())
def test_ring128_bilinear_matches_python_ints(data):
    m, k, n = (data.draw(st.integers(1, 4)) for _ in range(3))
    a, ai = wide((2, m, k), data, "a")
    b, bi = wide((k, n), data, "b")
    got = r128.to_pyint(bilinear(MatMul(), a, b))
    assert np.array_equal(got, np.matmul(ai, bi) % M128)
    w, wi = wide((2, 1, 2, 2), data, "w")
    x, xi = wide((1, 1, 3, 4), data, "x")
    out = r128.to_pyint(bilinear(Conv2d(), w, x))
    for o in range(2):
        for i in range(2):
            for j in range(3):
                expect = (wi[o, 0] * xi[0, 0, i:i + 2, j:j + 2]).sum() % M128
                assert out[0, o, i, j] == expect


@PARTIES
def test_dealt_material_is_authenticated_and_correct(n):
    """Expand every party's material (no network) and check sum(mac) = alpha * sum(value)
    and each field's defining relation; with 2 parties, that the DCF keys of a comparison
    evaluate to authenticated shares of (1 - 2 r_63) [x_low < r_low]."""
    plan = [Request("triple", (2, 3), (3, 2), op=MatMul()), Request("trunc", (5,), frac_bits=4),
            Request("relu", (7,)), Request("input", (4,), (1,)),
            Request("reveal", (3,), (0, n - 1)), Request("ltz", (2, 3))]
    keys = [PRG.fresh().derive(str(i)) for i in range(n)]
    known = [PRG.fresh().derive(f"k{i}") for i in range(n)]
    fresh = lambda ks: [PRG(k._key) for k in ks]  # noqa: E731 - same streams again
    alpha = r128.lift(np.array([12345678901234567], dtype=np.uint64))[:, 0]
    sizes = [material.correction_words(r, n) for r in plan]
    common_sizes = [material.common_words(r, n) for r in plan]
    assert (sum(common_sizes) > 0) == (n == 2)
    flat = np.empty(sum(sizes), dtype=np.uint64)
    common = np.empty(sum(common_sizes), dtype=np.uint64)
    offset = common_offset = 0
    dealer_prgs, dealer_known = fresh(keys), fresh(known)
    for request, size, csize in zip(plan, sizes, common_sizes, strict=True):
        material.deal_into(request, dealer_prgs, dealer_known, alpha, PRG.fresh(),
                           flat[offset:offset + size], common[common_offset:common_offset + csize])
        offset += size
        common_offset += csize
    stores = [material.LazyStore(plan, p, kp, i, flat if i == n - 1 else None, n, common)
              for i, (p, kp) in enumerate(zip(fresh(keys), fresh(known), strict=True))]
    for request in plan:
        parts = [s.take(request) for s in stores]
        total, wide = {}, {}
        if "dcf" in parts[0]:  # 2 parties: evaluate both keys at random x, r_low, r_low - 1
            r_low = r128.add(parts[0]["r"], parts[1]["r"])[0].reshape(-1) & material.LOW63
            which = np.arange(request.size) % 3
            points = np.where(which == 0, PRG.fresh().ring_elements((request.size,)),
                              np.where(which == 1, r_low, r_low - np.uint64(1)))
            points &= material.LOW63
            parts[0]["dcf"], parts[1]["dcf"] = (
                material.dcf.eval(b, parts[b]["dcf"], points) for b in (0, 1))
        for name in parts[0]:
            if name.endswith("_value"):
                continue
            acc = parts[0][name]
            for other in parts[1:]:
                acc = r128.add(acc, other[name])
            value, mac = acc[0:2], acc[2:4]
            assert np.array_equal(mac, r128.mul(alpha.reshape(2, *(1,) * (value.ndim - 1)),
                                                value)), name
            total[name], wide[name] = value[0], value
        if request.kind == "triple":
            assert np.array_equal(total["c"], MatMul()(total["a"], total["b"]))
        elif request.kind == "trunc":
            assert np.array_equal(total["r_msb"], total["r"] >> np.uint64(63))
            assert np.array_equal(total["r_low_shifted"],
                                  (total["r"] & np.uint64((1 << 63) - 1)) >> np.uint64(4))
        elif n == 2 and request.kind in ("ltz", "relu"):
            r = total["r"]
            assert np.array_equal(total["r_msb"], r >> np.uint64(63))
            w = points < (r.reshape(-1) & material.LOW63)
            minus = (r.reshape(-1) >> np.uint64(63)).astype(bool)
            expect = np.array([((1 << 128) - 1 if m else 1) if x else 0
                               for x, m in zip(w, minus, strict=True)], dtype=object)
            assert np.array_equal(r128.to_pyint(wide["dcf"]), expect)
        elif request.kind == "relu":
            bits = total["bits"]
            assert set(np.unique(bits)) <= {0, 1}
            assert np.array_equal(total["pairs"][:31], bits[1:62:2] * bits[0:62:2])
            assert np.array_equal(total["c0"], total["a0"] * total["b0"])
        elif request.kind == "ltz":
            assert set(np.unique(total["bits"])) <= {0, 1}
        elif request.kind == "input":
            assert np.array_equal(parts[1]["r_value"][0], total["r"])
        else:
            assert np.array_equal(parts[0]["mask0_value"][0], total["mask0"])
            assert np.array_equal(parts[n - 1][f"mask{n - 1}_value"][0], total[f"mask{n - 1}"])
    with pytest.raises(PreprocessingError):
        stores[0].take(plan[0])


def test_material_must_follow_the_plan():
    plan = [Request("trunc", (5,), frac_bits=4)]
    store = material.LazyStore(plan, PRG.fresh(), PRG.fresh(), 0, None, 2)
    with pytest.raises(PreprocessingError):
        store.take(Request("trunc", (5,), frac_bits=3))


# -- protocol ops against plaintext ----------------------------------------------------------
@PARTIES
@EXAMPLES
@given(data=st.data())
def test_input_reveal_and_linear_ops(n, data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), label="shape")
    xs = [data.draw(hnp.arrays(np.uint64, shape, elements=ring_values)) for _ in range(n)]
    c = data.draw(ring_values, label="public")
    cs = data.draw(hnp.arrays(np.uint64, shape, elements=ring_values), label="public array")

    def program(p):
        s = [secret(p, xs[o], o) for o in range(n)]
        total = s[0]
        for t in s[1:]:
            total = total + t
        return [reveal_all(t) for t in s] + [
            reveal_all(total), reveal_all(s[0] - s[1]), reveal_all(-s[0]),
            reveal_all(s[0] + c), reveal_all(s[0] * c), reveal_all(s[1] * cs),
            reveal_all(c - s[1]), reveal_all(s[0].sum()), reveal_all(cs + s[0])]

    got = run_all(n, program)
    with np.errstate(over="ignore"):
        cc = np.uint64(c)
        expect = [*xs, sum(xs[1:], xs[0]), xs[0] - xs[1], np.negative(xs[0]), xs[0] + cc,
                  xs[0] * cc, xs[1] * cs, cc - xs[1], xs[0].sum(dtype=np.uint64), cs + xs[0]]
    for g, e in zip(got, expect, strict=True):
        assert np.array_equal(g, e)


@PARTIES
@EXAMPLES
@given(data=st.data())
def test_products_are_exact_mod_2_64(n, data):
    m, k, q = (data.draw(st.integers(1, 4)) for _ in range(3))
    x = data.draw(hnp.arrays(np.uint64, (m, k), elements=ring_values))
    y = data.draw(hnp.arrays(np.uint64, (k, q), elements=ring_values))
    z = data.draw(hnp.arrays(np.uint64, (m, k), elements=ring_values))
    img = data.draw(hnp.arrays(np.uint64, (2, 2, 5, 4), elements=ring_values))
    w = data.draw(hnp.arrays(np.uint64, (3, 2, 3, 2), elements=ring_values))
    pad = data.draw(st.integers(0, 1))

    def program(p):
        sx, sy, sz = secret(p, x, 0), secret(p, y, 1 % n), secret(p, z, n - 1)
        simg, sw = secret(p, img, 0), secret(p, w, 1)
        return [reveal_all(sx * sz), reveal_all(sx @ sy),
                reveal_all(simg.conv2d(sw, padding=(pad, pad))), reveal_all(sx @ y),
                reveal_all(x.T @ sz), reveal_all(simg.conv2d(w))]

    got = run_all(n, program)
    op = Conv2d(padding=(pad, pad))
    expect = [x * z, MatMul()(x, y), op(w, img), MatMul()(x, y), MatMul()(x.T, z),
              Conv2d()(w, img)]
    for g, e in zip(got, expect, strict=True):
        assert np.array_equal(g, e)


EDGES = [0, 1, -1, 2, -2, VALUE_MAX, -VALUE_MAX, 1 << 40, -(1 << 40), (1 << 16) - 1]


@PARTIES
@EXAMPLES
@given(data=st.data(), f=st.integers(1, 30))
def test_trunc_is_floor_or_one_more(n, data, f):
    values = np.array(EDGES + data.draw(st.lists(signed_values, min_size=1, max_size=20)),
                      dtype=object)
    got = run_all(n, lambda p: [reveal_all(secret(p, u64(values), 0).trunc(f))])[0]
    floor = np.array([v >> f for v in values], dtype=object)
    diff = i64(got).astype(object) - floor
    assert set(diff.tolist()) <= {0, 1}


@PARTIES
@EXAMPLES
@given(data=st.data())
def test_ltz_relu_exact(n, data):
    values = np.array(EDGES + data.draw(st.lists(signed_values, min_size=1, max_size=30)),
                      dtype=np.int64)
    got = run_all(n, lambda p: [reveal_all(secret(p, values, n - 1).ltz()),
                                reveal_all(secret(p, values.reshape(-1, 1), 0).relu())])
    assert np.array_equal(got[0], (values < 0).astype(np.uint64))
    assert np.array_equal(i64(got[1]).reshape(-1), np.maximum(values, 0))


@PARTIES
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_argmax_and_maximum_match_numpy(n, data):
    rows, classes = data.draw(st.integers(1, 3)), data.draw(st.integers(2, 5))
    x = data.draw(hnp.arrays(np.int64, (rows, classes),
                             elements=st.integers(-(1 << 40), 1 << 40)))
    got = run_all(n, lambda p: [reveal_all(functions.argmax(secret(p, x, 0))),
                                reveal_all(functions.maximum(secret(p, x, 0)))])
    assert np.array_equal(got[0], x.argmax(axis=1))
    assert np.array_equal(i64(got[1]), x.max(axis=1))


# -- rounds per op ----------------------------------------------------------------------------
def online_rounds(n: int, op) -> int:
    def program(p):
        x = secret(p, np.arange(6, dtype=np.int64) - 3, 0)
        y = secret(p, np.arange(6, dtype=np.int64), 1)
        before = p.channel.traffic.rounds if p.channel is not None else 0
        op(x, y)
        return p.channel.traffic.rounds - before if p.channel is not None else 0

    return max(r.result for r in run("spdz2k", program, n_parties=n)[:n])


@pytest.mark.parametrize(("name", "op", "rounds"), [
    ("mul", lambda x, y: x * y, 1), ("trunc", lambda x, y: x.trunc(16), 1),
    ("ltz", lambda x, y: x.ltz(), 1), ("relu", lambda x, y: x.relu(), 2),  # the DCF path
    ("linear", lambda x, y: (x + y) * 3 - 1, 0),
    ("reveal", lambda x, y: x.reveal(0), 11),  # check (5) + open + check (4) + confirm
])
def test_rounds_per_op(name, op, rounds):
    assert online_rounds(2, op) == rounds


@pytest.mark.parametrize(("name", "op", "rounds"), [
    ("ltz", lambda x, y: x.ltz(), 6), ("relu", lambda x, y: x.relu(), 7),  # the carry tree
    ("mul", lambda x, y: x * y, 1),
])
def test_rounds_per_op_three_parties(name, op, rounds):
    assert online_rounds(3, op) == rounds


def test_later_reveals_cost_ten_rounds():
    """The first check pays one round of seed commitments; later ones get them ahead."""
    def program(p):
        x = secret(p, np.arange(3, dtype=np.int64), 0)
        x.reveal(0)
        channel = getattr(p, "channel", None)  # the planner has none
        before = channel.traffic.rounds if channel else 0
        x.reveal(1)
        return channel.traffic.rounds - before if channel else 0

    assert max(r.result for r in run("spdz2k", program)[:2]) == 10


def test_only_the_target_learns_a_revealed_value():
    values = np.array([5, -6], dtype=np.int64)
    reports = run("spdz2k", lambda p: secret(p, values, 1).reveal(0), n_parties=3)[:3]
    assert np.array_equal(i64(reports[0].result), values)
    assert reports[1].result is None and reports[2].result is None


def test_mul_broadcasts_like_numpy():
    x = np.arange(6, dtype=np.uint64).reshape(2, 3)
    y = np.array([7, 8, 9], dtype=np.uint64)
    got = run_all(2, lambda p: [reveal_all(secret(p, x, 0) * secret(p, y, 1))])
    assert np.array_equal(got[0], x * y)


def test_planner_records_inputs_and_reveals():
    from protocols.run import plan_of
    plan = plan_of(lambda p: (secret(p, np.zeros(3), 0) * 2).reveal(1), 2, "spdz2k")
    assert [r.kind for r in plan] == ["input", "reveal"]
    assert plan[0].other == (0,) and plan[1].other == (1,)


def test_dealer_role_without_a_scheme_is_unchanged():
    """Backwards compatibility of protocols.run: other dealer schemes still work."""
    got = run("additive", lambda p: reveal_all(secret(p, np.array([3]), 0) * 2))
    assert got[0].result.tolist() == [6]


@pytest.mark.parametrize("op", [Mul(), MatMul()])
def test_products_of_public_and_secret(op):
    a = np.arange(4, dtype=np.uint64).reshape(2, 2) + np.uint64(1 << 63)
    got = run_all(2, lambda p: [reveal_all(secret(p, a, 1) * a if isinstance(op, Mul)
                                           else secret(p, a, 1) @ a)])
    with np.errstate(over="ignore"):
        assert np.array_equal(got[0], op(a, a))


def test_a_narrowed_comparison_deals_shorter_dcf_keys():
    """2 parties: the keys of a comparison narrowed to 39 bits (a model with 24 fractional
    bits) have 39 levels instead of 63, so the dealer sends and each party evaluates 39/63
    of the correction words; with 3 parties (the carry tree) nothing changes."""
    full = material.common_words(Request("relu", (640,)), 2)
    narrow = material.common_words(Request("relu", (640,), bits=39), 2)
    assert narrow < 0.7 * full
    assert material.dcf_width(Request("ltz", (3,), bits=1)) == 63  # one bit: left whole
    three = [material.correction_words(Request("relu", (640,), bits=b), 3) for b in (39, 63)]
    assert three[0] == three[1]
