"""The scheme registry (`protocols/registry.py`): every scheme under its name, with its
protocol class and default party count."""

from __future__ import annotations

import pytest

from protocols.registry import SCHEMES
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


def test_every_scheme_is_listed_above():
    assert sorted(SCHEMES) == ["additive", "rep4", "replicated", "replicated_mac", "spdz2k"]
