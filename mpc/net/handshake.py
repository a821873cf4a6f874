"""Start-up of one endpoint's TCP links: every peer proved by the key pinned for it.

Every ordered pair of endpoints has its own TLS 1.3 connection (i dials j to send to j).
Before TLS the dialer sends a short hello in the clear: its certificate (public), the id it
believes it has and the id it means to reach. The acceptor looks the certificate's key up
among the pins -- that is how it learns who dials, never from a name -- and answers with a
verdict: refused with the reason, or go on. The TLS handshake then trusts exactly that
certificate on the acceptor's side, and on the dialer's side nothing but the key pinned for
the endpoint it dials; TLS proves that each side holds the private key of the certificate it
presents. No CA, name or host name plays any part.

The acceptor handshakes every accepted connection in a thread of its own, each with a short
deadline, so a connection that sends nothing or garbage neither delays nor blames a genuine
peer; refused and failed connections are dropped and logged (address, key fingerprint and
reason: nothing secret).
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NoReturn

from cryptography.x509.oid import NameOID

from mpc.errors import AuthenticationError, ConfigError, PeerTimeout, SottovoceError
from mpc.net import certs
from mpc.net.certs import TlsFiles, fingerprint, short, validity_problem
from mpc.net.channel import role_name, subject

log = logging.getLogger(__name__)

Address = tuple[str, int]
HANDSHAKE_TIMEOUT = 5.0  # seconds an accepted connection has to prove who it is
MAX_HANDSHAKES = 32  # accepted connections handshaking at once; more are dropped at once
_RETRY_SECONDS = 0.05
_VERSION = 1
_NO_ID = 0xFFFFFFFF
_MAX_CERT = 16384
_MAX_REASON = 1024
_HELLO = struct.Struct("<4sB3xIIH")  # magic, version, claimed id, target id, cert length
_OK, _NO, _UP = b"SVOK", b"SVNO", b"SVUP"


class _Retry(Exception):
    """A transient failure of one dial attempt (nobody answered, the link broke)."""


class _Dropped(Exception):
    """An accepted connection that is not worth a verdict (garbage, silence, a lost link)."""


class _Refused(Exception):
    """An accepted connection refused with a reason the dialer is told."""


@dataclass
class Credentials:
    """One endpoint's own key and the pins of every endpoint, checked against each other."""

    me: int
    tls: TlsFiles
    pins: dict[int, str]
    names: Mapping[int, str]
    fingerprint: str
    der: bytes
    owners: dict[str, int] = field(default_factory=dict)  # fingerprint -> endpoint id

    @classmethod
    def load(cls, me: int, tls: TlsFiles, endpoints: list[int],
             names: Mapping[int, str]) -> Credentials:
        """Read this endpoint's certificate; ConfigError if a pin is missing or malformed,
        if this endpoint's key is not the one pinned for it, or if its certificate expired."""
        pins = {int(p): certs.normalize_fingerprint(fp) for p, fp in tls.pins.items()}
        bad = [p for p, fp in pins.items() if fp is None]
        if bad:
            raise ConfigError(f"{role_name(names, me)}: the fingerprint pinned for "
                              f"{role_name(names, bad[0])} is not 64 hex digits")
        missing = [p for p in endpoints if p not in pins]
        if missing:
            raise ConfigError(f"{role_name(names, me)}: no pinned key fingerprint for "
                              f"{role_name(names, missing[0])}")
        owners: dict[str, int] = {}
        for endpoint, fp in pins.items():
            if fp in owners:
                raise ConfigError(f"{role_name(names, me)}: {role_name(names, owners[fp])} "
                                  f"and {role_name(names, endpoint)} are pinned to the same "
                                  f"key {short(fp)}; every endpoint needs its own key")
            owners[fp] = endpoint
        cert = certs.read_certificate(tls.cert)
        own = fingerprint(cert)
        if own != pins[me]:
            raise ConfigError(f"{role_name(names, me)}: this endpoint's key ({tls.cert}, "
                              f"fingerprint {short(own)}) is not the key pinned for "
                              f"{subject(names, me)} ({short(pins[me])}): run with the key "
                              "made for this cluster, or pin this one in the cluster file")
        problem = validity_problem(cert)
        if problem:
            raise ConfigError(f"{role_name(names, me)}: this endpoint's {problem} ({tls.cert}); "
                              "make a new key and pin it")
        return cls(me=me, tls=tls, pins=pins, names=names, fingerprint=own,
                   der=certs.der_bytes(cert), owners=owners)

    def role(self, endpoint: int) -> str:
        """"party 1", "client", ...; "endpoint 9" for an id outside the cluster."""
        return role_name(self.names, endpoint) if endpoint in self.pins else f"endpoint {endpoint}"

    def who(self, endpoint: int) -> str:
        """The role as a sentence says it: "party 1", "the client", "endpoint 9"."""
        return subject(self.names, endpoint) if endpoint in self.pins else f"endpoint {endpoint}"

    def context(self, trusted: bytes | None = None) -> ssl.SSLContext:
        """A TLS 1.3 context presenting this endpoint's certificate: a server context that
        trusts only the certificate `trusted` (DER), or a client context that trusts no CA
        (the dialer checks the server's key against its pin itself)."""
        server = trusted is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        try:
            ctx.load_cert_chain(self.tls.cert, self.tls.key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"TLS files cannot be loaded (certificate {self.tls.cert}, key "
                              f"{self.tls.key}): {exc}") from None
        if server:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=trusted)
            ctx.num_tickets = 0  # no session resumption: every link proves its key afresh
        else:
            ctx.check_hostname = False  # endpoints are their keys, not their host names
            ctx.verify_mode = ssl.CERT_NONE  # the pin is checked after the handshake
        return ctx


def _recv_exactly(sock: socket.socket, size: int, deadline: float) -> bytes | None:
    """`size` bytes before `deadline`, or None if the stream ends first."""
    data = bytearray()
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(remaining)
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# -- the dialer --------------------------------------------------------------------------------
def dial(creds: Credentials, peer: int, address: Address, context: ssl.SSLContext,
         deadline: float, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> ssl.SSLSocket:
    """A TLS link to `peer` at `address`, proved to end at the key pinned for `peer`.

    Retries while nobody answers until `deadline` (then PeerTimeout naming the peer, host and
    port); a refusal or a wrong key is an AuthenticationError at once, naming the peer."""
    last_error: object = None
    while time.monotonic() < deadline:
        try:
            raw = socket.create_connection(
                address, timeout=max(0.05, min(handshake_timeout, deadline - time.monotonic())))
        except OSError as exc:
            last_error = exc
            time.sleep(_RETRY_SECONDS)
            continue
        try:
            return _dial_once(creds, peer, address, raw, context,
                              min(deadline, time.monotonic() + handshake_timeout))
        except _Retry as exc:
            last_error = exc
            raw.close()
            time.sleep(_RETRY_SECONDS)
        except BaseException:
            raw.close()
            raise
    raise PeerTimeout(f"{creds.role(creds.me)}: could not reach {creds.role(peer)} at "
                      f"{address[0]}:{address[1]} ({last_error})")


def _dial_once(creds: Credentials, peer: int, address: Address, raw: socket.socket,
               context: ssl.SSLContext, deadline: float) -> ssl.SSLSocket:
    me, them = creds.role(creds.me), subject(creds.names, peer)
    where = f"{address[0]}:{address[1]}"
    _nodelay(raw)
    try:
        raw.settimeout(max(0.05, deadline - time.monotonic()))
        raw.sendall(_HELLO.pack(b"SVID", _VERSION, creds.me, peer, len(creds.der)) + creds.der)
        verdict = _recv_exactly(raw, 4, deadline)
        if verdict == _NO:
            size = _recv_exactly(raw, 2, deadline)
            text = _recv_exactly(raw, struct.unpack("<H", size)[0], deadline) if size else b""
            reason = (text or b"").decode("utf-8", "replace")
            raise AuthenticationError(
                f"{me}: {them} at {where} refused this endpoint's key "
                f"({short(creds.fingerprint)}): {reason or 'no reason given'}")
    except (OSError, TimeoutError) as exc:
        raise _Retry(f"no answer to the hello: {exc}") from None
    if verdict is None:
        raise _Retry("the connection closed before the hello was answered")
    if verdict != _OK:
        raise AuthenticationError(f"{me}: the server at {where} is not a sottovoce endpoint "
                                  f"(it answered the hello with {verdict!r})")
    try:
        raw.settimeout(max(0.05, deadline - time.monotonic()))
        sock = context.wrap_socket(raw)
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError) as exc:
        raise _Retry(f"TLS handshake broke off: {exc}") from None  # e.g. the peer restarted
    except ssl.SSLError as exc:
        raise AuthenticationError(
            f"{me}: TLS with {creds.role(peer)} at {where} failed: "
            f"{getattr(exc, 'verify_message', None) or exc.reason or exc}") from None
    except OSError as exc:
        raise _Retry(f"TLS handshake broke off: {exc}") from None
    try:
        _check_server(creds, peer, where, sock)
        ack = _recv_exactly(sock, 4, deadline)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        sock.close()
        raise _Retry(f"{creds.role(peer)} did not accept the link after TLS: {exc}") from None
    except BaseException:
        sock.close()
        raise
    if ack != _UP:
        sock.close()
        raise _Retry(f"{creds.role(peer)} closed the link after TLS without accepting it")
    sock.settimeout(None)
    return sock


def _check_server(creds: Credentials, peer: int, where: str, sock: ssl.SSLSocket) -> None:
    """The server's key must be the one pinned for `peer`, in a certificate valid now."""
    me, them = creds.role(creds.me), subject(creds.names, peer)
    der = sock.getpeercert(binary_form=True)
    if not der:
        raise AuthenticationError(f"{me}: {them} at {where} presented no certificate")
    try:
        cert = certs.certificate_from_der(der)
    except ValueError:
        raise AuthenticationError(f"{me}: {them} at {where} presented an unreadable "
                                  "certificate") from None
    got = fingerprint(cert)
    if got != creds.pins[peer]:
        owner = creds.owners.get(got)
        whose = (f"the key pinned for {creds.who(owner)}" if owner is not None
                 else "a key pinned for no endpoint")
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        names = names or ["(none)"]
        raise AuthenticationError(
            f"{me}: {them} at {where} presents key {short(got)} (certificate named "
            f"{names[0]!r}), {whose}: wrong fingerprint for {creds.who(peer)}, whose "
            f"pinned key is {short(creds.pins[peer])}; refused")
    problem = validity_problem(cert)
    if problem:
        raise AuthenticationError(f"{me}: {them} at {where} presents a key that is pinned "
                                  f"for it, but its {problem}; refused")


# -- the acceptor ------------------------------------------------------------------------------
class Acceptor:
    """Accepts connections on `listener` until stopped, each handshaken in its own thread:
    `links` gets one authenticated link per expected peer; `heard` the ids that dialled
    (as their hello says: proved or not); `progress` is notified whenever either changes;
    `problems` says why connections were refused (for start-up errors)."""

    def __init__(self, creds: Credentials, listener: socket.socket, expected: frozenset[int],
                 progress: threading.Condition,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.creds, self.listener, self.expected = creds, listener, expected
        self.progress, self.handshake_timeout = progress, handshake_timeout
        self.links: dict[int, ssl.SSLSocket] = {}
        #: If set, each authenticated link is handed to it (a service's front door, where one
        #: key may hold several links at once) instead of being kept in `links`.
        self.on_link: Callable[[int, ssl.SSLSocket], None] | None = None
        self.heard: set[int] = set()
        self.problems: list[str] = []
        self._stopped = False
        self._active = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"sottovoce-accept-{creds.me}")

    def start(self) -> None:
        self.listener.setblocking(False)
        self._thread.start()

    def stop(self) -> dict[int, ssl.SSLSocket]:
        """Stop accepting (handshakes still running drop their connection); the links.
        Stopping twice, or before `start`, is harmless."""
        with self.progress:
            already, self._stopped = self._stopped, True
            links = dict(self.links)
        if not already:
            self._wake_w.send(b"x")
            if self._thread.is_alive():
                self._thread.join()
            self._wake_r.close()
            self._wake_w.close()
        return links

    def _accept_loop(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.listener, self._wake_r], [], [])
            except (OSError, ValueError) as exc:  # the listener was closed under us
                self._problem(f"the listening socket failed: {exc}")
                return
            if self._wake_r in ready:
                return
            try:
                raw, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                self._problem(f"the listening socket failed: {exc}")
                return
            with self.progress:
                busy = self._active >= MAX_HANDSHAKES
                if not busy:
                    self._active += 1
            if busy:
                self._problem(f"dropped a connection from {_where(address)}: "
                              f"{MAX_HANDSHAKES} handshakes already under way")
                raw.close()
                continue
            threading.Thread(target=self._handshake, args=(raw, address), daemon=True,
                             name=f"sottovoce-handshake-{self.creds.me}").start()

    def _problem(self, text: str) -> None:
        log.warning("%s: %s", self.creds.role(self.creds.me), text)
        with self.progress:
            self.problems.append(text)
            del self.problems[:-100]  # a long-running acceptor keeps the latest only
            self.progress.notify_all()

    def _handshake(self, raw: socket.socket, address: tuple) -> None:
        where = _where(address)
        said: dict[str, int] = {}
        try:
            peer, sock = self._authenticate(raw, where, said)
        except _Refused as exc:
            self._problem(f"refused a connection from {where}: {exc}")
            raw.close()
        except _Dropped as exc:
            self._problem(f"dropped a connection from {where}: {exc}")
            raw.close()
        except (OSError, TimeoutError, ValueError, SottovoceError) as exc:
            self._problem(f"dropped a connection from {where}: its handshake failed: {exc}")
            raw.close()
        else:
            if self.on_link is not None and not self._stopped:
                self.on_link(peer, sock)
                return
            with self.progress:
                if self._stopped:
                    sock.close()
                else:
                    old = self.links.pop(peer, None)
                    if old is not None:  # the peer dialled again: its newer link replaces it
                        old.close()
                    self.links[peer] = sock
                    self.progress.notify_all()
        finally:
            with self.progress:
                self._active -= 1
                if "id" in said:  # a hint only: this endpoint has had its try (and its answer)
                    self.heard.add(said["id"])
                    self.progress.notify_all()

    def _authenticate(self, raw: socket.socket, where: str, said: dict[str, int]
                      ) -> tuple[int, ssl.SSLSocket]:
        """The id of the endpoint at the other end of `raw`, proved by its key, and the TLS
        link; `said["id"]` is the id its hello claims, once read."""
        creds = self.creds
        deadline = time.monotonic() + self.handshake_timeout
        _nodelay(raw)
        try:
            head = _recv_exactly(raw, _HELLO.size, deadline)
        except TimeoutError:
            raise _Dropped(f"it sent no hello within {self.handshake_timeout:g} s") from None
        if head is None:
            raise _Dropped("it closed before sending a hello")
        magic, version, claimed, target, length = _HELLO.unpack(head)
        if magic != b"SVID":
            raise _Dropped("it does not speak sottovoce (no hello)")
        said["id"] = claimed
        if version != _VERSION:
            self._refuse(raw, f"hello version {version}; this endpoint speaks {_VERSION}")
        if not 0 < length <= _MAX_CERT:
            self._refuse(raw, f"a certificate of {length} bytes")
        try:
            der = _recv_exactly(raw, length, deadline)
        except TimeoutError:
            raise _Dropped(f"its hello was not complete within {self.handshake_timeout:g} s") \
                from None
        if der is None:
            raise _Dropped("it closed in the middle of its hello")
        try:
            cert = certs.certificate_from_der(der)
        except ValueError:
            self._refuse(raw, "its hello holds no certificate")
        got = fingerprint(cert)
        owner = creds.owners.get(got)
        says = creds.who(claimed) if claimed != _NO_ID else "nobody"
        if owner is None:
            if claimed in creds.pins:
                self._refuse(raw, f"it says it is {says}, but its key {short(got)} is not the "
                             f"key pinned for {says} ({short(creds.pins[claimed])}): wrong "
                             f"fingerprint for {says}")
            self._refuse(raw, f"unknown key {short(got)} (it says it is {says}): not pinned "
                         "for any endpoint")
        if claimed != owner:
            self._refuse(raw, f"it presents the key of {creds.who(owner)} but says it is {says}")
        if target != creds.me:
            self._refuse(raw, f"{creds.who(owner)} meant to reach {creds.who(target)}, but "
                         f"this is {creds.who(creds.me)}: the cluster files disagree on "
                         "addresses")
        if owner not in self.expected:
            self._refuse(raw, f"{creds.who(owner)} is not a peer of {creds.who(creds.me)} "
                         "in this computation")
        problem = validity_problem(cert)
        if problem:
            self._refuse(raw, f"the {problem} ({creds.who(owner)}'s key {short(got)})")
        raw.settimeout(max(0.05, deadline - time.monotonic()))
        raw.sendall(_OK)
        context = creds.context(trusted=der)
        try:
            sock = context.wrap_socket(raw, server_side=True)
        except ssl.SSLError as exc:
            detail = getattr(exc, "verify_message", None) or exc.reason or exc
            raise _Dropped(f"it presented the certificate of {creds.who(owner)} but failed "
                           f"TLS ({detail}): it does not hold that key") from None
        try:
            leaf = sock.getpeercert(binary_form=True)
            if not leaf or fingerprint(certs.certificate_from_der(leaf)) != creds.pins[owner]:
                raise _Dropped(f"its TLS certificate is not the one of its hello "
                               f"({creds.who(owner)}'s)")
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            sock.sendall(_UP)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        return owner, sock

    @staticmethod
    def _refuse(raw: socket.socket, reason: str) -> NoReturn:
        """Tell the dialer why (best effort: it may be gone), then refuse."""
        text = reason.encode()[:_MAX_REASON]
        try:
            raw.settimeout(1.0)
            raw.sendall(_NO + struct.pack("<H", len(text)) + text)
        except OSError:
            pass
        raise _Refused(reason)


def _where(address: tuple) -> str:
    return f"{address[0]}:{address[1]}" if len(address) >= 2 else str(address)
