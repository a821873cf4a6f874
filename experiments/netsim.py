"""A simulated wide-area network on one machine: delaying, rate-limiting TCP relays.

The kernel here has no `netem` queueing discipline, so latency and bandwidth are imposed in
user space: every party is reached through a relay on loopback that holds each chunk for
the one-way delay and paces the bytes at the link rate, in both directions. Parties still
speak TLS end to end; the relay sees only ciphertext.
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from dataclasses import dataclass, field

Address = tuple[str, int]
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Link:
    """One-way delay in seconds and rate in bits per second (per connection direction)."""

    delay: float
    rate_bits: float
    name: str = ""


LAN = Link(0.0, 0.0, "loopback")
WAN = Link(0.040, 100e6, "WAN 40 ms one-way, 100 Mbit/s")


def _pump(src: socket.socket, dst: socket.socket, link: Link, stop: threading.Event) -> None:
    """Copy src -> dst, each chunk released `delay` after it arrived and paced at the rate."""
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    ready = threading.Condition()
    done = [False]

    def reader() -> None:
        try:
            while not stop.is_set():
                data = src.recv(_CHUNK)
                if not data:
                    break
                with ready:
                    queue.append((time.monotonic() + link.delay, data))
                    ready.notify()
        except OSError:
            pass
        with ready:
            done[0] = True
            ready.notify()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    free_at = time.monotonic()
    try:
        while True:
            with ready:
                while not queue and not done[0]:
                    ready.wait(0.5)
                if not queue and done[0]:
                    break
                due, data = queue.popleft()
            now = time.monotonic()
            start = max(due, free_at)
            if start > now:
                time.sleep(start - now)
            if link.rate_bits:
                free_at = max(start, time.monotonic()) + 8 * len(data) / link.rate_bits
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (dst, src):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@dataclass
class Relay:
    """Listens on a loopback port and forwards every connection to `target` over `link`."""

    target: Address
    link: Link
    _stop: threading.Event = field(default_factory=threading.Event)
    _sockets: list = field(default_factory=list)

    def start(self) -> Address:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()
        return ("127.0.0.1", self._server.getsockname()[1])

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(None)
                self._sockets.append(sock)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b, self.link, self._stop),
                                 daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._server.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass


@dataclass
class Route:
    """Callable for `mpc.launch.run_processes(route=...)`: puts a relay before every party."""

    link: Link
    relays: list[Relay] = field(default_factory=list)

    def __call__(self, addresses: dict[int, Address]) -> dict[int, Address]:
        routed = {}
        for party, address in addresses.items():
            relay = Relay(address, self.link)
            routed[party] = relay.start()
            self.relays.append(relay)
        return routed

    def close(self) -> None:
        for relay in self.relays:
            relay.stop()
        self.relays.clear()
