"""`make bench`: run every benchmark section and write BENCHMARKS.md.

Each module in `experiments.benchmarks` exposes `run(quick: bool) -> str` returning a
Markdown section; timings are medians of several runs measured in this process.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import platform
import time
from pathlib import Path

import experiments.benchmarks as benchmarks_pkg

ORDER = ["ring", "prg", "transport", "protocols", "network", "side_by_side", "architectures"]


def _sections() -> list[str]:
    found = [m.name for m in pkgutil.iter_modules(benchmarks_pkg.__path__)
             if not m.name.startswith("_")]
    return sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--only", nargs="*", help="run only these sections")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args(argv)
    names = [n for n in _sections() if not args.only or n in args.only]
    # register every scheme's and the inference's preload before any section launches
    # parties: the fork server keeps what it loaded when the first launch started it
    import nn.inference  # noqa: F401
    import protocols.run  # noqa: F401
    parts = [
        "# Benchmarks\n",
        f"Command: `make bench` (`python -m experiments.bench`), run {time.strftime('%Y-%m-%d')} "
        f"on {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, 2 cores. All parties on this machine (loopback). "
        "Times are medians of several runs.\n",
    ]
    for name in names:
        module = importlib.import_module(f"experiments.benchmarks.{name}")
        print(f"bench: {name} ...", flush=True)
        parts.append(module.run(quick=args.quick))
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
