"""The reference paper's table on this machine: every implemented scheme, two networks.

    python -m experiments.reproduce [--out results/paper_table.md] [--quick]

For each scheme: the bundled model on the bundled held-out clips (8 clips from the two
held-out voices), per clip the online, offline and total time, bytes sent per party,
rounds, and whether every secure label equals the plaintext model's. Networks: loopback
(LAN) and a simulated WAN (40 ms one-way, 100 Mbit/s per direction) made by delaying relays
in user space (`experiments.netsim`; this kernel has no netem). Every party is a separate
process talking TCP with mutual TLS. Writes the Markdown table and a PNG chart.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

import audio
from experiments.benchmarks.network import cpu_model
from experiments.modelfile import BUNDLED_CLIPS, BUNDLED_MODEL, load_model, plaintext_logits
from experiments.netsim import LAN, WAN, Link, Route
from nn.inference import classify
from protocols.registry import SCHEMES, Scheme


def _timed(model, x, scheme: Scheme, link: Link) -> dict:
    route = Route(link) if link.delay or link.rate_bits else None
    try:
        result = classify(model, x, scheme=scheme, transport="tcp", route=route, timeout=600)
    finally:
        if route is not None:
            route.close()
    return {"online": result.online_seconds, "offline": result.offline_seconds,
            "rounds": result.online_rounds,
            "bytes": [a + b for a, b in zip(result.bytes_sent("online"),
                                            result.bytes_sent("offline"), strict=True)],
            "labels": result.labels.tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/paper_table.md"))
    parser.add_argument("--quick", action="store_true", help="LAN only, one timing run")
    args = parser.parse_args(argv)
    loaded = load_model(BUNDLED_MODEL)
    clips = sorted(BUNDLED_CLIPS.glob("*.wav"))
    truth = json.loads((BUNDLED_CLIPS / "labels.json").read_text())
    config = loaded.feature_config
    features = np.stack([audio.features(audio.load(c, sample_rate=config.sample_rate), config)
                         for c in clips])
    plain = plaintext_logits(loaded, features).argmax(axis=1)
    phrase = [loaded.labels.index(truth[c.name]["label"]) for c in clips]
    rows, chart = [], []
    networks = [LAN] if args.quick else [LAN, WAN]
    for scheme in SCHEMES.values():
        print(f"reproduce: {scheme.name} ...", flush=True)
        labels: list[int] = []
        if scheme.batchable:
            labels = _timed(loaded.secure, features, scheme, LAN)["labels"]
        else:  # one clip at a time (memory, or to time single clips), every clip checked
            for k in range(len(clips)):
                labels += classify(loaded.secure, features[k:k + 1], scheme=scheme,
                                   transport="threads", timeout=600).labels.tolist()
        checked = len(labels)
        same = int(np.sum(np.array(labels) == plain[:checked]))
        for link in networks:
            m = _timed(loaded.secure, features[:1], scheme, link)
            rows.append([scheme.setting, scheme.name, link.name,
                         f"{m['online']:.3f}", f"{m['offline']:.3f}",
                         f"{m['online'] + m['offline']:.3f}",
                         "/".join(f"{b / 1e6:.1f}" for b in m["bytes"]), m["rounds"],
                         f"{same}/{checked}",
                         f"{np.mean(np.array(labels) == np.array(phrase[:checked])):.0%}"])
            chart.append((f"{scheme.name}\n{'LAN' if link is LAN else 'WAN'}", m["online"],
                          m["offline"]))
    header = ["setting", "scheme", "network", "online s/clip", "offline s/clip",
              "total s/clip", "MB sent per party (online+offline)", "rounds",
              "secure label = plaintext", "agreement with phrase label (secure)"]
    lines = ["# The paper's table, reproduced on this machine", "",
             f"Command: `python -m experiments.reproduce{' --quick' if args.quick else ''}`, "
             f"run {time.strftime('%Y-%m-%d %H:%M')} on {cpu_model()}, 2 cores, "
             f"{platform.python_implementation()} {platform.python_version()}.", "",
             "Model: the bundled reference CNN (`experiments/assets/model.pt`); clips: the 8 "
             "bundled held-out clips (voices British and Surfer, never seen in training). "
             "Times are for one clip (batch 1) with every party a separate process on this "
             "machine over TCP with mutual TLS 1.3; offline is the dealer's or helper's "
             "preprocessing; model sharing (once per model) is excluded. The plaintext model's "
             f"own agreement with the phrase labels is {np.mean(plain == phrase):.0%} "
             f"on the {len(clips)} clips; the labels of "
             f"{', '.join(s.name for s in SCHEMES.values() if not s.batchable)} are checked one "
             f"clip at a time, on all {len(clips)} clips "
             "(labels follow the phrase, see README). WAN is simulated by user-space relays "
             f"({WAN.name}) because this kernel has no netem.", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(args.out)
    _plot(chart, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


def _plot(chart: list[tuple[str, float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c[0] for c in chart]
    online = [c[1] for c in chart]
    offline = [c[2] for c in chart]
    fig, ax = plt.subplots(figsize=(max(6, len(chart) * 1.0), 4.5))
    ax.bar(names, online, label="online")
    ax.bar(names, offline, bottom=online, label="offline")
    ax.set_ylabel("seconds per clip (log scale)")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.01)
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    ax.set_title("Private classification of one 3.5 s clip")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
