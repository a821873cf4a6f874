"""TCP transport with mutual TLS 1.3: one process per party, possibly on different hosts.

Each ordered pair of parties has its own TLS connection (i dials j to send, j dials i to
send back). After the handshake every link is non-blocking and driven by the party's own
thread (`TcpChannel`): whenever it waits it reads every incoming link, so two parties
sending each other megabytes at once never deadlock, and no thread hand-off sits in the
path of a round.
"""

from __future__ import annotations

import collections
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mpc.errors import AuthenticationError, ConfigError, PeerLost, PeerTimeout, ProtocolError
from mpc.net import framing
from mpc.net.certs import TlsFiles, party_name
from mpc.net.channel import DEFAULT_TIMEOUT, Channel, role_name, subject

Address = tuple[str, int]
_RETRY_SECONDS = 0.05
_DRAIN_SECONDS = 0.02


def _contexts(tls: TlsFiles) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        try:
            ctx.load_cert_chain(tls.cert, tls.key)
            ctx.load_verify_locations(tls.ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"TLS files cannot be loaded (certificate {tls.cert}, key "
                              f"{tls.key}, CA {tls.ca}): {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    client.check_hostname = False  # parties are identified by certificate name, not host
    return server, client


def _common_name(sock: ssl.SSLSocket) -> str | None:
    cert = sock.getpeercert()
    for rdn in cert.get("subject", ()) if cert else ():
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    """`size` bytes, or None at a clean end of stream before the first byte."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            if got == 0:
                return None
            raise PeerLost(f"connection closed mid-message ({got} of {size} bytes)")
        got += n
    return bytes(buffer)


def _read_frame(sock: socket.socket, sequence: int, max_payload: int) -> np.ndarray | None:
    head = _recv_exactly(sock, framing.HEADER_SIZE)
    if head is None:
        return None
    dtype, ndim, length = framing.decode_header(head, sequence, max_payload)
    shape_raw = _recv_exactly(sock, 8 * ndim) if ndim else b""
    if shape_raw is None:
        raise PeerLost("connection closed mid-message (shape)")
    shape = framing.decode_shape(shape_raw, ndim, dtype, length)
    payload = np.empty(length, dtype=np.uint8)
    view = memoryview(payload)
    got = 0
    while got < length:
        n = sock.recv_into(view[got:], min(length - got, 1 << 22))
        if n == 0:
            raise PeerLost(f"connection closed mid-message ({got} of {length} payload bytes)")
        got += n
    return payload.view(dtype).reshape(shape)


def _write_frame(sock: socket.socket, array: np.ndarray, sequence: int) -> None:
    sock.sendall(framing.encode(array, sequence))


class _FrameReader:
    """Incremental parser of one incoming link: header, shape, then the payload read straight
    into the array that will be handed to the protocol (no intermediate copy)."""

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self.sequence = 0
        self.frames: collections.deque[np.ndarray] = collections.deque()
        self._start(bytearray(framing.HEADER_SIZE), "header")

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
                self.dtype, self.ndim, self.length = framing.decode_header(
                    bytes(self.buffer), self.sequence, self.max_payload)
                if self.ndim:
                    self._start(bytearray(8 * self.ndim), "shape")
                    continue
                self.shape = framing.decode_shape(b"", 0, self.dtype, self.length)
            elif self.part == "shape":
                self.shape = framing.decode_shape(bytes(self.buffer), self.ndim, self.dtype,
                                                  self.length)
            else:
                self.frames.append(self.buffer.view(self.dtype).reshape(self.shape))
                self.sequence += 1
                self._start(bytearray(framing.HEADER_SIZE), "header")
                return
            self._start(np.empty(self.length, dtype=np.uint8), "payload")
            if self.length:
                return
        # a part of length zero (empty payload) completes at once: handled by the loop


_WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError)


@dataclass
class TcpChannel(Channel):
    """All links of one party, driven from the calling thread: sockets are non-blocking and
    every wait (for a frame, or for a send to drain) services every link, reading whatever
    has arrived and writing what is pending. Reading while waiting to write keeps large
    simultaneous exchanges deadlock-free without reader threads; no thread hand-off per
    message is what makes a round cost tens of microseconds instead of hundreds."""

    outgoing: dict[int, ssl.SSLSocket] = field(default_factory=dict)
    incoming: dict[int, ssl.SSLSocket] = field(default_factory=dict)
    max_payload: int = framing.DEFAULT_MAX_PAYLOAD

    def start(self) -> None:
        """Switch the authenticated links to non-blocking mode and start parsing frames."""
        self._readers = {p: _FrameReader(self.max_payload) for p in self.incoming}
        self._failure: dict[int, Exception] = {}
        self._by_socket = {sock: p for p, sock in self.incoming.items()}
        for sock in [*self.outgoing.values(), *self.incoming.values()]:
            sock.setblocking(False)

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
        except _WOULD_BLOCK:
            return progressed
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
        frames = self._readers[peer].frames
        deadline = time.monotonic() + self.timeout
        # Only this peer's link wakes us (a wake-up per TLS record of every link would cost
        # more than the reads). Every party drains its incoming links while it waits to send,
        # and after _DRAIN_SECONDS without data from `peer` we drain the others too, so a
        # peer blocked writing to us is never stuck whatever order messages are read in.
        while not frames:
            if self._read_available(peer):
                deadline = time.monotonic() + self.timeout
                continue
            if peer in self._failure:
                failure = self._failure[peer]
                raise type(failure)(f"{self.role(self.party_id)}: {failure} "
                                    f"(step {self.step})")
            if time.monotonic() >= deadline:
                raise PeerTimeout(f"{self.role(self.party_id)}: {self.who(peer)} sent nothing for "
                                  f"{self.timeout:g} s (step {self.step})")
            if not self._wait([self.incoming[peer]], [],
                              min(deadline, time.monotonic() + _DRAIN_SECONDS)):
                for other in self.incoming:
                    if other != peer:
                        self._read_available(other)
        return frames.popleft()

    # -- writing ---------------------------------------------------------------------------
    def _send_frame(self, peer: int, header: bytes, payload: np.ndarray) -> None:
        sock = self.outgoing[peer]
        deadline = time.monotonic() + self.timeout
        parts = [memoryview(header)]
        if payload.nbytes:
            parts.append(memoryview(payload.reshape(-1)).cast("B"))
        for view in parts:
            sent = 0
            while sent < len(view):
                want_read = False
                try:
                    sent += sock.send(view[sent:])
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
                # peer blocked writing to us can go on and read what we send
                if any([self._read_available(p) for p in self.incoming]):
                    continue
                if time.monotonic() >= deadline:
                    raise PeerTimeout(f"{self.role(self.party_id)}: {self.who(peer)} accepted "
                                      f"no data for {self.timeout:g} s (step {self.step})")
                self._wait(list(self.incoming.values()) + [sock] * want_read, [sock], deadline)

    def _close_links(self) -> None:
        for sock in [*self.outgoing.values(), *self.incoming.values()]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def listen(address: Address) -> socket.socket:
    """A listening socket; port 0 lets the operating system choose."""
    sock = socket.create_server(address, reuse_port=False)
    return sock


def _accept_all(listener: socket.socket, server_ctx: ssl.SSLContext, expected: set[int],
                deadline: float, result: dict[int, ssl.SSLSocket], problems: list[str]) -> None:
    """Accept one authenticated incoming connection from each expected party."""
    listener.settimeout(_RETRY_SECONDS * 4)
    while expected - result.keys() and time.monotonic() < deadline:
        try:
            raw, peer_address = listener.accept()
        except TimeoutError:
            continue
        except OSError as exc:
            problems.append(f"listening socket failed: {exc}")
            return
        try:
            raw.settimeout(max(0.1, deadline - time.monotonic()))
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = server_ctx.wrap_socket(raw, server_side=True)
            hello = _read_frame(sock, 0, 64)
            claimed = int(hello[0]) if hello is not None and hello.size == 1 else -1
            name = _common_name(sock)
            if claimed not in expected or name != party_name(claimed):
                problems.append(f"refused connection from {peer_address[0]}: claims party "
                                f"{claimed}, certificate names {name!r}")
                sock.close()
                continue
            _write_frame(sock, np.array([1], dtype=np.uint64), 0)
            sock.settimeout(None)
            result[claimed] = sock
        except (OSError, ssl.SSLError, ValueError, ProtocolError, PeerLost) as exc:
            problems.append(f"refused connection from {peer_address[0]}: {exc}")
            raw.close()


def _dial(party_id: int, peer: int, address: Address, client_ctx: ssl.SSLContext,
          deadline: float, timeout: float, names: Mapping[int, str] | None = None
          ) -> ssl.SSLSocket:
    names = names or {}
    me, them = role_name(names, party_id), subject(names, peer)
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            raw = socket.create_connection(address, timeout=max(0.1, deadline - time.monotonic()))
        except OSError as exc:
            last_error = exc
            time.sleep(_RETRY_SECONDS)
            continue
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock = client_ctx.wrap_socket(raw)
            name = _common_name(sock)
            if name != party_name(peer):
                sock.close()
                raise AuthenticationError(
                    f"{me}: the server at {address[0]}:{address[1]} presents "
                    f"a certificate for {name!r}, expected {party_name(peer)!r}")
            _write_frame(sock, np.array([party_id], dtype=np.uint64), 0)
            ack = _read_frame(sock, 0, 64)
            if ack is None:
                raise PeerLost("closed without acknowledging")
        except ssl.SSLError as exc:
            raw.close()
            raise AuthenticationError(
                f"{me}: TLS with {role_name(names, peer)} at {address[0]}:{address[1]} "
                f"failed: {getattr(exc, 'verify_message', None) or exc.reason or exc}") from None
        except (OSError, ProtocolError, PeerLost) as exc:
            raw.close()
            raise AuthenticationError(
                f"{me}: {them} at {address[0]}:{address[1]} refused "
                f"this party's certificate or hello: {exc}") from None
        sock.settimeout(timeout)
        return sock
    raise PeerTimeout(f"{me}: could not reach {role_name(names, peer)} at "
                      f"{address[0]}:{address[1]} ({last_error})")


def connect(party_id: int, addresses: dict[int, Address], tls: TlsFiles,
            listener: socket.socket | None = None, timeout: float = DEFAULT_TIMEOUT,
            connect_timeout: float = 30.0, names: Mapping[int, str] | None = None
            ) -> TcpChannel:
    """Connect `party_id` to every other party in `addresses` over mutual TLS.

    Raises PeerTimeout naming the party (by its role in `names`, "party i" by default),
    host and port of a peer that cannot be reached within `connect_timeout`, and
    AuthenticationError for a wrong certificate.
    """
    names = dict(names or {})
    if party_id not in addresses:
        raise ValueError(f"party {party_id} is not in the address list")
    peers = tuple(sorted(p for p in addresses if p != party_id))
    server_ctx, client_ctx = _contexts(tls)
    own_listener = listener is None
    if listener is None:
        listener = listen(addresses[party_id])
    deadline = time.monotonic() + connect_timeout
    incoming: dict[int, ssl.SSLSocket] = {}
    problems: list[str] = []
    acceptor = threading.Thread(target=_accept_all, daemon=True,
                                args=(listener, server_ctx, set(peers), deadline, incoming,
                                      problems))
    acceptor.start()
    outgoing: dict[int, ssl.SSLSocket] = {}
    try:
        for peer in peers:
            outgoing[peer] = _dial(party_id, peer, addresses[peer], client_ctx, deadline,
                                   timeout, names)
        acceptor.join(max(0.0, deadline - time.monotonic()) + 1.0)
        missing = [p for p in peers if p not in incoming]
        if missing:
            host, port = addresses[missing[0]]
            detail = f"; {problems[-1]}" if problems else ""
            raise PeerTimeout(f"{role_name(names, party_id)}: {subject(names, missing[0])} "
                              f"({host}:{port}) did not "
                              f"connect back within {connect_timeout:g} s{detail}")
    except BaseException:
        for sock in [*outgoing.values(), *incoming.values()]:
            sock.close()
        raise
    finally:
        if own_listener:
            listener.close()
    channel = TcpChannel(party_id=party_id, peers=peers, timeout=timeout, names=names,
                         outgoing=outgoing, incoming=incoming)
    channel.start()
    return channel
