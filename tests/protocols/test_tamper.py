"""Active security: a corrupt party that alters any one of its messages makes the run abort
with `CheatingDetected`, and nobody gets the output.

For every corrupt party and every message it sends in an honest run of a small program
(input, product, truncation, ReLU, reveal to party 0), the same run with that one message
altered must raise `CheatingDetected` (the launcher reports the detecting party's error; the
others stop with `PeerLost`), and no party's reveal may return a value. The body is
parametrised by scheme: active schemes join `ACTIVE_SCHEMES`.
"""

from __future__ import annotations

import numpy as np
import pytest
from tamper_programs import FRAC, Program, X, Y

from mpc.errors import CheatingDetected
from protocols.run import DEFAULT_PARTIES, run
from protocols.testing.tamper import Tamper, honest_message_counts, tampered_run

ACTIVE_SCHEMES = ["rep4", "replicated_mac"]


def expected() -> np.ndarray:
    return np.maximum((X * Y) >> FRAC, 0)


def honest_counts(scheme: str) -> list[int]:
    program = Program()
    reports = run(scheme, program)[:DEFAULT_PARTIES[scheme]]
    got = reports[0].result.view(np.int64)
    assert np.all(np.abs(got - expected()) <= 1)
    assert program.outputs == [0]
    return honest_message_counts(reports)


def cases() -> list[tuple[str, int, int]]:
    out = []
    for scheme in ACTIVE_SCHEMES:
        for party, count in enumerate(honest_counts(scheme)):
            out.extend((scheme, party, k) for k in range(count))
    return out


CASES = cases()


def test_the_honest_program_sends_messages_from_every_party():
    for scheme in ACTIVE_SCHEMES:
        counts = honest_counts(scheme)
        assert len(counts) == DEFAULT_PARTIES[scheme] and min(counts) > 10


@pytest.mark.parametrize(("scheme", "party", "index"), CASES,
                         ids=[f"{s}-P{p}-m{k}" for s, p, k in CASES])
def test_any_altered_message_aborts_with_no_output(scheme, party, index):
    program = Program()
    tamper = Tamper(party, index, delta=1 + index)
    with pytest.raises(CheatingDetected):
        run(scheme, program, hook=tamper, timeout=20)
    assert len(tamper.fired) == 1 and tamper.fired[0][1] == index
    assert program.outputs == []


@pytest.mark.parametrize("scheme", ACTIVE_SCHEMES)
@pytest.mark.parametrize("mode", ["add", "flip"])
def test_tampered_run_helper_and_modes(scheme, mode):
    counts = honest_counts(scheme)
    last = counts[2] - 1  # party 2's last message: its share of the reveal to party 0
    program = Program()
    with pytest.raises(CheatingDetected, match="party 0"):
        tampered_run(scheme, program, corrupt_party=2, message_index=last, mode=mode, bit=63)
    assert program.outputs == []


def test_tampering_one_peer_only_counts_that_peers_messages():
    program = Program()
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
