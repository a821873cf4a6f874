"""Channel.receive_external: a tolerant source (a service's client) that fails fails alone,
and every compute party drops it at the same point; any other source's failure is an error."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mpc.errors import ProtocolError
from mpc.net.inprocess import InProcessNetwork

PARTIES, CLIENT, SHAPE = (0, 1, 2), 3, (2, 3)


def _run(client_sends: dict[int, np.ndarray | None], tolerant: bool = True, same: bool = True
         ) -> dict[int, object]:
    """Three compute parties receive from the client (who sends `client_sends[p]` to party
    p, nothing for None); each party's value and dropped set, or the error it raised."""
    network = InProcessNetwork(4)
    channels = {p: network.channel(p, timeout=2.0) for p in range(4)}
    results: dict[int, object] = {}

    def party(p: int) -> None:
        channel = channels[p]
        if tolerant:
            channel.tolerant.add(CLIENT)
            channel.tolerant_timeout = 0.3
        try:
            value = channel.receive_external(CLIENT, SHAPE, "as its input", PARTIES, same)
            results[p] = (value, dict(channel.dropped))
        except Exception as exc:  # reported to the test
            results[p] = exc

    threads = [threading.Thread(target=party, args=(p,)) for p in PARTIES]
    for t in threads:
        t.start()
    for p, array in client_sends.items():
        if array is not None:
            channels[CLIENT].send(p, array)
    for t in threads:
        t.join(10)
    return results


def test_an_intact_input_reaches_every_party():
    x = np.arange(6, dtype=np.uint64).reshape(SHAPE)
    results = _run(dict.fromkeys(PARTIES, x))
    for p in PARTIES:
        value, dropped = results[p]
        assert np.array_equal(value, x) and dropped == {}


@pytest.mark.parametrize("fault", ["missing at one party", "malformed at one party",
                                   "different at one party"])
def test_a_client_that_fails_at_one_party_is_dropped_by_all(fault):
    x = np.arange(6, dtype=np.uint64).reshape(SHAPE)
    sends: dict[int, np.ndarray | None] = dict.fromkeys(PARTIES, x)
    sends[1] = {"missing at one party": None,
                "malformed at one party": np.zeros(5, dtype=np.uint8),
                "different at one party": x + np.uint64(1)}[fault]
    results = _run(sends)
    for p in PARTIES:
        value, dropped = results[p]
        assert np.array_equal(value, np.zeros(SHAPE, dtype=np.uint64)), p
        assert CLIENT in dropped, p


def test_pieces_may_differ_between_parties():
    sends = {p: np.full(SHAPE, p, dtype=np.uint64) for p in PARTIES}
    results = _run(sends, same=False)
    for p in PARTIES:
        value, dropped = results[p]
        assert np.array_equal(value, sends[p]) and dropped == {}


def test_a_source_that_is_not_tolerant_fails_the_party():
    sends = dict.fromkeys(PARTIES, np.zeros(5, dtype=np.uint8))
    results = _run(sends, tolerant=False)
    assert all(isinstance(results[p], ProtocolError) for p in PARTIES)
