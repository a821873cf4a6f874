"""The service (issue 19): every role a separate process on loopback (TCP+TLS), clients in
processes of their own that compute their own features, the bundled model published once.

Per scheme: time from `serve` to ready; latency at the client of one clip on a warm service
(one client, a pause between requests so that a prepared batch is waiting); with 8 clients
at once, each sending requests of one clip back to back, the latency (median, p95) and the
clips per second sustained; a fresh `sottovoce classify --cluster` process for one clip,
start-up included.
"""

from __future__ import annotations

import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.benchmarks._timing import table

SCHEMES = ("replicated", "rep4", "replicated_mac")
CLIENTS = 8
_STATE: dict = {}


def _warm_client(path: str, clip: str, name: str) -> None:
    """A client process: imports and kernels loaded by one request, as a running app's."""
    from experiments.service import client

    _STATE.update(path=path, clip=clip, name=name)
    client.classify(path, [clip], client=name)


def _one(_: int) -> float:
    from experiments.service import client

    start = time.perf_counter()
    client.classify(_STATE["path"], [_STATE["clip"]], client=_STATE["name"])
    return time.perf_counter() - start


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _scheme_row(scheme: str, quick: bool, folder: Path) -> list[object]:
    from experiments.modelfile import BUNDLED_CLIPS, BUNDLED_MODEL, load_model
    from experiments.service import client
    from experiments.service.local import LocalService, write_local_service

    names = tuple(f"c{k}" for k in range(CLIENTS))
    path = write_local_service(folder, scheme, clients=names, window_ms=20, max_batch=16)
    clip = str(sorted(BUNDLED_CLIPS.glob("*.wav"))[0])
    service = LocalService(path)
    start = time.perf_counter()
    service.start()
    try:
        service.wait_ready(120)
        ready = time.perf_counter() - start
        loaded = load_model(BUNDLED_MODEL)
        client.publish(path, loaded.secure, loaded.feature_config.to_dict(), "v1")
        single = 5 if quick else 9
        rounds = 2 if quick else 4
        # one client at a time, on a warm service
        with concurrent.futures.ProcessPoolExecutor(
                1, initializer=_warm_client, initargs=(str(path), clip, names[0])) as pool:
            alone = []
            for _ in range(single):
                time.sleep(1.0)  # a prepared batch is waiting, as on a service between users
                alone.append(pool.submit(_one, 0).result())
        # eight clients at once, back to back
        with concurrent.futures.ProcessPoolExecutor(CLIENTS) as pool:
            list(pool.map(_warm_client, [str(path)] * CLIENTS, [clip] * CLIENTS, names))
        inits = [(str(path), clip, n) for n in names]
        pools = [concurrent.futures.ProcessPoolExecutor(1, initializer=_warm_client,
                                                        initargs=init) for init in inits]
        try:
            for p in pools:
                p.submit(_one, 0).result()  # each worker warm
            begin = time.perf_counter()
            futures = [p.submit(_one, k) for p in pools for k in range(rounds)]
            many = [f.result() for f in futures]
            elapsed = time.perf_counter() - begin
        finally:
            for p in pools:
                p.shutdown()
        # a fresh command-line client, start-up included
        fresh = []
        for _ in range(2 if quick else 3):
            begin = time.perf_counter()
            subprocess.run([sys.executable, "-m", "experiments.cli", "classify", "--cluster",
                            str(path), "--client", names[0], clip], check=True,
                           capture_output=True, env={**os.environ})
            fresh.append(time.perf_counter() - begin)
    finally:
        service.stop()
    return [scheme, f"{ready:.1f}", f"{statistics.median(alone):.3f}",
            f"{_p95(alone):.3f}", f"{statistics.median(many):.3f}", f"{_p95(many):.3f}",
            f"{len(many) / elapsed:.1f}", f"{statistics.median(fresh):.2f}"]


def run(quick: bool) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in SCHEMES:
            rows.append(_scheme_row(scheme, quick, Path(tmp) / scheme))
    load = os.getloadavg()
    return ("## Service (issue 19)\n\n" + (__doc__ or "").split("\n\n", 1)[1].strip() + "\n\n"
            + table(["scheme", "serve to ready (s)", "1 client: latency median (s)",
                     "1 client: p95 (s)", "8 clients: latency median (s)",
                     "8 clients: p95 (s)", "8 clients: clips/s", "fresh classify process (s)"],
                    rows)
            + f"\nLoad average at the end: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min). "
            "Command: `python -m experiments.bench --only service --out FILE` (merged into "
            "this file).\n")
