"""Fault injection over real processes and TCP with mutual TLS (issue 10, part 1).

A `Fault` is a `protocols.run` hook (like `protocols.testing.tamper.Tamper`): installed in
one party's
runtime, it wraps that party's channel and, at its k-th message of a chosen stage, kills the
process (`os._exit`), stops it for good (SIGSTOP: it never reads, writes or sends a
keep-alive again), writes bytes that are not a frame, writes a frame whose header declares a
payload above the limit, or writes half a frame and resets the connection; or it delays every
message (a slow link), or keeps the party busy once for longer than the timeout (alive: its
keep-alives flow, so the run must succeed). The scheme's code runs unchanged.

For every fault the launcher must raise a `SottovoceError` within the configured timeout of
the fault (the faulty party writes the wall-clock time it fired to a marker file), naming the
failed party and, through the other parties' errors kept as notes, the step (channel stage)
where they noticed; no party process is left running; and the client never got a label
(the program writes every label a party obtains to a sink folder, so the slow-link run
doubles as the positive control of that check). The last test does the same through the
command-line roles of a deployment (`sottovoce party/client/model-owner`): every role exits
non-zero, and the client's `--json` output is empty.

Timeouts are 3 s; the whole file takes about a minute on two busy cores.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_cnn

from experiments.modelfile import BUNDLED_CLIPS, BUNDLED_MODEL
from mpc import launch
from mpc.errors import PartyFailed, PeerLost, ProtocolError, SottovoceError
from mpc.net import framing
from mpc.net.channel import Channel
from mpc.runtime import Runtime
from nn.inference import classify
from nn.layers import MODEL_OWNER
from nn.model import CLIENT, PrivateInference, SecureModel
from protocols.clear import Planner
from protocols.registry import SCHEMES
from protocols.run import run

TIMEOUT = 3.0  # seconds a party waits for a message
SEED = int(os.environ.get("SOTTOVOCE_FAULT_SEED", "10"))  # picks the online message to hit
TEARDOWN = 5.0  # seconds for every party process to exit once the launcher has decided
CLI = [sys.executable, "-m", "experiments.cli"]


# -- the faulty party ------------------------------------------------------------------------
@dataclass
class Fault:
    """Make `party` misbehave at its message `index` (0-based) sent during `stage` (every
    stage if None). kinds: kill, stall, garbage, bad_header, reset, slow (every message of
    the stage is delayed by `delay` seconds and nothing else changes), busy (the party
    sleeps `delay` seconds once, before message `index`, then goes on)."""

    kind: str
    party: int
    index: int = 0
    stage: str | None = "online"
    marker: str | None = None
    delay: float = 0.05

    def __call__(self, runtime: Runtime) -> None:
        if runtime.party_id == self.party:
            _install(runtime.channel, self)

    def _fired(self) -> None:
        if self.marker:
            Path(self.marker).write_text(repr(time.time()))

    def fire(self, channel: Channel, peer: int, array: np.ndarray) -> bool:
        """Misbehave instead of sending `array`; True if the message is still to be sent."""
        self._fired()
        sock = getattr(channel, "outgoing", {}).get(peer)
        if self.kind == "kill":
            os._exit(1)
        if self.kind == "stall":  # neither sends, reads nor keeps alive again: the launcher
            os.kill(os.getpid(), signal.SIGSTOP)  # must stop it (a sleeping process would
            time.sleep(3600)  # still send keep-alives, and be waited for)
        if self.kind == "busy":
            time.sleep(self.delay)  # alive meanwhile: the channel's keep-alives still flow
            return True
        if self.kind == "garbage":
            sock.sendall(b"\x00\xffthis is not a sottovoce frame" * 4)
            return False
        if self.kind == "bad_header":  # a well-formed header that declares 1 TiB of payload
            header = bytearray(framing.encode_header(np.asarray(array),
                                                     channel._send_seq[peer]))
            struct.pack_into("<Q", header, 16, 1 << 40)
            sock.sendall(bytes(header))
            return False
        if self.kind == "reset":  # half a frame, then a TCP reset (RST, not an orderly FIN)
            frame = framing.encode(np.asarray(array), channel._send_seq[peer])
            sock.sendall(frame[:max(1, len(frame) // 2)])
            time.sleep(0.2)  # let the half frame reach the peer before the reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            os._exit(1)
        raise ValueError(f"unknown fault {self.kind!r}")


def _install(channel: Channel, fault: Fault) -> None:
    original = channel._send
    counter = {"sent": 0}

    def send(peer: int, array: np.ndarray) -> None:
        if fault.stage is None or channel.step == fault.stage:
            index = counter["sent"]
            counter["sent"] += 1
            if fault.kind == "slow":
                if index == 0:
                    fault._fired()
                time.sleep(fault.delay)
            elif index == fault.index and not fault.fire(channel, peer, array):
                return
        original(peer, array)

    channel._send = send  # this party's channel only


# -- the computation -------------------------------------------------------------------------
@dataclass
class RecordingInference(PrivateInference):
    """`PrivateInference` that also writes every label a party obtains into `sink`."""

    sink: str | None = None

    def __call__(self, protocol):
        output = super().__call__(protocol)
        if self.sink and output.labels is not None and not isinstance(protocol, Planner):
            np.save(Path(self.sink) / f"labels-party-{protocol.party_id}.npy", output.labels)
        return output


def _programs(model: SecureModel, features: np.ndarray, n: int, sink: Path | None
              ) -> list[RecordingInference]:
    encoded, public = model.fixed.encode(features), model.public()
    return [RecordingInference(model=model if p == MODEL_OWNER else public,
                               features=encoded if p == CLIENT else None,
                               batch=len(features), sink=str(sink) if sink else None)
            for p in range(n)]


@pytest.fixture(scope="module")
def tiny() -> tuple[SecureModel, np.ndarray, dict[str, np.ndarray], dict[str, list[int]]]:
    """A small CNN, a batch of two inputs, the honest labels and each party's count of
    online messages per scheme (threads transport)."""
    _, model, features = tiny_cnn(2)
    labels, counts = {}, {}
    for scheme in ("replicated", "additive"):
        result = classify(model, features, scheme=scheme)
        labels[scheme] = result.labels
        counts[scheme] = [p.online.messages_sent for p in result.parties]
    return model, features, labels, counts


def _text(error: BaseException) -> str:
    """An error's message and its notes (the other parties' errors)."""
    return "\n".join([str(error), *getattr(error, "__notes__", ())])


def _faulty_run(tiny, tmp_path: Path, monkeypatch, scheme: str, fault: Fault
                ) -> tuple[BaseException, float, float]:
    """Run with `fault`; return the launcher's error, the seconds from the fault to the
    launcher's decision, and to the moment every party process had exited."""
    model, features, _, _ = tiny
    sink = tmp_path / "sink"
    sink.mkdir()
    fault.marker = str(tmp_path / "fired")
    programs = _programs(model, features, SCHEMES[scheme].parties, sink)
    decided = {}
    collect = launch._collect

    def timed_collect(*args, **kwargs):
        try:
            return collect(*args, **kwargs)
        finally:
            decided["at"] = time.time()

    monkeypatch.setattr(launch, "_collect", timed_collect)
    with pytest.raises(SottovoceError) as info:
        run(scheme, programs, transport="tcp", timeout=TIMEOUT, hook=fault)
    fired = float(Path(fault.marker).read_text())
    assert not multiprocessing.active_children(), "a party process is still running"
    assert not list(sink.iterdir()), "a party obtained a label"
    return info.value, decided["at"] - fired, time.time() - fired


def _quick(decided: float, exited: float) -> None:
    """A fault that needs no timeout to notice (a lost link, a bad frame) is decided within
    the launcher's 1 s poll; every process has exited soon after."""
    assert decided < TIMEOUT, decided
    assert exited < decided + TEARDOWN, (decided, exited)


def _online_index(tiny, scheme: str, party: int) -> int:
    """A seeded random message of `party`'s online phase, before its last one (so the
    computation cannot have reached the client's label)."""
    count = tiny[3][scheme][party]
    assert count >= 2, f"party {party} sends {count} online messages"
    return random.Random(f"{SEED}-{scheme}-{party}").randrange(count - 1)


def _online_fault(tiny, tmp_path: Path, monkeypatch, kind: str, victim: int,
                  scheme: str = "replicated") -> tuple[BaseException, float, float]:
    """`_faulty_run` with a `kind` fault at a seeded online message of `victim`."""
    fault = Fault(kind, victim, _online_index(tiny, scheme, victim))
    return _faulty_run(tiny, tmp_path, monkeypatch, scheme, fault)


# -- faults through the process launcher -----------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme, victim", [("replicated", 2), ("additive", 0)])
def test_a_party_killed_in_the_online_phase(tiny, tmp_path, monkeypatch, scheme, victim):
    error, decided, exited = _online_fault(tiny, tmp_path, monkeypatch, "kill", victim, scheme)
    assert isinstance(error, PeerLost)
    assert f"party {victim}'s process exited with code 1" in str(error)
    # the survivors say whom they lost and at which step
    assert re.search(rf"party {victim} closed its connection \(step online\)", _text(error)) \
        or re.search(rf"party {victim}\b.*broke.*\(step online\)", _text(error)), _text(error)
    _quick(decided, exited)


@pytest.mark.timeout(60)
def test_a_party_that_stops_sending_is_named_and_stopped(tiny, tmp_path, monkeypatch):
    victim = 1
    error, decided, exited = _online_fault(tiny, tmp_path, monkeypatch, "stall", victim)
    assert isinstance(error, PartyFailed) and error.party_id == victim
    assert f"party {victim} failed: neither finished nor failed" in str(error)
    # a survivor timed out waiting for it (others may time out waiting for that survivor)
    assert re.search(rf"PeerTimeout: party \d: party {victim} sent nothing for 3 s "
                     r"\(step online\)", _text(error)), _text(error)
    # the survivors wait one timeout, the launcher one more (plus 2 s) for the stalled party
    assert TIMEOUT <= decided < 2 * TIMEOUT + 2 + 1.5
    assert exited < decided + TEARDOWN


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind, message", [
    ("garbage", "bad frame magic"),
    ("bad_header", f"declares {1 << 40} payload bytes; the limit is {framing.DEFAULT_MAX_PAYLOAD}"),
])
def test_garbage_on_the_wire_is_a_protocol_error(tiny, tmp_path, monkeypatch, kind, message):
    victim = 1
    error, decided, exited = _online_fault(tiny, tmp_path, monkeypatch, kind, victim)
    assert isinstance(error, ProtocolError)
    assert re.search(rf"party {victim} sent a bad frame: .*{re.escape(message)}.*"
                     r"\(step online\)", str(error)), _text(error)
    _quick(decided, exited)


@pytest.mark.timeout(60)
def test_a_connection_reset_mid_message(tiny, tmp_path, monkeypatch):
    victim = 2
    error, decided, exited = _online_fault(tiny, tmp_path, monkeypatch, "reset", victim)
    assert isinstance(error, PeerLost)
    assert f"party {victim}'s process exited" in str(error)
    # the receiver of the half frame saw the link break mid-message, at the online step
    assert re.search(rf"party {victim}\b[^\n]*(mid-message|broke|reset|closed)[^\n]*"
                     r"\(step online\)", _text(error)), _text(error)
    _quick(decided, exited)


@pytest.mark.timeout(60)
def test_the_dealer_dying(tiny, tmp_path, monkeypatch):
    dealer = SCHEMES["additive"].parties  # the dealer is the endpoint after the parties
    fault = Fault("kill", dealer, 0, stage=None)  # before its one message of corrections
    error, decided, exited = _faulty_run(tiny, tmp_path, monkeypatch, "additive", fault)
    assert isinstance(error, PeerLost)
    assert f"party {dealer}'s process exited with code 1" in str(error)
    # the compute parties name the endpoint they lost by its role
    assert re.search(r"party \d: the dealer closed its connection \(step preprocessing\)",
                     _text(error)), _text(error)
    _quick(decided, exited)


@pytest.mark.timeout(60)
def test_a_slow_link_still_gives_the_right_labels(tiny, tmp_path):
    _, _, labels, counts = tiny
    sink = tmp_path / "sink"
    sink.mkdir()
    fault = Fault("slow", 1, delay=0.05, marker=str(tmp_path / "fired"))
    model, features = tiny[0], tiny[1]
    start = time.monotonic()
    reports = run("replicated", _programs(model, features, 3, sink), transport="tcp",
                  timeout=TIMEOUT, hook=fault)
    assert np.array_equal(reports[CLIENT].result.labels, labels["replicated"])
    assert [p.name for p in sink.iterdir()] == [f"labels-party-{CLIENT}.npy"]  # client only
    assert np.array_equal(np.load(sink / f"labels-party-{CLIENT}.npy"), labels["replicated"])
    assert Path(fault.marker).exists()
    assert time.monotonic() - start > counts["replicated"][1] * 0.05  # the delay did happen


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme, busy, stage", [
    ("replicated", 1, "online"),
    ("additive", SCHEMES["additive"].parties, None),  # the dealer, still dealing
])
def test_a_party_busy_for_twice_the_timeout_is_waited_for(tiny, tmp_path, scheme, busy, stage):
    """A party that computes (here: sleeps) for twice the timeout before its next message
    is alive: its keep-alives reach every peer, so nobody times out and the labels are
    right. (The stall test above is the control: stopped, the same party is reported.)"""
    _, _, labels, _ = tiny
    sink = tmp_path / "sink"
    sink.mkdir()
    index = _online_index(tiny, scheme, busy) if stage == "online" else 0
    fault = Fault("busy", busy, index, stage=stage, delay=2 * TIMEOUT,
                  marker=str(tmp_path / "fired"))
    model, features = tiny[0], tiny[1]
    start = time.monotonic()
    reports = run(scheme, _programs(model, features, SCHEMES[scheme].parties, sink),
                  transport="tcp", timeout=TIMEOUT, hook=fault)
    assert np.array_equal(reports[CLIENT].result.labels, labels[scheme])
    assert Path(fault.marker).exists()
    assert time.monotonic() - start > 2 * TIMEOUT  # the party was busy that long
    assert not multiprocessing.active_children()


# -- faults through the command-line roles of a deployment ----------------------------------
_FAULTY_PARTY = """
import os, sys, time
from mpc.net.channel import Channel
from experiments.deploy import compute_party

config, party, index, marker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
original, sent = Channel._send, [0]

def send(self, peer, array):
    if self.step == "online":
        if sent[0] == index:
            open(marker, "w").write(repr(time.time()))
            os._exit(1)
        sent[0] += 1
    original(self, peer, array)

Channel._send = send
compute_party(config, party)
"""


@pytest.mark.timeout(120)
def test_cli_roles_exit_non_zero_and_the_client_prints_nothing(tmp_path):
    timeout = 20  # covers the other roles' start-up (torch, librosa) on busy cores
    done = subprocess.run([*CLI, "cluster", str(tmp_path), "--scheme", "replicated",
                           "--timeout", str(timeout)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    config = str(tmp_path / "cluster.toml")
    marker = tmp_path / "fired"
    logs = {name: tmp_path / f"{name}.log" for name in ("p0", "p1", "p2", "owner")}
    procs = {}
    for name, argv in (("p0", ["party", "--config", config, "--id", "0"]),
                       ("p1", ["party", "--config", config, "--id", "1"]),
                       ("owner", ["model-owner", "--config", config,
                                  "--model", str(BUNDLED_MODEL)])):
        procs[name] = subprocess.Popen([*CLI, *argv], stdout=subprocess.DEVNULL,
                                       stderr=logs[name].open("w"))
    procs["p2"] = subprocess.Popen([sys.executable, "-c", _FAULTY_PARTY, config, "2", "1",
                                    str(marker)], stdout=subprocess.DEVNULL,
                                   stderr=logs["p2"].open("w"))
    clip = sorted(BUNDLED_CLIPS.glob("*.wav"))[0]
    try:
        client = subprocess.run([*CLI, "client", "--config", config, "--json", str(clip)],
                                capture_output=True, text=True, timeout=100)
        exits = {}
        while len(exits) < len(procs):
            for name, proc in procs.items():
                if name not in exits and proc.poll() is not None:
                    exits[name] = (proc.returncode, time.time())
            assert time.time() - float(marker.read_text()) < timeout, "a role hangs"
            time.sleep(0.05)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
    fired = float(marker.read_text())
    assert client.returncode == 2, client.stderr
    assert client.stdout == ""  # no label, no partial JSON
    assert client.stderr.startswith("sottovoce: error:") and "Traceback" not in client.stderr
    assert "(step labels)" in client.stderr
    assert exits["p2"][0] == 1
    texts = {name: logs[name].read_text() for name in ("p0", "p1")}
    for name, text in texts.items():
        code, when = exits[name]
        assert code == 2, text
        assert when - fired < timeout
        # each survivor names the peer it lost (party 2, or a survivor that left first)
        assert re.search(r"party [0-2]\b.*\(step online\)", text), text
        assert text.startswith("sottovoce: error:") and "Traceback" not in text
    assert any(re.search(r"party 2\b.*\(step online\)", t) for t in texts.values()), texts
    # the model owner finished sending before the fault: it exits 0 or fails cleanly
    assert exits["owner"][0] in (0, 2), logs["owner"].read_text()
