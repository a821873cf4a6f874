"""Where clients reach a role: TLS with every client proved by a key the cluster file lists,
each connection answered in a thread of its own, complete requests queued for a batch.

A connection that sends garbage, stalls or leaves before its request is complete is dropped
here and costs nobody else anything; only complete requests reach the queue.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from experiments.service import messages
from experiments.service.config import ServiceConfig, load_service
from experiments.service.state import checked_version
from mpc.errors import SottovoceError
from mpc.net import tcp
from mpc.net.certs import TlsFiles
from mpc.net.handshake import Acceptor, Credentials

log = logging.getLogger("sottovoce.service")


@dataclass
class Request:
    """One client's request, complete and waiting for a batch."""

    kind: str  # "classify" or "publish"
    rid: str
    client: str
    sock: ssl.SSLSocket = field(repr=False)
    clips: int = 0
    version: str = ""
    document: dict | None = field(default=None, repr=False)  # what is published
    received: int = 0  # frames read from the link so far
    sent: int = 0  # frames written to it so far
    arrived: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[str, str]:
        return (self.client, self.rid)

    def digest(self) -> np.ndarray:
        """What every role must have received alike (4 words)."""
        text = json.dumps([self.kind, self.rid, self.client, self.clips, self.version,
                           self.document], sort_keys=True).encode()
        return np.frombuffer(hashlib.sha256(text).digest(), dtype=np.uint64).copy()

    def refuse(self, reason: str) -> None:
        """Tell the client why its request fails, then close its link (best effort)."""
        from mpc.net import framing

        try:
            self.sock.settimeout(1.0)
            self.sock.sendall(framing.abort(reason))
        except (OSError, ValueError):
            pass
        close(self.sock)


def close(sock: ssl.SSLSocket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class FrontDoor:
    """Accepts clients of role `me` until stopped. `describe()` is the current model's
    document (or None), `status()` the role's status, `refusal()` why requests are refused
    now (or None)."""

    def __init__(self, config: ServiceConfig, me: int, describe: Callable[[], dict | None],
                 status: Callable[[], dict], refusal: Callable[[], str | None]) -> None:
        self.config, self.me = config, me
        self.describe, self.status, self.refusal = describe, status, refusal
        self.pending: dict[tuple[str, str], Request] = {}
        self.changed = threading.Condition()
        self._acceptor: Acceptor | None = None
        self._mtime = 0.0
        self.address: tuple[str, int] = ("", 0)

    # -- the listener --------------------------------------------------------------------
    def _credentials(self, config: ServiceConfig) -> tuple[Credentials, frozenset[int]]:
        own = config.cluster.tls(self.me)
        pins = {self.me: own.pins[self.me], **{k.endpoint: k.fingerprint
                                               for k in config.clients}}
        names = {self.me: config.name_of(self.me),
                 **{k.endpoint: f"client {k.name}" for k in config.clients}}
        creds = Credentials.load(self.me, TlsFiles(own.cert, own.key, pins), sorted(pins), names)
        return creds, frozenset(k.endpoint for k in config.clients)

    def start(self, listener: socket.socket | None = None) -> tuple[str, int]:
        spec = self.config.cluster.parties[self.me]
        if listener is None:
            listener = tcp.listen((spec.bind or spec.host, spec.service_port or 0))
        self.address = listener.getsockname()[:2]
        creds, expected = self._credentials(self.config)
        self._mtime = self._file_time()
        self._acceptor = Acceptor(creds, listener, expected, threading.Condition(),
                                  self.config.client_timeout)
        self._acceptor.on_link = self._on_link
        self._acceptor.start()
        threading.Thread(target=self._watch_keys, daemon=True,
                         name="sottovoce-service-keys").start()
        return self.address

    def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.stop()
            self._acceptor.listener.close()

    def _file_time(self) -> float:
        try:
            return self.config.cluster.path.stat().st_mtime
        except OSError:
            return self._mtime

    def _watch_keys(self) -> None:
        """Read the cluster file again when it changes: keys added or removed by an
        operator take effect for the next connection."""
        while self._acceptor is not None and not self._acceptor._stopped:
            time.sleep(1.0)
            mtime = self._file_time()
            if mtime == self._mtime:
                continue
            self._mtime = mtime
            try:
                config = load_service(self.config.cluster.path).for_lane(self.config.lane)
                creds, expected = self._credentials(config)
            except SottovoceError as exc:
                log.warning("%s: the cluster file changed but cannot be used, keeping the "
                            "keys read before: %s", self.config.name_of(self.me), exc)
                continue
            self.config = config
            self._acceptor.creds, self._acceptor.expected = creds, expected
            log.info("%s: client keys read again (%d listed)", self.config.name_of(self.me),
                     len(config.clients))

    # -- one connection ------------------------------------------------------------------
    def _on_link(self, endpoint: int, sock: ssl.SSLSocket) -> None:
        threading.Thread(target=self._serve_link, args=(endpoint, sock), daemon=True,
                         name="sottovoce-service-client").start()

    def _serve_link(self, endpoint: int, sock: ssl.SSLSocket) -> None:
        key = next((k for k in self.config.clients if k.endpoint == endpoint), None)
        if key is None:
            close(sock)
            return
        who = f"client {key.name}"
        sock.settimeout(self.config.client_timeout)
        request: Request | None = None
        try:
            hello = messages.receive(sock, 0, who)
            kind, rid = hello.get("kind"), hello.get("rid", secrets.token_hex(8))
            if not isinstance(rid, str) or not 1 <= len(rid) <= 64:
                raise ValueError("its request id must be a string of 1-64 characters")
            if kind == "status":
                messages.send(sock, self.status(), 0)
                close(sock)
                return
            request = Request(kind=str(kind), rid=rid, client=key.name, sock=sock, received=1)
            refusal = self.refusal()
            if refusal is not None:
                raise ValueError(refusal)
            if kind == "classify":
                self._classify(request, who)
            elif kind == "publish":
                self._publish(request, hello, key.publish)
            else:
                raise ValueError(f"unknown kind of request {kind!r} (classify, publish or "
                                 "status)")
        except (ValueError, SottovoceError, OSError) as exc:
            log.info("%s: %s dropped: %s", self.config.name_of(self.me), who, exc)
            if request is not None:
                request.refuse(f"{self.config.name_of(self.me)}: {exc}")
            else:
                close(sock)
            return
        sock.settimeout(None)
        with self.changed:
            old = self.pending.pop(request.key, None)
            if old is not None:
                old.refuse(f"{self.config.name_of(self.me)}: replaced by a newer request "
                           "with the same id")
            self.pending[request.key] = request
            self.changed.notify_all()

    def _classify(self, request: Request, who: str) -> None:
        described = self.describe()
        if described is None:
            raise ValueError("no model has been published to this service yet")
        messages.send(request.sock, described, 0)
        request.sent = 1
        # the client computes its features now, then says it is ready
        request.sock.settimeout(self.config.cluster.timeout)
        ready = messages.receive(request.sock, 1, who)
        request.received = 2
        clips = ready.get("clips")
        if isinstance(clips, bool) or not isinstance(clips, int) \
                or not 1 <= clips <= self.config.max_batch:
            raise ValueError(f"{who} asked for {clips!r} clips; this service takes "
                             f"1..{self.config.max_batch} a request")
        request.clips = clips
        request.version = checked_version(ready.get("version"))
        request.arrived = time.monotonic()

    def _publish(self, request: Request, hello: dict, allowed: bool) -> None:
        if not allowed:
            raise ValueError(f"client {request.client}'s key may not publish models "
                             "(publish = true in its [[client]] entry)")
        if self.config.lane:
            raise ValueError("publish through lane 0: the other lanes serve what it stores")
        from nn.describe import from_description

        request.version = checked_version(hello.get("version"))
        document = {"model": hello.get("model"), "features": hello.get("features")}
        from_description(document["model"])  # a ConfigError names what is wrong
        if not isinstance(document["features"], dict):
            raise ValueError("a published model needs its feature settings (features)")
        request.document = document

    # -- the queue -----------------------------------------------------------------------
    def take(self, keys: list[tuple[str, str]], wait: float) -> dict[tuple[str, str], Request]:
        """The requests among `keys` queued here, waiting up to `wait` seconds for the
        missing ones (a client reaches the roles one after the other)."""
        deadline = time.monotonic() + wait
        with self.changed:
            while any(k not in self.pending for k in keys):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.changed.wait(remaining)
            return {k: self.pending.pop(k) for k in keys if k in self.pending}

    def fail_all(self, reason: str) -> None:
        """Refuse every queued request (the service cannot serve them)."""
        with self.changed:
            waiting, self.pending = list(self.pending.values()), {}
        for request in waiting:
            request.refuse(reason)
