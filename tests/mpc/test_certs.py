"""Identities: the TCP transport's mutual TLS accepts a peer only with the key pinned for it
(its fingerprint), in an unexpired certificate; no CA or name can stand in for the key.

Everything runs on loopback with ports the operating system chooses and files in tmp_path.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import close_all, loopback_listeners, try_connect_all
from cryptography.hazmat.primitives import serialization

from mpc.errors import AuthenticationError, SottovoceError
from mpc.net import handshake, tcp
from mpc.net.certs import (
    TlsFiles,
    der_bytes,
    fingerprint,
    make_certificates,
    read_certificate,
    short,
)
from mpc.runtime import RunConfig


@pytest.mark.timeout(30)
def test_certificate_from_another_ca_is_refused(tmp_path):
    good = make_certificates(tmp_path / "good", 2)
    evil = make_certificates(tmp_path / "evil", 2)
    # the intruder knows the real pins (they are public) but holds a key of its own, which
    # it pins for itself: no CA is trusted, so only the fingerprint can tell
    intruder = TlsFiles(cert=evil[1].cert, key=evil[1].key,
                        pins={**good[1].pins, 1: evil[1].pins[1]})
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
    # party 1 presents party 2's (valid, pinned) key and certificate
    impostor = TlsFiles(cert=tls[2].cert, key=tls[2].key,
                        pins={0: tls[0].pins[0], 1: tls[2].pins[2]})
    channels, errors = try_connect_all({0: tls[0], 1: impostor}, timeout=5, connect_timeout=5)
    for channel in channels.values():
        channel.close()
    assert not channels
    assert isinstance(errors[0], tcp.AuthenticationError)
    # the certificate's name, whose key it is, and whose key was expected
    assert "'party-2'" in str(errors[0]) and "the key pinned for party 2" in str(errors[0])
    assert "wrong fingerprint for party 1" in str(errors[0])
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
        impostor = handshake.Credentials.load(
            1, TlsFiles(cert=tls[2].cert, key=tls[2].key,
                        pins={0: tls[0].pins[0], 1: tls[2].pins[2]}), [0, 1], {})
        with pytest.raises(tcp.AuthenticationError):
            handshake.dial(impostor, 0, addresses[0], impostor.context(), time.monotonic() + 5)
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


# -- pinned keys (issue 17): names, CAs and stray keys count for nothing -----------------------
def _ca_signed(directory: Path, common_name: str) -> tuple[Path, Path]:
    """A fresh key in a certificate named `common_name`, signed by a fresh CA: what anyone
    holding a CA key could mint (the attack that CA-based naming allowed)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sottovoce"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name(common_name))
            .issuer_name(name("sottovoce-ca")).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{common_name}.pem", directory / f"{common_name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.timeout(30)
@pytest.mark.parametrize("minted", ["ca-signed", "self-signed"])
def test_an_impostor_with_the_right_name_is_refused_naming_the_role_and_the_key(
        tmp_path, caplog, minted):
    """Endpoint 1 (the dealer) is replaced by an impostor whose certificate is named
    `party-1` (signed by a CA, or by itself) around a key of its own. Both directions
    refuse it: party 0 dialling it says whom it reached (the dealer, host, port) and that
    the key is not the dealer's pinned one; party 0 accepting from it refuses and logs the
    same, and the impostor is told why. Party 0 accuses nobody else."""
    tls = make_certificates(tmp_path / "real", 2)
    if minted == "ca-signed":
        cert, key = _ca_signed(tmp_path / "mint", "party-1")
    else:
        cert = make_certificates(tmp_path / "mint", 2)[1].cert
        key = cert.with_suffix(".key")
    fake = fingerprint(read_certificate(cert))
    impostor = TlsFiles(cert=cert, key=key, pins={**tls[1].pins, 1: fake})  # its own view
    names = RunConfig(n_parties=1, dealer=True).endpoint_names()  # 0: party 0, 1: dealer
    caplog.set_level(logging.WARNING, logger="mpc.net.handshake")
    start = time.monotonic()
    channels, errors = try_connect_all({0: tls[0], 1: impostor}, timeout=5, connect_timeout=10,
                                       names=names)
    close_all(channels)
    assert not channels and time.monotonic() - start < 5  # refused at once, no timeout
    real = tls[0].pins[1]
    message = str(errors[0])
    assert isinstance(errors[0], AuthenticationError), errors[0]
    assert re.search(r"^party 0: the dealer at 127\.0\.0\.1:\d+ presents key ", message)
    assert short(fake) in message and short(real) in message
    assert "wrong fingerprint for the dealer" in message and "'party-1'" in message
    assert "party 1" not in message  # the endpoint is named by its role only
    assert isinstance(errors[1], AuthenticationError)
    assert re.search(r"^dealer: party 0 at 127\.0\.0\.1:\d+ refused this endpoint's key", str(
        errors[1]))
    assert "wrong fingerprint for the dealer" in str(errors[1])
    assert any("party 0: refused a connection from 127.0.0.1:" in r.getMessage()
               and short(fake) in r.getMessage() for r in caplog.records), caplog.records


@pytest.mark.timeout(30)
def test_a_client_with_a_wrong_key_is_told_and_the_parties_accuse_only_the_client(tmp_path):
    """The client made a new key and pinned it in its own copy of the cluster file, but the
    compute parties still pin its old one: the client gets a clear refusal (no raw TLS
    alert), and each compute party names the client, not the other compute party."""
    tls = make_certificates(tmp_path / "cluster", 3)
    new = make_certificates(tmp_path / "new", 3)[2]
    client = TlsFiles(cert=new.cert, key=new.key, pins={**tls[2].pins, 2: new.pins[2]})
    names = RunConfig(n_parties=2, external=1).endpoint_names()  # 2: the client
    start = time.monotonic()
    channels, errors = try_connect_all({0: tls[0], 1: tls[1], 2: client}, timeout=5,
                                       connect_timeout=10, names=names)
    close_all(channels)
    assert time.monotonic() - start < 5
    assert sorted(errors) == [0, 1] + [2] and not channels
    assert isinstance(errors[2], AuthenticationError)
    assert "refused this endpoint's key" in str(errors[2])
    assert "wrong fingerprint for the client" in str(errors[2])
    assert "TLSV1" not in str(errors[2]) and "DECRYPT" not in str(errors[2])
    for party in (0, 1):
        text = str(errors[party])
        assert isinstance(errors[party], AuthenticationError), errors[party]
        assert text.startswith(f"party {party}: the client at 127.0.0.1:")
        assert "wrong fingerprint for the client" in text
        assert f"party {1 - party}" not in text


@pytest.mark.timeout(30)
def test_an_expired_certificate_is_refused_in_both_directions_naming_it(tmp_path):
    """A peer whose (pinned) key sits in an expired certificate, running code that does
    not check its own expiry, is refused as a dialer (it is told why) and as an acceptor."""
    fresh = make_certificates(tmp_path / "fresh", 2)
    old = make_certificates(tmp_path / "old", 2, valid_from_days=-400)[1]
    pins = {0: fresh[0].pins[0], 1: old.pins[1]}
    party0 = handshake.Credentials.load(0, TlsFiles(fresh[0].cert, fresh[0].key, pins), [0, 1],
                                        {})
    cert = read_certificate(old.cert)
    stale = handshake.Credentials(me=1, tls=TlsFiles(old.cert, old.key, pins), pins=pins,
                                  names={}, fingerprint=pins[1], der=der_bytes(cert),
                                  owners={fp: p for p, fp in pins.items()})
    listeners, addresses = loopback_listeners(2)
    progress = threading.Condition()
    problems = {}
    try:
        for server, client, peer in ((party0, stale, 0), (stale, party0, 1)):
            acceptor = handshake.Acceptor(server, listeners[peer], frozenset({1 - peer}),
                                          progress)
            acceptor.start()
            try:
                with pytest.raises(AuthenticationError) as info:
                    handshake.dial(client, peer, addresses[peer], client.context(),
                                   time.monotonic() + 5)
            finally:
                problems[peer] = acceptor.problems
                acceptor.stop()
            assert "certificate has expired" in str(info.value)
            assert f"party {peer} at 127.0.0.1:{addresses[peer][1]}" in str(info.value)
        # party 0 refused the stale dialer and said why; nothing was refused by the stale
        # acceptor (it is the dialer that refuses the stale server)
        assert any("party 1's key" in p and "expired" in p for p in problems[0]), problems
        assert not problems[1], problems
    finally:
        for sock in listeners.values():
            sock.close()


def test_the_keys_command_writes_a_private_key_and_its_fingerprint(tmp_path):
    folder = tmp_path / "host-3" / "keys"
    cli = [sys.executable, "-m", "experiments.cli", "keys", str(folder), "--id", "3",
           "--host", "10.0.0.4"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    key, cert = folder / "party-3.key", folder / "party-3.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    fp = fingerprint(read_certificate(cert))
    assert (folder / "party-3.fingerprint").read_text().strip() == fp
    assert f"fingerprint {fp}" in done.stdout and "PRIVATE" not in done.stdout
    assert "PRIVATE KEY" in key.read_text() and "PRIVATE" not in cert.read_text()
    # the key matches its certificate, which is self-signed and names the endpoint
    assert fingerprint(read_certificate(cert)) == hashlib.sha256(
        serialization.load_pem_private_key(key.read_bytes(), None).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).hexdigest()
    assert "party-3" in read_certificate(cert).subject.rfc4514_string()
    # a second run would change the identity: refused, the key is kept
    before = key.read_bytes()
    again = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert key.read_bytes() == before
