"""Active security of spdz2k: why the MAC lives mod 2^(k+s), and that a shifted share, a
shifted opening or an error in a DCF output aborts the run with no output.

1. The forgery SPDZ2k is built against: with values and MACs mod 2^k, adding 2^(k-1) to a
   value and 2^(k-1) to its MAC passes the check exactly when alpha is odd (probability 1/2);
   mod 2^(k+s) the same cheat needs alpha = 1 mod 2^(s+1) (probability 2^-(s+1)).
2. The same cheat against the implementation (a corrupt party shifts its value and MAC shares
   by 2^63, or shifts an opened value by 2^63) is caught in every trial.
   With 2 parties comparisons use DCF keys whose payload is authenticated: a party that adds
   an error (d, d_mac) to its DCF output (value and MAC share) is caught too.

The sweep that alters every message of every party once (for 2 and 3 parties) is in
test_tamper.py, with the other active schemes'.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TAMPER_X as X
from conftest import TAMPER_Y as Y
from conftest import RecordsOutputs, TamperProgram, secret

from mpc import ring128 as r128
from mpc.errors import CheatingDetected
from protocols.base import Protocol
from protocols.clear import Clear
from protocols.run import run
from protocols.testing.tamper import Tamper, honest_message_counts

HALF = 1 << 63


# -- 1. the forgery against a MAC mod 2^k ------------------------------------------------------
def forge_rate(k: int, s: int, trials: int, rng: np.random.Generator) -> float:
    """Fraction of trials in which value + 2^(k-1), MAC + 2^(k-1) passes a MAC check mod
    2^(k+s) (s = 0: the MAC lives mod 2^k only), for uniform keys alpha in Z_2^max(s,k)."""
    modulus = 1 << (k + s)
    wins = 0
    for _ in range(trials):
        alpha = int(rng.integers(0, 1 << 62)) | (int(rng.integers(0, 1 << 62)) << 62)
        alpha %= 1 << max(s, k)
        x = int(rng.integers(0, 1 << 62))
        mac = alpha * x % modulus
        x_forged, mac_forged = x + (1 << (k - 1)), (mac + (1 << (k - 1))) % modulus
        wins += alpha * x_forged % modulus == mac_forged
    return wins / trials


def test_a_mac_mod_2_k_is_forged_half_the_time():
    rng = np.random.default_rng(2018)
    assert 0.45 < forge_rate(64, 0, 4000, rng) < 0.55


def test_the_same_forgery_fails_mod_2_k_plus_s():
    rng = np.random.default_rng(2018)
    assert forge_rate(64, 64, 4000, rng) == 0.0
    # with a tiny s the success probability 2^-(s+1) is visible: s = 2 gives 1/8
    assert 0.09 < forge_rate(64, 2, 4000, rng) < 0.16


# -- 2. the same cheat against the implementation ----------------------------------------------
class ShiftedShare(RecordsOutputs):
    """Party 0 adds 2^63 to its value share and to its MAC share of x, then x is revealed."""

    def __call__(self, p: Protocol):
        x = secret(p, X, 1)
        if not isinstance(p, Clear) and p.party_id == 0:
            x.share = r128.add(x.share, np.array([HALF, 0, HALF, 0], dtype=np.uint64))
        out = x.reveal(1)
        if out is not None and not isinstance(p, Clear):
            self.outputs.append(p.party_id)
        return out


@pytest.mark.parametrize("trial", range(8))
def test_shifting_value_and_mac_by_2_63_is_caught(trial):
    program = ShiftedShare()
    with pytest.raises(CheatingDetected, match="MAC check failed"):
        run("spdz2k", program, timeout=20)
    assert program.outputs == []


@pytest.mark.parametrize("trial", range(8))
def test_shifting_an_opened_value_by_2_63_is_caught(trial):
    """Party 1's first opening message (its share of the Beaver e, d of x * y) plus 2^63."""
    program = TamperProgram()
    counts = honest_message_counts(run("spdz2k", TamperProgram())[:2])
    assert counts[1] > 2
    # message 0 is party 1's input, 1 the product's opening; flipping bit 63 adds 2^63
    tamper = Tamper(1, 1, mode="flip", position=7, bit=7)
    with pytest.raises(CheatingDetected, match="MAC check failed"):
        run("spdz2k", program, hook=tamper, timeout=20)
    assert tamper.fired and program.outputs == []


# -- 2b. an error in a DCF output (2 parties) ------------------------------------------------
class Comparisons(RecordsOutputs):
    """ltz revealed to party 0, relu revealed to party 1, then a product of the relu."""

    def __call__(self, p: Protocol):
        x = secret(p, X, 0)
        bit = x.ltz().reveal(0)
        out = (x.relu() * secret(p, Y, 1)).reveal(1)
        if not isinstance(p, Clear) and (bit is not None or out is not None):
            self.outputs.append(p.party_id)
        return bit, out


@pytest.mark.parametrize("program_class", [TamperProgram, Comparisons])
@pytest.mark.parametrize("corrupt", [0, 1])
@pytest.mark.parametrize(("d", "d_mac"), [
    (1, 0), (0, 1), (1 << 64, 0),  # an error only in the high limb: invisible mod 2^64
    (HALF, HALF), (1, 0x9E3779B97F4A7C15),  # a guessed MAC key
])
def test_an_error_in_a_dcf_output_is_caught(monkeypatch, program_class, corrupt, d, d_mac):
    """A corrupt party adds (d, d_mac) (mod 2^128) to its DCF output, i.e. to its share of
    w (1 - 2 r_63) and of its MAC, at every comparison: the run aborts before any output."""
    from protocols.blocks import dcf

    honest = dcf.eval
    error = r128.from_pyint([d % (1 << 128), d_mac % (1 << 128)]).reshape(4, 1)
    cheated = []

    def cheat(party: int, key, xs):
        out = honest(party, key, xs)
        if party == corrupt:
            out = r128.add(out, np.pad(error, ((0, 0), (0, out.shape[1] - 1))))
            cheated.append(party)
        return out

    monkeypatch.setattr(dcf, "eval", cheat)
    program = program_class()
    with pytest.raises(CheatingDetected, match="MAC check failed"):
        run("spdz2k", program, timeout=20)
    assert cheated and program.outputs == []


def test_dcf_outputs_unaltered_give_the_right_answer():
    """The honest baseline of the test above."""
    program = Comparisons()
    reports = run("spdz2k", program)[:2]
    assert np.array_equal(reports[0].result[0], (X < 0).astype(np.uint64))
    assert np.array_equal(reports[1].result[1].view(np.int64), np.maximum(X, 0) * Y)
    assert sorted(program.outputs) == [0, 1]
