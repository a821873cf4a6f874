"""Certificates for mutual TLS between parties, all signed by one project CA.

A party's certificate names it (`CN=party-<id>`), and every party checks that the peer it
talks to presents the certificate of the party it expects, so a stolen address or a
certificate from another CA is refused before any share moves.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALIDITY_DAYS = 365


def party_name(party_id: int) -> str:
    """The common name a party's certificate carries."""
    return f"party-{party_id}"


@dataclass(frozen=True)
class TlsFiles:
    """Where one party finds its TLS material."""

    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sottovoce"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_private(path: Path, data: bytes) -> None:
    """Write a key readable by its owner only, atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_certificates(directory: str | Path, n_parties: int,
                      hosts: dict[int, str] | None = None,
                      valid_from_days: float = 0.0) -> dict[int, TlsFiles]:
    """Create a CA and one certificate per party in `directory`; return each party's files.

    `hosts` names each party's host (for the certificate's subject alternative names);
    parties are identified by the common name, so loopback defaults are fine for local runs.
    `valid_from_days` shifts the validity window (tests make expired certificates with it).
    """
    if n_parties < 1:
        raise ValueError("need at least one party")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=valid_from_days)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALIDITY_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder()
               .subject_name(_name("sottovoce-ca")).issuer_name(_name("sottovoce-ca"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                            crl_sign=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(directory / "ca.key", _key_bytes(ca_key))
    files = {}
    for party in range(n_parties):
        key = ec.generate_private_key(ec.SECP256R1())
        host_names = ["localhost", "127.0.0.1"]
        if hosts and party in hosts and hosts[party] not in host_names:
            host_names.append(hosts[party])
        cert = (x509.CertificateBuilder()
                .subject_name(_name(party_name(party))).issuer_name(ca_cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_san(host_names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH,
                                                      x509.ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        cert_path = directory / f"{party_name(party)}.pem"
        key_path = directory / f"{party_name(party)}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(key_path, _key_bytes(key))
        files[party] = TlsFiles(ca=ca_path, cert=cert_path, key=key_path)
    return files
