"""`rep4` (`protocols/schemes/rep4.py`: 4 parties, one malicious) beyond the shared bodies
of test_base.py, test_tensor.py and test_functions.py (which run every primitive, the
pinned round counts of conftest.ROUNDS and the comparison's view under rep4 too): the
sharing layout, material made online, the offline phase and traffic. The reference CNN
against torch is in tests/nn/test_inference.py, tampering (a corrupt party) in
test_tamper.py, values from and to the client and the model owner in test_external.py.
"""

from __future__ import annotations

import numpy as np
from conftest import i64, reveal_all, ring_values, run_secure, secret, u64
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocols.schemes.rep4 import Rep4
from protocols.tensor import SecretTensor

SCHEME, N = "rep4", 4
EXAMPLES = settings(max_examples=10, deadline=None)


def run4(program):
    return run_secure(SCHEME, N, program)


# -- sharing -----------------------------------------------------------------------------------

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


# -- material the plan did not list -----------------------------------------------------------

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


# -- the offline phase and traffic ------------------------------------------------------------

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


def test_secret_tensor_wraps_rep4_shares():
    def program(p):
        x = secret(p, np.arange(6).reshape(2, 3), 0)
        assert isinstance(x, SecretTensor)
        assert x.share.shape == ((3, 2, 3) if isinstance(p, Rep4) else (1, 2, 3))
        return reveal_all(x.T)

    got = run4(program)[0].result
    assert np.array_equal(got, u64(np.arange(6).reshape(2, 3).T))


def test_a_narrowed_comparison_sends_fewer_bit_planes():
    """Narrowed to 39 bits (a model with 24 fractional bits), a ReLU inputs 40 of the 64
    bit planes of each addend and runs k/63 of the AND gates."""
    def sent(bits: int) -> int:
        def program(p):
            x = secret(p, np.arange(4096) - 2048, 0)
            if not isinstance(p, Rep4):  # the planner's dry run
                return 0
            before = p.channel.traffic.bytes_sent
            x.relu(bits)
            return p.channel.traffic.bytes_sent - before

        return max(r.result for r in run4(program))

    assert sent(39) < 0.8 * sent(63)
