"""Imported by the fork server that party processes start from (`mpc.forking`) when the
launching process may run any scheme (a test run, a benchmark): every scheme's module and
the serial kernels of the 128-bit ring, the binary circuits and the DCF comparisons."""

from __future__ import annotations

import protocols.preload  # noqa: F401
from mpc import ring128
from protocols import registry
from protocols.blocks import binary_rep3, dcf

for _scheme in registry.SCHEMES.values():
    _scheme.protocol  # noqa: B018 - importing the scheme's module is the point
ring128.warmup()
binary_rep3.warmup()
dcf.warmup()
