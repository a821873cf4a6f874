"""In-process transport: parties are threads, links are queues of encoded frames.

A frame is its header, encoded exactly as over TCP (so byte counts and header checks are the
same), and one copy of the payload array: the receiver checks the header and takes the array
as it is, without serialising hundreds of megabytes of dealer material into bytes and back.
This transport exists for tests and single-machine runs without sockets.

There are no keep-alives here, on purpose: the timeout keeps its old meaning (a peer that
sends nothing for `timeout` seconds is reported). Keep-alives tell a stopped or dead process,
or a cut link, from a busy one; threads of one process share its fate and none can be
stopped or cut off alone, so a keep-alive could only ever say "the process runs", and would
turn a role that hangs (a bug under test) into a run that never ends. Give a threads run a
timeout longer than its longest computation step (`classify(..., timeout=...)`).
"""

from __future__ import annotations

import queue
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mpc.errors import PeerLost, PeerTimeout, ProtocolError
from mpc.net import framing
from mpc.net.channel import DEFAULT_TIMEOUT, Channel

_CLOSED = object()


@dataclass
class InProcessNetwork:
    """Queues between every ordered pair of `n` endpoints."""

    n: int
    queues: dict[tuple[int, int], queue.SimpleQueue] = field(init=False)

    def __post_init__(self) -> None:
        self.queues = {(a, b): queue.SimpleQueue()
                       for a in range(self.n) for b in range(self.n) if a != b}

    def channel(self, party_id: int, timeout: float = DEFAULT_TIMEOUT,
                names: Mapping[int, str] | None = None) -> InProcessChannel:
        """Endpoint `party_id`'s channel; `names` maps endpoints to role names."""
        peers = tuple(p for p in range(self.n) if p != party_id)
        return InProcessChannel(party_id=party_id, peers=peers, timeout=timeout,
                                names=dict(names or {}), network=self)


@dataclass
class InProcessChannel(Channel):
    network: InProcessNetwork | None = None

    def _send_frame(self, peer: int, header: bytes, payload: np.ndarray) -> None:
        # a copy: the sender may change its array once the call returns, as over TCP
        self.network.queues[(self.party_id, peer)].put((header, np.array(payload, copy=True)))

    def _recv_array(self, peer: int, expected_sequence: int) -> np.ndarray:
        try:
            frame = self.network.queues[(peer, self.party_id)].get(timeout=self.timeout)
        except queue.Empty:
            raise PeerTimeout(f"{self.role(self.party_id)}: {self.who(peer)} sent nothing for "
                              f"{self.timeout:g} s (step {self.step})") from None
        if frame is _CLOSED:
            raise PeerLost(f"{self.role(self.party_id)}: {self.who(peer)} closed its link "
                           f"(step {self.step})")
        if isinstance(frame, bytes):  # an abort frame: the peer stops, and says why
            text_length = framing.abort_length(frame[:framing.HEADER_SIZE])
            raise self._in_context(self._aborted(peer, framing.abort_reason(
                frame[framing.HEADER_SIZE:framing.HEADER_SIZE + (text_length or 0)])))
        header, payload = frame
        dtype, ndim, length = framing.decode_header(header[:framing.HEADER_SIZE],
                                                    expected_sequence)
        shape = framing.decode_shape(header[framing.HEADER_SIZE:], ndim, dtype, length)
        if payload.dtype != dtype or payload.nbytes != length:
            raise ProtocolError(f"{self.role(self.party_id)}: {self.who(peer)} sent a frame "
                                "whose payload does not match its header")
        array = payload.reshape(shape)
        if array.nbytes > self.limit_of(peer):  # a queue holds one frame at a time here
            raise self._in_context(self._over_limit(peer, array.nbytes, 0))
        return array

    def _send_abort(self, peer: int, frame: bytes) -> None:
        self.network.queues[(self.party_id, peer)].put(frame)

    def _close_links(self) -> None:
        for peer in self.peers:
            self.network.queues[(self.party_id, peer)].put(_CLOSED)
