"""Tier 2 for `replicated_mac` (3 parties, replicated sharing with MACs mod 2^128, one
malicious party): every primitive against plaintext, the sharing and MAC layout, pinned round
counts and traffic, detection of altered messages anywhere in a message, and a CNN against
torch. The message-by-message tamper sweep is in `test_tamper.py` (ACTIVE_SCHEMES).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from nn_helpers import randomize, top2_margin, torch_logits
from protocol_helpers import VALUE_MAX, busiest_rounds, i64, reveal_all, run_secure, secret, u64
from torch import nn

from mpc.errors import CheatingDetected
from nn.importer import from_torch
from nn.inference import classify
from protocols.blocks import binary_rep3
from protocols.blocks import ring128_ops as r128
from protocols.functions import argmax, maximum
from protocols.ops import Conv2d
from protocols.run import run
from protocols.schemes import replicated_mac as rm
from protocols.schemes.replicated_mac import ReplicatedMac
from protocols.testing.tamper import Tamper, honest_message_counts

SCHEME, N = "replicated_mac", 3
EXAMPLES = settings(max_examples=8, deadline=None)
EDGES = [0, 1, -1, 2, -2, VALUE_MAX, -VALUE_MAX, VALUE_MAX - 1, -VALUE_MAX + 1,
         1 << 61, -(1 << 61), (1 << 63) - 1, -(1 << 63), (1 << 62), -(1 << 62)]
ring_values = st.integers(0, (1 << 64) - 1)


def ring_arrays(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.uint64, shape, elements=ring_values)


def run3(program):
    return run_secure(SCHEME, N, program)


def everyone_agrees(reports) -> object:
    first = reports[0].result
    for report in reports[1:]:
        for mine, theirs in zip(first, report.result, strict=True):
            assert np.array_equal(mine, theirs)
    return first


# -- sharing -----------------------------------------------------------------------------------

def test_registered_with_three_parties():
    from protocols.run import DEFAULT_PARTIES, SCHEMES
    assert SCHEMES[SCHEME] is ReplicatedMac and DEFAULT_PARTIES[SCHEME] == 3


@EXAMPLES
@given(data=st.data())
def test_input_then_reveal_gives_the_value_back(data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=5), label="shape")
    values = [data.draw(ring_arrays(shape), label=f"value of party {o}") for o in range(N)]

    def program(p):
        return [reveal_all(secret(p, values[o], o)) for o in range(N)]

    for got, want in zip(everyone_agrees(run3(program)), values, strict=True):
        assert got.dtype == np.uint64 and got.shape == want.shape
        assert np.array_equal(got, want)


def _components(reports, which):
    """{j: 128-bit value component j, j: MAC component j} from the three parties' shares,
    checking that both holders of each component agree."""
    held: dict[int, list] = {j: [] for j in range(N)}
    for report in reports:
        i = report.party_id
        share, alpha = report.result[which], report.result[-1]
        for c in range(2):
            held[(i + c) % 3].append((share[2 * c:2 * c + 2], share[4 + 2 * c:6 + 2 * c],
                                      alpha[2 * c:2 * c + 2]))
    for j in range(N):
        (v0, m0, a0), (v1, m1, a1) = held[j]
        assert np.array_equal(v0, v1) and np.array_equal(m0, m1) and np.array_equal(a0, a1)
    return held


@EXAMPLES
@given(values=hnp.arrays(np.uint64, st.integers(1, 12), elements=ring_values),
       owner=st.integers(0, N - 1))
def test_shares_are_replicated_and_carry_the_mac_mod_2_128(values, owner):
    """Both holders of each component agree; the value components add up to the value mod
    2^64 and the MAC components to alpha times the 128-bit value, for inputs, products,
    and the outputs of trunc and relu."""

    def program(p):
        x = secret(p, values, owner)
        y = x * x
        return x.share, y.share, y.trunc(8).share, x.relu().share, getattr(p, "alpha", None)

    reports = run3(program)
    for which in range(4):
        held = _components(reports, which)
        total_v = sum(r128.to_pyint(held[j][0][0]) for j in range(N))
        total_m = sum(r128.to_pyint(held[j][0][1]) for j in range(N))
        alpha = sum(int(r128.to_pyint(held[j][0][2])) for j in range(N)) % (1 << 128)
        total_v, total_m = total_v % (1 << 128), total_m % (1 << 128)
        assert all(int(m) == alpha * int(v) % (1 << 128)
                   for v, m in zip(total_v, total_m, strict=True))
        if which == 0:
            assert [int(v) % (1 << 64) for v in total_v] == [int(v) for v in values]
        if which == 1:
            assert [int(v) % (1 << 64) for v in total_v] == [int(v) for v in values * values]


def test_reveal_reaches_only_the_named_parties():
    value = u64(np.arange(-3, 3))

    def program(p):
        x = secret(p, value, 2)
        return x.reveal(to=1), x.reveal(to=[0, 2])

    for report in run3(program):
        to_one, to_two = report.result
        assert (to_one is not None) == (report.party_id == 1)
        assert (to_two is not None) == (report.party_id in (0, 2))
        for got in (to_one, to_two):
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
        a, b = secret(p, x, 0), secret(p, y, 2)
        return (reveal_all(a + b), reveal_all(a - b), reveal_all(a + c), reveal_all(c - a),
                reveal_all(a * c), reveal_all(-a), reveal_all(a.sum(axis=0)))

    add, sub, add_c, c_sub, mul_c, neg, total = everyone_agrees(run3(program))
    assert np.array_equal(add, x + y) and np.array_equal(sub, x - y)
    assert np.array_equal(add_c, x + c) and np.array_equal(c_sub, c - x)
    assert np.array_equal(mul_c, x * c) and np.array_equal(neg, np.negative(x))
    assert np.array_equal(total, x.sum(axis=0, dtype=np.uint64))


@EXAMPLES
@given(data=st.data())
def test_products_are_exact_mod_2_64(data):
    m, k, n = (data.draw(st.integers(1, 4)) for _ in range(3))
    x, y = data.draw(ring_arrays((m, k))), data.draw(ring_arrays((m, k)))
    w = data.draw(ring_arrays((k, n)))
    image = data.draw(ring_arrays((2, 2, 5, 4)))
    kernel = data.draw(ring_arrays((3, 2, 3, 2)))

    def program(p):
        a, b, c = secret(p, x, 0), secret(p, y, 1), secret(p, w, 2)
        img, ker = secret(p, image, 1), secret(p, kernel, 0)
        return (reveal_all(a * b), reveal_all(a @ c), reveal_all(img.conv2d(ker)),
                reveal_all(img.conv2d(ker, padding=(1, 1), stride=(2, 1))),
                reveal_all(a @ w), reveal_all(img.conv2d(kernel)))

    prod, mat, conv, conv_padded, mat_pub, conv_pub = everyone_agrees(run3(program))
    assert np.array_equal(prod, x * y)
    want = np.array([[sum(int(x[i, t]) * int(w[t, j]) for t in range(k)) % (1 << 64)
                      for j in range(n)] for i in range(m)], dtype=object)
    assert np.array_equal(mat.astype(object), want)
    assert np.array_equal(mat_pub.astype(object), want)
    assert np.array_equal(conv, Conv2d()(kernel, image))
    assert np.array_equal(conv_pub, Conv2d()(kernel, image))
    assert np.array_equal(conv_padded, Conv2d((2, 1), (1, 1))(kernel, image))


# -- truncation and comparison -------------------------------------------------------------

@EXAMPLES
@given(drawn=st.lists(st.integers(-VALUE_MAX, VALUE_MAX), min_size=1, max_size=50),
       frac_bits=st.integers(0, 40))
def test_trunc_is_floor_or_one_more(drawn, frac_bits):
    """The contract of `Protocol.trunc`: floor or one more, never further off; exact for
    f <= 1 (no carry is left out). Both outcomes occur, so the bound is the real one."""
    values = np.array(drawn + [0, 1, -1, VALUE_MAX, -VALUE_MAX], dtype=np.int64)

    def program(p):
        return reveal_all(secret(p, values, 1).trunc(frac_bits))

    got = i64(everyone_agrees(run3(program)))
    floor = np.array([v >> frac_bits for v in values.tolist()], dtype=np.int64)
    assert set(np.unique(got - floor)) <= ({0} if frac_bits <= 1 else {0, 1}), got - floor


def test_trunc_error_is_zero_or_one_and_both_happen():
    values = np.random.default_rng(4).integers(-VALUE_MAX, VALUE_MAX, 4000)
    got = i64(everyone_agrees(run3(lambda p: reveal_all(secret(p, values, 0).trunc(16)))))
    error = got - (values >> 16)
    assert set(np.unique(error)) == {0, 1}
    assert 0.3 < error.mean() < 0.7  # the carry left out is 1 about half the time


@EXAMPLES
@given(drawn=st.lists(st.integers(-(1 << 63), (1 << 63) - 1), min_size=1, max_size=80))
def test_ltz_and_relu_are_exact_on_the_whole_ring(drawn):
    values = np.array(drawn + EDGES, dtype=np.int64)

    def program(p):
        x = secret(p, values, 0)
        matrix = secret(p, values[:10].reshape(2, 5), 2)
        return (reveal_all(x.ltz()), reveal_all(x.relu()), reveal_all(matrix.ltz()),
                reveal_all(matrix.relu()))

    ltz, relu, ltz_m, relu_m = everyone_agrees(run3(program))
    assert np.array_equal(ltz, (values < 0).astype(np.uint64))
    assert np.array_equal(i64(relu), np.maximum(values, 0))
    assert np.array_equal(ltz_m, (values[:10] < 0).astype(np.uint64).reshape(2, 5))
    assert np.array_equal(i64(relu_m), np.maximum(values[:10], 0).reshape(2, 5))


def test_batched_bit_circuits_match(monkeypatch):
    """Layers larger than a batch run batch by batch with the same results, and a full gate
    log is verified early (the same answers, with no output lost)."""
    monkeypatch.setattr(binary_rep3, "VERIFY_EVERY", 100)
    monkeypatch.setattr(rm, "CHUNK", 7)
    values = np.array(EDGES + list(range(-9, 9)), dtype=np.int64)

    def program(p):
        x = secret(p, values, 0)
        return reveal_all(x.ltz()), reveal_all(x.relu()), reveal_all(x.trunc(3))

    ltz, relu, trunc = everyone_agrees(run3(program))
    assert np.array_equal(ltz, (values < 0).astype(np.uint64))
    assert np.array_equal(i64(relu), np.maximum(values, 0))
    small = np.array([abs(int(v)) <= VALUE_MAX for v in values])  # trunc's promise
    assert set(np.unique(i64(trunc)[small] - (values[small] >> 3))) <= {0, 1}


@EXAMPLES
@given(data=st.data())
def test_maximum_and_argmax_agree_with_numpy(data):
    rows = data.draw(st.integers(1, 3), label="rows")
    classes = data.draw(st.integers(1, 8), label="classes")
    bound = (1 << 61) - 1
    flat = data.draw(st.lists(st.integers(-bound, bound), min_size=rows * classes,
                              max_size=rows * classes, unique=True), label="values")
    values = np.array(flat, dtype=np.int64).reshape(rows, classes)

    def program(p):
        x = secret(p, values, 0)
        return reveal_all(maximum(x)), reveal_all(argmax(x))

    biggest, index = everyone_agrees(run3(program))
    assert np.array_equal(i64(biggest), values.max(axis=-1))
    assert np.array_equal(index, np.argmax(values, axis=-1).astype(np.uint64))


def test_argmax_breaks_ties_towards_the_first_index():
    values = np.array([[3, 3, 1, 0], [-2, 5, 5, 5], [7, 7, 7, 7]], dtype=np.int64)
    got = run3(lambda p: reveal_all(argmax(secret(p, values, 0))))[0].result
    assert np.array_equal(got, np.argmax(values, axis=-1).astype(np.uint64))


# -- rounds and traffic ----------------------------------------------------------------------

#: online rounds of each step, for the busiest party: trunc 2 + 3, ltz 8 + 3, relu the same
#: (the selection rides in the last conversion round); a reveal's check is 4 rounds, plus 3
#: when binary gates await verification
ROUNDS = {"input": 2, "mul": 1, "matmul": 1, "trunc": 5, "ltz": 11, "relu": 11,
          "check+reveal": 4, "binary check": 3, "reveal again": 1}


def _rounds(body, size: int = 3) -> int:
    values = np.arange(size, dtype=np.int64) - size // 2

    def base(p):
        return secret(p, values, 0), secret(p, values, 1)

    def with_body(p):
        x, y = base(p)
        body(x, y)

    return busiest_rounds(run3(with_body)) - busiest_rounds(run3(base))


@pytest.mark.parametrize("size", [1, 3000])
def test_round_counts_are_pinned(size):
    assert busiest_rounds(run3(lambda p: secret(p, np.zeros(size), 0))) == ROUNDS["input"]
    assert _rounds(lambda x, y: x * y, size) == ROUNDS["mul"]
    assert _rounds(lambda x, y: x.reshape(-1, 1) @ y.reshape(1, -1)[:, :3], size) == \
        ROUNDS["matmul"]
    assert _rounds(lambda x, y: x.trunc(16), size) == ROUNDS["trunc"]
    assert _rounds(lambda x, y: x.ltz(), size) == ROUNDS["ltz"]
    assert _rounds(lambda x, y: x.relu(), size) == ROUNDS["relu"]
    assert _rounds(lambda x, y: x.reveal(0), size) == ROUNDS["check+reveal"]
    assert _rounds(lambda x, y: x.ltz().reveal(0), size) == \
        ROUNDS["ltz"] + ROUNDS["binary check"] + ROUNDS["check+reveal"]
    assert _rounds(lambda x, y: (x.reveal(0), y.reveal(1)), size) == \
        ROUNDS["check+reveal"] + ROUNDS["reveal again"]


def test_argmax_takes_one_comparison_depth():
    classes = 8
    rounds = _rounds(lambda x, y: argmax(x.reshape(1, -1)), classes)
    assert rounds == ROUNDS["ltz"] + int(np.ceil(np.log2(classes - 1)))


#: words of 64 bits each party sends per element: a passive product of 128-bit values is 2
#: words, an authenticated one (value and MAC) 4. A bit decomposition sends one bit per AND
#: gate: trunc 3 full-adder planes and 1 for the wrap; ltz 63 full-adder planes, 62 generate
#: planes and 61 + 31 + 15 + 7 + 3 + 1 in the carry tree. Converting k bits to the ring is 5
#: passive products each (trunc 3 bits and the MAC of the shifted components, ltz 1 bit).
GATES = {"trunc": 3 + 1, "ltz": 63 + 62 + 118}
WORDS = {"mul": 4, "trunc": GATES["trunc"] / 64 + 2 * (5 * 3 + 1),
         "ltz": GATES["ltz"] / 64 + 2 * 5}
#: verification at the next check, per AND gate: B triples (B = 4 for 2^16 gate words: 2^18.9
#: buckets would be needed for B = 3), then two opened bits per sacrifice (B - 1 of them) and
#: per gate
VERIFY_BITS_PER_GATE = 4 + 2 * 3 + 2


@pytest.mark.parametrize("op", ["mul", "trunc", "ltz"])
def test_traffic_per_element(op):
    size = 2000
    bodies = {"mul": lambda x, y: x * y, "trunc": lambda x, y: x.trunc(16),
              "ltz": lambda x, y: x.ltz()}

    def program(p):
        x, y = secret(p, np.arange(size), 0), secret(p, np.arange(size), 1)
        before = p.channel.traffic.bytes_sent if isinstance(p, ReplicatedMac) else 0
        bodies[op](x, y)
        return (p.channel.traffic.bytes_sent - before) if isinstance(p, ReplicatedMac) else 0

    for report in run3(program):
        per_element = report.result / (8 * size)
        assert WORDS[op] <= per_element <= WORDS[op] + 0.2, per_element


def test_verification_traffic_per_gate():
    """The check after a large comparison layer costs about 12 bits per AND gate a party."""
    size = 1 << 16  # 243 * 1024 gate words: above the 2^14-bucket minimum, B = 4

    def program(p):
        x = secret(p, np.arange(size) - size // 2, 0)
        x.ltz()
        if not isinstance(p, ReplicatedMac):  # the planner's dry run
            return 0
        before = p.channel.traffic.bytes_sent
        p.binary.verify("test")
        return p.channel.traffic.bytes_sent - before

    gates = GATES["ltz"] * size
    for report in run3(program):
        per_gate = 8 * report.result / gates
        assert VERIFY_BITS_PER_GATE <= per_gate <= VERIFY_BITS_PER_GATE + 0.5, per_gate


def test_no_offline_phase():
    reports = run3(lambda p: (secret(p, np.arange(5), 0) * 2).relu().reveal(0))
    assert all(r.offline.rounds == 0 and r.offline.bytes_sent == 0 for r in reports)


# -- detection anywhere in a message ---------------------------------------------------------

class Program:
    def __init__(self) -> None:
        self.outputs: list[int] = []

    def __deepcopy__(self, memo: dict) -> Program:
        return self

    def __call__(self, p):
        x = secret(p, np.array([3 << 16, -(5 << 16), 1 << 10, -7], dtype=np.int64), 0)
        w = secret(p, np.arange(8, dtype=np.int64).reshape(4, 2) - 3, 2)
        z = (x.reshape(1, 4) @ w).trunc(16).relu()
        out = z.reveal(1)
        if out is not None and isinstance(p, ReplicatedMac):
            self.outputs.append(p.party_id)
        return out


def _counts() -> list[int]:
    return honest_message_counts(run3(Program()))


@pytest.mark.parametrize("seed", range(12))
def test_alterations_at_random_positions_abort(seed):
    """Offsets to random words (value or MAC, low or high limb) or flipped bits anywhere in
    a random message of a random party are caught, with no output."""
    rng = np.random.default_rng(seed)
    party = int(rng.integers(N))
    index = int(rng.integers(_counts()[party]))
    mode = ["add", "flip"][seed % 2]
    tamper = Tamper(party, index, mode=mode, delta=int(rng.integers(1, 1 << 62)),
                    position=int(rng.integers(1 << 30)), bit=int(rng.integers(8)))
    program = Program()
    with pytest.raises(CheatingDetected):
        run(SCHEME, program, hook=tamper, timeout=20)
    assert len(tamper.fired) == 1 and program.outputs == []


# -- a CNN against torch ---------------------------------------------------------------------

def _small_cnn() -> nn.Sequential:
    return randomize(nn.Sequential(
        nn.Conv2d(1, 2, kernel_size=3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(2 * 3 * 4, 8), nn.ReLU(), nn.Linear(8, 4)), seed=5)


def test_small_cnn_labels_and_logits_equal_torch():
    module = _small_cnn()
    shape = (1, 8, 10)
    model, report = from_torch(module, shape)
    assert report.agreement == 1.0
    candidates = np.random.default_rng(3).normal(size=(12, *shape))
    reference = torch_logits(module, candidates)
    keep = np.flatnonzero(top2_margin(reference) > 1e-2)[:3]
    assert len(keep) == 3
    result = classify(model, candidates[keep], scheme=SCHEME, reveal_logits=True)
    np.testing.assert_array_equal(result.labels, reference[keep].argmax(axis=1))
    assert np.abs(result.logits - reference[keep]).max() <= 1e-3
    assert len(result.parties) == N


@pytest.mark.slow
def test_reference_cnn_label_equals_torch():
    """One clip of the reference CNN with fresh random weights: about 3 s for the three
    in-process parties, about 120 MB sent per party online."""
    from experiments.models import INPUT_SHAPE, reference_cnn
    torch.manual_seed(1234)
    module = reference_cnn(8).eval()
    model, _ = from_torch(module, INPUT_SHAPE)
    features = np.random.default_rng(7).normal(size=(1, *INPUT_SHAPE))
    ref = torch_logits(module, features)
    result = classify(model, features, scheme=SCHEME, reveal_logits=True, timeout=900)
    np.testing.assert_array_equal(result.labels, ref.argmax(axis=1))
    assert np.abs(result.logits - ref).max() <= 1e-3
