"""Imported by the fork server that party processes start from (`mpc.forking`): the
parties' entry points and the bit-slicing kernel of the masked comparisons."""

from __future__ import annotations

import numpy as np

import protocols.run  # noqa: F401 - the parties' entry points
from protocols.blocks import bitslice

bitslice.slice_bits(np.zeros(1, dtype=np.uint64))
