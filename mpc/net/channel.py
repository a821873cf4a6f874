"""The `Channel`: how a party exchanges numpy arrays with its peers, and what it counts.

Protocol code sees only this interface. A transport (in-process queues or TCP+TLS) supplies
`_send_frame` and `_recv_array`; framing, counters, step labels, the checks of what peers
send (`expect=`) and error messages are here, so both transports behave the same. Errors
name endpoints by role ("party 1", "the dealer", "the client"), from `names`.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from mpc.errors import (
    AuthenticationError,
    CheatingDetected,
    LimitExceeded,
    PeerAborted,
    PeerLost,
    PeerTimeout,
    ProtocolError,
)
from mpc.net import framing
from mpc.net.expect import BYTES, Expect, describe

DEFAULT_TIMEOUT = 60.0

#: Errors whose text an ending endpoint passes on to its peers (`Channel.abort`): their
#: messages name roles, steps, shapes and sizes, never a value. Any other error is passed on
#: as its type alone, since its text could hold a secret (a feature that failed to encode).
TOLD = (PeerLost, PeerTimeout, ProtocolError, CheatingDetected, AuthenticationError)

#: What a received array must be: an `Expect`, or a template array of the same dtype and shape.
Spec = Expect | np.ndarray


def role_name(names: Mapping[int, str], endpoint: int) -> str:
    """The role of `endpoint` ("party 0", "dealer", "client", ...); "party i" by default."""
    return names.get(endpoint, f"party {endpoint}")


def subject(names: Mapping[int, str], endpoint: int) -> str:
    """The role as the subject of a sentence: "party 1 sent ...", "the dealer sent ..."."""
    name = role_name(names, endpoint)
    return name if name.startswith("party ") else f"the {name}"


def _as_expect(spec: Spec) -> Expect:
    return spec if isinstance(spec, Expect) else Expect.like(spec)


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
    names: Mapping[int, str] = field(default_factory=dict)  # endpoint id -> role name

    def __post_init__(self) -> None:
        self._send_seq = dict.fromkeys(self.peers, 0)
        self._recv_seq = dict.fromkeys(self.peers, 0)
        self._closed = False
        self._limits = dict.fromkeys(self.peers, framing.DEFAULT_MAX_PAYLOAD)
        # outside endpoints whose failure fails only their own request (a service's clients,
        # see `receive_external`), and those that failed, with the reason
        self.tolerant: set[int] = set()
        self.dropped: dict[int, str] = {}
        self.tolerant_timeout = self.timeout

    # -- transport hooks ---------------------------------------------------------------
    def _send_frame(self, peer: int, header: bytes, payload: np.ndarray) -> None:
        raise NotImplementedError

    def _recv_array(self, peer: int, expected_sequence: int) -> np.ndarray:
        raise NotImplementedError

    def _close_links(self) -> None:
        raise NotImplementedError

    def _send_abort(self, peer: int, frame: bytes) -> None:
        raise NotImplementedError

    # -- public interface --------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Label the messages of a block (named in timeout, loss and mismatch errors)."""
        previous, self.step = self.step, name
        try:
            yield
        finally:
            self.step = previous

    def limit(self, peer: int, max_bytes: int) -> None:
        """Let at most `max_bytes` of payload from `peer` be buffered here at once (frames
        received but not yet taken, plus the one arriving); a frame that would pass it is a
        ProtocolError naming the peer and the step, raised over TCP from its header, before
        anything is allocated. A role sets it from what the plan lets that peer send next
        (e.g. a request document, then the features of the batch it declared)."""
        self._check_peer(peer)
        self._limits[peer] = int(max_bytes)

    def limit_of(self, peer: int) -> int:
        """The payload bytes `peer` may have buffered here at once (see `limit`)."""
        return self._limits[peer]

    def _over_limit(self, peer: int, length: int, buffered: int) -> LimitExceeded:
        return LimitExceeded(f"{self.who(peer)} sent a frame of {length} bytes with "
                             f"{buffered} more buffered; at most {self._limits[peer]} bytes "
                             f"may be buffered from {self.who(peer)} at this step")

    def frames_sent(self, peer: int) -> int:
        """How many frames this endpoint has sent `peer` (the next one's sequence number)."""
        return self._send_seq[peer]

    def role(self, endpoint: int) -> str:
        """`endpoint`'s role name, for messages: "party 0", "dealer", "client", ..."""
        return role_name(self.names, endpoint)

    def who(self, endpoint: int) -> str:
        """`endpoint`'s role as a sentence subject: "party 1", "the dealer", ..."""
        return subject(self.names, endpoint)

    def _check_peer(self, peer: int) -> None:
        if self._closed:
            raise PeerLost(f"{self.role(self.party_id)}: channel already closed")
        if peer not in self._send_seq:
            raise ProtocolError(f"{self.role(self.party_id)} has no link to {self.role(peer)}")

    def _check(self, peer: int, array: np.ndarray, spec: Spec | None, what: str) -> np.ndarray:
        """`array` if it is what `spec` says; a ProtocolError naming the peer otherwise."""
        if spec is None:
            return array
        expect = _as_expect(spec)
        if not expect.matches(array):
            detail = f" {what}" if what else ""
            raise ProtocolError(f"{self.role(self.party_id)}: {self.who(peer)} sent "
                                f"{describe(array)}{detail} at step '{self.step}', "
                                f"expected {expect}")
        return array

    def _send(self, peer: int, array: np.ndarray) -> None:
        self._check_peer(peer)
        if peer in self.dropped:  # a failed outside endpoint: nothing more goes to it
            return
        array = np.asarray(array, order="C")  # ascontiguousarray makes 0-d 1-d
        header = framing.encode_header(array, self._send_seq[peer])
        self._send_seq[peer] += 1
        try:
            self._send_frame(peer, header, array)
        except (PeerLost, PeerTimeout) as exc:
            if peer not in self.tolerant:
                raise
            self.dropped[peer] = str(exc)
            return
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

    def recv(self, peer: int, *, expect: Spec | None = None, what: str = "") -> np.ndarray:
        """Receive the next array from `peer` as a round of its own.

        With `expect` (an `Expect`, or a template array) anything else is a ProtocolError
        naming the peer, `what` it was (e.g. "as its input") and the step."""
        array = self._check(peer, self._recv(peer), expect, what)
        self.traffic.rounds += 1
        return array

    def exchange(self, outgoing: dict[int, np.ndarray],
                 receive_from: Iterable[int] | None = None, *,
                 expect: Spec | Mapping[int, Spec] | None = None,
                 what: str = "") -> dict[int, np.ndarray]:
        """One communication round: send every array in `outgoing`, then receive one array
        from each peer in `receive_from` (by default the peers sent to).

        `expect` checks every received array as `recv` does: one spec (or template) for all
        peers, or one per peer (a mapping that covers every peer received from)."""
        sources = tuple(outgoing) if receive_from is None else tuple(receive_from)
        specs = self._specs(sources, expect)
        for peer, array in outgoing.items():
            self._send(peer, array)
        received = {peer: self._check(peer, self._recv(peer), specs[peer], what)
                    for peer in sources}
        if outgoing or sources:
            self.traffic.rounds += 1
        return received

    @staticmethod
    def _specs(sources: tuple[int, ...], expect: Spec | Mapping[int, Spec] | None
               ) -> dict[int, Expect | None]:
        """The expectation of each peer received from, checked before anything is sent."""
        if not isinstance(expect, Mapping):
            return dict.fromkeys(sources, None if expect is None else _as_expect(expect))
        missing = [p for p in sources if p not in expect]
        if missing:
            raise ValueError(f"no expectation for what endpoint {missing[0]} sends")
        return {p: _as_expect(expect[p]) for p in sources}

    def receive_external(self, source: int, shape: tuple[int, ...], what: str,
                         parties: tuple[int, ...], same: bool = True,
                         outgoing: Mapping[int, np.ndarray] | None = None) -> np.ndarray:
        """The ring elements (uint64, `shape`) an outside endpoint sends a compute party as
        its part of an input (after `outgoing`, in the same round).

        For a tolerant source (a service's client) a failure fails that source alone: what
        did not arrive, arrived malformed or late (`tolerant_timeout`), becomes zeros, and
        the compute parties `parties` then tell each other in one more round whether it
        arrived (and, if every party got the `same` value, its hash). If any party says no,
        or the hashes differ, every party records the source in `dropped` and uses zeros:
        all of them at the same point of the protocol, so the computation of everyone else's
        inputs goes on in step. Anything else is an error as for `recv`."""
        for peer, array in (outgoing or {}).items():  # one round with the receive below
            self._send(peer, array)
        expect = Expect.uint64(shape)
        if source not in self.tolerant:
            return self.recv(source, expect=expect, what=what)
        value, reason = None, self.dropped.get(source)
        if reason is None:
            timeout, self.timeout = self.timeout, self.tolerant_timeout
            try:
                value = self.recv(source, expect=expect, what=what)
            except (PeerLost, PeerTimeout, ProtocolError) as exc:
                reason = str(exc)
            finally:
                self.timeout = timeout
        verdict = np.zeros(5, dtype=np.uint64)
        if value is not None:
            verdict[0] = 1
            if same:
                verdict[1:] = np.frombuffer(hashlib.sha256(value.tobytes()).digest(), np.uint64)
        others = [p for p in parties if p != self.party_id]
        heard = self.exchange(dict.fromkeys(others, verdict), expect=Expect.uint64((5,)),
                              what=f"as its verdict on what {self.who(source)} sent")
        if value is not None and all(np.array_equal(v, verdict) for v in heard.values()):
            return value
        self.dropped[source] = reason or (f"{self.who(source)}'s input did not reach every "
                                          "compute party intact")
        return np.zeros(shape, dtype=np.uint64)

    def send_bytes(self, peer: int, data: bytes) -> None:
        """Send raw bytes (control messages, keys) as a uint8 array."""
        self.send(peer, np.frombuffer(data, dtype=np.uint8))

    def recv_bytes(self, peer: int, *, what: str = "") -> bytes:
        """Receive raw bytes: a flat uint8 array of any length."""
        return self.recv(peer, expect=BYTES, what=what).tobytes()

    def abort(self, error: BaseException) -> None:
        """Tell every peer why this endpoint stops (an abort frame), then close. A peer that
        waits on this endpoint gets `PeerAborted` naming the root cause: `error`'s text, or
        if `error` is itself a peer's abort, that abort's reason, passed on unchanged."""
        if self._closed:
            return
        frame = framing.abort(self.abort_reason(error))
        for peer in self.peers:
            with contextlib.suppress(Exception):  # best effort: the link may be gone
                self._send_abort(peer, frame)
        self.close()

    def abort_reason(self, error: BaseException) -> str:
        """What this endpoint tells its peers when `error` stops it (see `TOLD`)."""
        me = self.role(self.party_id)
        if isinstance(error, PeerAborted):
            return error.reason
        if not isinstance(error, TOLD):
            return f"{me}: failed ({type(error).__name__}) at step '{self.step}'"
        text = str(error)
        return text if text.startswith(f"{me}: ") else f"{me}: {text}"

    def _aborted(self, peer: int, reason: str) -> PeerAborted:
        """The error a peer's abort frame stands for (before the step is added)."""
        own = f"{self.role(peer)}: "
        told = reason[len(own):] if reason.startswith(own) else reason
        return PeerAborted(f"{self.who(peer)} stopped: {told}", reason)

    def _in_context(self, failure: Exception) -> Exception:
        """A recorded link failure as this endpoint's error at the current step."""
        text = f"{self.role(self.party_id)}: {failure} (step {self.step})"
        if isinstance(failure, PeerAborted):
            return PeerAborted(text, failure.reason)
        return type(failure)(text)

    def close(self) -> None:
        """Close every link; peers waiting on this party get `PeerLost`."""
        if not self._closed:
            self._closed = True
            self._close_links()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        if error is not None:
            self.abort(error)
        self.close()
