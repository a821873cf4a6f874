"""The published audio architectures of experiments/models.py (res8, DS-CNN, M5): each
imports with `nn.from_torch`, its float reference matches torch, and under every scheme it
gives torch's labels and logits; at their defaults they fit `mpc.limits`.

The secure runs use small widths on the architectures' own input shapes:
res8(width=8) on `RES8_INPUT_SHAPE` (1, 40, 100), ds_cnn(width=8, blocks=4) on
`DS_CNN_INPUT_SHAPE` (1, 10, 50) and m5(channels=8) on `M5_INPUT_SHAPE` (1, 16000), with
`conftest.randomize` weights and two seeded standard-normal inputs each.
"""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pytest
from conftest import every_scheme_once, randomize, top2_margin, torch_logits

from experiments.models import (
    DS_CNN_INPUT_SHAPE,
    M5_INPUT_SHAPE,
    RES8_INPUT_SHAPE,
    ds_cnn,
    m5,
    res8,
)
from mpc import limits
from nn import describe
from nn import layers as L
from nn.errors import ModelDescriptionError
from nn.importer import from_torch
from nn.inference import classify
from nn.plain import forward

NUM_CLASSES = 5
#: |logits - float64 torch| for the small models below (logits up to ~5), emulated, float
#: reference or secure. The importer chooses f = 24 fractional bits for all three; measured
#: (import report, float reference and every scheme alike): res8 4.2e-5, DS-CNN 1.5e-5, M5
#: 1.5e-6 -- mostly the rounding of the last linear layer's weights, into which the global
#: average's 1/(13*25) (res8) is folded; probabilistic truncation adds a few 2^-24 per
#: layer. The bound leaves 12x over the worst. Labels must be torch's wherever torch's
#: top-2 margin exceeds twice the bound (the seeds' inputs: margins 1.4 to 3.3, so all).
LOGIT_BOUND = 5e-4

#: name -> (the small module, its input shape, weight seed, and the layer kinds of its
#: import: every batch-norm of DS-CNN and M5 folds into its convolution, res8's six (after a
#: ReLU or a sum) become per-channel affine layers).
SMALL = {
    "res8": (lambda: res8(NUM_CLASSES, width=8), RES8_INPUT_SHAPE, 1,
             {"Conv2d": 7, "ChannelAffine": 6, "Add": 3, "Linear": 1}),
    "ds_cnn": (lambda: ds_cnn(NUM_CLASSES, width=8, blocks=4), DS_CNN_INPUT_SHAPE, 2,
               {"Conv2d": 9, "ChannelAffine": 0, "Add": 0, "Linear": 1}),
    "m5": (lambda: m5(NUM_CLASSES, channels=8), M5_INPUT_SHAPE, 3,
           {"Conv2d": 4, "ChannelAffine": 0, "Add": 0, "Linear": 1}),
}


@functools.cache
def imported(name: str):
    """(torch module, imported model, import report, 2 inputs, torch's float64 logits)."""
    make, shape, seed, _ = SMALL[name]
    module = randomize(make(), seed)
    model, report = from_torch(module, shape)
    features = np.random.default_rng(seed).normal(size=(2, *shape))
    return module, model, report, features, torch_logits(module, features)


@pytest.mark.parametrize("name", SMALL)
def test_an_architecture_imports_and_its_float_reference_matches_torch(name) -> None:
    _, model, report, features, expected = imported(name)
    assert report.agreement == 1.0
    assert report.logit_error < LOGIT_BOUND, report.table()
    kinds = Counter(type(layer).__name__ for layer in model.layers)
    assert {kind: kinds[kind] for kind in SMALL[name][3]} == SMALL[name][3], kinds
    assert np.abs(forward(model, features) - expected).max() < LOGIT_BOUND


def test_res8_pools_four_frames_by_three_bands_and_keeps_the_paper_size() -> None:
    module = res8(12)
    assert sum(p.numel() for p in module.parameters()) == 110_307  # the paper's "110K"
    model, _ = from_torch(module, RES8_INPUT_SHAPE, frac_bits=16, check=False)
    pools = [layer for layer in model.layers if isinstance(layer, L.Pool2d)]
    assert pools[0].kernel == (3, 4) and pools[0].mode == "sum"


@every_scheme_once
@pytest.mark.parametrize("name", SMALL)
def test_an_architecture_gives_torchs_labels_under_every_scheme(scheme, n_parties,
                                                                name) -> None:
    _, model, _, features, expected = imported(name)
    result = classify(model, features, scheme=scheme, n_parties=n_parties,
                      reveal_logits=True)
    assert np.abs(result.logits - expected).max() < LOGIT_BOUND
    decisive = top2_margin(expected) > 2 * LOGIT_BOUND
    assert decisive.all(), top2_margin(expected)  # the seeds give no near-tie to excuse
    np.testing.assert_array_equal(result.labels, expected.argmax(axis=1))


#: The full-size architectures (the defaults) and their footprints per example, from
#: `nn.describe.checked` (parameters as imported: depthwise kernels expanded to dense, conv
#: biases added, batch-norms folded or per-channel): (parameters, largest tensor,
#: multiply-adds, comparisons). Limits: 8,388,608 / 2,097,152 / 134,217,728 / 1,048,576.
#: * res8(12) on (1, 40, 100): 111,162 / 180,000 (conv0's output) / 37,247,040 / 267,761;
#:   110,307 torch parameters.
#: * res8(12) on the bundled model's (1, 40, 350) maps: 111,162 / 630,000 / 129,650,760 /
#:   935,381 -- it fits, with 3.5% to spare in multiply-adds (width 48 does not).
#: * ds_cnn(12) on (1, 10, 50): 167,756 / 72,000 / 20,800,768 / 72,011; 23,180 torch
#:   parameters (the dense expansion of the four depthwise 3x3 kernels adds 4 x 64 x 63 x 9).
#: * m5(10) on (1, 16000): 24,906 / 318,480 (the first convolution's unfolded input, 80 x
#:   3981) / 15,534,208 / 313,193; 25,098 torch parameters.
FULL_SIZE = {
    "res8": (lambda: res8(12), RES8_INPUT_SHAPE, (111_162, 180_000, 37_247_040, 267_761)),
    "res8-bundled-maps": (lambda: res8(12), (1, 40, 350),
                          (111_162, 630_000, 129_650_760, 935_381)),
    "ds_cnn": (lambda: ds_cnn(12), DS_CNN_INPUT_SHAPE, (167_756, 72_000, 20_800_768, 72_011)),
    "m5": (lambda: m5(10), M5_INPUT_SHAPE, (24_906, 318_480, 15_534_208, 313_193)),
}


def _footprint(module, shape):
    model, _ = from_torch(module, shape, frac_bits=16, check=False)
    return describe.checked(describe.describe(model))[1]


@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_architectures_fit_the_limits(name) -> None:
    make, shape, figures = FULL_SIZE[name]
    footprint = _footprint(make(), shape)
    assert (footprint.parameters, footprint.activation, footprint.multiply_adds,
            footprint.comparisons) == figures
    assert footprint.parameters <= limits.MAX_PARAMETERS
    assert footprint.activation <= limits.MAX_ACTIVATION
    assert footprint.multiply_adds <= limits.MAX_MULTIPLY_ADDS
    assert footprint.comparisons <= limits.MAX_COMPARISONS


@pytest.mark.parametrize(("module", "shape", "why"), [
    (lambda: ds_cnn(12), (1, 40, 100), "162304000 multiply-adds per example"),
    (lambda: m5(10, channels=128), M5_INPUT_SHAPE, "1114240 comparisons per example"),
    (lambda: res8(12, width=48), (1, 40, 350), "multiply-adds per example, above"),
], ids=["ds_cnn-on-40x100", "m5-at-the-paper-width", "res8-width-48-on-40x350"])
def test_the_limits_are_why_the_defaults_are_what_they_are(module, shape, why) -> None:
    with pytest.raises(ModelDescriptionError, match=why):
        _footprint(module(), shape)
