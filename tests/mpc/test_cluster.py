"""Cluster files: written and read back, every invalid file a ConfigError naming it, and
parties started from one exchange over TCP.

Everything runs on loopback with ports the operating system chooses and files in tmp_path.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from conftest import LOOPBACK, in_threads, loopback_listeners

from mpc import cluster
from mpc.errors import ConfigError
from mpc.net.certs import make_certificates
from mpc.runtime import RunConfig


def _cluster_text(cert_dir: Path, parties: list[dict], head: str | None = None) -> str:
    lines = [head if head is not None else "[cluster]\ntimeout = 5"]
    for party in parties:
        lines.append("[[party]]")
        lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"'
                  for k, v in party.items()]
    return "\n".join(lines) + "\n"


def _party(cert_dir: Path, pid: int, port: int | None = None, **extra) -> dict:
    entry = {"id": pid, "host": LOOPBACK, "port": port or 7000 + pid,
             "fingerprint": (cert_dir / f"party-{pid}.fingerprint").read_text().strip(),
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
    # the trust anchor of party 1 is the fingerprint of its own key, not a CA
    assert loaded.parties[1].fingerprint == (cert_dir / "party-1.fingerprint").read_text().strip()
    assert loaded.tls(0).pins == loaded.pins() and len(set(loaded.pins().values())) == 3
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
    ("no_fingerprint", "lacks fingerprint"),
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
        elif case == "no_fingerprint":
            del parties[0]["fingerprint"]
        elif case == "no_parties":
            parties = []
        elif case == "lacks_host":
            del parties[0]["host"]
        elif case == "bad_timeout":
            head = "[cluster]\ntimeout = -1"
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
    listeners, addresses = loopback_listeners(n)
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

    results, errors = in_threads({p: functools.partial(party, p) for p in range(n)})
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
