"""The `Channel`: how a party exchanges numpy arrays with its peers, and what it counts.

Protocol code sees only this interface. A transport (in-process queues or TCP+TLS) supplies
`_send_frame` and `_recv_array`; framing, counters, step labels and error messages are here,
so both transports behave the same.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from mpc.errors import PeerLost, ProtocolError
from mpc.net import framing

DEFAULT_TIMEOUT = 60.0


@dataclass
class Traffic:
    """What one party sent and received: frame bytes (header included), messages, rounds.

    A round is one call to `exchange` (or a lone `send`/`recv`) that moves at least one
    message; protocols batch everything a step needs into one exchange, so rounds here are
    the protocol's communication rounds as seen by this party.
    """

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    rounds: int = 0
    wait_seconds: float = 0.0

    def copy(self) -> Traffic:
        return Traffic(**vars(self))

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(**{k: getattr(self, k) - getattr(other, k) for k in vars(self)})


@dataclass
class Channel:
    """One party's links to its peers. Subclasses implement the transport."""

    party_id: int
    peers: tuple[int, ...]
    timeout: float = DEFAULT_TIMEOUT
    traffic: Traffic = field(default_factory=Traffic)
    step: str = "start-up"

    def __post_init__(self) -> None:
        self._send_seq = dict.fromkeys(self.peers, 0)
        self._recv_seq = dict.fromkeys(self.peers, 0)
        self._closed = False

    # -- transport hooks ---------------------------------------------------------------
    def _send_frame(self, peer: int, header: bytes, payload: np.ndarray) -> None:
        raise NotImplementedError

    def _recv_array(self, peer: int, expected_sequence: int) -> np.ndarray:
        raise NotImplementedError

    def _close_links(self) -> None:
        raise NotImplementedError

    # -- public interface --------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Label the messages of a block (named in timeout and loss errors)."""
        previous, self.step = self.step, name
        try:
            yield
        finally:
            self.step = previous

    def _check_peer(self, peer: int) -> None:
        if self._closed:
            raise PeerLost(f"party {self.party_id}: channel already closed")
        if peer not in self._send_seq:
            raise ProtocolError(f"party {self.party_id} has no link to party {peer}")

    def _send(self, peer: int, array: np.ndarray) -> None:
        self._check_peer(peer)
        array = np.asarray(array, order="C")  # ascontiguousarray makes 0-d 1-d
        header = framing.encode_header(array, self._send_seq[peer])
        self._send_seq[peer] += 1
        self._send_frame(peer, header, array)
        self.traffic.bytes_sent += len(header) + array.nbytes
        self.traffic.messages_sent += 1

    def _recv(self, peer: int) -> np.ndarray:
        self._check_peer(peer)
        start = time.perf_counter()
        array = self._recv_array(peer, self._recv_seq[peer])
        self.traffic.wait_seconds += time.perf_counter() - start
        self._recv_seq[peer] += 1
        self.traffic.bytes_received += framing.HEADER_SIZE + 8 * array.ndim + array.nbytes
        self.traffic.messages_received += 1
        return array

    def send(self, peer: int, array: np.ndarray) -> None:
        """Send one array to `peer` as a round of its own."""
        self._send(peer, array)
        self.traffic.rounds += 1

    def recv(self, peer: int) -> np.ndarray:
        """Receive the next array from `peer` as a round of its own."""
        array = self._recv(peer)
        self.traffic.rounds += 1
        return array

    def exchange(self, outgoing: dict[int, np.ndarray],
                 receive_from: Iterable[int] | None = None) -> dict[int, np.ndarray]:
        """One communication round: send every array in `outgoing`, then receive one array
        from each peer in `receive_from` (by default the peers sent to)."""
        sources = tuple(outgoing) if receive_from is None else tuple(receive_from)
        for peer, array in outgoing.items():
            self._send(peer, array)
        received = {peer: self._recv(peer) for peer in sources}
        if outgoing or sources:
            self.traffic.rounds += 1
        return received

    def send_bytes(self, peer: int, data: bytes) -> None:
        """Send raw bytes (control messages, keys) as a uint8 array."""
        self.send(peer, np.frombuffer(data, dtype=np.uint8))

    def recv_bytes(self, peer: int) -> bytes:
        array = self.recv(peer)
        if array.dtype != np.uint8 or array.ndim != 1:
            raise ProtocolError(f"party {peer} sent {array.dtype}{array.shape} where bytes "
                                f"were expected (step {self.step})")
        return array.tobytes()

    def close(self) -> None:
        """Close every link; peers waiting on this party get `PeerLost`."""
        if not self._closed:
            self._closed = True
            self._close_links()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
