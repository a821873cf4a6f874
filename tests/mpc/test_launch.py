"""Process launcher: a killed party is noticed at once, an unpicklable result fails fast."""

from __future__ import annotations

import functools
import os
import threading
import time

import numpy as np
import pytest

from mpc.errors import PeerLost
from mpc.launch import run_processes
from mpc.runtime import RunConfig


def _crash_party(rt, victim: int):
    if rt.party_id == victim:
        os._exit(1)
    rt.channel.exchange(dict.fromkeys(rt.channel.peers, np.zeros(4, dtype=np.uint64)))
    return "unreachable"


@pytest.mark.timeout(60)
def test_killed_peer_process_gives_peer_lost_quickly():
    config = RunConfig(n_parties=3, timeout=30)  # a timeout would show as a slow test
    start = time.monotonic()
    with pytest.raises(PeerLost):
        run_processes([functools.partial(_crash_party, victim=2)] * 3, config,
                      connect_timeout=20)
    assert time.monotonic() - start < 20


def _unpicklable_result(rt):
    return threading.Lock()


@pytest.mark.timeout(60)
def test_unpicklable_result_fails_fast_instead_of_waiting_for_the_deadline():
    from mpc.errors import PartyFailed

    start = time.monotonic()
    with pytest.raises(PartyFailed, match="pickle"):
        run_processes([_unpicklable_result] * 2, RunConfig(n_parties=2, timeout=5),
                      connect_timeout=20, deadline=40)
    assert time.monotonic() - start < 30
