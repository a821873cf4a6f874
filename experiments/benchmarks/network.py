"""Benchmark section: the reference CNN end to end, against the plaintext model.

Feature maps of 3.5 s clips (1 x 40 x 350), the reference CNN of ARCHITECTURE.md with seeded
random weights (the bundled trained model has the same shapes, so the same cost), at batch
1, 8 and 32. Plaintext torch and the fixed-point emulator are timed in the same run. A
per-layer profile of the 3PC passive scheme over TCP splits each layer's time into local
work and waiting on the network.
"""

from __future__ import annotations

import platform
import statistics

import numpy as np

from experiments.benchmarks._timing import median_seconds, table
from experiments.models import reference_cnn
from nn.emulator import emulate
from nn.importer import from_torch
from nn.inference import Classification, classify
from protocols.run import DEFAULT_PARTIES, SCHEMES

ORDER = ["replicated", "additive", "rep4", "spdz2k", "replicated_mac"]
# The MAC schemes' comparisons run on 128-bit arithmetic bits: about 7 KB of dealer material
# and 1 KB of traffic per compared element, ~8 GB of memory for one clip; batch 1 only.
MAX_BATCH = {"spdz2k": 1, "replicated_mac": 1}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _schemes() -> list[str]:
    return [s for s in ORDER if s in SCHEMES] + [s for s in SCHEMES if s not in ORDER]


def _profile(result: Classification) -> str:
    rows = []
    for layer in result.layers:
        wait = max(layer.wait_seconds) if layer.wait_seconds else 0.0
        busiest = min(layer.wait_seconds) if layer.wait_seconds else 0.0
        rows.append([layer.name, f"{layer.seconds * 1e3:.1f}",
                     f"{(layer.seconds - busiest) * 1e3:.1f}", f"{wait * 1e3:.1f}",
                     layer.rounds, f"{max(layer.bytes_sent) / 1e3:.0f}"])
    return table(["layer", "wall ms", "local work ms (busiest party)",
                  "max wait on network ms", "rounds", "kB sent (max party)"], rows)


def run(quick: bool) -> str:
    import torch

    torch.manual_seed(0)
    module = reference_cnn(8).eval()
    model, _ = from_torch(module, (1, 40, 350))
    rng = np.random.default_rng(0)
    batches = (1, 8) if quick else (1, 8, 32)
    repeats = 2 if quick else 5
    rows, profile = [], ""
    for batch in batches:
        x = rng.normal(size=(batch, 1, 40, 350))
        with torch.no_grad():
            tx = torch.as_tensor(x, dtype=torch.float32)
            torch_s = median_seconds(lambda tx=tx: module(tx), repeats=10, warmup=2)
            torch_labels = module(tx).argmax(axis=1).numpy()
        emu_s = median_seconds(lambda x=x: emulate(model, x), repeats=3)
        for scheme in _schemes():
            if batch > MAX_BATCH.get(scheme, batch):
                continue
            n = DEFAULT_PARTIES[scheme]
            for transport in ("threads", "tcp"):
                online, offline, setup, result = [], [], [], None
                for _ in range(repeats if scheme not in MAX_BATCH else min(repeats, 2)):
                    result = classify(model, x, scheme=scheme, n_parties=n,
                                      transport=transport, timeout=600)
                    online.append(result.online_seconds)
                    offline.append(result.offline_seconds)
                    setup.append(result.setup_seconds)
                if scheme == "replicated" and transport == "tcp" and batch == 1:
                    profile = _profile(result)
                on = statistics.median(online)
                agree = float(np.mean(result.labels == torch_labels))
                rows.append([batch, f"{scheme} ({n}P)", transport,
                             f"{on / batch * 1e3:.1f}", f"{min(online) / batch * 1e3:.1f}",
                             f"{statistics.median(offline) / batch * 1e3:.1f}",
                             f"{statistics.median(setup) * 1e3:.0f}", result.online_rounds,
                             "/".join(f"{b / batch / 1e6:.2f}"
                                      for b in result.bytes_sent("online")),
                             "/".join(f"{b / batch / 1e6:.2f}"
                                      for b in result.bytes_sent("offline")),
                             f"{on / torch_s:.0f}x", f"{on / emu_s:.1f}x", f"{agree:.0%}"])
        rows.append([batch, "plaintext torch (float32)", "-", f"{torch_s / batch * 1e3:.2f}",
                     "", "", "", "", "", "", "1x", "", ""])
        rows.append([batch, "plaintext emulator (fixed point)", "-",
                     f"{emu_s / batch * 1e3:.1f}", "", "", "", "", "", "", "", "1x", ""])
    header = ["batch", "scheme", "transport", "online ms/clip (median)", "min", "offline ms/clip",
              "setup ms (per model)", "rounds", "online MB/clip sent per party",
              "offline MB/clip sent per party", "vs torch", "vs emulator", "labels = torch"]
    return (f"## Reference CNN end to end\n\nMachine: {cpu_model()}, 2 cores. Per clip: the "
            f"run's time divided by the batch; median and min over {repeats} runs after the "
            "numba kernels are loaded. Online is the slowest party's time from the first input "
            "to the label reaching the client; offline is preprocessing (dealer, or helper P2 "
            "in the replicated scheme); setup is the model owner sharing the weights, once per "
            "model, before any clip exists. Bytes are frame bytes (TLS adds its own framing). "
            "Parties run one numba thread each (they share the 2 cores).\n\n"
            + table(header, rows)
            + "\n### Where the time goes: replicated (3PC passive), TCP+TLS, batch 1\n\n"
            "Wall time of each layer at the client party, the part the busiest party spent "
            "computing, and the longest any party waited for a peer.\n\n" + profile)
