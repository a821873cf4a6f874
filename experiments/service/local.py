"""A whole service on this machine: every role its own process, on loopback ports.

For trying the service, for its tests and benchmarks: `write_local_service` makes every key
and the cluster file in one folder (a real deployment makes each key on its own host, see
README "A service"), `LocalService` starts the roles and stops them with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from experiments.service.client import make_client_key, status
from mpc.errors import ConfigError
from mpc.net.certs import make_certificates
from mpc.net.tcp import free_local_ports
from protocols import registry


def write_local_service(directory: str | Path, scheme: str, clients: tuple[str, ...] = ("alice",),
                        owner: str = "bob", window_ms: float = 20, max_batch: int = 16,
                        timeout: float = 30, client_timeout: float = 10, lanes: int = 1,
                        pool: int = 2) -> Path:
    """Keys and a cluster file for a service whose roles all run here (in `lanes` lanes);
    its path."""
    directory = Path(directory)
    spec = registry.get(scheme)
    servers = spec.endpoints(spec.parties)
    make_certificates(directory / "keys", servers)
    ports = free_local_ports(2 * servers * lanes)
    lines = ["[cluster]", f"scheme = {json.dumps(spec.name)}",
             f"compute_parties = {spec.parties}", f"timeout = {float(timeout)}",
             "connect_timeout = 10.0", "", "[service]", f"window_ms = {float(window_ms)}",
             f"max_batch = {int(max_batch)}", f"client_timeout = {float(client_timeout)}",
             f"pool = {int(pool)}", 'state = "state"']
    for p in range(servers):
        fp = (directory / "keys" / f"party-{p}.fingerprint").read_text().strip()
        lines += ["", "[[party]]", f"id = {p}", 'host = "127.0.0.1"', f"port = {ports[2 * p]}",
                  f"service_port = {ports[2 * p + 1]}", f'fingerprint = "{fp}"']
    for lane in range(1, lanes):
        for p in range(servers):
            k = 2 * (lane * servers + p)
            lines += ["", "[[lane]]", f"party = {p}", f"lane = {lane}", 'host = "127.0.0.1"',
                      f"port = {ports[k]}", f"service_port = {ports[k + 1]}"]
    for name in (*clients, owner):
        fp = make_client_key(directory / "keys", name)
        lines += ["", "[[client]]", f'name = "{name}"', f'fingerprint = "{fp}"',
                  f"publish = {'true' if name == owner else 'false'}"]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class LocalService:
    """Every role of the service in `cluster` as a process (`sottovoce serve`), logs in
    `logs/` next to the file."""

    def __init__(self, cluster: str | Path) -> None:
        from experiments.service.config import load_service

        self.cluster = Path(cluster)
        self.config = load_service(self.cluster)
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs = self.cluster.parent / "logs"

    def roles(self) -> list[str]:
        """Every process's name: "0", "1", ..., "dealer"; "0@1" is party 0's lane 1."""
        names = [("dealer" if p == self.config.dealer else str(p)) for p in self.config.servers]
        return [n if lane == 0 else f"{n}@{lane}" for lane in range(self.config.lane_count)
                for n in names]

    def start(self, role: str | None = None) -> None:
        """Start every role (or one, by its name in `roles`)."""
        self.logs.mkdir(exist_ok=True)
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
        for name in ([role] if role else self.roles()):
            endpoint, _, lane = name.partition("@")
            log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "experiments.cli", "serve", "--cluster",
                 str(self.cluster), "--role", endpoint, "--lane", lane or "0"], stdout=log,
                stderr=subprocess.STDOUT, env=env)
            log.close()

    def wait_ready(self, timeout: float = 60.0, version: str | None = None) -> dict:
        """Poll every role's status until all are ready (and serve `version`)."""
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise ConfigError(f"role {name} exited with {proc.returncode}: "
                                      f"{self.log(name)[-2000:]}")
            last = status(self.cluster)
            if all(s.get("ready") and (version is None or s.get("version") == version)
                   for s in last.values()):
                return last
            time.sleep(0.2)
        raise TimeoutError(f"the service was not ready within {timeout:g} s: {last}")

    def log(self, role: str) -> str:
        path = self.logs / f"{role}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def kill(self, role: str) -> None:
        proc = self.processes.pop(role)
        proc.kill()
        proc.wait()

    def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM to every role; their exit codes."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.processes.items():
            try:
                codes[name] = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        self.processes.clear()
        return codes

    def __enter__(self) -> LocalService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
