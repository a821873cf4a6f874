"""The Channel: both transports deliver the same arrays and counts, keys agree, and every
received array is checked against what the receiver expects, errors naming the sender's role.

Everything runs on loopback with ports the operating system chooses and files in tmp_path.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import close_all, connected, deliver

from mpc.errors import LimitExceeded, PeerAborted, PeerLost, PeerTimeout, ProtocolError
from mpc.launch import run_processes, run_threads
from mpc.net.certs import TlsFiles
from mpc.net.channel import Channel
from mpc.net.expect import BYTES, Expect
from mpc.net.inprocess import InProcessNetwork
from mpc.runtime import RunConfig

COUNTERS = ("bytes_sent", "bytes_received", "messages_sent", "messages_received", "rounds")


# -- the same script over both transports ----------------------------------------------
def exchange_script(rt) -> dict:
    """A fixed sequence of sends, receives and exchanges among 3 parties, with mixed dtypes
    and shapes; returns what was received, the counters, and pairwise PRG draws."""
    me, peers = rt.party_id, rt.channel.peers
    ch = rt.channel
    received = []
    for step in range(3):
        out = {p: np.arange(step * 7 + me * 100 + p, step * 7 + me * 100 + p + 5 * (step + 1),
                            dtype=np.uint64) for p in peers}
        got = ch.exchange(out)
        received += [(p, got[p]) for p in sorted(got)]
    # every dtype and some awkward shapes, one exchange each
    samples = [np.float64(me) * np.ones((2, 3)), np.full((4, 0, 2), me, dtype=np.int32),
               np.array(me, dtype=np.int64), np.arange(6, dtype=np.uint8).reshape(3, 2) + me,
               np.linspace(0, me, 5, dtype=np.float32), np.uint32(7 + me) * np.ones(3, np.uint32)]
    for sample in samples:
        got = ch.exchange(dict.fromkeys(peers, sample))
        received += [(p, got[p]) for p in sorted(got)]
    # a lone send/recv round in a ring, and an exchange with a subset
    nxt, prv = (me + 1) % 3, (me - 1) % 3
    ch.send(nxt, np.array([me, 42], dtype=np.uint64))
    received.append((prv, ch.recv(prv)))
    if me == 0:
        got = ch.exchange({1: np.array([1.5])}, receive_from=[1, 2])
    elif me == 1:
        got = ch.exchange({0: np.array([2.5]), 2: np.arange(3, dtype=np.int64)},
                          receive_from=[0])
    else:
        got = ch.exchange({0: np.arange(2, dtype=np.uint8)}, receive_from=[1])
    received += [(p, got[p]) for p in sorted(got)]
    draws = {p: rt.pair_prg(p, "x").ring_elements(4) for p in peers}
    draws_y = {p: rt.pair_prg(p, "y").ring_elements(4) for p in peers}
    traffic = {k: getattr(ch.traffic, k) for k in COUNTERS}
    return {"received": received, "traffic": traffic, "x": draws, "y": draws_y}


def _check_pair_keys(results: list[dict]) -> None:
    for i in range(3):
        for j in range(3):
            if i != j:
                assert np.array_equal(results[i]["x"][j], results[j]["x"][i])
                assert not np.array_equal(results[i]["x"][j], results[i]["y"][j])
    assert not np.array_equal(results[0]["x"][1], results[0]["x"][2])
    assert not np.array_equal(results[0]["x"][1], results[1]["x"][2])


def _same_received(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (pa, xa), (pb, xb) in zip(a, b, strict=True):
        assert pa == pb and xa.dtype == xb.dtype and xa.shape == xb.shape
        assert xa.tobytes() == xb.tobytes()


@pytest.mark.timeout(60)
def test_inprocess_and_tcp_agree():
    config = RunConfig(n_parties=3, timeout=20)
    threads = run_threads([exchange_script] * 3, config)
    procs = run_processes([exchange_script] * 3, config, connect_timeout=20)
    for party in range(3):
        _same_received(threads[party]["received"], procs[party]["received"])
        assert threads[party]["traffic"] == procs[party]["traffic"]
    _check_pair_keys(threads)
    _check_pair_keys(procs)
    # what was received is what the peers sent (spot check of the first round)
    first = dict(threads[1]["received"][:2])
    assert np.array_equal(first[0], np.arange(1, 6, dtype=np.uint64))
    assert threads[0]["received"][10][1].shape == ()  # 0-d arrays stay 0-d
    # counters balance: what everyone sent is what everyone received
    for results in (threads, procs):
        totals = {k: sum(r["traffic"][k] for r in results) for k in COUNTERS}
        assert totals["bytes_sent"] == totals["bytes_received"]
        assert totals["messages_sent"] == totals["messages_received"]
        assert results[0]["traffic"]["rounds"] == 3 + 6 + 2 + 1


def test_pair_keys_differ_between_runs():
    config = RunConfig(n_parties=3, timeout=10)
    a = run_threads([exchange_script] * 3, config)
    b = run_threads([exchange_script] * 3, config)
    assert not np.array_equal(a[0]["x"][1], b[0]["x"][1])


# -- what the receiver expects ----------------------------------------------------------
TRANSPORTS = ("inprocess", "tcp")
#: role -> (its endpoint, a configuration in which that endpoint plays it); party 0 receives
ROLES = {
    "party 1": (1, RunConfig(n_parties=3)),
    "dealer": (2, RunConfig(n_parties=2, dealer=True)),
    "client": (1, RunConfig(n_parties=1, external=2)),
    "model owner": (2, RunConfig(n_parties=1, external=2)),
}
EXPECTED = Expect.uint64((4, 1, 3))
RIGHT = np.arange(12, dtype=np.uint64).reshape(4, 1, 3)
WRONG = {  # what a faulty sender sends instead, and how the error describes it
    "dtype": (RIGHT.astype(np.int32), "int32(4, 1, 3)"),
    "shape": (RIGHT.reshape(4, 3), "uint64(4, 3)"),
    "length": (RIGHT[:3], "uint64(3, 1, 3)"),
}


@contextlib.contextmanager
def endpoints(transport: str, config: RunConfig, certs: dict[int, TlsFiles],
              timeout: float = 5.0) -> Iterator[dict[int, Channel]]:
    """Channels of endpoints 0, 1, 2 over `transport`, named by `config`'s roles."""
    names = config.endpoint_names()
    if transport == "tcp":
        with connected(certs, timeout=timeout, names=names) as channels:
            yield channels
        return
    network = InProcessNetwork(3)
    channels = {p: network.channel(p, timeout=timeout, names=names) for p in range(3)}
    try:
        yield channels
    finally:
        close_all(channels)


def _subject(role: str) -> str:
    return role if role.startswith("party") else f"the {role}"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("role", ROLES)
def test_what_the_receiver_expects_is_received(certs3, transport, role):
    sender, config = ROLES[role]
    with endpoints(transport, config, certs3) as channels, channels[0].stage("features"):
        got = deliver(channels, sender, 0, RIGHT, expect=EXPECTED)
        assert got.dtype == np.uint64 and np.array_equal(got, RIGHT)
        # a template array expects its own dtype and shape
        assert np.array_equal(deliver(channels, sender, 0, RIGHT, expect=RIGHT), RIGHT)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("fault", WRONG)
def test_a_wrong_array_is_refused_naming_the_role_and_the_step(certs3, transport, role, fault):
    sender, config = ROLES[role]
    array, described = WRONG[fault]
    with endpoints(transport, config, certs3) as channels:
        with channels[0].stage("features"), pytest.raises(ProtocolError) as info:
            deliver(channels, sender, 0, array, expect=EXPECTED)
        assert str(info.value) == (f"party 0: {_subject(role)} sent {described} at step "
                                   "'features', expected uint64(4, 1, 3)")
        # the template form refuses it too, and says what the message was for
        channels[sender].send(0, array)
        with channels[0].stage("weights"), pytest.raises(ProtocolError) as info:
            channels[0].exchange({}, (sender,), expect=RIGHT, what="as layer 1's weights")
        assert str(info.value) == (f"party 0: {_subject(role)} sent {described} as layer 1's "
                                   "weights at step 'weights', expected uint64(4, 1, 3)")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_exchange_checks_every_peer_against_its_own_spec(certs3, transport):
    """Party 0 sends both others what it expects back; the dealer answers in kind, party 1
    sends a short array: the error names party 1, and a per-peer spec is obeyed."""
    with endpoints(transport, RunConfig(n_parties=2, dealer=True), certs3) as channels:
        mine = np.arange(5, dtype=np.uint64)
        channels[1].send(0, mine[:4])
        channels[2].send(0, mine)
        with channels[0].stage("opening"), pytest.raises(ProtocolError) as info:
            channels[0].exchange({2: mine, 1: mine}, expect=mine)  # the dealer's passes
        assert str(info.value) == ("party 0: party 1 sent uint64(4,) at step 'opening', "
                                   "expected uint64(5,)")
        # per-peer specs: each peer's own expectation
        channels[1].send(0, mine[:4])
        channels[2].send(0, np.ones(2, dtype=np.uint8))
        got = channels[0].exchange({}, (1, 2), expect={1: Expect.uint64(4), 2: Expect.uint8(2)})
        assert np.array_equal(got[1], mine[:4]) and got[2].tolist() == [1, 1]
        # a spec missing for a peer is the caller's mistake, found before anything is sent
        sent = channels[0].traffic.messages_sent
        with pytest.raises(ValueError, match="no expectation for what endpoint 2 sends"):
            channels[0].exchange({2: mine}, expect={1: mine})
        assert channels[0].traffic.messages_sent == sent


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bytes_are_a_flat_uint8_array_of_any_length(certs3, transport):
    with endpoints(transport, RunConfig(n_parties=1, external=2), certs3) as channels:
        channels[1].send_bytes(0, b"")
        channels[1].send_bytes(0, b'{"batch": 2}')
        assert channels[0].recv_bytes(1) == b""
        assert channels[0].recv_bytes(1) == b'{"batch": 2}'
        channels[1].send(0, np.zeros((2, 2), dtype=np.uint8))
        with channels[0].stage("client request"), pytest.raises(ProtocolError) as info:
            channels[0].recv_bytes(1)
        assert str(info.value) == ("party 0: the client sent uint8(2, 2) at step "
                                   "'client request', expected uint8(?,)")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_timeouts_and_lost_links_name_the_role(certs3, transport):
    """The dealer is "the dealer" (not "party 2") to the parties, and names itself so."""
    config = RunConfig(n_parties=2, dealer=True)
    with endpoints(transport, config, certs3, timeout=0.3) as channels:
        with channels[0].stage("preprocessing"), pytest.raises(PeerTimeout) as info:
            channels[0].recv(2)
        assert str(info.value) == ("party 0: the dealer sent nothing for 0.3 s "
                                   "(step preprocessing)")
        with pytest.raises(PeerTimeout, match=r"^dealer: party 1 sent nothing for 0\.3 s "):
            channels[2].recv(1)
        channels[2].close()
        with channels[1].stage("preprocessing"), pytest.raises(PeerLost) as info:
            channels[1].recv(2)
        assert re.fullmatch(r"party 1: (the dealer closed its (link|connection)|connection "
                            r"to dealer broke: .*) \(step preprocessing\)", str(info.value))


def test_endpoint_names_follow_the_configuration():
    assert RunConfig(n_parties=3).endpoint_names() == {0: "party 0", 1: "party 1",
                                                       2: "party 2"}
    assert RunConfig(n_parties=2, dealer=True).endpoint_names() == {
        0: "party 0", 1: "party 1", 2: "dealer"}
    assert RunConfig(n_parties=3, dealer=True, external=2).endpoint_names() == {
        0: "party 0", 1: "party 1", 2: "party 2", 3: "dealer", 4: "client", 5: "model owner"}
    assert RunConfig(n_parties=2, external=2).endpoint_names()[2] == "client"


def test_a_runtime_names_the_roles_on_its_channel():
    def role(rt):
        return dict(rt.channel.names), rt.channel.role(rt.party_id), rt.channel.who(2)

    names, me, dealer = run_threads([role] * 3, RunConfig(n_parties=2, dealer=True))[1]
    assert names == {0: "party 0", 1: "party 1", 2: "dealer"}
    assert (me, dealer) == ("party 1", "the dealer")


def test_expectations_describe_and_match_dtype_and_shape():
    assert str(EXPECTED) == "uint64(4, 1, 3)"
    assert str(Expect.uint64(5)) == "uint64(5,)" and str(Expect.uint8(())) == "uint8()"
    assert str(BYTES) == "uint8(?,)"
    assert Expect.like(RIGHT) == EXPECTED and Expect(np.dtype("<u8"), [4, 1, 3]) == EXPECTED
    assert EXPECTED.matches(RIGHT) and BYTES.matches(np.zeros(0, np.uint8))
    assert Expect.uint64(()).matches(np.uint64(3) * np.ones((), np.uint64))
    for array, _ in WRONG.values():
        assert not EXPECTED.matches(array)
    assert not BYTES.matches(np.zeros((1, 1), np.uint8))
    assert not BYTES.matches(np.zeros(3, np.int8))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_frame_past_the_peer_limit_is_refused_naming_the_peer_and_step(certs3, transport):
    """`Channel.limit` caps what one peer may have buffered; the other peers are unaffected
    and a frame within the limit passes."""
    with endpoints(transport, RunConfig(n_parties=1, external=2), certs3) as channels:
        channels[0].limit(1, 64)
        assert channels[0].limit_of(1) == 64 and channels[0].limit_of(2) > 64
        channels[1].send(0, np.zeros(8, dtype=np.uint64))  # 64 bytes: at the limit
        assert channels[0].recv(1).tolist() == [0] * 8
        channels[2].send(0, np.zeros(100, dtype=np.uint64))  # the model owner: no limit set
        assert channels[0].recv(2).shape == (100,)
        channels[1].send(0, np.zeros(9, dtype=np.uint64))
        with channels[0].stage("features"), pytest.raises(LimitExceeded) as info:
            channels[0].recv(1)
        assert str(info.value) == ("party 0: the client sent a frame of 72 bytes with 0 more "
                                   "buffered; at most 64 bytes may be buffered from the client "
                                   "at this step (step features)")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_abort_names_the_root_cause_and_is_passed_on_unchanged(certs3, transport):
    """Party 1 stops because the dealer's link broke: party 0 hears that from party 1, and
    when party 0 stops in turn it tells the dealer the same root cause, not "party 1"."""
    with endpoints(transport, RunConfig(n_parties=2, dealer=True), certs3) as channels:
        channels[1].send(0, np.arange(3, dtype=np.uint64))
        with channels[1].stage("preprocessing"):
            channels[1].abort(PeerLost("party 1: the dealer closed its link (step dealing)"))
        assert channels[0].recv(1).tolist() == [0, 1, 2]  # what came before still arrives
        with channels[0].stage("online"), pytest.raises(PeerAborted) as info:
            channels[0].recv(1)
        assert str(info.value) == ("party 0: party 1 stopped: the dealer closed its link "
                                   "(step dealing) (step online)")
        channels[0].abort(info.value)
        with pytest.raises(PeerAborted) as info:
            channels[2].recv(0)
        assert str(info.value).startswith("dealer: party 0 stopped: party 1: the dealer "
                                          "closed its link (step dealing)")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_abort_tells_only_the_kind_of_an_error_that_may_hold_a_secret(certs3, transport):
    with endpoints(transport, RunConfig(n_parties=1, external=2), certs3) as channels:
        with channels[1].stage("features"):
            channels[1].abort(ValueError("feature 3 is 1.5e300, outside the range"))
        with pytest.raises(PeerAborted) as info:
            channels[0].recv(1)
        assert "1.5e300" not in str(info.value)
        assert str(info.value).startswith("party 0: the client stopped: failed (ValueError) "
                                          "at step 'features'")
