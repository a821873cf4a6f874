"""The scheme registry (`protocols/registry.py`): every scheme under its name, with its
protocol class and default party count."""

from __future__ import annotations

import pytest
from conftest import ROUNDS

from protocols.registry import ROUNDED, SCHEMES, Scheme
from protocols.schemes.additive import Additive
from protocols.schemes.rep4 import Rep4
from protocols.schemes.replicated import Replicated
from protocols.schemes.replicated_mac import ReplicatedMac
from protocols.schemes.spdz2k import Spdz2k


@pytest.mark.parametrize(("name", "protocol", "parties"), [
    ("additive", Additive, 2), ("spdz2k", Spdz2k, 2), ("replicated", Replicated, 3),
    ("replicated_mac", ReplicatedMac, 3), ("rep4", Rep4, 4)])
def test_registered_with_its_default_party_count(name, protocol, parties):
    assert SCHEMES[name].protocol is protocol and SCHEMES[name].parties == parties
    assert SCHEMES[name].name == protocol.name == name  # named without importing the class


def test_every_scheme_states_the_rounds_of_every_primitive():
    """The shared round-count bodies (tests/conftest.py ROUNDS) read them from here."""
    assert all(set(s.rounds) == set(ROUNDED) for s in SCHEMES.values())
    assert ROUNDS == {name: dict(s.rounds) for name, s in SCHEMES.items()}
    with pytest.raises(ValueError, match="state the rounds"):
        Scheme(Additive, "setting", "threat", "cost", rounds={"input": 0})
