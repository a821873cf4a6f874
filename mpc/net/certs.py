"""Identities for mutual TLS: each endpoint's own key, and the fingerprints of its peers' keys.

An endpoint's identity is an ECDSA P-256 key made on its own host (`sottovoce keys`) that never
leaves it, carried through TLS in a self-signed certificate. Peers know an endpoint only by the
fingerprint of its public key (SHA-256 of the DER SubjectPublicKeyInfo, in hex), which the
cluster file lists; the transport refuses any other key for that endpoint, whoever signed the
certificate around it. There is no CA: no signature can make a key someone else's identity.
The certificate's common name (`party-<id>`) is a label for people reading files and errors.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mpc.errors import ConfigError

VALIDITY_DAYS = 365
_HEX64 = re.compile(r"[0-9a-f]{64}")


def party_name(party_id: int) -> str:
    """The common name of an endpoint's certificate and the stem of its files."""
    return f"party-{party_id}"


@dataclass(frozen=True)
class TlsFiles:
    """What one endpoint needs for mutual TLS: its own certificate and private key, and the
    pinned key fingerprint of every endpoint (by endpoint id), itself included."""

    cert: Path
    key: Path
    pins: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Identity:
    """One endpoint's files as `make_identity` wrote them, and its key's fingerprint."""

    cert: Path
    key: Path
    fingerprint: str


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's SubjectPublicKeyInfo (DER), as 64 lowercase hex digits:
    it names the key, whatever certificate carries it."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def normalize_fingerprint(text: object) -> str | None:
    """`text` as 64 lowercase hex digits (colons and spaces allowed), or None if it is not a
    SHA-256 fingerprint."""
    if not isinstance(text, str):
        return None
    digits = re.sub(r"[\s:]", "", text).lower()
    return digits if _HEX64.fullmatch(digits) else None


def short(fp: str) -> str:
    """The first 16 hex digits, for messages (checks always compare all 64)."""
    return f"{fp[:16]}..."


def certificate_from_der(der: bytes) -> x509.Certificate:
    """Parse a DER certificate; ValueError if it is not one."""
    return x509.load_der_x509_certificate(der)


def read_certificate(path: Path) -> x509.Certificate:
    """The PEM certificate in `path`; a ConfigError naming the file otherwise."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable PEM certificate: {exc}") from None


def der_bytes(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def validity_problem(cert: x509.Certificate, now: datetime.datetime | None = None) -> str | None:
    """Why `cert` is not valid now ("certificate has expired ..."), or None if it is."""
    now = now or datetime.datetime.now(datetime.UTC)
    if now > cert.not_valid_after_utc:
        return f"certificate has expired (on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
    if now < cert.not_valid_before_utc:
        return f"certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return None


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sottovoce"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_private(path: Path, data: bytes, replace: bool) -> None:
    """Write a key readable by its owner only; refuse to replace an existing one unless
    `replace` (a new key is a new identity: every peer's cluster file must learn it)."""
    if path.exists() and not replace:
        raise ConfigError(f"{path} already exists: a new key would be a new identity; "
                          "remove it first if that is what you want")
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a file left by an earlier run
    tmp.replace(path)


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_identity(directory: str | Path, endpoint: int, hosts: Iterable[str] = (),
                  valid_from_days: float = 0.0, replace: bool = False,
                  name: str | None = None) -> Identity:
    """Make endpoint `endpoint`'s key and self-signed certificate in `directory`:
    `party-<id>.key` (mode 0600), `party-<id>.pem` and `party-<id>.fingerprint` (the key's
    fingerprint, the only thing peers need). `hosts` go into the certificate's subject
    alternative names (informative: peers identify the key, not the host);
    `valid_from_days` shifts the validity window (tests make expired certificates with it);
    `name` replaces `party-<id>` as the files' stem and the certificate's name (a service's
    clients: `client-<name>`)."""
    if endpoint < 0:
        raise ConfigError(f"endpoint id must be non-negative, got {endpoint}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=valid_from_days)
    key = ec.generate_private_key(ec.SECP256R1())
    host_names = ["localhost", "127.0.0.1"]
    host_names += [h for h in hosts if h and h not in host_names]
    cert = (x509.CertificateBuilder()
            .subject_name(_name(name or party_name(endpoint)))
            .issuer_name(_name(name or party_name(endpoint)))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_san(host_names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    stem = directory / (name or party_name(endpoint))
    key_path, cert_path = stem.with_suffix(".key"), stem.with_suffix(".pem")
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), replace)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fp = fingerprint(cert)
    stem.with_suffix(".fingerprint").write_text(fp + "\n")
    return Identity(cert=cert_path, key=key_path, fingerprint=fp)


def make_certificates(directory: str | Path, n_parties: int,
                      hosts: Mapping[int, str] | None = None,
                      valid_from_days: float = 0.0) -> dict[int, TlsFiles]:
    """Every key of a cluster in one folder, for a trial on one machine (or the process
    launcher): endpoint i's files, each with every endpoint's pinned fingerprint. A real
    deployment makes each key on its own host instead (`make_identity`, `sottovoce keys`)."""
    if n_parties < 1:
        raise ValueError("need at least one party")
    made = {p: make_identity(directory, p, [hosts[p]] if hosts and p in hosts else (),
                             valid_from_days, replace=True) for p in range(n_parties)}
    pins = {p: identity.fingerprint for p, identity in made.items()}
    return {p: TlsFiles(cert=identity.cert, key=identity.key, pins=pins)
            for p, identity in made.items()}
