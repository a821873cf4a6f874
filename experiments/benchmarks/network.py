"""Benchmark section: the reference CNN end to end, against the plaintext model.

Feature maps of 3.5 s clips (1 x 40 x 350), the reference CNN of docs/architecture.md with seeded
random weights (the bundled trained model has the same shapes, so the same cost), at batch
1, 8 and 32. Plaintext torch and the fixed-point emulator are timed in the same run. A
per-layer profile of the 3PC passive scheme over TCP splits each layer's time into local
work and waiting on the network.
"""

from __future__ import annotations

import platform
import statistics

import numpy as np

from experiments.benchmarks._reference import machine_unit
from experiments.benchmarks._timing import median_seconds, table
from experiments.models import reference_cnn
from nn.emulator import emulate
from nn.importer import from_torch
from nn.inference import Classification, classify
from protocols.registry import SCHEMES

#: Issue 11's targets: online seconds per clip at batch 1 over TCP+TLS.
TARGETS = {"replicated": 0.1, "additive": 0.15, "rep4": 0.3, "replicated_mac": 1.0,
           "spdz2k": 1.5}
#: Where the time goes when a target is missed (from the per-layer profiles and the
#: CPU time of each party, time.process_time, measured on this machine).
WHY = {
    "replicated": "three processes share two cores: P0 and P1 each spend ~55 ms of CPU a "
                  "clip (about a third of it in TLS for ~8 MB each way), P2 ~15 ms; see "
                  "the profile below.",
    "additive": "the two Beaver openings per linear layer and the truncation round; each "
                "party both computes and pushes ~6 MB a clip through TLS.",
    "rep4": "four processes on two cores, each spending ~120-160 ms of CPU a clip, two "
            "thirds of it in ReLU: joint input of both bit decompositions, a 63-plane "
            "generate AND and a 6-level carry tree (9 rounds), every AND a product of six "
            "jointly input pair sums, every received word hashed for the redundancy check.",
    "spdz2k": "2-party comparisons evaluate a DCF key per value (39 levels of fixed-key AES "
              "and a numba pass each): about 1 us per compared value and party, two "
              "parties sharing two cores.",
    "replicated_mac": "no dealer and no fourth party: each ReLU is a binary circuit (243 "
                      "gates over the whole ring, 152 at 39 bits; ~20M AND gates a clip), "
                      "every gate verified at the check by sacrificing 3 random triples "
                      "(~10 more bits a gate, ~0.3 s of CPU a party), and each result bit "
                      "is brought back to the MAC'd ring with 5 authenticated 128-bit "
                      "products (3 bits per truncated value): ~90 MB a party, three processes "
                      "on two cores.",
}
#: Why the secure run is more than 10x the emulator (issue 11's second 3PC target).
WHY_EMULATOR = ("the emulator is one process computing each layer once in fixed point; the "
                "3PC run is three processes on two cores, each computing two local products "
                "per layer, masking, and pushing ~8 MB through TLS, with each ReLU a 64-bit "
                "comparison circuit (8 rounds): ~130 ms of CPU a clip over the three parties. "
                "In-process (no TLS, threads) the ratio is given in the table above; see "
                "the profile")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _profile(result: Classification) -> str:
    rows = []
    for layer in result.layers:
        waits = layer.wait_seconds or (0.0,)
        client = layer.party_seconds[0] if layer.party_seconds else layer.seconds
        rows.append([layer.name, f"{layer.seconds * 1e3:.1f}",
                     f"{(client - waits[0]) * 1e3:.1f}",
                     "/".join(f"{w * 1e3:.1f}" for w in waits),
                     layer.rounds, f"{max(layer.bytes_sent) / 1e3:.0f}"])
    return table(["layer", "wall ms (slowest party)", "client's local work ms",
                  "waiting on the network ms, per party", "rounds", "kB sent (max party)"],
                 rows)


def run(quick: bool) -> str:
    import torch

    torch.manual_seed(0)
    module = reference_cnn(8).eval()
    model, _ = from_torch(module, (1, 40, 350))
    rng = np.random.default_rng(0)
    unit_before = machine_unit()
    batches = (1, 8) if quick else (1, 8, 32)
    repeats = 2 if quick else 5
    rows, profile = [], ""
    measured: dict[tuple[str, str, int], tuple[float, int, float]] = {}
    for batch in batches:
        x = rng.normal(size=(batch, 1, 40, 350))
        with torch.no_grad():
            tx = torch.as_tensor(x, dtype=torch.float32)
            torch_s = median_seconds(lambda tx=tx: module(tx), repeats=10, warmup=2)
            torch_labels = module(tx).argmax(axis=1).numpy()
        emu_s = median_seconds(lambda x=x: emulate(model, x), repeats=3)
        for entry in SCHEMES.values():
            # the registry caps the batch of schemes whose batches take minutes or GBs
            if entry.max_bench_batch is not None and batch > entry.max_bench_batch:
                continue
            scheme, n = entry.name, entry.parties
            for transport in ("threads", "tcp"):
                online, offline, setup, result = [], [], [], None
                for _ in range(repeats if entry.max_bench_batch is None else 1):
                    result = classify(model, x, scheme=scheme, n_parties=n,
                                      transport=transport, timeout=600)
                    online.append(result.online_seconds)
                    offline.append(result.offline_seconds)
                    setup.append(result.setup_seconds)
                if scheme == "replicated" and transport == "tcp" and batch == 1:
                    profile = _profile(result)
                on = statistics.median(online)
                measured[(scheme, transport, batch)] = (on, result.online_rounds, 0.0)
                agree = float(np.mean(result.labels == torch_labels))
                path = f", {entry.comparison}" if entry.comparison else ""
                rows.append([batch, f"{scheme} ({n}P{path})", transport,
                             f"{on / batch * 1e3:.1f}", f"{min(online) / batch * 1e3:.1f}",
                             f"{on / batch / unit_before:.2f}",
                             f"{statistics.median(offline) / batch * 1e3:.1f}",
                             f"{statistics.median(setup) * 1e3:.0f}", result.online_rounds,
                             "/".join(f"{b / batch / 1e6:.2f}"
                                      for b in result.bytes_sent("online")),
                             "/".join(f"{b / batch / 1e6:.2f}"
                                      for b in result.bytes_sent("offline")),
                             f"{on / torch_s:.0f}x", f"{on / emu_s:.1f}x", f"{agree:.0%}"])
        if batch == 1:
            emulator_batch1 = emu_s
        rows.append([batch, "plaintext torch (float32)", "-", f"{torch_s / batch * 1e3:.2f}",
                     "", f"{torch_s / batch / unit_before:.3f}", "", "", "", "", "", "1x", "",
                     ""])
        rows.append([batch, "plaintext emulator (fixed point)", "-",
                     f"{emu_s / batch * 1e3:.1f}", "", f"{emu_s / batch / unit_before:.2f}", "",
                     "", "", "", "", "", "1x", ""])
    target_rows = []
    for scheme, target in TARGETS.items():
        if (scheme, "tcp", 1) not in measured:
            target_rows.append([scheme, f"{target * 1e3:.0f}", "not implemented", "", ""])
            continue
        on, rounds, _ = measured[(scheme, "tcp", 1)]
        met = on <= target
        target_rows.append([scheme, f"{target * 1e3:.0f}", f"{on * 1e3:.0f}",
                            "met" if met else f"missed by {on / target:.1f}x",
                            "" if met else WHY.get(scheme, "")])
    if ("replicated", "tcp", 1) in measured:
        on, rounds, _ = measured[("replicated", "tcp", 1)]
        ratio = on / emulator_batch1
        target_rows.append(["replicated vs emulator", "10x", f"{ratio:.1f}x",
                            "met" if ratio <= 10 else f"missed by {ratio / 10:.1f}x",
                            "" if ratio <= 10 else WHY_EMULATOR])
        target_rows.append(["replicated rounds", "60", str(rounds),
                            "met" if rounds <= 60 else "missed", ""])
    targets = ("\n### Targets (issue 11): batch 1, TCP+TLS, online ms per clip\n\n"
               + table(["scheme", "target", "measured", "status", "where the time goes"],
                       target_rows))
    unit_after = machine_unit()
    header = ["batch", "scheme", "transport", "online ms/clip (median)", "min",
              "online / machine unit", "offline ms/clip",
              "setup ms (per model)", "rounds", "online MB/clip sent per party",
              "offline MB/clip sent per party", "vs torch", "vs emulator", "labels = torch"]
    return (f"## Reference CNN end to end\n\nMachine: {cpu_model()}, 2 cores. Per clip: the "
            f"run's time divided by the batch; median and min over {repeats} runs after the "
            "numba kernels are loaded (the MAC schemes: one run at batch 1). Online is the "
            "slowest party's time from the first input to the label reaching the client; "
            "offline is preprocessing (dealer, or helper P2 "
            "in the replicated scheme); setup is the model owner sharing the weights, once per "
            "model, before any clip exists. Bytes are frame bytes (TLS adds its own framing). "
            "Parties run one numba thread each (they share the 2 cores). The machine unit "
            f"(a fixed plaintext workload, `experiments/benchmarks/_reference.py`) took "
            f"{unit_before * 1e3:.1f} ms before this section and {unit_after * 1e3:.1f} ms "
            "after: figures on another day compare as multiples of it.\n\n"
            + table(header, rows) + targets
            + "\n### Where the time goes: replicated (3PC passive), TCP+TLS, batch 1\n\n"
            "Wall time of each layer, the client's (P0's) local work, and each party's time "
            "blocked on receiving. P2 is idle (waiting) while P0 and P1 run the masked "
            "comparison rounds, so its wait is not a cost.\n\n" + profile)
