"""TCP transport with mutual TLS 1.3: one process per party, possibly on different hosts.

Each ordered pair of parties has its own TLS connection (i dials j to send, j dials i to
send back). After the handshake every link is non-blocking and driven by the party's own
thread (`TcpChannel`): whenever it waits it reads every incoming link, so two parties
sending each other megabytes at once never deadlock, and no thread hand-off sits in the
path of a round.

Start-up (`connect`) proves every peer by the key pinned for it (`mpc.net.handshake`). A
running party's channel also sends keep-alives (`mpc.net.keepalive`), so the timeout measures
how long a peer has shown no sign of life, not how long it has been computing.
"""

from __future__ import annotations

import collections
import functools
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from mpc.errors import (
    AuthenticationError,
    ConfigError,
    LimitExceeded,
    PeerAborted,
    PeerLost,
    PeerTimeout,
    ProtocolError,
    SottovoceError,
)
from mpc.net import framing
from mpc.net.certs import TlsFiles
from mpc.net.channel import DEFAULT_TIMEOUT, Channel, subject
from mpc.net.handshake import HANDSHAKE_TIMEOUT, Acceptor, Credentials, dial
from mpc.net.keepalive import KeepAlive

Address = tuple[str, int]
_DRAIN_SECONDS = 0.02
_DIAL_GRACE = 1.0  # seconds past the connect deadline a dial may take to report its failure
# Bytes per TLS write. OpenSSL reports no partial writes: a send of a whole 900 MB frame raises
# "want write" until every byte is out, so progress (which restarts the timeout) is only seen
# chunk by chunk. A retried chunk is the same bytes, as TLS requires.
_SEND_CHUNK = 1 << 18
_KEEPALIVE = framing.keepalive()
_ABORT_SECONDS = 1.0  # the most an ending party spends telling one peer why


class _FrameReader:
    """Incremental parser of one incoming link: header, shape, then the payload read straight
    into the array that will be handed to the protocol (no intermediate copy).

    `limit()` is how many payload bytes the link may have buffered at once (parsed frames
    not yet taken plus the one arriving): a header that would pass it raises `over(length,
    buffered)` before its payload is allocated."""

    def __init__(self, max_payload: int, limit: Callable[[], int] | None = None,
                 over: Callable[[int, int], ProtocolError] | None = None) -> None:
        self.max_payload = max_payload
        self.limit = limit or (lambda: max_payload)
        self.over = over or (lambda length, buffered: ProtocolError(
            f"a frame of {length} bytes with {buffered} more buffered passes the limit"))
        self.sequence = 0
        self.frames: collections.deque[np.ndarray] = collections.deque()
        self.buffered = 0  # payload bytes of `frames`
        self._start(bytearray(framing.HEADER_SIZE), "header")

    def take(self) -> np.ndarray:
        """The oldest parsed frame."""
        frame = self.frames.popleft()
        self.buffered -= frame.nbytes
        return frame

    def _start(self, buffer, part: str) -> None:
        self.buffer, self.view, self.got, self.part = buffer, memoryview(buffer), 0, part

    @property
    def mid_frame(self) -> bool:
        return self.part != "header" or self.got > 0

    def target(self) -> memoryview:
        """Where the next received bytes go."""
        return self.view[self.got:]

    def advance(self, n: int) -> None:
        """Account for `n` bytes written into `target()`; finish parts and frames."""
        self.got += n
        while self.got == len(self.buffer):
            if self.part == "header":
                if framing.is_keepalive(bytes(self.buffer)):  # a sign of life, nothing more
                    self._start(bytearray(framing.HEADER_SIZE), "header")
                    return
                text_length = framing.abort_length(bytes(self.buffer))
                if text_length is not None:  # the peer stops, and says why
                    self._start(bytearray(text_length), "abort")
                    continue
                self.dtype, self.ndim, self.length = framing.decode_header(
                    bytes(self.buffer), self.sequence, self.max_payload)
                if self.buffered + self.length > self.limit():
                    raise self.over(self.length, self.buffered)
                if self.ndim:
                    self._start(bytearray(8 * self.ndim), "shape")
                    continue
                self.shape = framing.decode_shape(b"", 0, self.dtype, self.length)
            elif self.part == "abort":
                raise PeerAborted("", framing.abort_reason(bytes(self.buffer)))
            elif self.part == "shape":
                self.shape = framing.decode_shape(bytes(self.buffer), self.ndim, self.dtype,
                                                  self.length)
            else:
                self.frames.append(self.buffer.view(self.dtype).reshape(self.shape))
                self.buffered += self.length
                self.sequence += 1
                self._start(bytearray(framing.HEADER_SIZE), "header")
                return
            self._start(np.empty(self.length, dtype=np.uint8), "payload")
            if self.length:
                return
        # a part of length zero (empty payload) completes at once: handled by the loop


def _read_frame(sock: socket.socket, sequence: int, max_payload: int) -> np.ndarray | None:
    """One frame from a blocking socket, through the parser the channel uses (keep-alives
    skipped); None at a clean end of stream before the frame starts."""
    reader = _FrameReader(max_payload)
    reader.sequence = sequence
    while not reader.frames:
        n = sock.recv_into(reader.target())
        if n == 0:
            if not reader.mid_frame:
                return None
            raise PeerLost(f"connection closed mid-message ({reader.part})")
        reader.advance(n)
    return reader.take()


_WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError)


@dataclass
class TcpChannel(Channel):
    """All links of one party, driven from the calling thread: sockets are non-blocking and
    every wait (for a frame, or for a send to drain) services every link, reading whatever
    has arrived and writing what is pending. Reading while waiting to write keeps large
    simultaneous exchanges deadlock-free without reader threads; no thread hand-off per
    message is what makes a round cost tens of microseconds instead of hundreds.

    Any byte from a peer (a frame or a keep-alive) restarts the timeout of a receive from it
    or a send to it. With `start_keepalive`, a background thread writes keep-alives on idle
    outgoing links; each outgoing link has a lock held for a whole frame, so a keep-alive is
    never written into the middle of one."""

    outgoing: dict[int, ssl.SSLSocket] = field(default_factory=dict)
    incoming: dict[int, ssl.SSLSocket] = field(default_factory=dict)
    max_payload: int = framing.DEFAULT_MAX_PAYLOAD

    def start(self) -> None:
        """Switch the authenticated links to non-blocking mode and start parsing frames."""
        self._readers = {p: _FrameReader(self.max_payload, functools.partial(self.limit_of, p),
                                         functools.partial(self._over_limit, p))
                         for p in self.incoming}
        self._failure: dict[int, Exception] = {}
        self._by_socket = {sock: p for p, sock in self.incoming.items()}
        now = time.monotonic()
        self._locks = {p: threading.Lock() for p in self.outgoing}
        self._last_sent = dict.fromkeys(self.outgoing, now)
        self._pending: dict[int, bytes] = {}  # a keep-alive the socket took only in part
        self._torn: set[int] = set()  # outgoing links a frame was cut short on
        self._waiting_for: int | None = None
        self._keepalive: KeepAlive | None = None
        self._heard = dict.fromkeys(self.incoming, now)  # when each peer last sent a byte
        for sock in [*self.outgoing.values(), *self.incoming.values()]:
            sock.setblocking(False)

    # -- links added while running (a service's clients) ------------------------------------
    def attach(self, peer: int, sock: ssl.SSLSocket, name: str, received: int = 0,
               sent: int = 0, max_bytes: int = 0) -> None:
        """Add a link to `peer` over one TLS socket used both ways (a client that dialled
        this party), after `received` frames read from it and `sent` written to it by hand.
        It gets no keep-alives (one thread must not write while another reads one TLS
        socket); `max_bytes` is what it may have buffered here (`limit`)."""
        if peer in self._send_seq:
            raise ValueError(f"{self.role(self.party_id)} already has a link to endpoint {peer}")
        sock.setblocking(False)
        self.names = {**self.names, peer: name}
        self.peers = (*self.peers, peer)
        self.outgoing[peer] = self.incoming[peer] = sock
        self._send_seq[peer], self._recv_seq[peer] = sent, received
        self._limits[peer] = max_bytes
        reader = _FrameReader(self.max_payload, functools.partial(self.limit_of, peer),
                              functools.partial(self._over_limit, peer))
        reader.sequence = received
        self._readers[peer] = reader
        self._locks[peer] = threading.Lock()
        self._last_sent[peer] = self._heard[peer] = time.monotonic()

    def detach(self, peer: int) -> ssl.SSLSocket:
        """Remove the link `attach` added (the socket is returned, not closed)."""
        sock = self.incoming.pop(peer)
        self.outgoing.pop(peer)
        self.peers = tuple(p for p in self.peers if p != peer)
        for table in (self._send_seq, self._recv_seq, self._limits, self._readers, self._locks,
                      self._last_sent, self._failure, self._pending, self.dropped, self._heard):
            table.pop(peer, None)
        self._torn.discard(peer)
        self.tolerant.discard(peer)
        return sock

    def silent_for(self, peer: int) -> float:
        """Seconds since `peer` last sent anything (a frame or a keep-alive)."""
        self._read_available(peer)
        return time.monotonic() - self._heard.get(peer, time.monotonic())

    def failure(self) -> Exception | None:
        """Read what every link has (keep-alives, or an abort while idle) and return the
        first link failure recorded, as this endpoint's error; None if every link is whole."""
        for peer in self.incoming:
            self._read_available(peer)
        for peer in self.incoming:
            if peer in self._failure:
                return self._in_context(self._failure[peer])
        return None

    # -- keep-alives -----------------------------------------------------------------------
    def start_keepalive(self, interval: float | None = None) -> KeepAlive:
        """Send a keep-alive on every outgoing link idle for `interval` seconds (default: a
        quarter of the timeout) until the channel closes."""
        if self._keepalive is None:
            self._keepalive = KeepAlive(
                self.outgoing, interval or self.timeout / 4,
                idle=lambda p: time.monotonic() - self._last_sent[p], send=self._send_keepalive,
                waiting_for=lambda: self._waiting_for,
                name=f"sottovoce-keepalive-{self.party_id}")
            self._keepalive.start()
        return self._keepalive

    def _send_keepalive(self, peer: int) -> bool:
        """Write a keep-alive to `peer` unless the party's thread is writing to it; never
        blocks. A keep-alive the socket takes in part is finished before the next frame."""
        lock = self._locks[peer]
        if not lock.acquire(blocking=False):
            return False
        try:
            data = self._pending.pop(peer, _KEEPALIVE)
            try:
                sent = self.outgoing[peer].send(data)
            except _WOULD_BLOCK:  # TLS wants this very write retried: the next writer does
                self._pending[peer] = data
                return False
            except (OSError, ssl.SSLError, ValueError):
                return False  # the party's own next send or receive reports the broken link
            if sent < len(data):
                self._pending[peer] = data[sent:]
            self._last_sent[peer] = time.monotonic()
            return True
        finally:
            lock.release()

    # -- reading ---------------------------------------------------------------------------
    def _read_available(self, peer: int) -> bool:
        """Read everything the link from `peer` has (kernel and TLS buffers); True if any
        byte arrived. A closed or broken link is recorded, not raised: it matters only when
        this party waits for that peer."""
        if peer in self._failure:
            return False
        sock, reader, progressed = self.incoming[peer], self._readers[peer], False
        try:
            while True:
                n = sock.recv_into(reader.target())
                if n == 0:
                    where = " mid-message" if reader.mid_frame else ""
                    self._failure[peer] = PeerLost(f"{self.who(peer)} closed its "
                                                   f"connection{where}")
                    return progressed
                reader.advance(n)
                progressed = True
                self._heard[peer] = time.monotonic()
        except _WOULD_BLOCK:
            return progressed
        except PeerAborted as exc:
            self._failure[peer] = self._aborted(peer, exc.reason)
        except LimitExceeded as exc:  # names the peer and the step already
            self._failure[peer] = exc
        except ProtocolError as exc:
            self._failure[peer] = ProtocolError(f"{self.who(peer)} sent a bad frame: {exc}")
        except (OSError, ssl.SSLError) as exc:
            self._failure[peer] = PeerLost(f"connection to {self.role(peer)} broke: {exc}")
        return progressed

    def _wait(self, readable: list[ssl.SSLSocket], writable: list[ssl.SSLSocket],
              deadline: float) -> bool:
        """Block until a socket is ready or `deadline`; False if nothing became ready."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready = select.select(readable, writable, [], remaining)
        return bool(ready[0] or ready[1])

    def _recv_array(self, peer: int, expected_sequence: int) -> np.ndarray:
        reader = self._readers[peer]
        frames = reader.frames
        deadline = time.monotonic() + self.timeout
        # Only this peer's link wakes us (a wake-up per TLS record of every link would cost
        # more than the reads). Every party drains its incoming links while it waits to send,
        # and after _DRAIN_SECONDS without data from `peer` we drain the others too, so a
        # peer blocked writing to us is never stuck whatever order messages are read in.
        self._waiting_for = peer  # no keep-alives to it meanwhile: see mpc.net.keepalive
        try:
            while not frames:
                if self._read_available(peer):  # a frame, or a keep-alive: the peer lives
                    deadline = time.monotonic() + self.timeout
                    continue
                if peer in self._failure:
                    raise self._in_context(self._failure[peer])
                if time.monotonic() >= deadline:
                    raise PeerTimeout(f"{self.role(self.party_id)}: {self.who(peer)} sent "
                                      f"nothing for {self.timeout:g} s (step {self.step})")
                if not self._wait([self.incoming[peer]], [],
                                  min(deadline, time.monotonic() + _DRAIN_SECONDS)):
                    for other in self.incoming:
                        if other != peer:
                            self._read_available(other)
        finally:
            self._waiting_for = None
        return reader.take()

    # -- writing ---------------------------------------------------------------------------
    def _send_frame(self, peer: int, header: bytes, payload: np.ndarray) -> None:
        with self._locks[peer]:  # no keep-alive in the middle of this frame
            pending = self._pending.pop(peer, b"")
            try:
                self._write(peer, [memoryview(b) for b in (pending, header) if b]
                            + ([memoryview(payload.reshape(-1)).cast("B")]
                               if payload.nbytes else []))
            except BaseException:
                self._torn.add(peer)  # stopped mid-frame: nothing more may follow on it
                raise
            self._last_sent[peer] = time.monotonic()

    def _send_abort(self, peer: int, frame: bytes) -> None:
        """Write the abort frame if the link is whole, within `_ABORT_SECONDS`; a peer that
        takes nothing meanwhile learns of this party's end from the closed link instead."""
        lock = self._locks[peer]
        if peer in self._torn or not lock.acquire(timeout=_ABORT_SECONDS):
            return
        try:
            data = memoryview(self._pending.pop(peer, b"") + frame)
            sock, deadline = self.outgoing[peer], time.monotonic() + _ABORT_SECONDS
            while data and time.monotonic() < deadline:
                try:
                    data = data[sock.send(data):]
                except _WOULD_BLOCK:
                    select.select([], [sock], [], max(0.0, deadline - time.monotonic()))
        finally:
            lock.release()

    def _write(self, peer: int, parts: list[memoryview]) -> None:
        sock = self.outgoing[peer]
        deadline = time.monotonic() + self.timeout
        for view in parts:
            sent = 0
            while sent < len(view):
                want_read = False
                try:
                    sent += sock.send(view[sent:sent + _SEND_CHUNK])
                    deadline = time.monotonic() + self.timeout
                    continue
                except ssl.SSLWantReadError:  # TLS housekeeping (e.g. a key update)
                    want_read = True
                except _WOULD_BLOCK:
                    pass
                except (OSError, ssl.SSLError) as exc:
                    raise PeerLost(f"{self.role(self.party_id)}: sending to {self.role(peer)} "
                                   f"failed: {exc} (step {self.step})") from None
                # the peer's buffers are full: drain our own incoming links meanwhile, so a
                # peer blocked writing to us can go on and read what we send; a sign of life
                # from `peer` itself (it is computing, not gone) restarts the timeout
                progressed = {p: self._read_available(p) for p in self.incoming}
                if progressed.get(peer):
                    deadline = time.monotonic() + self.timeout
                if any(progressed.values()):
                    continue
                if time.monotonic() >= deadline:
                    raise PeerTimeout(f"{self.role(self.party_id)}: {self.who(peer)} accepted "
                                      f"no data for {self.timeout:g} s (step {self.step})")
                self._wait(list(self.incoming.values()) + [sock] * want_read, [sock], deadline)

    def _close_links(self) -> None:
        if getattr(self, "_keepalive", None) is not None:
            self._keepalive.stop()
        for sock in [*self.outgoing.values(), *self.incoming.values()]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def free_local_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now, for a trial on this machine: every probe
    stays open until all are chosen, so the OS cannot hand out the same port twice."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def listen(address: Address) -> socket.socket:
    """A listening socket; port 0 lets the operating system choose."""
    sock = socket.create_server(address, reuse_port=False)
    return sock


def _start_up_error(creds: Credentials, peers: tuple[int, ...], addresses: Mapping[int, Address],
                    dialled: Mapping[int, object], failures: Mapping[int, SottovoceError],
                    incoming: Mapping[int, object], problems: list[str],
                    connect_timeout: float) -> SottovoceError | None:
    """The error that explains a failed start-up best: a refused or wrong key first (it
    names the endpoint at fault), then a peer that could not be reached, then one that never
    dialled back (with what the acceptor refused meanwhile); None if every link is up."""
    for kind in (ConfigError, AuthenticationError):
        for peer in peers:
            if isinstance(failures.get(peer), kind):
                return failures[peer]
    for peer in peers:
        if peer in failures:
            return failures[peer]
        if peer not in dialled:  # its dial was still trying when time ran out
            host, port = addresses[peer]
            return PeerTimeout(f"{creds.role(creds.me)}: could not reach {creds.role(peer)} at "
                               f"{host}:{port} within {connect_timeout:g} s (it accepted no "
                               "link)")
    missing = [p for p in peers if p not in incoming]
    if not missing:
        return None
    host, port = addresses[missing[0]]
    detail = f"; meanwhile it {'; '.join(problems[-3:])}" if problems else ""
    return PeerTimeout(f"{creds.role(creds.me)}: {subject(creds.names, missing[0])} "
                       f"({host}:{port}) did not connect back within {connect_timeout:g} s"
                       f"{detail}")


def connect(party_id: int, addresses: dict[int, Address], tls: TlsFiles,
            listener: socket.socket | None = None, timeout: float = DEFAULT_TIMEOUT,
            connect_timeout: float = 30.0, names: Mapping[int, str] | None = None,
            keepalive: bool = False, handshake_timeout: float = HANDSHAKE_TIMEOUT
            ) -> TcpChannel:
    """Connect `party_id` to every other party in `addresses` over mutual TLS, each peer
    proved by the key `tls.pins` names for it.

    Peers are dialled in parallel while accepted connections are handshaken concurrently,
    so one slow, silent or hostile connection holds up nobody. A peer whose key is wrong (or
    that refuses this party's key) is an AuthenticationError naming its role, host and port,
    raised once the links with every other peer are settled, so they are not left waiting
    for this party; one that cannot be reached within `connect_timeout` is a PeerTimeout.
    Roles come from `names` ("party i" by default). `keepalive` starts keep-alives (a party
    running its role); channels driven by hand (tests) leave it off.
    """
    names = dict(names or {})
    if party_id not in addresses:
        raise ValueError(f"party {party_id} is not in the address list")
    peers = tuple(sorted(p for p in addresses if p != party_id))
    creds = Credentials.load(party_id, tls, sorted(addresses), names)
    client_ctx = creds.context()
    own_listener = listener is None
    if listener is None:
        listener = listen(addresses[party_id])
    deadline = time.monotonic() + connect_timeout
    progress = threading.Condition()
    acceptor = Acceptor(creds, listener, frozenset(peers), progress, handshake_timeout)
    outgoing: dict[int, ssl.SSLSocket] = {}
    failures: dict[int, SottovoceError] = {}
    abandoned = threading.Event()

    def dial_peer(peer: int) -> None:
        try:
            sock = dial(creds, peer, addresses[peer], client_ctx, deadline, handshake_timeout)
        except SottovoceError as exc:
            with progress:
                failures[peer] = exc
                progress.notify_all()
            return
        with progress:
            if abandoned.is_set():
                sock.close()
            else:
                outgoing[peer] = sock
            progress.notify_all()

    incoming: dict[int, ssl.SSLSocket] = {}
    try:
        acceptor.start()
        for peer in peers:
            threading.Thread(target=dial_peer, args=(peer,), daemon=True,
                             name=f"sottovoce-dial-{party_id}-{peer}").start()
        with progress:
            while True:
                dialled = len(outgoing) + len(failures) == len(peers)
                # a peer this party cannot link with is still waited for until it has
                # dialled here once: it learns why (this party's verdict or key) itself,
                # instead of finding nobody listening and blaming the address
                awaited = [p for p in peers if p not in acceptor.links
                           and not (p in failures and p in acceptor.heard)]
                remaining = deadline - time.monotonic()
                # past the deadline, give the dials a moment to say why they failed
                if (dialled and not awaited) or (remaining <= 0 and dialled) \
                        or remaining <= -_DIAL_GRACE:
                    break
                progress.wait(remaining if remaining > 0 else remaining + _DIAL_GRACE)
            abandoned.set()
        incoming = acceptor.stop()
        with progress:
            error = _start_up_error(creds, peers, addresses, dict(outgoing), dict(failures),
                                    incoming, list(acceptor.problems), connect_timeout)
        if error is not None:
            raise error
    except BaseException:
        abandoned.set()
        acceptor.stop()
        with progress:
            links = [*outgoing.values(), *incoming.values(), *acceptor.links.values()]
        for sock in links:
            sock.close()
        raise
    finally:
        if own_listener:
            listener.close()
    channel = TcpChannel(party_id=party_id, peers=peers, timeout=timeout, names=names,
                         outgoing=dict(outgoing), incoming=incoming)
    channel.start()
    if keepalive:
        channel.start_keepalive()
    return channel


def over_sockets(party_id: int, links: Mapping[int, ssl.SSLSocket], names: Mapping[int, str],
                 timeout: float, received: int = 0, sent: int = 0) -> TcpChannel:
    """A channel over one TLS socket per peer, used both ways (a client that dialled every
    server of a service), after `received` frames read from and `sent` written to each by
    hand."""
    channel = TcpChannel(party_id=party_id, peers=tuple(sorted(links)), timeout=timeout,
                         names=dict(names), outgoing=dict(links), incoming=dict(links))
    channel.start()
    for peer in links:
        channel._send_seq[peer], channel._recv_seq[peer] = sent, received
        channel._readers[peer].sequence = received
    return channel


def send_frame_blocking(sock: ssl.SSLSocket, array: np.ndarray, sequence: int) -> None:
    """One frame on a blocking socket (a service's hello and replies, before the link joins
    a channel)."""
    array = np.asarray(array, order="C")
    sock.sendall(framing.encode_header(array, sequence) + array.tobytes())


def read_frame_blocking(sock: ssl.SSLSocket, sequence: int, max_payload: int) -> np.ndarray:
    """One frame from a blocking socket (with its timeout); PeerLost if the stream ends."""
    frame = _read_frame(sock, sequence, max_payload)
    if frame is None:
        raise PeerLost("the connection closed")
    return frame
