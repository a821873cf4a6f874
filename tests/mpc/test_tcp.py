"""TCP transport: faults are named errors, not hangs; large and reordered messages flow.

Everything runs on loopback with ports the operating system chooses.
"""

from __future__ import annotations

import functools
import struct
import time

import numpy as np
import pytest
from conftest import connected, in_threads

from mpc.errors import PeerLost, PeerTimeout, ProtocolError
from mpc.net import framing


@pytest.mark.timeout(30)
def test_silent_peer_times_out_naming_it(certs3):
    timeout = 1.0
    with connected({p: certs3[p] for p in (0, 1)}, timeout=timeout) as channels:
        start = time.monotonic()
        with pytest.raises(PeerTimeout, match="party 1") as info, channels[0].stage("probe"):
            channels[0].recv(1)
        elapsed = time.monotonic() - start
        assert timeout * 0.9 <= elapsed < timeout + 1.0
        assert "step probe" in str(info.value)


@pytest.mark.timeout(30)
def test_closed_peer_gives_peer_lost(certs3):
    with connected({p: certs3[p] for p in (0, 1)}, timeout=5) as channels:
        channels[1].close()
        start = time.monotonic()
        with pytest.raises(PeerLost, match="party 1"):
            channels[0].recv(1)
        assert time.monotonic() - start < 2
        with pytest.raises(PeerLost):  # and stays lost
            channels[0].recv(1)


@pytest.mark.timeout(60)
def test_large_simultaneous_exchange_does_not_deadlock(certs3):
    n = 20 * 2**20 // 8
    data = {p: np.arange(n, dtype=np.uint64) * np.uint64(p + 1) for p in (0, 1)}
    with connected({p: certs3[p] for p in (0, 1)}, timeout=30) as channels:
        results, errors = in_threads({
            p: functools.partial(channels[p].exchange, {1 - p: data[p]}) for p in (0, 1)},
            join_timeout=45)
        assert not errors, errors
        assert np.array_equal(results[0][1], data[1])
        assert np.array_equal(results[1][0], data[0])
        assert channels[0].traffic.bytes_received == channels[1].traffic.bytes_sent


def test_messages_read_in_another_order_than_sent_do_not_deadlock(certs3):
    """Party 0 sends 20 MB to party 1, then to party 2; party 1 first waits for party 2,
    which first waits for party 0. Party 1 must read party 0's link while it waits for
    party 2, or party 0 stays blocked on party 1 and nobody moves."""
    big = np.arange(20 * 2**20 // 8, dtype=np.uint64)
    with connected(certs3, timeout=30) as channels:
        def party0():
            channels[0].send(1, big)
            channels[0].send(2, big)

        def party1():
            return channels[1].recv(2), channels[1].recv(0)

        def party2():
            got = channels[2].recv(0)
            channels[2].send(1, got[:3])

        results, errors = in_threads({0: party0, 1: party1, 2: party2}, join_timeout=45)
        assert not errors, errors
        small, large = results[1]
        assert np.array_equal(small, big[:3]) and np.array_equal(large, big)


@pytest.mark.timeout(30)
def test_garbage_on_a_connection_is_protocol_error(certs3):
    with connected({p: certs3[p] for p in (0, 1)}, timeout=5) as channels:
        channels[1].send(0, np.array([1, 2, 3], dtype=np.uint64))
        # party 1 writes bytes that are not a frame into its (authenticated) link
        channels[1].outgoing[0].sendall(b"\x00garbage that is not a sottovoce frame!!" * 3)
        assert channels[0].recv(1).tolist() == [1, 2, 3]
        with pytest.raises(ProtocolError, match="party 1"):
            channels[0].recv(1)
        with pytest.raises(ProtocolError):  # the link stays failed, no crash
            channels[0].recv(1)


@pytest.mark.timeout(30)
def test_hostile_shape_on_a_connection_is_protocol_error(certs3):
    """A frame whose zero-size shape numpy cannot represent must not kill the reader."""
    with connected({p: certs3[p] for p in (0, 1)}, timeout=5) as channels:
        head = struct.pack("<2sBBB3xQQ", framing.MAGIC, framing.VERSION, 1, 2, 0, 0)
        channels[1].outgoing[0].sendall(head + struct.pack("<2Q", 2**63, 0))
        with pytest.raises(ProtocolError, match="too large"):
            channels[0].recv(1)
