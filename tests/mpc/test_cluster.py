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
from mpc.net.certs import make_certificates, make_identity
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


@pytest.mark.timeout(60)
def test_a_cluster_of_keys_made_on_each_host_works_on_loopback(tmp_path):
    """Three "hosts" (folders) each make their own key; one shared file collects the
    fingerprints (and nothing secret); each host runs its endpoint from its own copy of that
    file and its own key folder; the endpoints connect, exchange and agree on pair keys.
    A host holding another endpoint's key only (no key of its own) cannot start."""
    n = 3
    listeners, addresses = loopback_listeners(n)
    made = {i: make_identity(tmp_path / f"host-{i}" / "keys", i, ["127.0.0.1"])
            for i in range(n)}
    shared = cluster.write_cluster(tmp_path / "shared" / "cluster.toml", n,
                                   fingerprints=[made[i].fingerprint for i in range(n)],
                                   ports=[addresses[i][1] for i in range(n)], timeout=10,
                                   connect_timeout=10)
    text = shared.read_text()
    assert "PRIVATE" not in text and "cert" not in text and "key =" not in text
    assert all(made[i].fingerprint in text for i in range(n))
    specs = {}
    for i in range(n):
        copy = tmp_path / f"host-{i}" / "cluster.toml"
        copy.write_text(text)
        specs[i] = cluster.load_cluster(copy)
        assert specs[i].tls(i).key == made[i].key and specs[i].tls(i).pins == specs[0].pins()

    def party(pid: int):
        rt = cluster.start_party(specs[pid], pid, listener=listeners[pid])
        try:
            got = rt.channel.exchange({p: np.full(2, 10 * pid + p, dtype=np.uint64)
                                       for p in rt.channel.peers})
            draws = {p: rt.pair_prg(p, "t").ring_elements(2) for p in rt.channel.peers}
            return {p: a.tolist() for p, a in got.items()}, draws
        finally:
            rt.channel.close()

    results, errors = in_threads({p: functools.partial(party, p) for p in range(n)})
    assert not errors, errors
    for pid in range(n):
        got, draws = results[pid]
        assert got == {p: [10 * p + pid] * 2 for p in range(n) if p != pid}
        for p in draws:
            assert np.array_equal(draws[p], results[p][1][pid])
    # host 0 has no key of endpoint 1: running endpoint 1 there is refused before any
    # connection, naming the files it looked for and how to make them
    with pytest.raises(ConfigError, match=r"no key of endpoint 1 on this host: .*host-0/keys/"
                       r"party-1\.key .*sottovoce keys"):
        cluster.start_party(specs[0], 1)


def test_a_shared_cluster_file_names_its_key_folder_and_pins_are_checked(tmp_path):
    """[cluster] keys names where each host keeps its keys; a malformed or duplicated
    fingerprint, a cert without its key, or a CA from an old file are ConfigErrors."""
    made = [make_identity(tmp_path / "elsewhere", i) for i in range(2)]
    path = cluster.write_cluster(tmp_path / "c.toml", 2, fingerprints=[m.fingerprint
                                                                      for m in made],
                                 base_port=9200, keys=str(tmp_path / "elsewhere"))
    loaded = cluster.load_cluster(path)
    assert loaded.tls(1).cert == made[1].cert and loaded.tls(1).pins == {
        0: made[0].fingerprint, 1: made[1].fingerprint}
    text = path.read_text()
    for bad, message in [
        (text.replace(made[1].fingerprint, made[0].fingerprint), "same fingerprint"),
        (text.replace(made[1].fingerprint, made[1].fingerprint[:-1]), "64 hex digits"),
        (text.replace(f'"{made[1].fingerprint}"', "7"), "64 hex digits"),
        (text.replace("port = 9201", f'port = 9201\ncert = "{made[1].cert}"'), "lacks key"),
        ("[cluster]\nca = \"ca.pem\"\n" + text.split("[cluster]", 1)[1], "no CA is trusted"),
    ]:
        path.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            cluster.load_cluster(path)
    # fingerprints may be written upper case or with colons, as other tools print them
    colons = ":".join(made[1].fingerprint[i:i + 2].upper() for i in range(0, 64, 2))
    path.write_text(text.replace(made[1].fingerprint, colons))
    assert cluster.load_cluster(path).parties[1].fingerprint == made[1].fingerprint
