"""`rep4` (`protocols/schemes/rep4.py`: 4 parties, one malicious) beyond the shared bodies
of test_base.py, test_tensor.py and test_functions.py (which run every primitive, the
pinned round counts of conftest.ROUNDS and the comparison's view under rep4 too): the
sharing layout, material made online, the offline phase and traffic. The reference CNN
against torch is in tests/nn/test_inference.py, tampering (a corrupt party) in
test_tamper.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import i64, reveal_all, ring_values, run_secure, secret, u64
from external_helpers import (
    alter_sent,
    bundled_clips,
    deploy,
    loaded,
    plaintext_labels,
    run_external,
    shift_input,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpc.errors import CheatingDetected, ProtocolError
from protocols.ops import Mul
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


# -- values from and to endpoints outside the computation (issue 17) --------------------------
# A small program (both outside values enter; a product and a sum of them go back to the
# client, so every party sends and vouches for values that depend on both), a deployment of
# the bundled model, and compute party 1 deviating in each way the scheme must catch.

CLIENT, OWNER = N, N + 1
DEVIANT = 1


def _outside_values(seed: int = 0, size: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 1 << 64, size=(2, 3), dtype=np.uint64)
    w = rng.integers(0, 1 << 64, size=size, dtype=np.uint64)
    return x, w


def _product_and_sum(p, w, x):
    """Shares of x * w[:6] + x (shares carry the component axis first)."""
    return p.add(p.bilinear(x, w[:, :6].reshape(-1, 2, 3), Mul()), x)


def _expected(x, w):
    return x * w[:6].reshape(2, 3) + x


def test_outside_values_enter_and_leave_exactly_and_masks_cost_seeds_only():
    """The client gets x w + x; the owner receives 3 seeds of 16 bytes from each party,
    whatever the size of its value."""
    received = {}
    for size in (6, 6000):
        x, w = _outside_values(size=size)
        hook = lambda runtime, size=size: received.setdefault(size, runtime.channel)  # noqa: E731
        assert np.array_equal(run_external(SCHEME, x, w, _product_and_sum, {OWNER: hook}),
                              _expected(x, w))
    small, large = (received[s].traffic for s in (6, 6000))
    assert small.bytes_received == large.bytes_received <= N * (3 * 16 + 64)
    assert large.bytes_sent - small.bytes_sent == N * 8 * (6000 - 6)


def test_deployment_labels_like_plaintext():
    clips = bundled_clips(2)
    assert deploy(SCHEME, clips) == plaintext_labels(clips)


@pytest.mark.parametrize("source", [CLIENT, OWNER])
def test_a_shifted_share_of_an_outside_value_is_caught(monkeypatch, source):
    """(a) Party 1 adds to its share of the features or of the weights after the input."""
    x, w = _outside_values()
    shift_input(monkeypatch, SCHEME, DEVIANT, source, 1 << 20)
    with pytest.raises(CheatingDetected):
        run_external(SCHEME, x, w, _product_and_sum)


def test_a_shifted_last_bias_is_caught_in_a_deployment(monkeypatch):
    """(a) in a deployment: the shift that decides every label under the passive method."""
    bias_scale = 2 * loaded().secure.fixed.frac_bits
    shift_input(monkeypatch, SCHEME, DEVIANT, OWNER, 1000 << bias_scale, position=-1)
    with pytest.raises(CheatingDetected):
        deploy(SCHEME, bundled_clips(1))


@pytest.mark.parametrize("to", [CLIENT, OWNER])
@pytest.mark.parametrize("position", [0, 5])
def test_altered_mask_seeds_are_refused_naming_the_party(to, position):
    """(b) Party 1 alters a seed of a component of r it sends the outside endpoint."""
    x, w = _outside_values()
    with pytest.raises(ProtocolError, match="and party 1 sent different seeds"):
        run_external(SCHEME, x, w, _product_and_sum,
                     {DEVIANT: alter_sent(to, 0, position=position)})


@pytest.mark.parametrize("position", [0, 17])
def test_altered_result_components_are_refused_whatever_the_result(position):
    """(c) Party 1 alters a copy of a component of the result it sends the client: refused,
    naming party 1, for results that differ (so refusing tells party 1 nothing)."""
    for seed in (0, 1):
        x, w = _outside_values(seed)
        with pytest.raises(ProtocolError, match="and party 1 sent different copies"):
            run_external(SCHEME, x, w, _product_and_sum,
                         {DEVIANT: alter_sent(CLIENT, 1, position=position)})


def test_altered_label_components_are_refused_in_a_deployment():
    """(c) in a deployment: the label copy party 1 sends the client."""
    with pytest.raises(ProtocolError, match="and party 1 sent different copies"):
        deploy(SCHEME, bundled_clips(1), {DEVIANT: alter_sent(CLIENT, 1)})


def test_a_false_confirmation_of_the_masked_value_is_caught(monkeypatch):
    """(d) Party 1 vouches for another masked value than it received."""
    original = Rep4._vouch

    def lying(self, peer, value, step):
        if self.party_id == DEVIANT and step.startswith("input from"):
            value = np.asarray(value) ^ np.uint64(1)
        original(self, peer, value, step)

    monkeypatch.setattr(Rep4, "_vouch", lying)
    x, w = _outside_values()
    with pytest.raises(CheatingDetected, match="input from the"):
        run_external(SCHEME, x, w, _product_and_sum)


def test_a_source_that_sends_parties_different_masked_values_is_caught():
    """The confirmation's other half: the owner sends party 2 another x - r."""
    x, w = _outside_values()
    with pytest.raises(CheatingDetected, match="input from the model owner"):
        run_external(SCHEME, x, w, _product_and_sum, {OWNER: alter_sent(2, 0)})
