"""The multi-host steps of the README, on loopback: every role makes its own key in its own
folder (its "host"), one shared file collects the fingerprints, and every role runs as a
separate `sottovoce` process from its own copy of that file and its own key."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from experiments.modelfile import BUNDLED_CLIPS, BUNDLED_MODEL, load_model, plaintext_logits

CLI = [sys.executable, "-m", "experiments.cli"]
CLIPS = sorted(BUNDLED_CLIPS.glob("*.wav"))[:2]


def _free_base_port(count: int) -> int:
    """A port p such that p .. p + count - 1 are free on loopback right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free run of ports")


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(300)
def test_roles_with_keys_made_on_their_own_hosts_classify_like_plaintext(tmp_path):
    roles = ["party 0", "party 1", "party 2", "client", "model owner"]  # replicated's ids
    hosts = [tmp_path / f"host-{i}" for i in range(len(roles))]
    for i, host in enumerate(hosts):  # 1. each host makes its own key
        done = _cli("keys", str(host / "keys"), "--id", str(i), "--host", "127.0.0.1")
        assert done.returncode == 0, done.stderr
    # 2. one host collects the fingerprints (public) into the shared cluster file
    prints = ",".join(str(host / "keys" / f"party-{i}.fingerprint")
                      for i, host in enumerate(hosts))
    done = _cli("cluster", str(tmp_path / "shared"), "--scheme", "replicated", "--fingerprints",
                prints, "--base-port", str(_free_base_port(len(roles))), "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert "TRIAL ON THIS MACHINE ONLY" not in done.stdout
    shared = tmp_path / "shared" / "cluster.toml"
    assert "PRIVATE" not in shared.read_text() and not (tmp_path / "shared" / "keys").exists()
    # 3. every host gets the file; 4. each role runs from its host's folder
    for host in hosts:
        shutil.copy(shared, host / "cluster.toml")
    config = [str(host / "cluster.toml") for host in hosts]
    logs = [(tmp_path / f"role-{i}.log").open("w") for i in range(len(roles))]
    procs = [subprocess.Popen([*CLI, "party", "--config", config[i], "--id", str(i)],
                              stdout=logs[i], stderr=subprocess.STDOUT) for i in range(3)]
    procs.append(subprocess.Popen([*CLI, "model-owner", "--config", config[4], "--model",
                                   str(BUNDLED_MODEL)], stdout=logs[4],
                                  stderr=subprocess.STDOUT))
    try:
        client = _cli("client", "--config", config[3], "--json", *map(str, CLIPS), timeout=240)
        codes = [proc.wait(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    assert client.returncode == 0, client.stderr
    assert codes == [0, 0, 0, 0], [(tmp_path / f"role-{i}.log").read_text() for i in range(5)]
    labels = [c["label"] for c in json.loads(client.stdout)["clips"]]
    loaded = load_model(BUNDLED_MODEL)
    import audio

    feats = np.stack([audio.features(audio.load(c, sample_rate=loaded.feature_config.sample_rate),
                                     loaded.feature_config) for c in CLIPS])
    plain = plaintext_logits(loaded, feats).argmax(axis=1)
    assert labels == [loaded.labels[i] for i in plain]


@pytest.mark.timeout(120)
def test_a_role_run_with_another_key_than_the_pinned_one_is_told_so(tmp_path):
    """A host whose key is not the one the shared file pins for its role (it made a new key
    after the file was written) is stopped before it connects, with the reason."""
    hosts = [tmp_path / f"host-{i}" for i in range(5)]
    for i, host in enumerate(hosts):
        assert _cli("keys", str(host / "keys"), "--id", str(i)).returncode == 0
    prints = ",".join(str(h / "keys" / f"party-{i}.fingerprint") for i, h in enumerate(hosts))
    done = _cli("cluster", str(hosts[3]), "--scheme", "replicated", "--fingerprints", prints,
                "--base-port", str(_free_base_port(5)))
    assert done.returncode == 0, done.stderr
    replaced = _cli("keys", str(hosts[3] / "keys"), "--id", "3", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    client = _cli("client", "--config", str(hosts[3] / "cluster.toml"), str(CLIPS[0]))
    assert client.returncode == 2
    assert "is not the key pinned for the client" in client.stderr, client.stderr
    assert "Traceback" not in client.stderr
