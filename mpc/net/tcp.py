"""TCP transport with mutual TLS 1.3: one process per party, possibly on different hosts.

Each ordered pair of parties has its own TLS connection (i dials j to send, j dials i to
send back), so every TLS object is used by exactly one thread: the caller writes, one
reader thread per incoming link reads whole frames into a queue. That keeps OpenSSL
single-threaded per connection and makes large simultaneous exchanges deadlock-free.
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from mpc.errors import ConfigError, PeerLost, PeerTimeout, ProtocolError, SottovoceError
from mpc.net import framing
from mpc.net.certs import TlsFiles, party_name
from mpc.net.channel import DEFAULT_TIMEOUT, Channel

Address = tuple[str, int]
_RETRY_SECONDS = 0.05


class AuthenticationError(SottovoceError):
    """A peer's TLS certificate is not from the project CA or names another party."""


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


@dataclass
class TcpChannel(Channel):
    outgoing: dict[int, ssl.SSLSocket] = field(default_factory=dict)
    incoming: dict[int, ssl.SSLSocket] = field(default_factory=dict)
    max_payload: int = framing.DEFAULT_MAX_PAYLOAD

    def start_readers(self) -> None:
        self._inbox: dict[int, queue.SimpleQueue] = {p: queue.SimpleQueue() for p in self.peers}
        self._failure: dict[int, Exception] = {}
        self._readers = []
        for peer, sock in self.incoming.items():
            thread = threading.Thread(target=self._read_loop, args=(peer, sock),
                                      name=f"party{self.party_id}-from{peer}", daemon=True)
            thread.start()
            self._readers.append(thread)

    def _read_loop(self, peer: int, sock: ssl.SSLSocket) -> None:
        inbox = self._inbox[peer]
        sequence = 0
        try:
            while True:
                array = _read_frame(sock, sequence, self.max_payload)
                if array is None:
                    inbox.put(PeerLost(f"party {peer} closed its connection"))
                    return
                inbox.put(array)
                sequence += 1
        except ProtocolError as exc:
            inbox.put(ProtocolError(f"party {peer} sent a bad frame: {exc}"))
        except PeerLost as exc:
            inbox.put(PeerLost(f"party {peer}: {exc}"))
        except (OSError, ssl.SSLError) as exc:
            if not self._closed:
                inbox.put(PeerLost(f"connection to party {peer} broke: {exc}"))

    def _send_frame(self, peer: int, header: bytes, payload: np.ndarray) -> None:
        sock = self.outgoing[peer]
        try:
            sock.sendall(header)
            if payload.nbytes:
                sock.sendall(memoryview(payload.reshape(-1)).cast("B"))
        except TimeoutError:
            raise PeerTimeout(f"party {self.party_id}: party {peer} accepted no data for "
                              f"{self.timeout:g} s (step {self.step})") from None
        except (OSError, ssl.SSLError) as exc:
            raise PeerLost(f"party {self.party_id}: sending to party {peer} failed: {exc} "
                           f"(step {self.step})") from None

    def _recv_array(self, peer: int, expected_sequence: int) -> np.ndarray:
        if peer in self._failure:
            raise self._failure[peer]
        try:
            item = self._inbox[peer].get(timeout=self.timeout)
        except queue.Empty:
            raise PeerTimeout(f"party {self.party_id}: party {peer} sent nothing for "
                              f"{self.timeout:g} s (step {self.step})") from None
        if isinstance(item, Exception):
            error = type(item)(f"party {self.party_id}: {item} (step {self.step})")
            self._failure[peer] = error
            raise error
        return item

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
          deadline: float, timeout: float) -> ssl.SSLSocket:
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
                    f"party {party_id}: the server at {address[0]}:{address[1]} presents "
                    f"a certificate for {name!r}, expected {party_name(peer)!r}")
            _write_frame(sock, np.array([party_id], dtype=np.uint64), 0)
            ack = _read_frame(sock, 0, 64)
            if ack is None:
                raise PeerLost("closed without acknowledging")
        except ssl.SSLError as exc:
            raw.close()
            raise AuthenticationError(
                f"party {party_id}: TLS with party {peer} at {address[0]}:{address[1]} "
                f"failed: {getattr(exc, 'verify_message', None) or exc.reason or exc}") from None
        except (OSError, ProtocolError, PeerLost) as exc:
            raw.close()
            raise AuthenticationError(
                f"party {party_id}: party {peer} at {address[0]}:{address[1]} refused "
                f"this party's certificate or hello: {exc}") from None
        sock.settimeout(timeout)
        return sock
    raise PeerTimeout(f"party {party_id}: could not reach party {peer} at "
                      f"{address[0]}:{address[1]} ({last_error})")


def connect(party_id: int, addresses: dict[int, Address], tls: TlsFiles,
            listener: socket.socket | None = None, timeout: float = DEFAULT_TIMEOUT,
            connect_timeout: float = 30.0) -> TcpChannel:
    """Connect `party_id` to every other party in `addresses` over mutual TLS.

    Raises PeerTimeout naming the party, host and port of a peer that cannot be reached
    within `connect_timeout`, and AuthenticationError for a wrong certificate.
    """
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
                                   timeout)
        acceptor.join(max(0.0, deadline - time.monotonic()) + 1.0)
        missing = [p for p in peers if p not in incoming]
        if missing:
            host, port = addresses[missing[0]]
            detail = f"; {problems[-1]}" if problems else ""
            raise PeerTimeout(f"party {party_id}: party {missing[0]} ({host}:{port}) did not "
                              f"connect back within {connect_timeout:g} s{detail}")
    except BaseException:
        for sock in [*outgoing.values(), *incoming.values()]:
            sock.close()
        raise
    finally:
        if own_listener:
            listener.close()
    channel = TcpChannel(party_id=party_id, peers=peers, timeout=timeout,
                         outgoing=outgoing, incoming=incoming)
    channel.start_readers()
    return channel
