"""Cluster files: which endpoints take part, where they listen, and the key of each.

A cluster file is TOML, one `[cluster]` table and one `[[party]]` table per endpoint. One
file is shared by every host: it holds nothing secret, only each endpoint's address and the
fingerprint of its public key (SHA-256 of the SubjectPublicKeyInfo, `sottovoce keys` prints
it), which every peer pins:

    [cluster]
    timeout = 60                 # seconds a peer may show no sign of life (optional, 60)
    connect_timeout = 30         # seconds to reach every peer at start-up (optional)
    # keys = "keys"              # where this host keeps its own keys (optional, default
                                 # "keys" next to this file): keys/party-<id>.key and .pem

    [[party]]
    id = 0
    host = "10.0.0.1"
    port = 7000
    fingerprint = "3b1f...64 hex digits"
    # bind = "0.0.0.0"           # optional: listen here instead of host
    # cert = "keys/party-0.pem"  # optional, both or neither: this endpoint's own files,
    # key = "keys/party-0.key"   # for a file kept on the host that holds them

An endpoint run from the file finds its own key and certificate by its `cert`/`key` entries
if it has them, else in the key folder; its key must be the one pinned for it. Paths are
relative to the file. Every problem is a `ConfigError` naming the file and what is wrong.
`start_party` connects one endpoint by TCP with mutual TLS and returns its `Runtime`: this is
how one role is started on its own host from the shared cluster file.
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mpc.errors import ConfigError
from mpc.net import tcp
from mpc.net.certs import TlsFiles, fingerprint, normalize_fingerprint, party_name, read_certificate
from mpc.runtime import RunConfig, Runtime, make_runtime

DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_KEYS = "keys"
_CLUSTER_KEYS = {"timeout", "connect_timeout", "scheme", "compute_parties", "keys"}
_PARTY_KEYS = {"id", "host", "port", "fingerprint", "cert", "key", "bind", "service_port"}
#: Tables a service reads (experiments/service/config.py validates them).
SERVICE_TABLES = ("service", "client", "lane")


@dataclass(frozen=True)
class PartySpec:
    """Where one endpoint listens, the fingerprint of its key, and (only in a file kept on
    its own host) its certificate and key files."""

    host: str
    port: int
    fingerprint: str
    tls: TlsFiles | None = None  # this endpoint's own files, when the file names them
    bind: str | None = None  # listening address, when it differs from `host`
    service_port: int | None = None  # where a service's clients reach this endpoint

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True)
class Cluster:
    """A validated cluster file: parties by id (0..n-1), timeouts, and where it was read."""

    parties: dict[int, PartySpec]
    timeout: float
    path: Path
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    scheme: str | None = None  # deployments name the scheme and how many compute parties
    compute_parties: int | None = None
    keys: Path | None = None  # this host's key folder (default: "keys" next to the file)
    #: the service's tables as read ([service], [[client]]); experiments.service checks them
    tables: dict[str, Any] = field(default_factory=dict)

    @property
    def n_endpoints(self) -> int:
        return len(self.parties)

    def addresses(self) -> dict[int, tuple[str, int]]:
        return {pid: spec.address for pid, spec in self.parties.items()}

    def pins(self) -> dict[int, str]:
        """Every endpoint's pinned key fingerprint, by id."""
        return {pid: spec.fingerprint for pid, spec in self.parties.items()}

    def tls(self, endpoint: int) -> TlsFiles:
        """What `endpoint` needs to run from this file on this host: its own certificate and
        key (named by its entry, else found in the key folder) and every endpoint's pin."""
        spec = self.parties[endpoint]
        if spec.tls is not None:
            return spec.tls
        folder = self.keys or self.path.parent / DEFAULT_KEYS
        cert, key = (folder / f"{party_name(endpoint)}{ext}" for ext in (".pem", ".key"))
        if not (cert.is_file() and key.is_file()):
            raise ConfigError(f"{self.path}: no key of endpoint {endpoint} on this host: "
                              f"{key} and {cert} are needed (make them here with `sottovoce "
                              f"keys {folder} --id {endpoint}` and pin the fingerprint it "
                              "prints, or name them with cert and key in its [[party]])")
        return TlsFiles(cert=cert, key=key, pins=self.pins())


def _positive_number(path: Path, table: Mapping[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{path}: [cluster] {key} must be a positive number of seconds, "
                          f"got {value!r}")
    return float(value)


def _resolve(path: Path, value: str) -> Path:
    """`value` as a path: absolute (or from ~), else relative to the cluster file."""
    given = Path(value).expanduser()
    return given if given.is_absolute() else path.parent / given


def _file(path: Path, where: str, key: str, value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: {where} {key} must be a file name, got {value!r}")
    resolved = Path(value) if Path(value).is_absolute() else path.parent / value
    if not resolved.is_file():
        raise ConfigError(f"{path}: {where} {key} file {resolved} does not exist")
    return resolved


def load_cluster(path: str | os.PathLike[str]) -> Cluster:
    """Read and validate a cluster file; raise ConfigError naming the file and the problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such cluster file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the cluster file: {exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    unknown = set(data) - {"cluster", "party", *SERVICE_TABLES}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level entries {sorted(unknown)}; "
                          "expected [cluster], [[party]] and, for a service, [service] and "
                          "[[client]]")
    table = data.get("cluster", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: cluster must be a table ([cluster])")
    if "ca" in table:
        raise ConfigError(f"{path}: [cluster] names a ca file ({table['ca']!r}), but no CA is "
                          "trusted any more: each endpoint's key is pinned by its fingerprint "
                          "(remove ca; add fingerprint = \"...\" to every [[party]], as "
                          "`sottovoce keys` prints it)")
    unknown = set(table) - _CLUSTER_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown [cluster] keys {sorted(unknown)}")
    timeout = _positive_number(path, table, "timeout", 60.0)
    connect_timeout = _positive_number(path, table, "connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    keys = table.get("keys")
    if keys is not None and (not isinstance(keys, str) or not keys):
        raise ConfigError(f"{path}: [cluster] keys must be a folder name, got {keys!r}")
    key_folder = None if keys is None else _resolve(path, keys)

    entries = data.get("party")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: no parties; add one [[party]] table per party")
    parties: dict[int, PartySpec] = {}
    seen_addresses: dict[tuple[str, int], int] = {}
    seen_pins: dict[str, int] = {}
    own_files: dict[int, tuple[Path, Path]] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: party entry {index} is not a table")
        where = f"[[party]] number {index + 1}"
        missing = [k for k in ("id", "host", "port", "fingerprint") if k not in entry]
        if missing:
            raise ConfigError(f"{path}: {where} lacks {', '.join(missing)}")
        unknown = set(entry) - _PARTY_KEYS
        if unknown:
            raise ConfigError(f"{path}: {where} has unknown keys {sorted(unknown)}")
        pid = entry["id"]
        if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
            raise ConfigError(f"{path}: {where} id must be a non-negative integer, got {pid!r}")
        where = f"party {pid}"
        if pid in parties:
            raise ConfigError(f"{path}: party id {pid} appears more than once")
        host, port = entry["host"], entry["port"]
        if not isinstance(host, str) or not host:
            raise ConfigError(f"{path}: {where} host must be a non-empty string, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"{path}: {where} port must be an integer in 1..65535, "
                              f"got {port!r}")
        bind = entry.get("bind")
        if bind is not None and (not isinstance(bind, str) or not bind):
            raise ConfigError(f"{path}: {where} bind must be a non-empty string, got {bind!r}")
        if (host, port) in seen_addresses:
            raise ConfigError(f"{path}: parties {seen_addresses[(host, port)]} and {pid} both "
                              f"use {host}:{port}")
        seen_addresses[(host, port)] = pid
        pin = normalize_fingerprint(entry["fingerprint"])
        if pin is None:
            raise ConfigError(f"{path}: {where} fingerprint must be 64 hex digits (SHA-256 of "
                              f"its public key, as `sottovoce keys` prints it), got "
                              f"{entry['fingerprint']!r}")
        if pin in seen_pins:
            raise ConfigError(f"{path}: parties {seen_pins[pin]} and {pid} have the same "
                              "fingerprint; every endpoint needs its own key")
        seen_pins[pin] = pid
        if ("cert" in entry) != ("key" in entry):
            raise ConfigError(f"{path}: {where} lacks {'key' if 'cert' in entry else 'cert'} "
                              "(give both of its own files, or neither)")
        if "cert" in entry:
            own_files[pid] = (_file(path, where, "cert", entry["cert"]),
                              _file(path, where, "key", entry["key"]))
        service_port = entry.get("service_port")
        if service_port is not None and (isinstance(service_port, bool)
                                         or not isinstance(service_port, int)
                                         or not 1 <= service_port <= 65535):
            raise ConfigError(f"{path}: {where} service_port must be an integer in 1..65535, "
                              f"got {service_port!r}")
        parties[pid] = PartySpec(host=host, port=port, fingerprint=pin, bind=bind,
                                 service_port=service_port)

    missing_ids = [pid for pid in range(len(parties)) if pid not in parties]
    if missing_ids:
        raise ConfigError(f"{path}: party ids must be 0..{len(parties) - 1}; party "
                          f"{missing_ids[0]} is missing (ids given: {sorted(parties)})")
    scheme = table.get("scheme")
    if scheme is not None and (not isinstance(scheme, str) or not scheme):
        raise ConfigError(f"{path}: [cluster] scheme must be a scheme name, got {scheme!r}")
    compute = table.get("compute_parties")
    if compute is not None and (isinstance(compute, bool) or not isinstance(compute, int)
                                or not 1 <= compute <= len(parties)):
        raise ConfigError(f"{path}: [cluster] compute_parties must be an integer in "
                          f"1..{len(parties)}, got {compute!r}")
    pins = {pid: spec.fingerprint for pid, spec in parties.items()}
    for pid, (cert, key) in own_files.items():
        parties[pid] = replace(parties[pid], tls=TlsFiles(cert=cert, key=key, pins=pins))
    return Cluster(parties=dict(sorted(parties.items())), timeout=timeout, path=path,
                   connect_timeout=connect_timeout, scheme=scheme, compute_parties=compute,
                   keys=key_folder, tables={k: data[k] for k in SERVICE_TABLES if k in data})


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _relative(target: Path, start: Path) -> str:
    try:
        return os.path.relpath(target, start)
    except ValueError:  # another drive on Windows
        return str(target.resolve())


def write_cluster(path: str | os.PathLike[str], n: int, *,
                  cert_dir: str | os.PathLike[str] | None = None,
                  fingerprints: Mapping[int, str] | Sequence[str] | None = None,
                  base_port: int | None = 7000, ports: Sequence[int] | None = None,
                  hosts: Mapping[int, str] | Sequence[str] | None = None,
                  timeout: float = 60.0, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                  scheme: str | None = None, compute_parties: int | None = None,
                  keys: str | None = None) -> Path:
    """Write a cluster file for `n` endpoints; ports are `ports[i]` or `base_port + i`, hosts
    default to 127.0.0.1. Returns the path written.

    The shared file of a deployment: `fingerprints[i]` is endpoint i's key fingerprint (each
    host made its own key); `keys` names the key folder each host keeps (optional). For a
    trial on one machine, `cert_dir` instead holds every endpoint's files (as
    `make_certificates` names them): the file pins their keys and names them with paths
    relative to itself."""
    path = Path(path)
    if n < 1:
        raise ConfigError(f"{path}: a cluster needs at least one party, got {n}")
    pins = _pins_for(path, n, cert_dir, fingerprints)
    if ports is None:
        if base_port is None:
            raise ConfigError(f"{path}: give base_port or ports")
        ports = [base_port + i for i in range(n)]
    if len(ports) != n:
        raise ConfigError(f"{path}: {len(ports)} ports for {n} parties")
    if hosts is None:
        host_of = dict.fromkeys(range(n), "127.0.0.1")
    elif isinstance(hosts, Mapping):
        host_of = {i: hosts.get(i, "127.0.0.1") for i in range(n)}
    else:
        if len(hosts) != n:
            raise ConfigError(f"{path}: {len(hosts)} hosts for {n} parties")
        host_of = dict(enumerate(hosts))
    folder = path.parent.resolve()
    lines = ["# sottovoce cluster file: one [[party]] per endpoint, each pinned by the "
             "fingerprint of its key",
             "[cluster]",
             f"timeout = {float(timeout)!r}",
             f"connect_timeout = {float(connect_timeout)!r}"]
    if keys is not None:
        lines.append(f"keys = {_toml_string(keys)}")
    if scheme is not None:
        lines.append(f"scheme = {_toml_string(scheme)}")
    if compute_parties is not None:
        lines.append(f"compute_parties = {int(compute_parties)}")
    for i in range(n):
        lines += ["",
                  "[[party]]",
                  f"id = {i}",
                  f"host = {_toml_string(host_of[i])}",
                  f"port = {int(ports[i])}",
                  f"fingerprint = {_toml_string(pins[i])}"]
        if cert_dir is not None:  # a single-machine trial: every key is here
            own = Path(cert_dir).resolve() / party_name(i)
            lines += [f"cert = {_toml_string(_relative(own.with_suffix('.pem'), folder))}",
                      f"key = {_toml_string(_relative(own.with_suffix('.key'), folder))}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _pins_for(path: Path, n: int, cert_dir: str | os.PathLike[str] | None,
              fingerprints: Mapping[int, str] | Sequence[str] | None) -> dict[int, str]:
    """Each endpoint's fingerprint, from `fingerprints` or from the certificates in
    `cert_dir`; a ConfigError naming the endpoint whose fingerprint is missing or malformed."""
    if (cert_dir is None) == (fingerprints is None):
        raise ConfigError(f"{path}: give either every endpoint's fingerprint or the folder "
                          "of a single-machine trial's keys")
    if cert_dir is not None:
        return {i: fingerprint(read_certificate(Path(cert_dir) / f"{party_name(i)}.pem"))
                for i in range(n)}
    given = dict(fingerprints) if isinstance(fingerprints, Mapping) else dict(
        enumerate(fingerprints))
    pins = {}
    for i in range(n):
        pin = normalize_fingerprint(given.get(i))
        if pin is None:
            raise ConfigError(f"{path}: endpoint {i} needs a fingerprint of 64 hex digits, "
                              f"got {given.get(i)!r}")
        pins[i] = pin
    if len(given) != n:
        raise ConfigError(f"{path}: {len(given)} fingerprints for {n} endpoints")
    return pins


def start_party(cluster: Cluster, party_id: int, config: RunConfig | None = None,
                listener: socket.socket | None = None) -> Runtime:
    """Connect `party_id` to every other party of `cluster` over mutual TLS; return its Runtime.

    `config` defaults to every endpoint being a compute party with the cluster's timeout; a
    configuration with a dealer needs one more endpoint (the dealer is the last id).
    `listener` is an already bound listening socket (tests bind port 0); by default the
    party listens on its `bind` address or host, at its port.
    """
    if party_id not in cluster.parties:
        raise ConfigError(f"{cluster.path}: no party {party_id} (the file lists "
                          f"{sorted(cluster.parties)})")
    if config is None:
        config = RunConfig(n_parties=cluster.n_endpoints, timeout=cluster.timeout)
    expected = config.n_parties + (1 if config.dealer else 0) + config.external
    if expected != cluster.n_endpoints:
        raise ConfigError(f"{cluster.path}: lists {cluster.n_endpoints} parties but the "
                          f"computation needs {expected}")
    spec = cluster.parties[party_id]
    tls = cluster.tls(party_id)  # before listening: a missing key needs no port
    if listener is None:
        listener = tcp.listen((spec.bind or spec.host, spec.port))
    try:
        channel = tcp.connect(party_id, cluster.addresses(), tls, listener=listener,
                              timeout=config.timeout, connect_timeout=cluster.connect_timeout,
                              names=config.endpoint_names(), keepalive=True)
    finally:
        listener.close()
    try:
        return make_runtime(channel, config)
    except BaseException:
        channel.close()
        raise
