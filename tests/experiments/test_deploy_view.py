"""In a deployment the compute parties open only label + mask, never the label itself."""

from __future__ import annotations

import numpy as np
import torch

from experiments.deploy import ExternalInference, split
from experiments.models import reference_cnn
from mpc.prg import PRG
from nn.importer import from_torch
from protocols.run import run


def test_compute_parties_open_only_the_masked_label():
    torch.manual_seed(0)
    model, _ = from_torch(reference_cnn(4), (1, 40, 350), check=False)
    features = np.random.default_rng(1).normal(size=(3, 1, 40, 350))
    from nn.emulator import emulate_labels

    labels = emulate_labels(model, features)
    n, prg = 3, PRG.fresh()
    mask = prg.ring_elements((3,))
    feature_pieces = split(model.fixed.encode(features), n, prg)
    mask_pieces = split(mask, n, prg)
    weights = [v for layer in model.layers
               for v in (getattr(layer, "weight", None), getattr(layer, "bias", None))
               if v is not None]
    weight_pieces = [split(w, n, prg) for w in weights]
    public = model.public()
    programs = [ExternalInference(public, 3, [pieces[p] for pieces in weight_pieces],
                                  feature_pieces[p], mask_pieces[p]) for p in range(n)]
    reports = run("replicated", programs, n_parties=n)
    opened = [r.result for r in reports]
    for value in opened:  # every compute party holds the same masked value ...
        assert np.array_equal(value, opened[0])
    assert np.array_equal(opened[0] - mask, labels)  # ... which unmasks to the labels
    assert not np.any(opened[0] == labels.astype(np.uint64))  # and is not the label
