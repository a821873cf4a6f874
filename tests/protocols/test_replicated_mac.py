"""`replicated_mac` (`protocols/schemes/replicated_mac.py`: 3 parties, replicated sharing with
MACs mod 2^128, one malicious party) beyond the shared bodies of test_base.py, test_tensor.py
and test_functions.py (which run every primitive, the pinned round counts of conftest.ROUNDS
and the comparison's view under replicated_mac too): the sharing and MAC layout, batched bit
circuits, the verification of binary gates before a reveal, traffic, detection of altered
messages anywhere in a message, and a small CNN against torch. The message-by-message tamper
sweep is in test_tamper.py, the reference CNN in tests/nn/test_inference.py, values from and
to the client and the model owner in test_external.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    EDGES,
    ROUNDS,
    VALUE_MAX,
    RecordsOutputs,
    assert_all_parties_agree,
    i64,
    op_rounds,
    randomize,
    reveal_all,
    ring_values,
    run_secure,
    secret,
    top2_margin,
    torch_logits,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from mpc import ring128 as r128
from mpc.errors import CheatingDetected
from nn.importer import from_torch
from nn.inference import classify
from protocols.blocks import binary_rep3
from protocols.run import run
from protocols.schemes import replicated_mac as rm
from protocols.schemes.replicated_mac import ReplicatedMac
from protocols.testing.tamper import Tamper, honest_message_counts

SCHEME, N = "replicated_mac", 3


def run3(program):
    return run_secure(SCHEME, N, program)


# -- sharing -----------------------------------------------------------------------------------

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


@settings(max_examples=8, deadline=None)
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


# -- batched bit circuits ----------------------------------------------------------------------

def test_batched_bit_circuits_match(monkeypatch):
    """Layers larger than a batch run batch by batch with the same results, and a full gate
    log is verified early (the same answers, with no output lost)."""
    monkeypatch.setattr(binary_rep3, "VERIFY_EVERY", 100)
    monkeypatch.setattr(rm, "CHUNK", 7)
    values = np.array(EDGES + list(range(-9, 9)), dtype=np.int64)

    def program(p):
        x = secret(p, values, 0)
        return reveal_all(x.ltz()), reveal_all(x.relu()), reveal_all(x.trunc(3))

    ltz, relu, trunc = assert_all_parties_agree(run3(program))
    assert np.array_equal(ltz, (values < 0).astype(np.uint64))
    assert np.array_equal(i64(relu), np.maximum(values, 0))
    small = np.array([abs(int(v)) <= VALUE_MAX for v in values])  # trunc's promise
    assert set(np.unique(i64(trunc)[small] - (values[small] >> 3))) <= {0, 1}


# -- rounds and traffic ----------------------------------------------------------------------

#: a reveal after binary gates (a comparison's, a truncation's) first verifies them: 3 more
#: rounds than its check alone
BINARY_CHECK_ROUNDS = 3


@pytest.mark.parametrize("size", [1, 3000])
def test_a_reveal_after_a_comparison_verifies_its_gates_first(size):
    assert op_rounds(SCHEME, N, lambda x, y: x.ltz().reveal(0), size) == \
        ROUNDS[SCHEME]["ltz"] + BINARY_CHECK_ROUNDS + ROUNDS[SCHEME]["reveal"]


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


# -- comparisons narrowed to [-2^bits, 2^bits) ------------------------------------------------

def _comparison_bytes(bits: int, size: int = 1 << 16) -> int:
    """A party's bytes for one ReLU layer of `size` values and the check of its gates (at a
    layer's scale: the check's buckets grow for fewer gates)."""
    def program(p):
        x = secret(p, np.arange(size) - size // 2, 0)
        if not isinstance(p, ReplicatedMac):  # the planner's dry run
            return 0
        before = p.channel.traffic.bytes_sent
        x.relu(bits)
        p.binary.verify("test")
        return p.channel.traffic.bytes_sent - before

    return max(r.result for r in run3(program))


def test_a_narrowed_comparison_runs_fewer_gates():
    """39 bits (a model with 24 fractional bits) keep 152 of the 243 gates a value; with the
    conversion to the ring (which does not shrink), a ReLU and its check send a third less."""
    full, narrow = _comparison_bytes(63), _comparison_bytes(39)
    assert narrow < 0.75 * full


# -- detection anywhere in a message ---------------------------------------------------------

class Program(RecordsOutputs):
    """A product with public-shaped weights, truncation, ReLU, reveal to party 1."""

    def __init__(self, bits: int = 63) -> None:
        super().__init__()
        self.bits = bits

    def __call__(self, p):
        x = secret(p, np.array([3 << 16, -(5 << 16), 1 << 10, -7], dtype=np.int64), 0)
        w = secret(p, np.arange(8, dtype=np.int64).reshape(4, 2) - 3, 2)
        z = (x.reshape(1, 4) @ w).trunc(16).relu(self.bits)
        out = z.reveal(1)
        if out is not None and isinstance(p, ReplicatedMac):
            self.outputs.append(p.party_id)
        return out


def _counts(bits: int) -> list[int]:
    return honest_message_counts(run3(Program(bits)))


@pytest.mark.parametrize("bits", [63, 20])
@pytest.mark.parametrize("seed", range(12))
def test_alterations_at_random_positions_abort(seed, bits):
    """Offsets to random words (value or MAC, low or high limb) or flipped bits anywhere in
    a random message of a random party are caught, with no output: over the whole ring and
    with the ReLU narrowed to 20 bits."""
    rng = np.random.default_rng(seed)
    party = int(rng.integers(N))
    index = int(rng.integers(_counts(bits)[party]))
    mode = ["add", "flip"][seed % 2]
    tamper = Tamper(party, index, mode=mode, delta=int(rng.integers(1, 1 << 62)),
                    position=int(rng.integers(1 << 30)), bit=int(rng.integers(8)))
    program = Program(bits)
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
