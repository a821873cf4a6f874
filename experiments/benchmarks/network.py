"""Benchmark section: the reference CNN end to end, against the plaintext model.

One 3.5 s clip's feature map (1 x 40 x 350), the reference CNN of ARCHITECTURE.md with
seeded random weights (the bundled trained model has the same shapes, so the same cost).
Plaintext torch and the fixed-point emulator are timed in the same run.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from experiments.benchmarks._timing import median_seconds, table
from experiments.models import reference_cnn
from nn.emulator import emulate
from nn.importer import from_torch
from nn.inference import classify

CASES = [("replicated", 3), ("additive", 2)]


def run(quick: bool) -> str:
    import torch

    torch.manual_seed(0)
    module = reference_cnn(8).eval()
    model, _ = from_torch(module, (1, 40, 350))
    x = np.random.default_rng(0).normal(size=(1, 1, 40, 350))
    with torch.no_grad():
        tx = torch.as_tensor(x, dtype=torch.float32)
        torch_s = median_seconds(lambda: module(tx), repeats=20, warmup=3)
        torch_label = int(module(tx).argmax())
    emu_s = median_seconds(lambda: emulate(model, x), repeats=3)
    repeats = 2 if quick else 5
    rows = []
    for scheme, n in CASES:
        for transport in ("threads", "tcp"):
            online, offline, setup, result = [], [], [], None
            for _ in range(repeats):
                start = time.perf_counter()
                result = classify(model, x, scheme=scheme, n_parties=n, transport=transport,
                                  timeout=300)
                wall = time.perf_counter() - start
                online.append(result.online_seconds)
                offline.append(result.offline_seconds)
                setup.append(result.setup_seconds)
            on, off = statistics.median(online), statistics.median(offline)
            rows.append([f"{scheme} ({n}P)", transport, f"{on * 1e3:.0f}", f"{off * 1e3:.0f}",
                         f"{statistics.median(setup) * 1e3:.0f}",
                         result.online_rounds,
                         "/".join(f"{b / 1e6:.1f}" for b in result.bytes_sent("online")),
                         "/".join(f"{b / 1e6:.1f}" for b in result.bytes_sent("offline")),
                         f"{on / torch_s:.0f}x", f"{on / emu_s:.1f}x",
                         "yes" if int(result.labels[0]) == torch_label else "NO",
                         f"{wall:.1f}"])
    header = ["scheme", "transport", "online ms", "offline ms", "setup ms", "rounds",
              "online MB sent per party", "offline MB sent per party", "vs torch",
              "vs emulator", "label = torch", "wall s (incl. start-up)"]
    return ("## Reference CNN, one clip, end to end\n\n"
            f"Plaintext in the same run: torch float32 {torch_s * 1e3:.2f} ms, fixed-point "
            f"emulator {emu_s * 1e3:.0f} ms. Online time is the slowest party's, from its "
            "first input to the label reaching the client; offline is preprocessing "
            "(dealer or helper P2); setup is the model owner sharing the weights, once per "
            "model, before any clip exists. Wall time includes process start-up and "
            "certificate generation.\n\n"
            + table(header, rows))
