"""The fused linear layer: (op(x, y) + bias) / 2^f in one call, for every scheme."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_helpers import busiest_rounds, every_scheme, i64, reveal_all, run_secure, secret

from protocols.ops import Conv2d, MatMul

#: mul rounds + truncation rounds; the replicated scheme fuses the product into the
#: truncation's opening (2 instead of 3).
FUSED_ROUNDS = {"additive": 2, "replicated": 2}


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
def test_fused_conv_costs_two_rounds(scheme, n_parties):
    rng = np.random.default_rng(1)
    x = rng.integers(-1000, 1000, (1, 2, 9, 9))
    w = rng.integers(-1000, 1000, (3, 2, 3, 3))
    bias = np.zeros((1, 3, 7, 7), dtype=np.int64)

    def program(p):
        xs, ws, bs = secret(p, x, 0), secret(p, w, 1), secret(p, bias, 1)
        channel = getattr(p, "channel", None)  # the planner's dry run has none
        before = channel.traffic.rounds if channel else 0
        out = ws.bilinear_trunc(xs, Conv2d(), bs, 4)
        rounds = channel.traffic.rounds - before if channel else 0
        return reveal_all(out), rounds

    reports = run_secure(scheme, n_parties, program)
    assert max(r.result[1] for r in reports) == FUSED_ROUNDS[scheme]
    assert busiest_rounds(reports) >= FUSED_ROUNDS[scheme]
