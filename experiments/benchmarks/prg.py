"""PRG throughput: AES-128-CTR keystream turned into ring elements and bits, warm."""

from __future__ import annotations

from experiments.benchmarks._timing import median_seconds, table
from mpc.prg import PRG


def run(quick: bool) -> str:
    repeats = 3 if quick else 9
    prg = PRG.fresh()
    rows = []
    for count in (10**5, 10**7):
        seconds = median_seconds(lambda c=count: prg.ring_elements(c), repeats=repeats,
                                 warmup=2)
        rows.append([f"`ring_elements({count:,})`", f"{8 * count / 1e6:.1f}",
                     f"{seconds * 1e3:.3f}", f"{8 * count / seconds / 1e9:.2f}"])
    bits = 10**7
    seconds = median_seconds(lambda: prg.bits(bits), repeats=repeats, warmup=1)
    rows.append([f"`bits({bits:,})`", f"{bits / 8e6:.2f} (keystream)", f"{seconds * 1e3:.3f}",
                 f"{bits / 8 / seconds / 1e9:.2f} (keystream)"])
    return ("## PRG (AES-128-CTR)\n\n"
            "One `PRG` drawing uint64 ring elements (or bits) from the AES-128-CTR keystream "
            "of the `cryptography` package (OpenSSL, AES-NI where the CPU has it); warm, "
            f"median of {repeats} draws.\n\n"
            + table(["draw", "MB", "ms", "GB/s"], rows))
