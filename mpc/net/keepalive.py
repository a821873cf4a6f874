"""Keep-alives: a running endpoint tells its peers it is alive while it computes.

A receive times out when the peer shows no sign of life for the channel's timeout, not when it
merely has nothing to send yet: a dealer still dealing, or a party still computing, keeps its
peers waiting as long as it needs. A background thread writes a keep-alive frame on every
outgoing link that has been idle for `interval` (a quarter of the timeout), so a stopped or
dead process, or a broken network, still shows within the timeout.

One exception keeps deadlocks visible: no keep-alive goes to the peer this endpoint is itself
waiting for. Two endpoints waiting for each other both stay silent to each other and both time
out, as they did before keep-alives existed.

The thread needs the GIL for a few microseconds per interval; numba kernels release it
(`nogil=True`) and numpy releases it in large operations, so a party computing still sends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable


class KeepAlive:
    """Every `interval` / 4 seconds, call `send(peer)` for each peer in `peers` whose link has
    been idle (`idle(peer)` seconds) for at least `interval`, except `waiting_for()`.
    `send` must not block: it skips a link another thread is writing (and returns False)."""

    def __init__(self, peers: Iterable[int], interval: float, idle: Callable[[int], float],
                 send: Callable[[int], bool], waiting_for: Callable[[], int | None],
                 name: str = "sottovoce-keepalive") -> None:
        self.peers, self.interval = tuple(peers), float(interval)
        self._idle, self._send, self._waiting_for = idle, send, waiting_for
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self.sent = 0
        self.longest_gap = 0.0  # seconds between two passes of the loop, the largest seen

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        tick = max(0.01, self.interval / 4)
        last = time.monotonic()
        while not self._stop.wait(tick):
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            last = now
            waiting = self._waiting_for()
            for peer in self.peers:
                if peer != waiting and self._idle(peer) >= self.interval and self._send(peer):
                    self.sent += 1
