"""Transports: in-process and TCP+TLS agree; keys agree; faults are named errors, not hangs.

Everything runs on loopback with ports the operating system chooses and files in tmp_path.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mpc import cluster
from mpc.errors import ConfigError, PeerLost, PeerTimeout, ProtocolError, SottovoceError
from mpc.launch import run_processes, run_threads
from mpc.net import tcp
from mpc.net.certs import TlsFiles, make_certificates
from mpc.runtime import RunConfig

LOOPBACK = "127.0.0.1"
COUNTERS = ("bytes_sent", "bytes_received", "messages_sent", "messages_received", "rounds")


# -- helpers ---------------------------------------------------------------------------
def _in_threads(fns: dict[int, object], join_timeout: float = 30.0) -> tuple[dict, dict]:
    """Run fns[i]() in one thread each; return (results, errors) by key."""
    results: dict = {}
    errors: dict = {}

    def body(key, fn):
        try:
            results[key] = fn()
        except BaseException as exc:  # collected for the test to inspect
            errors[key] = exc

    threads = [threading.Thread(target=body, args=(k, f), daemon=True) for k, f in fns.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(join_timeout)
        assert not thread.is_alive(), "a party thread hung"
    return results, errors


def _listeners(n: int) -> tuple[dict[int, socket.socket], dict[int, tuple[str, int]]]:
    listeners = {p: tcp.listen((LOOPBACK, 0)) for p in range(n)}
    return listeners, {p: (LOOPBACK, s.getsockname()[1]) for p, s in listeners.items()}


def _try_connect_all(tls: dict[int, TlsFiles], timeout: float = 10.0,
                     connect_timeout: float = 10.0) -> tuple[dict, dict]:
    """Connect party p with tls[p], each in a thread: (open channels, errors) by party."""
    listeners, addresses = _listeners(len(tls))
    try:
        return _in_threads({
            p: functools.partial(tcp.connect, p, addresses, tls[p], listener=listeners[p],
                                 timeout=timeout, connect_timeout=connect_timeout)
            for p in tls})
    finally:
        for sock in listeners.values():
            sock.close()


def _connect_all(tls: dict[int, TlsFiles], timeout: float = 10.0,
                 connect_timeout: float = 10.0) -> dict[int, tcp.TcpChannel]:
    channels, errors = _try_connect_all(tls, timeout, connect_timeout)
    if errors:
        for channel in channels.values():
            channel.close()
        raise next(iter(errors.values()))
    return channels


@pytest.fixture(scope="module")
def certs3(tmp_path_factory) -> dict[int, TlsFiles]:
    return make_certificates(tmp_path_factory.mktemp("certs3"), 3)


# -- the same script over both transports ----------------------------------------------
def exchange_script(rt) -> dict:
    """A fixed sequence of sends, receives and exchanges among 3 parties, with mixed dtypes
    and shapes; returns what was received, the counters, and pairwise PRG draws."""
    me, peers = rt.party_id, rt.channel.peers
    ch = rt.channel
    received = []
    for step in range(3):
        out = {p: np.arange(step * 7 + me * 100 + p, step * 7 + me * 100 + p + 5 * (step + 1),
                            dtype=np.uint64) for p in peers}
        got = ch.exchange(out)
        received += [(p, got[p]) for p in sorted(got)]
    # every dtype and some awkward shapes, one exchange each
    samples = [np.float64(me) * np.ones((2, 3)), np.full((4, 0, 2), me, dtype=np.int32),
               np.array(me, dtype=np.int64), np.arange(6, dtype=np.uint8).reshape(3, 2) + me,
               np.linspace(0, me, 5, dtype=np.float32), np.uint32(7 + me) * np.ones(3, np.uint32)]
    for sample in samples:
        got = ch.exchange(dict.fromkeys(peers, sample))
        received += [(p, got[p]) for p in sorted(got)]
    # a lone send/recv round in a ring, and an exchange with a subset
    nxt, prv = (me + 1) % 3, (me - 1) % 3
    ch.send(nxt, np.array([me, 42], dtype=np.uint64))
    received.append((prv, ch.recv(prv)))
    if me == 0:
        got = ch.exchange({1: np.array([1.5])}, receive_from=[1, 2])
    elif me == 1:
        got = ch.exchange({0: np.array([2.5]), 2: np.arange(3, dtype=np.int64)},
                          receive_from=[0])
    else:
        got = ch.exchange({0: np.arange(2, dtype=np.uint8)}, receive_from=[1])
    received += [(p, got[p]) for p in sorted(got)]
    draws = {p: rt.pair_prg(p, "x").ring_elements(4) for p in peers}
    draws_y = {p: rt.pair_prg(p, "y").ring_elements(4) for p in peers}
    traffic = {k: getattr(ch.traffic, k) for k in COUNTERS}
    return {"received": received, "traffic": traffic, "x": draws, "y": draws_y}


def _check_pair_keys(results: list[dict]) -> None:
    for i in range(3):
        for j in range(3):
            if i != j:
                assert np.array_equal(results[i]["x"][j], results[j]["x"][i])
                assert not np.array_equal(results[i]["x"][j], results[i]["y"][j])
    assert not np.array_equal(results[0]["x"][1], results[0]["x"][2])
    assert not np.array_equal(results[0]["x"][1], results[1]["x"][2])


def _same_received(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (pa, xa), (pb, xb) in zip(a, b, strict=True):
        assert pa == pb and xa.dtype == xb.dtype and xa.shape == xb.shape
        assert xa.tobytes() == xb.tobytes()


@pytest.mark.timeout(60)
def test_inprocess_and_tcp_agree():
    config = RunConfig(n_parties=3, timeout=20)
    threads = run_threads([exchange_script] * 3, config)
    procs = run_processes([exchange_script] * 3, config, connect_timeout=20)
    for party in range(3):
        _same_received(threads[party]["received"], procs[party]["received"])
        assert threads[party]["traffic"] == procs[party]["traffic"]
    _check_pair_keys(threads)
    _check_pair_keys(procs)
    # what was received is what the peers sent (spot check of the first round)
    first = dict(threads[1]["received"][:2])
    assert np.array_equal(first[0], np.arange(1, 6, dtype=np.uint64))
    assert threads[0]["received"][10][1].shape == ()  # 0-d arrays stay 0-d
    # counters balance: what everyone sent is what everyone received
    for results in (threads, procs):
        totals = {k: sum(r["traffic"][k] for r in results) for k in COUNTERS}
        assert totals["bytes_sent"] == totals["bytes_received"]
        assert totals["messages_sent"] == totals["messages_received"]
        assert results[0]["traffic"]["rounds"] == 3 + 6 + 2 + 1


def test_pair_keys_differ_between_runs():
    config = RunConfig(n_parties=3, timeout=10)
    a = run_threads([exchange_script] * 3, config)
    b = run_threads([exchange_script] * 3, config)
    assert not np.array_equal(a[0]["x"][1], b[0]["x"][1])


# -- authentication --------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_certificate_from_another_ca_is_refused(tmp_path):
    good = make_certificates(tmp_path / "good", 2)
    evil = make_certificates(tmp_path / "evil", 2)
    # the intruder knows the real CA certificate (it is public) but its own is signed by
    # another CA
    intruder = TlsFiles(ca=good[1].ca, cert=evil[1].cert, key=evil[1].key)
    channels, errors = _try_connect_all({0: good[0], 1: intruder}, timeout=5, connect_timeout=5)
    for channel in channels.values():
        channel.close()
    assert not channels
    assert isinstance(errors[0], tcp.AuthenticationError), errors[0]
    assert "party 1" in str(errors[0])
    assert isinstance(errors[1], SottovoceError)


@pytest.mark.timeout(30)
def test_wrong_party_certificate_is_refused_by_the_dialer(tmp_path):
    tls = make_certificates(tmp_path, 3)
    # party 1 presents party 2's (valid, same-CA) certificate
    impostor = TlsFiles(ca=tls[1].ca, cert=tls[2].cert, key=tls[2].key)
    channels, errors = _try_connect_all({0: tls[0], 1: impostor}, timeout=5, connect_timeout=5)
    for channel in channels.values():
        channel.close()
    assert not channels
    assert isinstance(errors[0], tcp.AuthenticationError)
    assert "party-2" in str(errors[0]) and "party-1" in str(errors[0])
    assert isinstance(errors[1], SottovoceError)


@pytest.mark.timeout(30)
def test_wrong_party_certificate_is_refused_by_the_listener(tmp_path):
    """An impostor dials party 0 first, claiming to be party 1 with party 2's certificate;
    party 0 refuses it and then connects to the real party 1."""
    tls = make_certificates(tmp_path, 3)
    listeners, addresses = _listeners(2)
    try:
        party0 = threading.Thread(target=lambda: box.update(
            ch=tcp.connect(0, addresses, tls[0], listener=listeners[0], timeout=5,
                           connect_timeout=10)), daemon=True)
        box: dict = {}
        party0.start()
        impostor_tls = TlsFiles(ca=tls[0].ca, cert=tls[2].cert, key=tls[2].key)
        _, client_ctx = tcp._contexts(impostor_tls)
        with pytest.raises(tcp.AuthenticationError):
            tcp._dial(1, 0, addresses[0], client_ctx, time.monotonic() + 5, 5)
        # a plain-TCP client writing garbage is dropped, and so is one that connects and
        # leaves at once (its TLS handshake never completes)
        with socket.create_connection(addresses[0]) as raw:
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n" * 4)
            raw.settimeout(5)
            try:
                while raw.recv(100):
                    pass
            except ConnectionResetError:
                pass  # dropped with unread data: a reset rather than an orderly close
        for _ in range(20):
            socket.create_connection(addresses[0]).close()
        ch1 = tcp.connect(1, addresses, tls[1], listener=listeners[1], timeout=5,
                          connect_timeout=10)
        party0.join(10)
        ch0 = box["ch"]
    finally:
        for sock in listeners.values():
            sock.close()
    try:
        ch1.send(0, np.array([7], dtype=np.uint64))
        assert ch0.recv(1).tolist() == [7]
    finally:
        ch0.close()
        ch1.close()


# -- faults ----------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_silent_peer_times_out_naming_it(certs3):
    timeout = 1.0
    channels = _connect_all({p: certs3[p] for p in (0, 1)}, timeout=timeout)
    try:
        start = time.monotonic()
        with pytest.raises(PeerTimeout, match="party 1") as info, channels[0].stage("probe"):
            channels[0].recv(1)
        elapsed = time.monotonic() - start
        assert timeout * 0.9 <= elapsed < timeout + 1.0
        assert "step probe" in str(info.value)
    finally:
        for channel in channels.values():
            channel.close()


def test_silent_peer_times_out_in_process():
    def silent(rt):
        time.sleep(1.5)

    def waiting(rt):
        start = time.monotonic()
        try:
            rt.channel.recv(1)
        except PeerTimeout as exc:
            return time.monotonic() - start, str(exc)
        return None

    out = run_threads([waiting, silent], RunConfig(n_parties=2, timeout=0.5))
    elapsed, message = out[0]
    assert elapsed < 1.5 and "party 1" in message


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


@pytest.mark.timeout(30)
def test_closed_peer_gives_peer_lost(certs3):
    channels = _connect_all({p: certs3[p] for p in (0, 1)}, timeout=5)
    channels[1].close()
    start = time.monotonic()
    try:
        with pytest.raises(PeerLost, match="party 1"):
            channels[0].recv(1)
        assert time.monotonic() - start < 2
        with pytest.raises(PeerLost):  # and stays lost
            channels[0].recv(1)
    finally:
        channels[0].close()


@pytest.mark.timeout(60)
def test_large_simultaneous_exchange_does_not_deadlock(certs3):
    channels = _connect_all({p: certs3[p] for p in (0, 1)}, timeout=30)
    n = 20 * 2**20 // 8
    data = {p: np.arange(n, dtype=np.uint64) * np.uint64(p + 1) for p in (0, 1)}
    try:
        results, errors = _in_threads({
            p: functools.partial(channels[p].exchange, {1 - p: data[p]}) for p in (0, 1)},
            join_timeout=45)
        assert not errors, errors
        assert np.array_equal(results[0][1], data[1])
        assert np.array_equal(results[1][0], data[0])
        assert channels[0].traffic.bytes_received == channels[1].traffic.bytes_sent
    finally:
        for channel in channels.values():
            channel.close()


def test_messages_read_in_another_order_than_sent_do_not_deadlock(certs3):
    """Party 0 sends 20 MB to party 1, then to party 2; party 1 first waits for party 2,
    which first waits for party 0. Party 1 must read party 0's link while it waits for
    party 2, or party 0 stays blocked on party 1 and nobody moves."""
    channels = _connect_all(certs3, timeout=30)
    big = np.arange(20 * 2**20 // 8, dtype=np.uint64)

    def party0():
        channels[0].send(1, big)
        channels[0].send(2, big)

    def party1():
        return channels[1].recv(2), channels[1].recv(0)

    def party2():
        got = channels[2].recv(0)
        channels[2].send(1, got[:3])

    try:
        results, errors = _in_threads({0: party0, 1: party1, 2: party2}, join_timeout=45)
        assert not errors, errors
        small, large = results[1]
        assert np.array_equal(small, big[:3]) and np.array_equal(large, big)
    finally:
        for channel in channels.values():
            channel.close()


@pytest.mark.timeout(30)
def test_garbage_on_a_connection_is_protocol_error(certs3):
    channels = _connect_all({p: certs3[p] for p in (0, 1)}, timeout=5)
    try:
        channels[1].send(0, np.array([1, 2, 3], dtype=np.uint64))
        # party 1 writes bytes that are not a frame into its (authenticated) link
        channels[1].outgoing[0].sendall(b"\x00garbage that is not a sottovoce frame!!" * 3)
        assert channels[0].recv(1).tolist() == [1, 2, 3]
        with pytest.raises(ProtocolError, match="party 1"):
            channels[0].recv(1)
        with pytest.raises(ProtocolError):  # the link stays failed, no crash
            channels[0].recv(1)
    finally:
        for channel in channels.values():
            channel.close()


@pytest.mark.timeout(30)
def test_hostile_shape_on_a_connection_is_protocol_error(certs3):
    """A frame whose zero-size shape numpy cannot represent must not kill the reader."""
    import struct

    from mpc.net import framing

    channels = _connect_all({p: certs3[p] for p in (0, 1)}, timeout=5)
    try:
        head = struct.pack("<2sBBB3xQQ", framing.MAGIC, framing.VERSION, 1, 2, 0, 0)
        channels[1].outgoing[0].sendall(head + struct.pack("<2Q", 2**63, 0))
        with pytest.raises(ProtocolError, match="too large"):
            channels[0].recv(1)
    finally:
        for channel in channels.values():
            channel.close()


def test_inprocess_peer_lost_when_a_role_fails():
    def failing(rt):
        raise RuntimeError("boom")

    def waiting(rt):
        try:
            rt.channel.recv(0)
        except PeerLost as exc:
            return str(exc)

    with pytest.raises(SottovoceError, match="party 0 failed: boom"):
        run_threads([failing, waiting], RunConfig(n_parties=2, timeout=5))


# -- cluster files ---------------------------------------------------------------------
def _cluster_text(cert_dir: Path, parties: list[dict], head: str | None = None) -> str:
    lines = [head if head is not None else f'[cluster]\ntimeout = 5\nca = "{cert_dir}/ca.pem"']
    for party in parties:
        lines.append("[[party]]")
        lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"'
                  for k, v in party.items()]
    return "\n".join(lines) + "\n"


def _party(cert_dir: Path, pid: int, port: int | None = None, **extra) -> dict:
    entry = {"id": pid, "host": LOOPBACK, "port": port or 7000 + pid,
             "cert": f"{cert_dir}/party-{pid}.pem", "key": f"{cert_dir}/party-{pid}.key"}
    entry.update(extra)
    return entry


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("cluster-certs")
    make_certificates(directory, 3)
    return directory


def test_write_and_load_cluster(tmp_path, cert_dir):
    path = cluster.write_cluster(tmp_path / "conf" / "cluster.toml", 3, cert_dir=cert_dir,
                                 base_port=9100, hosts={2: "localhost"}, timeout=7)
    loaded = cluster.load_cluster(path)
    assert loaded.path == path and loaded.timeout == 7.0 and loaded.n_endpoints == 3
    assert loaded.addresses() == {0: (LOOPBACK, 9100), 1: (LOOPBACK, 9101),
                                  2: ("localhost", 9102)}
    assert loaded.parties[1].tls.cert.resolve() == (cert_dir / "party-1.pem").resolve()
    assert loaded.parties[1].tls.ca.resolve() == (cert_dir / "ca.pem").resolve()
    assert "../" in path.read_text()  # paths are written relative to the file


@pytest.mark.parametrize("case, message", [
    ("syntax", "not valid TOML"),
    ("missing_id", "party 1 is missing"),
    ("duplicate_id", "party id 0 appears more than once"),
    ("duplicate_address", "both use 127.0.0.1:7000"),
    ("port_zero", "port must be"),
    ("port_big", "port must be"),
    ("port_string", "port must be"),
    ("missing_cert", "cert file"),
    ("missing_key", "key file"),
    ("missing_ca", "ca file"),
    ("no_ca", "no ca"),
    ("no_parties", "no parties"),
    ("lacks_host", "lacks host"),
    ("bad_timeout", "timeout must be"),
    ("unknown_key", "unknown keys"),
    ("negative_id", "non-negative"),
])
def test_cluster_validation_errors(tmp_path, cert_dir, case, message):
    parties = [_party(cert_dir, 0), _party(cert_dir, 1)]
    head = None
    if case == "syntax":
        text = _cluster_text(cert_dir, parties) + "port = = 3\n"
    else:
        if case == "missing_id":
            parties[1]["id"] = 2
        elif case == "duplicate_id":
            parties[1]["id"] = 0
        elif case == "duplicate_address":
            parties[1]["port"] = 7000
        elif case == "port_zero":
            parties[0]["port"] = 0
        elif case == "port_big":
            parties[0]["port"] = 70000
        elif case == "port_string":
            parties[0]["port"] = "7000"
        elif case == "missing_cert":
            parties[1]["cert"] = str(cert_dir / "nope.pem")
        elif case == "missing_key":
            parties[1]["key"] = "nope.key"
        elif case == "missing_ca":
            head = '[cluster]\nca = "nowhere/ca.pem"'
        elif case == "no_ca":
            head = "[cluster]\ntimeout = 3"
        elif case == "no_parties":
            parties = []
        elif case == "lacks_host":
            del parties[0]["host"]
        elif case == "bad_timeout":
            head = f'[cluster]\ntimeout = -1\nca = "{cert_dir}/ca.pem"'
        elif case == "unknown_key":
            parties[0]["prot"] = 1
        elif case == "negative_id":
            parties[0]["id"] = -1
        text = _cluster_text(cert_dir, parties, head)
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        cluster.load_cluster(path)
    assert str(path) in str(info.value)


def test_missing_cluster_file(tmp_path):
    with pytest.raises(ConfigError, match="no such cluster file"):
        cluster.load_cluster(tmp_path / "absent.toml")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 3])
def test_parties_started_from_a_cluster_file_exchange(tmp_path, cert_dir, n):
    listeners, addresses = _listeners(n)
    path = cluster.write_cluster(tmp_path / "cluster.toml", n, cert_dir=cert_dir,
                                 ports=[addresses[p][1] for p in range(n)], timeout=10,
                                 connect_timeout=10)
    spec = cluster.load_cluster(path)

    def party(pid: int):
        rt = cluster.start_party(spec, pid, listener=listeners[pid])
        try:
            got = rt.channel.exchange({p: np.full(3, 10 * pid + p, dtype=np.uint64)
                                       for p in rt.channel.peers})
            draws = {p: rt.pair_prg(p, "t").ring_elements(2) for p in rt.channel.peers}
            return {p: a.tolist() for p, a in got.items()}, draws, rt.config
        finally:
            rt.channel.close()

    results, errors = _in_threads({p: functools.partial(party, p) for p in range(n)})
    assert not errors, errors
    for pid in range(n):
        got, draws, config = results[pid]
        assert config.n_parties == n and config.timeout == 10
        assert got == {p: [10 * p + pid] * 3 for p in range(n) if p != pid}
        for p in draws:
            assert np.array_equal(draws[p], results[p][1][pid])


def test_start_party_checks_its_arguments(tmp_path, cert_dir):
    path = cluster.write_cluster(tmp_path / "c.toml", 2, cert_dir=cert_dir)
    spec = cluster.load_cluster(path)
    with pytest.raises(ConfigError, match="no party 5"):
        cluster.start_party(spec, 5)
    with pytest.raises(ConfigError, match="needs 3"):
        cluster.start_party(spec, 0, RunConfig(n_parties=3))
    with pytest.raises(ConfigError, match="needs 3"):
        cluster.start_party(spec, 0, RunConfig(n_parties=2, dealer=True))


def _unpicklable_result(rt):
    return threading.Lock()


@pytest.mark.timeout(60)
def test_unpicklable_result_fails_fast_instead_of_waiting_for_the_deadline():
    from mpc.launch import PartyFailed

    start = time.monotonic()
    with pytest.raises(PartyFailed, match="pickle"):
        run_processes([_unpicklable_result] * 2, RunConfig(n_parties=2, timeout=5),
                      connect_timeout=20, deadline=40)
    assert time.monotonic() - start < 30


@pytest.mark.timeout(30)
def test_expired_certificate_is_refused(tmp_path):
    """Certificates from the project CA that expired are refused (the CA itself is valid)."""
    expired = make_certificates(tmp_path / "old", 2, valid_from_days=-400)  # ended 35 days ago
    fresh = make_certificates(tmp_path / "new", 2)
    # both parties hold certificates of one CA whose validity ended; the same set made
    # valid connects (the control)
    channels, errors = _try_connect_all({p: expired[p] for p in (0, 1)}, timeout=5,
                                        connect_timeout=5)
    for channel in channels.values():
        channel.close()
    assert not channels
    assert all(isinstance(e, SottovoceError) for e in errors.values())
    assert any("expired" in str(e) for e in errors.values()), errors
    channels, errors = _try_connect_all({p: fresh[p] for p in (0, 1)}, timeout=5,
                                        connect_timeout=5)
    assert len(channels) == 2 and not errors
    for channel in channels.values():
        channel.close()
