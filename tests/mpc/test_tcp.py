"""TCP transport: faults are named errors, not hangs; large and reordered messages flow.

Everything runs on loopback with ports the operating system chooses.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import socket
import ssl
import struct
import time

import numpy as np
import pytest
from conftest import close_all, connected, in_threads, loopback_listeners

from mpc.errors import PartyFailed, PeerLost, PeerTimeout, ProtocolError
from mpc.launch import run_processes
from mpc.net import framing, tcp
from mpc.runtime import RunConfig


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


# -- start-up that strangers cannot stall, keep-alives (issue 17) -----------------------------
@pytest.mark.timeout(30)
def test_silent_and_garbage_connections_do_not_delay_start_up(certs3, caplog):
    """Before party 0's peers dial it, strangers connect to it: one sends nothing, one sends
    garbage, one sends the start of a hello and stops. Start-up still completes at once
    (every connection is handshaken in its own thread, with a short deadline) instead of
    after the connect timeout; the garbage is dropped and logged, the silent ones are dropped
    once their handshake deadline has passed."""
    caplog.set_level(logging.WARNING, logger="mpc.net.handshake")
    listeners, addresses = loopback_listeners(3)
    strangers = [socket.create_connection(addresses[0]) for _ in range(3)]
    strangers[1].sendall(b"\x00\xff not a hello, not TLS either " * 3)
    strangers[2].sendall(b"SVID\x01")
    opened = time.monotonic()
    try:
        results, errors = in_threads({
            p: functools.partial(tcp.connect, p, addresses, certs3[p], listener=listeners[p],
                                 timeout=5, connect_timeout=20) for p in range(3)})
        elapsed = time.monotonic() - opened
    finally:
        for sock in listeners.values():
            sock.close()
    try:
        assert not errors, errors
        assert elapsed < 2.5, elapsed  # the connect timeout is 20 s, a handshake's 5 s
        results[0].send(1, np.array([4], dtype=np.uint64))
        assert results[1].recv(0).tolist() == [4]
        assert any("dropped a connection from 127.0.0.1" in r.getMessage()
                   and "does not speak sottovoce" in r.getMessage() for r in caplog.records)
        for stranger in strangers:  # each is closed once its 5 s to say who it is are over
            stranger.settimeout(10)
            try:
                assert stranger.recv(100) == b""
            except ConnectionResetError:
                pass  # dropped with unread data
        assert 4.0 < time.monotonic() - opened < 9.0
    finally:
        close_all(results)
        for stranger in strangers:
            stranger.close()


@pytest.mark.timeout(30)
def test_a_peer_busy_for_twice_the_timeout_is_waited_for(certs3):
    """With keep-alives (what every launched party runs with), a peer that computes for
    twice the timeout before it sends is alive, and is waited for; the keep-alives count as
    neither messages nor bytes. (test_silent_peer_times_out_naming_it is the control.)"""
    timeout = 1.0
    with connected({p: certs3[p] for p in (0, 1)}, timeout=timeout) as channels:
        for channel in channels.values():
            channel.start_keepalive()

        def busy():
            time.sleep(2 * timeout)  # no channel call meanwhile: only keep-alives go out
            channels[1].send(0, np.array([5], dtype=np.uint64))

        def waiting():
            start = time.monotonic()
            got = channels[0].recv(1)
            return time.monotonic() - start, got.tolist()

        results, errors = in_threads({0: waiting, 1: busy})
        assert not errors, errors
        elapsed, got = results[0]
        assert got == [5] and elapsed > 1.9 * timeout
        assert channels[1]._keepalive.sent >= 3  # every timeout / 4 while idle
        traffic = channels[0].traffic
        assert traffic.messages_received == 1
        assert traffic.bytes_received == framing.HEADER_SIZE + 8 + 8


@pytest.mark.timeout(30)
def test_endpoints_waiting_for_each_other_still_time_out(certs3):
    """Keep-alives do not hide a deadlock: no endpoint sends them to the peer it is itself
    waiting for, so of two endpoints waiting for each other one times out within about the
    timeout, and closes its links as a party does; the other then times out or loses it."""
    timeout = 1.0
    with connected({p: certs3[p] for p in (0, 1)}, timeout=timeout) as channels:
        for channel in channels.values():
            channel.start_keepalive()

        def waiting(p: int):
            start = time.monotonic()
            try:
                channels[p].recv(1 - p)
            except (PeerTimeout, PeerLost) as exc:
                channels[p].close()
                return time.monotonic() - start, exc
            return None

        results, errors = in_threads({p: functools.partial(waiting, p) for p in (0, 1)})
        assert not errors, errors
        timed_out = [p for p in (0, 1) if isinstance(results[p][1], PeerTimeout)]
        assert timed_out, results
        first = timed_out[0]
        elapsed, error = results[first]
        assert f"party {1 - first} sent nothing for 1 s" in str(error)
        assert timeout * 0.9 <= elapsed < timeout + 1.0
        elapsed, error = results[1 - first]
        assert isinstance(error, PeerTimeout | PeerLost) and f"party {first}" in str(error)
        assert elapsed < timeout + 1.5


def _busy_then_stopped(rt, victim: int, busy: float) -> None:
    if rt.party_id == victim:
        time.sleep(busy)  # alive: keep-alives flow
        os.kill(os.getpid(), signal.SIGSTOP)  # stopped: nothing flows any more
        time.sleep(3600)
    start = time.monotonic()
    try:
        rt.channel.recv(victim)
    except PeerTimeout as exc:
        raise RuntimeError(f"after {time.monotonic() - start:.2f} s: {exc}") from None


@pytest.mark.timeout(90)
def test_a_stopped_peer_process_is_reported_within_the_timeout():
    """Party 1's process computes for twice the timeout (waited for), then is stopped
    (SIGSTOP): party 0 reports it about one timeout after the stop, not later, and the
    launcher stops it."""
    timeout, busy = 2.0, 4.0
    with pytest.raises(PartyFailed) as info:
        run_processes([functools.partial(_busy_then_stopped, victim=1, busy=busy)] * 2,
                      RunConfig(n_parties=2, timeout=timeout), connect_timeout=30)
    assert info.value.party_id == 1 and "neither finished nor failed" in str(info.value)
    notes = "\n".join(getattr(info.value, "__notes__", ()))
    found = re.search(r"after ([\d.]+) s: party 0: party 1 sent nothing for 2 s", notes)
    assert found, notes
    waited = float(found.group(1))
    # keep-alives go every timeout / 4: the last one left at most that (and a tick) before
    # the stop, so the stop is reported between 0.6 and 1 timeout (plus scheduling) after it
    assert busy + 0.6 * timeout <= waited <= busy + timeout + 1.0, waited


@pytest.mark.timeout(60)
def test_a_frame_longer_to_deliver_than_the_timeout_is_not_a_timeout_while_it_flows(certs3):
    """TLS reports no partial writes, so a whole 128 MB frame handed to it at once would show
    no progress until the last byte went out: a reader that takes longer than the timeout
    to take it all (here it reads what has arrived ten times a second) made the sender time
    out although bytes kept flowing. Writes go in chunks, each one progress."""
    timeout = 0.5
    big = np.arange(64 * 2**20 // 8, dtype=np.uint64)
    with connected({p: certs3[p] for p in (0, 1)}, timeout=timeout) as channels:
        def slow_reader():  # about 1 MB every 20 ms: some 1.5 s for the frame
            reader, sock = channels[1]._readers[0], channels[1].incoming[0]
            start = time.monotonic()
            while not reader.frames and time.monotonic() - start < 30:
                got = 0
                while got < 1 << 20:
                    try:
                        n = sock.recv_into(reader.target()[:(1 << 20) - got])
                    except (ssl.SSLWantReadError, BlockingIOError):
                        break
                    reader.advance(n)
                    got += n
                time.sleep(0.02)
            return time.monotonic() - start, channels[1].recv(0)

        results, errors = in_threads({0: functools.partial(channels[0].send, 1, big),
                                      1: slow_reader}, join_timeout=45)
        assert not errors, errors
        took, got = results[1]
        assert took > 2 * timeout  # the frame did take longer than the timeout
        assert np.array_equal(got, big)


def test_a_frame_past_the_peer_limit_is_refused_from_its_header():
    """The reader refuses a header whose payload would pass the link's limit, counting the
    frames parsed and not yet taken, before allocating the payload: a peer that declares
    4 GiB costs this party a header's worth of memory."""
    limit = [1024]
    reader = tcp._FrameReader(framing.DEFAULT_MAX_PAYLOAD, lambda: limit[0])

    def feed(data: bytes) -> None:
        while data:
            target = reader.target()
            n = min(len(target), len(data))
            target[:n] = data[:n]
            reader.advance(n)
            data = data[n:]

    small = np.zeros(64, dtype=np.uint64)  # 512 bytes
    feed(framing.encode(small, 0) + framing.encode(small, 1))
    assert reader.buffered == 1024 and len(reader.frames) == 2
    with pytest.raises(ProtocolError, match="a frame of 512 bytes with 1024 more buffered"):
        feed(framing.encode(small, 2))
    assert reader.part == "header"  # no payload buffer was made for it
    reader.take()
    assert reader.buffered == 512
    huge = struct.pack("<2sBBB3xQQ", framing.MAGIC, framing.VERSION, 1, 1, 0, 1 << 32)
    reader = tcp._FrameReader(framing.DEFAULT_MAX_PAYLOAD, lambda: limit[0])
    with pytest.raises(ProtocolError, match=f"a frame of {1 << 32} bytes"):
        feed(huge)
    assert reader.part == "header" and len(reader.buffer) == framing.HEADER_SIZE
