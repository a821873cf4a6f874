"""A service's settings: the [service] table and the [[client]] keys of a cluster file.

    [service]
    window_ms = 20          # how long the first request of a batch waits for others
    max_batch = 16          # clips evaluated together at most (1..mpc.limits.MAX_BATCH)
    client_timeout = 10     # seconds a client may take to send its part of a batch
    pool = 2                # batches prepared ahead (offline phase done) per batch size
    # metrics_port = 9100   # Prometheus text format on 127.0.0.1:(metrics_port + role id)
    state = "state"         # where each role keeps its shares (a folder per role)

    [[client]]              # one per key allowed to use the service
    name = "alice"
    fingerprint = "..."     # as `sottovoce keys` prints it
    publish = false         # true: this key may publish models (the model owner)
    # cert = ..., key = ... # this client's own files, in its own copy of the file

Every [[party]] of the service (compute parties, then the dealer if the scheme has one) also
names a `service_port`, where clients reach it. A party may run more lanes (independent
processes, here or on other hosts, each with the party's key and a copy of its state
folder): lane k of every party forms a service of its own, and clients spread over them.

    [[lane]]
    party = 0
    lane = 1                # 1, 2, ...: every party needs the same lanes
    host = "10.0.0.5"
    port = 7010
    service_port = 7110 The file is read again whenever a client
connects, so a key added with `sottovoce clients add` is allowed without a restart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mpc.cluster import Cluster, PartySpec, load_cluster
from mpc.errors import ConfigError
from mpc.limits import MAX_BATCH
from mpc.net.certs import TlsFiles, normalize_fingerprint
from protocols import registry
from protocols.registry import Scheme

#: Front-door ids of clients: the i-th [[client]] is CLIENT_BASE + i (servers are 0..n).
CLIENT_BASE = 1000
_SERVICE_KEYS = {"window_ms", "max_batch", "client_timeout", "state", "pool", "metrics_port"}
_CLIENT_KEYS = {"name", "fingerprint", "publish", "cert", "key"}
_LANE_KEYS = {"party", "lane", "host", "port", "service_port", "bind"}
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class ClientKey:
    """One key allowed to use the service."""

    name: str
    fingerprint: str
    publish: bool
    endpoint: int  # its front-door id
    tls: TlsFiles | None = None  # this client's own files, when this copy names them


@dataclass(frozen=True)
class ServiceConfig:
    """A validated service cluster file."""

    cluster: Cluster
    scheme: Scheme
    compute: int
    window: float  # seconds
    max_batch: int
    client_timeout: float
    pool: int  # prepared batches kept per batch size (0: preprocess at batch time)
    metrics_port: int | None  # Prometheus text on 127.0.0.1:port+role (None: off)
    state: Path
    clients: tuple[ClientKey, ...]
    lanes: dict[int, dict[int, PartySpec]] = field(default_factory=dict)  # lane -> party
    lane: int = 0  # which lane this configuration is of

    @property
    def lane_count(self) -> int:
        return 1 + len(self.lanes)

    def for_lane(self, lane: int) -> ServiceConfig:
        """The same service as lane `lane` runs it: its parties' addresses."""
        if lane == self.lane:
            return self
        if lane not in self.lanes:
            raise ConfigError(f"{self.cluster.path}: no lane {lane} (lanes 0.."
                              f"{self.lane_count - 1})")
        parties = {p: replace(spec, host=self.lanes[lane][p].host,
                              port=self.lanes[lane][p].port, bind=self.lanes[lane][p].bind,
                              service_port=self.lanes[lane][p].service_port)
                   for p, spec in self.cluster.parties.items()}
        return replace(self, cluster=replace(self.cluster, parties=parties), lane=lane)

    @property
    def dealer(self) -> int | None:
        return self.compute if self.scheme.dealer else None

    @property
    def servers(self) -> tuple[int, ...]:
        """The endpoints a client talks to: every compute party, then the dealer."""
        return tuple(range(self.compute + (1 if self.scheme.dealer else 0)))

    def name_of(self, endpoint: int) -> str:
        if endpoint == self.dealer:
            return "dealer"
        return f"party {endpoint}"

    def address(self, endpoint: int) -> tuple[str, int]:
        spec = self.cluster.parties[endpoint]
        return (spec.host, spec.service_port or 0)

    def client(self, name: str) -> ClientKey:
        for key in self.clients:
            if key.name == name:
                return key
        raise ConfigError(f"{self.cluster.path}: no [[client]] named {name!r} (the file lists "
                          f"{', '.join(k.name for k in self.clients) or 'none'})")

    def state_of(self, endpoint: int) -> Path:
        return self.state / ("dealer" if endpoint == self.dealer else f"party-{endpoint}")


def _number(path: Path, table: dict, key: str, default: float, low: float, high: float
            ) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"{path}: [service] {key} must be a number in {low:g}..{high:g}, "
                          f"got {value!r}")
    return float(value)


def _clients(path: Path, entries: Any) -> tuple[ClientKey, ...]:
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: client must be a list of tables ([[client]])")
    keys: list[ClientKey] = []
    for index, entry in enumerate(entries):
        where = f"[[client]] number {index + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: {where} is not a table")
        unknown = set(entry) - _CLIENT_KEYS
        if unknown:
            raise ConfigError(f"{path}: {where} has unknown keys {sorted(unknown)}")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"{path}: {where} name must be 1-64 letters, digits, '_', '.' "
                              f"or '-', got {name!r}")
        pin = normalize_fingerprint(entry.get("fingerprint"))
        if pin is None:
            raise ConfigError(f"{path}: client {name} fingerprint must be 64 hex digits, got "
                              f"{entry.get('fingerprint')!r}")
        if any(k.name == name for k in keys):
            raise ConfigError(f"{path}: client name {name!r} appears more than once")
        if any(k.fingerprint == pin for k in keys):
            raise ConfigError(f"{path}: clients share the key {pin[:12]}...; every client "
                              "needs its own key")
        publish = entry.get("publish", False)
        if not isinstance(publish, bool):
            raise ConfigError(f"{path}: client {name} publish must be true or false")
        if ("cert" in entry) != ("key" in entry):
            raise ConfigError(f"{path}: client {name} needs both cert and key, or neither")
        tls = None
        if "cert" in entry:
            files = [Path(entry[k]) if Path(entry[k]).is_absolute() else path.parent / entry[k]
                     for k in ("cert", "key")]
            tls = TlsFiles(cert=files[0], key=files[1], pins={})
        keys.append(ClientKey(name, pin, publish, CLIENT_BASE + index, tls))
    return tuple(keys)


def _lanes(cluster: Cluster, entries: Any) -> dict[int, dict[int, PartySpec]]:
    path = cluster.path
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: lane must be a list of tables ([[lane]])")
    lanes: dict[int, dict[int, PartySpec]] = {}
    for index, entry in enumerate(entries):
        where = f"[[lane]] number {index + 1}"
        if not isinstance(entry, dict) or set(entry) - _LANE_KEYS:
            raise ConfigError(f"{path}: {where} must be a table of {sorted(_LANE_KEYS)}")
        party, lane = entry.get("party"), entry.get("lane")
        if party not in cluster.parties or isinstance(party, bool):
            raise ConfigError(f"{path}: {where} party must be a listed party id, got {party!r}")
        if isinstance(lane, bool) or not isinstance(lane, int) or lane < 1:
            raise ConfigError(f"{path}: {where} lane must be an integer >= 1, got {lane!r}")
        ports = [entry.get(k) for k in ("port", "service_port")]
        host = entry.get("host", cluster.parties[party].host)
        if not isinstance(host, str) or any(isinstance(v, bool) or not isinstance(v, int)
                                            or not 1 <= v <= 65535 for v in ports):
            raise ConfigError(f"{path}: {where} needs host, port and service_port")
        if party in lanes.setdefault(lane, {}):
            raise ConfigError(f"{path}: party {party} has lane {lane} twice")
        lanes[lane][party] = PartySpec(host=host, port=ports[0],
                                       fingerprint=cluster.parties[party].fingerprint,
                                       bind=entry.get("bind"), service_port=ports[1])
    for lane in sorted(lanes):
        missing = [p for p in cluster.parties if p not in lanes[lane]]
        if missing:
            raise ConfigError(f"{path}: lane {lane} has no [[lane]] entry for party "
                              f"{missing[0]}: every party runs every lane")
    if sorted(lanes) != list(range(1, len(lanes) + 1)):
        raise ConfigError(f"{path}: lanes must be numbered 1, 2, ... without gaps, got "
                          f"{sorted(lanes)}")
    return lanes


def load_service(path: str | Path) -> ServiceConfig:
    """Read a service cluster file; a ConfigError names the file and the problem."""
    cluster = load_cluster(path)
    if cluster.scheme not in registry.SCHEMES:
        raise ConfigError(f"{cluster.path}: [cluster] scheme must be one of "
                          f"{sorted(registry.SCHEMES)}, got {cluster.scheme!r}")
    scheme = registry.SCHEMES[cluster.scheme]
    compute = scheme.party_count(cluster.compute_parties)
    servers = compute + (1 if scheme.dealer else 0)
    if cluster.n_endpoints != servers:
        raise ConfigError(f"{cluster.path}: a {scheme.name} service with {compute} compute "
                          f"parties lists {servers} [[party]] entries (compute parties"
                          f"{', then the dealer' if scheme.dealer else ''}); the file lists "
                          f"{cluster.n_endpoints}")
    missing = [p for p, spec in cluster.parties.items() if spec.service_port is None]
    if missing:
        raise ConfigError(f"{cluster.path}: party {missing[0]} has no service_port (where "
                          "clients reach it)")
    table = cluster.tables.get("service", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{cluster.path}: service must be a table ([service])")
    unknown = set(table) - _SERVICE_KEYS
    if unknown:
        raise ConfigError(f"{cluster.path}: unknown [service] keys {sorted(unknown)}")
    state = table.get("state", "state")
    if not isinstance(state, str) or not state:
        raise ConfigError(f"{cluster.path}: [service] state must be a folder name")
    state_path = Path(state).expanduser()
    if not state_path.is_absolute():
        state_path = cluster.path.parent / state_path
    return ServiceConfig(
        cluster=cluster, scheme=scheme, compute=compute,
        window=_number(cluster.path, table, "window_ms", 20, 0, 10_000) / 1000,
        max_batch=int(_number(cluster.path, table, "max_batch", 16, 1, MAX_BATCH)),
        client_timeout=_number(cluster.path, table, "client_timeout", 10, 0.1, 3600),
        pool=int(_number(cluster.path, table, "pool", 2, 0, 64)),
        metrics_port=(None if "metrics_port" not in table
                      else int(_number(cluster.path, table, "metrics_port", 0, 1, 65000))),
        state=state_path, clients=_clients(cluster.path, cluster.tables.get("client")),
        lanes=_lanes(cluster, cluster.tables.get("lane")))
