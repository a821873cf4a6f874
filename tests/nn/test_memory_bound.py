"""The memory a batch needs stays within the bound documented in mpc/limits.py.

Peak Python-allocated memory (numpy arrays included, via tracemalloc) of one private
classification with every party in this process, at batch 1 and batch 4: the growth per
clip must stay under the documented ~55 MB a clip (with a 1.5x margin), so MAX_BATCH clips
stay within the documented total.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import torch

from experiments.models import reference_cnn
from mpc.limits import MAX_BATCH
from nn.importer import from_torch
from nn.inference import classify

PER_CLIP_BYTES = 55e6 * 1.5
FIXED_BYTES = 0.4e9 * 1.5


def _peak(model, batch: int) -> int:
    x = np.random.default_rng(batch).normal(size=(batch, 1, 40, 350))
    tracemalloc.start()
    try:
        classify(model, x, scheme="replicated")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_per_clip_is_within_the_documented_bound():
    torch.manual_seed(0)
    model, _ = from_torch(reference_cnn(8), (1, 40, 350), check=False)
    one, four = _peak(model, 1), _peak(model, 4)
    assert one < FIXED_BYTES + PER_CLIP_BYTES
    assert (four - one) / 3 < PER_CLIP_BYTES
    assert FIXED_BYTES + MAX_BATCH * PER_CLIP_BYTES < 8e9  # the documented maximum fits
