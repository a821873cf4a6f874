"""Certificates: only the project CA's, unexpired, naming the party that presents them, are
accepted by the TCP transport's mutual TLS.

Everything runs on loopback with ports the operating system chooses and files in tmp_path.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from conftest import loopback_listeners, try_connect_all

from mpc.errors import SottovoceError
from mpc.net import tcp
from mpc.net.certs import TlsFiles, make_certificates


@pytest.mark.timeout(30)
def test_certificate_from_another_ca_is_refused(tmp_path):
    good = make_certificates(tmp_path / "good", 2)
    evil = make_certificates(tmp_path / "evil", 2)
    # the intruder knows the real CA certificate (it is public) but its own is signed by
    # another CA
    intruder = TlsFiles(ca=good[1].ca, cert=evil[1].cert, key=evil[1].key)
    channels, errors = try_connect_all({0: good[0], 1: intruder}, timeout=5, connect_timeout=5)
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
    channels, errors = try_connect_all({0: tls[0], 1: impostor}, timeout=5, connect_timeout=5)
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
    listeners, addresses = loopback_listeners(2)
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


@pytest.mark.timeout(30)
def test_expired_certificate_is_refused(tmp_path):
    """Certificates from the project CA that expired are refused (the CA itself is valid)."""
    expired = make_certificates(tmp_path / "old", 2, valid_from_days=-400)  # ended 35 days ago
    fresh = make_certificates(tmp_path / "new", 2)
    # both parties hold certificates of one CA whose validity ended; the same set made
    # valid connects (the control)
    channels, errors = try_connect_all({p: expired[p] for p in (0, 1)}, timeout=5,
                                       connect_timeout=5)
    for channel in channels.values():
        channel.close()
    assert not channels
    assert all(isinstance(e, SottovoceError) for e in errors.values())
    assert any("expired" in str(e) for e in errors.values()), errors
    channels, errors = try_connect_all({p: fresh[p] for p in (0, 1)}, timeout=5,
                                       connect_timeout=5)
    assert len(channels) == 2 and not errors
    for channel in channels.values():
        channel.close()
