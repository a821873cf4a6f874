"""Cluster files: which parties take part, where they listen, and their TLS material.

A cluster file is TOML, one `[cluster]` table and one `[[party]]` table per endpoint:

    [cluster]
    timeout = 60                 # seconds a receive may wait (optional, default 60)
    connect_timeout = 30         # seconds to reach every peer at start-up (optional)
    ca = "certs/ca.pem"          # paths are relative to the TOML file

    [[party]]
    id = 0
    host = "127.0.0.1"
    port = 7000
    cert = "certs/party-0.pem"
    key = "certs/party-0.key"
    # bind = "0.0.0.0"           # optional: listen here instead of host

Every problem is a `ConfigError` naming the file and what is wrong with it.
`start_party` connects one party by TCP with mutual TLS and returns its `Runtime`: this is
how one party is started on its own host from a shared cluster file.
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpc.errors import ConfigError
from mpc.net import tcp
from mpc.net.certs import TlsFiles, party_name
from mpc.runtime import RunConfig, Runtime, make_runtime

DEFAULT_CONNECT_TIMEOUT = 30.0
_CLUSTER_KEYS = {"timeout", "connect_timeout", "ca", "scheme", "compute_parties"}
_PARTY_KEYS = {"id", "host", "port", "cert", "key", "bind"}


@dataclass(frozen=True)
class PartySpec:
    """Where one party listens and which certificate it presents."""

    host: str
    port: int
    tls: TlsFiles
    bind: str | None = None  # listening address, when it differs from `host`

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

    @property
    def n_endpoints(self) -> int:
        return len(self.parties)

    def addresses(self) -> dict[int, tuple[str, int]]:
        return {pid: spec.address for pid, spec in self.parties.items()}


def _positive_number(path: Path, table: Mapping[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{path}: [cluster] {key} must be a positive number of seconds, "
                          f"got {value!r}")
    return float(value)


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

    unknown = set(data) - {"cluster", "party"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level entries {sorted(unknown)}; "
                          "expected [cluster] and [[party]]")
    table = data.get("cluster", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: cluster must be a table ([cluster])")
    unknown = set(table) - _CLUSTER_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown [cluster] keys {sorted(unknown)}")
    timeout = _positive_number(path, table, "timeout", 60.0)
    connect_timeout = _positive_number(path, table, "connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    if "ca" not in table:
        raise ConfigError(f"{path}: [cluster] has no ca (the project CA certificate)")
    ca = _file(path, "[cluster]", "ca", table["ca"])

    entries = data.get("party")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: no parties; add one [[party]] table per party")
    parties: dict[int, PartySpec] = {}
    seen_addresses: dict[tuple[str, int], int] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: party entry {index} is not a table")
        where = f"[[party]] number {index + 1}"
        missing = [k for k in ("id", "host", "port", "cert", "key") if k not in entry]
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
        tls = TlsFiles(ca=ca, cert=_file(path, where, "cert", entry["cert"]),
                       key=_file(path, where, "key", entry["key"]))
        parties[pid] = PartySpec(host=host, port=port, tls=tls, bind=bind)

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
    return Cluster(parties=dict(sorted(parties.items())), timeout=timeout, path=path,
                   connect_timeout=connect_timeout, scheme=scheme, compute_parties=compute)


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _relative(target: Path, start: Path) -> str:
    try:
        return os.path.relpath(target, start)
    except ValueError:  # another drive on Windows
        return str(target.resolve())


def write_cluster(path: str | os.PathLike[str], n: int, *, cert_dir: str | os.PathLike[str],
                  base_port: int | None = 7000, ports: Sequence[int] | None = None,
                  hosts: Mapping[int, str] | Sequence[str] | None = None,
                  timeout: float = 60.0, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                  scheme: str | None = None, compute_parties: int | None = None) -> Path:
    """Write a cluster file for `n` endpoints whose certificates (as `make_certificates`
    names them) are in `cert_dir`; ports are `ports[i]` or `base_port + i`, hosts default to
    127.0.0.1. Paths in the file are relative to it. Returns the path written."""
    path = Path(path)
    if n < 1:
        raise ConfigError(f"{path}: a cluster needs at least one party, got {n}")
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
    certs = Path(cert_dir).resolve()
    lines = ["# sottovoce cluster file: one [[party]] per endpoint; paths relative to this file",
             "[cluster]",
             f"timeout = {float(timeout)!r}",
             f"connect_timeout = {float(connect_timeout)!r}",
             f"ca = {_toml_string(_relative(certs / 'ca.pem', folder))}"]
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
                  f"cert = {_toml_string(_relative(certs / f'{party_name(i)}.pem', folder))}",
                  f"key = {_toml_string(_relative(certs / f'{party_name(i)}.key', folder))}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


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
    if listener is None:
        listener = tcp.listen((spec.bind or spec.host, spec.port))
    try:
        channel = tcp.connect(party_id, cluster.addresses(), spec.tls, listener=listener,
                              timeout=config.timeout, connect_timeout=cluster.connect_timeout,
                              names=config.endpoint_names())
    finally:
        listener.close()
    try:
        return make_runtime(channel, config)
    except BaseException:
        channel.close()
        raise
