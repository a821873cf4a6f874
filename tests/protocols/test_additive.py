"""The additive scheme (`protocols/schemes/additive.py`) beyond the shared bodies of
test_base.py: what one share shows, and fixed operands (model weights) masked once."""

from __future__ import annotations

import numpy as np
from conftest import run_secure, secret

from protocols.run import run
from protocols.tensor import SecretTensor


def test_shares_alone_look_nothing_like_the_value():
    """A single party's share of a constant input is not the value (it is PRG output)."""
    value = np.zeros(64, dtype=np.uint64)

    def program(p):
        return secret(p, value, 0).share.copy()

    reports = run_secure("additive", 2, program)
    assert not np.array_equal(reports[1].result[0], value)
    assert np.array_equal(reports[0].result[0] + reports[1].result[0], value)


def test_fixed_operand_is_opened_once_and_reused_across_products():
    """Model weights: d = W - b opens in the setup, later products open only the input."""
    rng = np.random.default_rng(5)
    w = rng.integers(-1000, 1000, (6, 3)).astype(np.int64).astype(np.uint64)
    xs = [rng.integers(-1000, 1000, (2, 6)).astype(np.int64).astype(np.uint64) for _ in range(3)]

    class Program:
        def setup(self, p):
            self.w = SecretTensor.input(p, w if p.plays(1) else None, 1, w.shape)
            p.fix_operand(self.w.share)

        def __call__(self, p):
            outs, sent = [], []
            for x in xs:
                channel = getattr(p, "channel", None)
                before = channel.traffic.bytes_sent if channel else 0
                sx = SecretTensor.input(p, x if p.plays(0) else None, 0, x.shape)
                outs.append((sx @ self.w).reveal(0))
                sent.append((channel.traffic.bytes_sent - before) if channel else 0)
            return outs, sent

    reports = run("additive", Program(), n_parties=2)
    outs, sent = reports[0].result
    for x, out in zip(xs, outs, strict=True):
        assert np.array_equal(out, x @ w)
    # each product opens only the 2x6 input (plus the reveal), never the 6x3 weights again
    assert all(s < 8 * (2 * 6 + 2 * 3) + 200 for s in sent)
    assert reports[0].setup.bytes_sent >= 8 * w.size  # d = W - b, once
