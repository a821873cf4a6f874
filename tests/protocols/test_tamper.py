"""Active security: a corrupt party that alters any one of its messages makes the run abort
with `CheatingDetected`, and nobody gets the output; and the tamper hook itself
(`protocols/testing/tamper.py`).

For every active scheme of the registry at its default party count (and spdz2k with 3
parties too: its comparisons then use the carry tree instead of DCF keys), every corrupt
party and every message it sends in an honest run of `conftest.TamperProgram` (input,
product, truncation, ReLU, reveal to party 0), the same run with that one message altered
must raise `CheatingDetected` (the launcher reports the detecting party's error; the others
stop with `PeerLost`), and no party's reveal may return a value. A scheme joins the sweep by
being registered with an active setting.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    ACTIVE_SCHEMES,
    DEFAULT_SCHEME_PARTIES,
    TamperProgram,
    over_schemes,
    tamper_expected,
)

from mpc.errors import CheatingDetected
from protocols.run import run
from protocols.testing.tamper import Tamper, honest_message_counts, tampered_run

#: Every active scheme at its default party count, and spdz2k with 3 parties.
ACTIVE = [(s, n) for s, n in DEFAULT_SCHEME_PARTIES if s in ACTIVE_SCHEMES] + [("spdz2k", 3)]


def honest_counts(scheme: str, n_parties: int) -> list[int]:
    program = TamperProgram()
    reports = run(scheme, program, n_parties=n_parties)[:n_parties]
    got = reports[0].result.view(np.int64)
    assert np.all(np.abs(got - tamper_expected()) <= 1)
    assert program.outputs == [0]
    return honest_message_counts(reports)


def cases() -> list[tuple[str, int, int, int]]:
    out = []
    for scheme, n in ACTIVE:
        for party, count in enumerate(honest_counts(scheme, n)):
            out.extend((scheme, n, party, k) for k in range(count))
    return out


CASES = cases()


def test_the_honest_program_sends_messages_from_every_party():
    for scheme, n in ACTIVE:
        counts = honest_counts(scheme, n)
        assert len(counts) == n and min(counts) > 10


@pytest.mark.parametrize(("scheme", "n_parties", "party", "index"), CASES,
                         ids=[f"{s}-{n}-P{p}-m{k}" for s, n, p, k in CASES])
def test_any_altered_message_aborts_with_no_output(scheme, n_parties, party, index):
    program = TamperProgram()
    tamper = Tamper(party, index, delta=1 + index % 250)
    with pytest.raises(CheatingDetected):
        run(scheme, program, n_parties=n_parties, hook=tamper, timeout=20)
    assert len(tamper.fired) == 1 and tamper.fired[0][1] == index
    assert program.outputs == []


@over_schemes(ACTIVE)
def test_altered_messages_of_a_narrowed_comparison_abort(scheme, n_parties):
    """A ReLU narrowed to 24 bits (fewer bit planes and gates in rep4 and replicated_mac)
    is checked like the full one: two altered messages of every party, drawn at random,
    each abort with no output."""
    reports = run(scheme, TamperProgram(24), n_parties=n_parties)[:n_parties]
    assert np.all(np.abs(reports[0].result.view(np.int64) - tamper_expected()) <= 1)
    rng = np.random.default_rng(len(scheme) + n_parties)
    for party, count in enumerate(honest_message_counts(reports)):
        for index in rng.choice(count, size=2, replace=False):
            program = TamperProgram(24)
            tamper = Tamper(party, int(index), delta=1 + int(index) % 250)
            with pytest.raises(CheatingDetected):
                run(scheme, program, n_parties=n_parties, hook=tamper, timeout=20)
            assert len(tamper.fired) == 1 and program.outputs == []


@over_schemes(ACTIVE)
def test_flipping_a_high_bit_aborts(scheme, n_parties):
    counts = honest_counts(scheme, n_parties)
    for party in range(n_parties):
        program = TamperProgram()
        tamper = Tamper(party, counts[party] // 2, mode="flip", position=5, bit=7)
        with pytest.raises(CheatingDetected):
            run(scheme, program, n_parties=n_parties, hook=tamper, timeout=20)
        assert program.outputs == []


#: The active schemes whose default party count has a party 2 (the corrupt party below).
WITH_PARTY_2 = [s for s, n in ACTIVE if n > 2 and (s, n) in DEFAULT_SCHEME_PARTIES]


@pytest.mark.parametrize("scheme", WITH_PARTY_2)
@pytest.mark.parametrize("mode", ["add", "flip"])
def test_tampered_run_helper_and_modes(scheme, mode):
    n = dict(DEFAULT_SCHEME_PARTIES)[scheme]
    counts = honest_counts(scheme, n)
    last = counts[2] - 1  # party 2's last message: its share of the reveal to party 0
    program = TamperProgram()
    with pytest.raises(CheatingDetected, match="party 0"):
        tampered_run(scheme, program, corrupt_party=2, message_index=last, mode=mode, bit=63)
    assert program.outputs == []


def test_tampering_one_peer_only_counts_that_peers_messages():
    program = TamperProgram()
    tamper = Tamper(3, 0, peer=1)
    with pytest.raises(CheatingDetected):
        run("rep4", program, hook=tamper, timeout=20)
    assert tamper.fired == [(1, 0)]


def test_tamper_rejects_changes_that_change_nothing():
    with pytest.raises(ValueError):
        Tamper(0, 0, delta=256)
    with pytest.raises(ValueError):
        Tamper(0, 0).corrupt(np.zeros(0, dtype=np.uint64))
    changed = Tamper(0, 0, mode="flip", position=9, bit=3).corrupt(np.zeros(2, dtype=np.uint64))
    assert changed.tolist() == [0, 1 << 11]
