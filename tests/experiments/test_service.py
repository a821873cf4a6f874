"""The service (experiments/service): every role a separate process on loopback, clients
through the real front doors (TLS, listed keys), labels against the float reference."""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
import urllib.request

import pytest
from conftest import bundled_clips, loaded, plaintext_labels

from experiments import cli
from experiments.service import client
from experiments.service.config import load_service
from experiments.service.local import LocalService, write_local_service
from experiments.service.server import Server
from mpc.errors import AuthenticationError, CheatingDetected, SottovoceError
from mpc.net.tcp import free_local_ports
from protocols.testing.tamper import Tamper, install


def _publish(path, version: str = "v1") -> None:
    model = loaded()
    client.publish(path, model.secure, model.feature_config.to_dict(), version)


def _concurrently(jobs: dict[str, tuple]) -> dict[str, object]:
    """Run client.classify for each job at once; its labels or the error it raised."""
    results: dict[str, object] = {}

    def run(name: str, path, clips, lane) -> None:
        try:
            results[name] = client.classify(path, clips, client=name, lane=lane)
        except Exception as exc:  # reported to the test
            results[name] = exc

    threads = [threading.Thread(target=run, args=(name, *job)) for name, job in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def _logged(service: LocalService, role: str, text: str, timeout: float = 10.0) -> bool:
    """Whether `role` logs `text` (a regular expression) within `timeout` (it logs after
    answering the client)."""
    deadline = time.monotonic() + timeout
    while not re.search(text, service.log(role)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stall(path, name: str) -> ssl.SSLSocket:
    """A client that says hello, gets the model's description and then says nothing."""
    from experiments.service import messages

    config = load_service(path)
    key = config.client(name)
    sock = client._connect_one(config, key, client.client_files(config, key), 0)
    messages.send(sock, {"kind": "classify", "rid": "stalled"}, 0)
    messages.receive(sock, 0, "party 0")
    return sock


def test_a_service_serves_clients_at_once_and_resumes_after_a_party_restarts(tmp_path):
    clips = bundled_clips(3)
    expected = plaintext_labels(clips)
    path = write_local_service(tmp_path, "replicated", clients=("alice", "carol"),
                               window_ms=400, timeout=20, client_timeout=3, lanes=2)
    text = path.read_text().replace('state = "state"', 'state = "state"\nmetrics_port = 0')
    (port,) = free_local_ports(1)
    path.write_text(text.replace("metrics_port = 0", f"metrics_port = {port}"))
    service = LocalService(path)
    service.start()
    try:
        service.wait_ready(60)
        with pytest.raises(SottovoceError, match="no model has been published"):
            client.classify(path, clips[:1], client="alice", lane=0)
        _publish(path)
        # two clients at once, within one batching window: one batch, each its own labels
        got = _concurrently({"alice": (path, clips[:2], 0), "carol": (path, clips[2:], 0)})
        assert got == {"alice": expected[:2], "carol": expected[2:]}
        assert _logged(service, "0", r"batch \d+ of 3 clips")
        # lane 1 of every party serves the model lane 0 stored, at the same time as lane 0
        got = _concurrently({"alice": (path, clips[:1], 1), "carol": (path, clips[1:], 0)})
        assert got == {"alice": expected[:1], "carol": expected[1:]}
        assert _logged(service, "0@1", "done, batch")
        # while idle, batches are prepared ahead; the pool shows in the status and metrics
        deadline = time.monotonic() + 10
        while client.status(path)["party 0"]["preprocessing_pool"] < 2:
            assert time.monotonic() < deadline, "no batch was prepared while idle"
            time.sleep(0.2)
        assert client.classify(path, clips[:1], client="alice", lane=0) == expected[:1]
        assert _logged(service, "0", "prepared ahead")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert 'sottovoce_requests_served_total{role="party 0",lane="0"} 4' in metrics
        # a client that sends garbage, and one that stalls, disturb nobody
        config = load_service(path)
        with socket.create_connection(config.address(1)) as raw:
            raw.sendall(b"\x00garbage" * 64)
        stalled = _stall(path, "carol")
        assert client.classify(path, clips[:1], client="alice", lane=0) == expected[:1]
        stalled.close()
        # a key the service does not list is refused; an operator adds it, without a restart
        fingerprint = client.make_client_key(tmp_path / "keys", "dave")
        own_copy = tmp_path / "dave.toml"  # dave's copy of the file lists his key already
        own_copy.write_text(path.read_text() + f'\n[[client]]\nname = "dave"\n'
                            f'fingerprint = "{fingerprint}"\n')
        with pytest.raises(AuthenticationError, match="unknown key"):
            client.classify(own_copy, clips[:1], client="dave", lane=0)
        assert cli.main(["clients", "add", "--cluster", str(path), "dave", fingerprint]) == 0
        time.sleep(1.5)  # the roles read the file again within a second
        assert client.classify(path, clips[:1], client="dave", lane=0) == expected[:1]
        # a role that dies fails the requests it was needed for, with its name, and hangs
        # nothing; restarted, it serves the published model from its own disk
        service.kill("2")
        start = time.monotonic()
        with pytest.raises(SottovoceError, match="party 2"):
            client.classify(path, clips[:1], client="alice", lane=0)
        assert time.monotonic() - start < 30
        service.start("2")
        status = service.wait_ready(60, version="v1")
        assert all(s["version"] == "v1" for s in status.values())
        assert client.classify(path, clips, client="carol", lane=0) == expected
        assert "published" not in service.log("2").split("ready")[-1]
    finally:
        codes = service.stop()
    assert set(codes.values()) == {0}  # SIGTERM: a clean stop
    assert (tmp_path / "state" / "party-1" / "model-v1.npz").stat().st_mode & 0o077 == 0


class _Deviating(Server):
    """Party 1 of a replicated_mac service, altering one message of its first batch."""

    def _batch_runtime(self, runtime, seq, mac_keys):
        if seq == 1:  # batch 0 is the publish
            install(runtime.channel, Tamper(party=1, message_index=40, peer=0))
        return super()._batch_runtime(runtime, seq, mac_keys)


def test_a_deviation_during_service_aborts_the_batch_with_no_output(tmp_path):
    clips = bundled_clips(1)
    path = write_local_service(tmp_path, "replicated_mac", window_ms=0, timeout=20)
    service = LocalService(path)
    service.start("0")
    service.start("2")
    deviating = _Deviating(load_service(path), 1)
    thread = threading.Thread(target=deviating.run, daemon=True)
    thread.start()
    try:
        service.wait_ready(60)
        _publish(path)
        with pytest.raises(CheatingDetected):
            client.classify(path, clips, client="alice")
        assert _logged(service, "0", "MAC check before the output to the client alice failed")
        assert "done, batch" not in service.log("0")
    finally:
        deviating.stopping.set()
        service.stop()
        thread.join(30)
