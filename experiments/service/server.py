"""One role of a service (a compute party or the dealer), running until stopped.

The roles form a mesh (mutual TLS, every peer pinned) and keep it; party 0 coordinates. It
waits for complete requests at its front door, lets a batch gather for the window, and sends
every role the batch's list. Each role answers with what it holds of each listed request
(arrived, and a hash of what was asked), so all roles keep exactly the requests every role
received alike; the others are refused. The kept clients are attached to every role's
channel as endpoints `base + k` and the batch runs as one computation with its own keys,
derived from the session's for this batch alone.

A client that fails during its batch (gone, silent past `client_timeout`, malformed) is
dropped at the same point by every compute party (`Channel.receive_external`) and the
batch goes on for the others. Any other failure (a peer lost, a deviation detected) ends the
session at every role: the batch's clients and every queued request are told why, and the
roles form the mesh again, waiting for whoever is missing; published models stay on disk.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import numpy as np

from experiments.deploy import parameter_count, receive_document, send_document
from experiments.service import messages
from experiments.service.config import ServiceConfig, load_service
from experiments.service.frontdoor import FrontDoor, Request, close
from experiments.service.programs import Batch, Publish
from experiments.service.state import Published, Store
from mpc.cluster import start_party
from mpc.errors import PeerLost, PeerTimeout, ProtocolError, SottovoceError
from mpc.limits import external_value_bytes
from mpc.net.expect import Expect
from mpc.prg import KEY_BYTES, PRG
from mpc.runtime import RunConfig, Runtime, agree_pair_keys
from nn.describe import from_description
from protocols.run import party_role, plan_of, prepare, run_online

log = logging.getLogger("sottovoce.service")
_OPS = ("stop", "batch", "publish", "prepare")  # what party 0 may send the others
_IDLE_TICK = 0.25  # seconds between looks at the stop flag and the links while idle
_BUSY_WINDOWS = 4  # how many windows a batch may wait for as many requests as the last


class Server:
    """Role `me` of the service in `config`."""

    def __init__(self, config: ServiceConfig, me: int) -> None:
        self.config, self.me = config, me
        self.name = config.name_of(me) + (f" (lane {config.lane})" if config.lane else "")
        self.is_dealer = me == config.dealer
        self.store = Store(config.state_of(me))
        self.versions: dict[str, Published] = {}
        # prepared batches (offline phase done) by (version, clips): (id, protocol or None
        # at the dealer); material is used once, so an entry leaves the pool when used
        self.pool: dict[tuple[str, int], list[tuple[int, Any]]] = {}
        self._recent: list[int] = []  # batch sizes served lately, newest last
        self._last_requests = [1]  # requests in each of the last two batches
        self._last_batch_end = 0.0  # when it ended (time.monotonic)
        self._poolable_versions: dict[str, bool] = {}
        self._plans: dict[tuple[int, tuple[int, ...]], list] = {}
        self.current: Published | None = None
        self._stored_at = 0.0
        self._refresh()
        self.stopping = threading.Event()
        self.ready = False
        self.state = "starting"
        self.served = self.batches = self.dropped = self.prepared = 0
        self.online_seconds = 0.0
        self.last_error: str | None = None
        self.front = FrontDoor(config, me, self._describe, self._status, self._refusal)

    def _refresh(self) -> None:
        """Serve the version the state folder names, if it changed (a restart, or lane 0
        of this party publishing while this role runs another lane)."""
        stamp = self.store.stamp()
        if stamp == self._stored_at:
            return
        published = self.store.load_current()
        self._stored_at = stamp
        if published is None or (self.current and published.version == self.current.version):
            return
        self._adopt(published)

    def _adopt(self, published: Published) -> None:
        """Serve `published` from now on; the previous version stays for requests already
        queued for it, older ones and their prepared batches go."""
        previous, self.current = self.current, published
        self.versions[published.version] = published
        self.versions = {v: p for v, p in self.versions.items()
                         if v == published.version or (previous and v == previous.version)}
        self.pool = {k: v for k, v in self.pool.items() if k[0] == published.version}

    # -- what the front door asks ----------------------------------------------------------
    def _describe(self) -> dict | None:
        """The version to describe to a client: the newest stored, even before this role's
        loop adopts it (another lane of this party may just have published it)."""
        current = self.current
        if self.store.stamp() != self._stored_at:
            current = self.store.load_current() or current
        if current is None:
            return None
        return {"version": current.version, **current.description}

    def _refusal(self) -> str | None:
        if self.stopping.is_set():
            return "the service is stopping"
        if not self.ready:
            return f"the service is not ready ({self.state})"
        return None

    def _status(self) -> dict:
        return {"role": self.name, "scheme": self.config.scheme.name, "ready": self.ready,
                "state": self.state, "version": self.current and self.current.version,
                "versions": sorted(self.versions), "requests_served": self.served,
                "batches": self.batches, "queued": len(self.front.pending),
                "last_error": self.last_error,
                "preprocessing_pool": sum(len(v) for v in self.pool.values()),
                "pool_by_clips": {str(clips): len(v) for (_, clips), v in self.pool.items()}}

    def metrics(self) -> str:
        """This role's counters in Prometheus' text format."""
        from experiments.service.metrics import exposition

        stats = {
            "ready": ("1 if the role is in a session with every other role", "gauge",
                      self.ready),
            "requests_served_total": ("requests answered with their labels", "counter",
                                      self.served),
            "requests_dropped_total": ("requests whose client failed in its batch", "counter",
                                       self.dropped),
            "batches_total": ("batches run", "counter", self.batches),
            "online_seconds_total": ("online time of the batches run", "counter",
                                     self.online_seconds),
            "prepared_total": ("batches prepared ahead", "counter", self.prepared),
            "pool": ("prepared batches waiting", "gauge",
                     sum(len(v) for v in self.pool.values())),
            "queued": ("complete requests waiting for a batch", "gauge",
                       len(self.front.pending)),
        }
        return exposition(stats, {"role": self.config.name_of(self.me),
                                  "lane": str(self.config.lane)})

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until `stopping` is set (SIGTERM, SIGINT): finish the batch under way,
        refuse new requests, tell the others."""
        host, port = self.front.start()
        metrics = None
        if self.config.metrics_port is not None:
            from experiments.service.metrics import serve_metrics

            slot = self.config.lane * len(self.config.servers) + self.me
            metrics = serve_metrics(self.config.metrics_port + slot, self.metrics)
            log.info("%s: metrics on http://127.0.0.1:%d/metrics", self.name,
                     self.config.metrics_port + slot)
        log.info("%s: listening for clients on %s:%d (scheme %s, model %s)", self.name, host,
                 port, self.config.scheme.name,
                 self.current.version if self.current else "not yet published")
        try:
            while not self.stopping.is_set():
                runtime = self._form_mesh()
                if runtime is None:
                    break
                try:
                    with runtime.channel:
                        self._session(runtime)
                except SottovoceError as exc:
                    self.last_error = str(exc)
                    self.ready, self.state = False, f"session ended: {exc}"
                    log.warning("%s: session ended (%s): %s", self.name, type(exc).__name__,
                                exc)
                    self.front.fail_all(f"{self.name}: {type(exc).__name__}: {exc}")
                self.ready = False
        finally:
            self.ready, self.state = False, "stopped"
            self.front.fail_all(f"{self.name}: the service is stopping")
            self.front.stop()
            if metrics is not None:
                metrics.shutdown()
            log.info("%s: stopped after %d requests", self.name, self.served)

    def _form_mesh(self) -> Runtime | None:
        config = RunConfig(n_parties=self.config.compute, timeout=self.config.cluster.timeout,
                           dealer=self.config.scheme.dealer)
        while not self.stopping.is_set():
            others = [self.config.name_of(p) for p in self.config.servers if p != self.me]
            self.state = f"waiting for {', '.join(others)}"
            log.info("%s: %s", self.name, self.state)
            try:
                runtime = start_party(self.config.cluster, self.me, config)
            except (PeerTimeout, PeerLost, ProtocolError) as exc:
                # a peer not up yet, or one that gave up on this attempt while this role
                # finished it (e.g. during key agreement): try again; a wrong key or a bad
                # file (AuthenticationError, ConfigError) stops the role
                log.info("%s: still waiting: %s", self.name, exc)
                time.sleep(_IDLE_TICK)
                continue
            self.ready, self.state = True, "ready"
            log.info("%s: ready", self.name)
            return runtime
        return None

    def _session(self, runtime: Runtime) -> None:
        self.pool = {}  # prepared with the previous session's keys: never used again
        channel = runtime.channel
        peers = [p for p in channel.peers]
        seq = 0
        channel.step = "waiting for the next batch"
        while True:
            if self.me == 0:
                op = self._next_op(channel, seq)
                if op is None:
                    continue
                send_document(channel, peers, op)
            else:
                op = self._await_op(channel)
            if op["op"] == "stop":
                return
            self._run_op(runtime, op)
            seq += 1

    # -- the coordinator -----------------------------------------------------------------
    def _next_op(self, channel, seq: int) -> dict | None:
        """The next batch (or publish, or stop), once requests are queued and the window of
        the oldest has passed; None after an idle tick (the links are checked meanwhile)."""
        front = self.front
        with front.changed:
            if not front.pending and not self.stopping.is_set():
                front.changed.wait(_IDLE_TICK)
        failure = channel.failure()
        if failure is not None:
            raise failure
        if self.stopping.is_set():
            return {"op": "stop"}
        self._refresh()
        with front.changed:
            queued = sorted(front.pending.values(), key=lambda r: r.arrived)
        if not queued:
            return self._refill(seq)
        oldest = queued[0]
        if oldest.kind == "classify":
            queued = self._gather(oldest)
        if oldest.kind == "publish":
            return {"op": "publish", "seq": seq, "requests": [[oldest.client, oldest.rid]]}
        chosen, clips = [], 0
        for request in queued:
            if request.kind != "classify" or request.version != oldest.version:
                continue
            if clips + request.clips > self.config.max_batch:
                break
            chosen.append([request.client, request.rid])
            clips += request.clips
        entries = self.pool.get((oldest.version, clips), [])
        return {"op": "batch", "seq": seq, "version": oldest.version, "requests": chosen,
                "pooled": entries[0][0] if entries else None}

    def _gather(self, oldest: Request) -> list[Request]:
        """The queue once the batch of `oldest` has gathered: for the window after it
        arrived, and while fewer requests are queued than the last two batches held, up to
        `_BUSY_WINDOWS` windows after the last batch ended (its clients are likely sending
        their next requests; two batches, because clients that alternate would otherwise
        settle into two half batches)."""
        front, window = self.front, self.config.window
        with front.changed:
            while True:
                queued = sorted(front.pending.values(), key=lambda r: r.arrived)
                now = time.monotonic()
                due = oldest.arrived + window
                if len(queued) < min(sum(self._last_requests), self.config.max_batch):
                    # the last batch's clients learnt their labels when it ended
                    due = max(due, self._last_batch_end + _BUSY_WINDOWS * window)
                if now >= due or self.stopping.is_set():
                    return queued
                front.changed.wait(due - now)

    def _refill(self, seq: int) -> dict | None:
        """While nothing is queued and nothing was for a while: prepare a batch of a size
        served lately (one clip, and the last two sizes seen) for the current version, if
        its pool is short."""
        if self.current is None or not self.config.pool or not self._poolable():
            return None
        if time.monotonic() - self._last_batch_end < _BUSY_WINDOWS * self.config.window:
            return None  # clients of the last batch may be sending their next requests
        for clips in dict.fromkeys([1, *reversed(self._recent)]):
            if len(self.pool.get((self.current.version, clips), [])) < self.config.pool:
                return {"op": "prepare", "seq": seq, "version": self.current.version,
                        "clips": clips}
        return None

    def _poolable(self) -> bool:
        """Whether batches can be prepared before their clients are known: not when the
        material names them (spdz2k deals each client's masks to that client)."""
        if self.current is None:
            return False
        version = self.current.version
        if version not in self._poolable_versions:
            plan = self._plan(self.current.model, [1])
            self._poolable_versions[version] = not any(r.kind in ("input", "reveal")
                                                       for r in plan)
        return self._poolable_versions[version]

    def _plan(self, model, sizes: list[int]) -> list:
        """The batch's preprocessing plan (kept per model and split: a dry run of the
        model costs tens of milliseconds)."""
        key = (id(model), tuple(sizes))
        if key not in self._plans:
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[key] = plan_of(Batch(model, sizes, len(self.config.servers)),
                                       self.config.compute, self.config.scheme)
        return self._plans[key]

    def _await_op(self, channel) -> dict:
        """The coordinator's next message; while idle, look at the stop flag every tick."""
        timeout = channel.timeout
        try:
            while True:
                if self.stopping.is_set():
                    return {"op": "stop"}
                if channel.silent_for(0) > timeout:
                    raise PeerTimeout(f"{self.name}: party 0 sent nothing for {timeout:g} s "
                                      "(waiting for the next batch)")
                channel.timeout = _IDLE_TICK
                try:
                    op = receive_document(channel, 0, ("op",))
                except PeerTimeout:
                    continue
                finally:
                    channel.timeout = timeout
                if op["op"] not in _OPS:
                    raise ProtocolError(f"party 0 sent an unknown operation {op['op']!r:.80}")
                return op
        finally:
            channel.timeout = timeout

    # -- every role ----------------------------------------------------------------------
    def _agree(self, channel, op: dict) -> list[Request]:
        """The listed requests every role holds alike (in the coordinator's order)."""
        keys = [tuple(k) for k in op.get("requests", [])]
        if op.get("version") not in self.versions:
            self._refresh()  # lane 0 of this party may just have published it
        wait = 0.0 if self.me == 0 else min(1.0, self.config.client_timeout)
        held = self.front.take(keys, wait)
        rows = np.zeros((len(keys), 5), dtype=np.uint64)
        for k, key in enumerate(keys):
            request = held.get(key)
            usable = request is not None and (op["op"] == "publish"
                                              or request.version in self.versions)
            if usable:
                rows[k, 0], rows[k, 1:] = 1, request.digest()
        others = [p for p in channel.peers]
        with channel.stage("agreeing on the batch"):
            heard = channel.exchange(dict.fromkeys(others, rows),
                                     expect=Expect.uint64((len(keys), 5)),
                                     what="as its list of the batch's requests")
        kept = []
        for k, key in enumerate(keys):
            request = held.get(key)
            if request is None:
                continue
            if rows[k, 0] and all(np.array_equal(h[k], rows[k]) for h in heard.values()):
                kept.append(request)
            else:
                request.refuse(f"{self.name}: the request did not reach every role of the "
                               "service alike; send it again")
        return kept

    def _run_op(self, runtime: Runtime, op: dict) -> None:
        if op["op"] == "prepare":
            self._prepare(runtime, op)
            return
        requests = self._agree(runtime.channel, op)
        if not requests:
            return
        if op["op"] == "publish":
            self._publish(runtime, int(op["seq"]), requests[0])
        else:
            self._batch(runtime, int(op["seq"]), self._version(op["version"]), requests,
                        op.get("pooled"))

    def _version(self, version: str) -> Published:
        """The published model `version` (read from the state folder if another lane of
        this party stored it since), or a ProtocolError: party 0 named a version this role
        does not have."""
        if version not in self.versions:
            self._refresh()
        if version not in self.versions:
            raise ProtocolError(f"party 0 named model version {version!r}, which {self.name} "
                                f"does not have (it has {sorted(self.versions) or 'none'})")
        return self.versions[version]

    def _batch_runtime(self, runtime: Runtime, seq: int, mac_keys: dict[int, bytes]
                       ) -> Runtime:
        """A runtime for one batch: keys of its own, derived from the session's."""
        keys = {p: PRG(k).derive(f"service batch {seq}").random_bytes(KEY_BYTES)
                for p, k in runtime.pair_keys.items()}
        return Runtime(party_id=self.me, config=runtime.config, channel=runtime.channel,
                       pair_keys=keys, mac_keys=mac_keys)

    def _attach(self, channel, requests: list[Request], elements: list[int]) -> int:
        base = len(self.config.servers)
        channel.tolerant_timeout = self.config.client_timeout
        for k, (request, size) in enumerate(zip(requests, elements, strict=True)):
            channel.attach(base + k, request.sock, f"client {request.client}",
                           request.received, request.sent, external_value_bytes(size))
            channel.tolerant.add(base + k)
        return base

    def _detach(self, channel, requests: list[Request], base: int,
                error: BaseException | None = None, keep_open: bool = False) -> list[bool]:
        """Release the clients; each one that failed is told why. Which ones succeeded
        (their links stay open with `keep_open`, for a last word)."""
        succeeded = []
        for k, request in enumerate(requests):
            reason = channel.dropped.get(base + k)
            request.sent = channel.frames_sent(base + k)
            channel.detach(base + k)
            request.sock.setblocking(True)
            if error is not None:
                reason = f"{type(error).__name__}: {error}"
            if reason is not None:
                request.refuse(reason)
            elif not keep_open:
                close(request.sock)
            succeeded.append(reason is None)
        return succeeded

    def _execute(self, runtime: Runtime, program: Any, plan: list) -> Any:
        scheme = self.config.scheme
        if self.is_dealer:
            with np.errstate(over="ignore"):
                scheme.protocol.serve_dealer(runtime, plan)
            return None
        return party_role(runtime, scheme, program, plan)

    def _prepare(self, runtime: Runtime, op: dict) -> None:
        """Run the offline phase of a batch of `op["clips"]` clips now, keep it for later."""
        published = self._version(op["version"])
        clips, seq = int(op["clips"]), int(op["seq"])
        plan = self._plan(published.model, [clips])
        batch_runtime = self._batch_runtime(runtime, seq, published.mac_keys)
        start = time.perf_counter()
        with runtime.channel.stage(f"preparing a batch of {clips} clips"):
            if self.is_dealer:
                with np.errstate(over="ignore"):
                    self.config.scheme.protocol.serve_dealer(batch_runtime, plan)
                prepared = None
            else:
                prepared = prepare(batch_runtime, self.config.scheme, plan)
        self.pool.setdefault((published.version, clips), []).append((seq, prepared))
        self.prepared += 1
        log.info("%s: prepared batch %d (%d clips, model %s) in %.1f ms; pool %d", self.name,
                 seq, clips, published.version, 1000 * (time.perf_counter() - start),
                 sum(len(v) for v in self.pool.values()))

    def _take_prepared(self, version: str, clips: int, pooled: int | None) -> Any:
        entries = self.pool.get((version, clips), [])
        for k, (entry, prepared) in enumerate(entries):
            if entry == pooled:
                del entries[k]
                return prepared
        raise ProtocolError(f"party 0 named prepared batch {pooled}, which {self.name} "
                            "does not hold")

    def _batch(self, runtime: Runtime, seq: int, published: Published,
               requests: list[Request], pooled: int | None = None) -> None:
        model = published.model
        channel = runtime.channel
        per_clip = int(np.prod(model.input_shape, dtype=np.int64))
        base = self._attach(channel, requests, [r.clips * per_clip for r in requests])
        sizes = [r.clips for r in requests]
        self._last_requests = [*self._last_requests, len(requests)][-2:]
        self._recent = [*[c for c in self._recent if c != sum(sizes)], sum(sizes)][-2:]
        before = channel.traffic.copy()
        start = time.perf_counter()
        program = Batch(model, sizes, base, published.shares)
        try:
            if pooled is not None:
                prepared = self._take_prepared(published.version, sum(sizes), pooled)
                report = None if self.is_dealer else run_online(prepared, program)
            else:
                report = self._execute(self._batch_runtime(runtime, seq, published.mac_keys),
                                       program, self._plan(model, sizes))
        except BaseException as exc:
            self._detach(channel, requests, base, exc)
            raise
        succeeded = self._detach(channel, requests, base)
        self._last_batch_end = time.monotonic()
        spent = channel.traffic - before
        online = report.online_seconds if report is not None else time.perf_counter() - start
        self.batches += 1
        self.online_seconds += online
        for request, ok in zip(requests, succeeded, strict=True):
            self.served += ok
            self.dropped += not ok
            log.info("%s: request %s of client %s: %s, batch %d of %d clips, model %s, "
                     "%s, online %.1f ms, %d rounds, %d bytes", self.name, request.rid,
                     request.client, "done" if ok else "dropped", seq, sum(sizes),
                     published.version, "prepared ahead" if pooled is not None else
                     "offline phase now", 1000 * online, spent.rounds,
                     spent.bytes_sent + spent.bytes_received)

    def _publish(self, runtime: Runtime, seq: int, request: Request) -> None:
        channel = runtime.channel
        description = request.document or {}
        model = from_description(description["model"])
        size = parameter_count(model)
        with channel.stage("keys of the published model"):
            mac_keys = agree_pair_keys(channel)
        mac_keys[self.me] = os.urandom(KEY_BYTES)
        base = self._attach(channel, [request], [size])
        try:
            plan = plan_of(Publish(size, base), self.config.compute, self.config.scheme)
            report = self._execute(self._batch_runtime(runtime, seq, mac_keys),
                                   Publish(size, base), plan)
        except BaseException as exc:
            self._detach(channel, [request], base, exc)
            raise
        if not self._detach(channel, [request], base, keep_open=True)[0]:
            log.warning("%s: publishing %s by client %s failed: the owner's input did not "
                        "arrive intact", self.name, request.version, request.client)
            return
        shares = report.result if report is not None else np.zeros((0, 0), dtype=np.uint64)
        published = Published(request.version, description, shares, mac_keys)
        self.store.save(published)
        self._stored_at = self.store.stamp()
        try:  # the owner learns that this role serves the new version from now on
            request.sock.settimeout(self.config.client_timeout)
            messages.send(request.sock, {"stored": published.version}, request.sent)
        except OSError:
            pass
        close(request.sock)
        self._adopt(published)
        log.info("%s: model %s published by client %s (%d weights), saved in %s", self.name,
                 published.version, request.client, size, self.store.folder)


def serve(cluster_path: str, endpoint: str, lane: int = 0) -> None:
    """Run `endpoint` ("0", "1", ..., or "dealer") of the service in `cluster_path`, in
    `lane`, until SIGTERM or SIGINT."""
    config = load_service(cluster_path).for_lane(lane)
    me = config.dealer if endpoint == "dealer" else int(endpoint)
    if me is None or me not in config.servers:
        from mpc.errors import ConfigError

        raise ConfigError(f"{config.cluster.path}: {endpoint!r} is not a role of this "
                          f"{config.scheme.name} service (compute parties 0.."
                          f"{config.compute - 1}{', dealer' if config.dealer is not None else ''})")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from mpc import ring

    ring.warmup(threads=1)  # roles share the machine's cores; kernels loaded before serving
    server = Server(config, me)

    def stop(signum: int, frame: object) -> None:
        log.info("%s: %s received: finishing the batch under way, refusing new requests",
                 server.name, signal.Signals(signum).name)
        server.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.run()
