"""`nn.inference.classify`: the reference CNN under every scheme of the registry against
torch, the per-layer report, who learns what, audit mode, and bad features.

Reference CNN inputs. Weights are torch's default initialisation under a fixed seed; inputs
are standard-normal (1, 40, 350) maps from a seeded generator. Its logits are small (|z| <
0.15), so near-ties occur: of 64 candidates we keep, in order, the first 50 whose float64
torch top-2 margin exceeds ``2 * REFERENCE_BOUND`` (53 qualify), for which a secure logit
error within the bound cannot flip the label.

``REFERENCE_BOUND`` = 1e-3 on |secure logits - torch's float64 logits|: measured 2.3e-4 (both
passive schemes) on these inputs, mostly the rounding of Dense(9408 -> 64)'s weights (fan-in
9408, each weight within 2^-17), so the bound has a margin of 4.

The passive schemes classify all 50 inputs; the active ones fewer (`FEWER_INPUTS`), the first
of the same 50, as a clip costs them much more.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ROUNDS, ULP, audit_bounds, tiny_cnn, top2_margin, torch_logits

from experiments.models import INPUT_SHAPE, predict_logits, reference_cnn
from nn import layers as L
from nn.importer import from_torch
from nn.inference import classify
from nn.model import CLIENT
from protocols.registry import SCHEMES

REFERENCE_BOUND = 1e-3
N_INPUTS = 50
#: Inputs of the reference CNN for the schemes that take far longer per clip (two busy cores:
#: rep4 about 1.5 s a clip, replicated_mac about 5 s, spdz2k about 10 s and 2.3 GB for the
#: dealer's comparison keys); the first of the same decisive inputs.
FEWER_INPUTS = {"rep4": 4, "replicated_mac": 1, "spdz2k": 1}
#: The scheme whose reference run is in audit mode too (auditing only adds reveals).
AUDITED = "replicated"
#: Preprocessing items a layer consumes: (triple +) truncation pair for conv / linear, one
#: comparison for ReLU; rep4 and replicated_mac keep no per-layer material.
AFFINE_ITEMS = {"replicated": 1, "additive": 2, "spdz2k": 2, "rep4": 0, "replicated_mac": 0}
RELU_ITEMS = {"replicated": 1, "additive": 1, "spdz2k": 1, "rep4": 0, "replicated_mac": 0}


def n_inputs(scheme: str) -> int:
    return FEWER_INPUTS.get(scheme, N_INPUTS)


@pytest.fixture(scope="module")
def reference():
    """The reference CNN, imported, with its 50 decisive inputs and torch's logits."""
    torch.manual_seed(1234)
    module = reference_cnn(8).eval()
    model, report = from_torch(module, INPUT_SHAPE)
    assert report.agreement == 1.0
    candidates = np.random.default_rng(7).normal(size=(64, *INPUT_SHAPE))
    ref = torch_logits(module, candidates)
    keep = np.flatnonzero(top2_margin(ref) > 2 * REFERENCE_BOUND)
    assert len(keep) >= N_INPUTS, f"only {len(keep)} decisive inputs"
    keep = keep[:N_INPUTS]
    return module, model, candidates[keep], ref[keep]


class _Runs(dict):
    """One batch per scheme, classified on first use: `n_inputs(scheme)` of the decisive
    inputs (all 50: about 25 s on two busy cores). The `AUDITED` scheme's run is in audit
    mode too: auditing only adds reveals after each layer."""

    def __init__(self, model, features) -> None:
        super().__init__()
        self.model, self.features = model, features

    def __missing__(self, scheme: str):
        result = classify(self.model, self.features[:n_inputs(scheme)], scheme=scheme,
                          reveal_logits=True, audit=scheme == AUDITED)
        self[scheme] = result
        return result


@pytest.fixture(scope="module")
def runs(reference):
    _, model, features, _ = reference
    return _Runs(model, features)


# -- the reference CNN against torch ---------------------------------------------------------
@pytest.mark.parametrize("scheme", tuple(SCHEMES))
def test_reference_cnn_labels_equal_torch(reference, runs, scheme):
    module, _, features, ref = reference
    result = runs[scheme]
    assert len(features) >= 50
    n = n_inputs(scheme)
    features, ref = features[:n], ref[:n]
    assert result.labels.shape == (n,)
    np.testing.assert_array_equal(result.labels, ref.argmax(axis=1))  # 100 %
    float32 = predict_logits(module, features.astype(np.float32)).numpy()
    np.testing.assert_array_equal(result.labels, float32.argmax(axis=1))
    error = np.abs(result.logits - ref).max()
    assert error <= REFERENCE_BOUND, error


# -- the per-layer report --------------------------------------------------------------------
@pytest.mark.parametrize("scheme", tuple(SCHEMES))
def test_reference_cnn_report(reference, runs, scheme):
    _, model, _, _ = reference
    result = runs[scheme]
    names = [r.name for r in result.layers]
    assert names == ["weights", "input", *(layer.name for layer in model.layers),
                     "argmax", "reveal"]
    table = result.table()
    assert all(name in table for name in names)
    assert f"scheme {scheme}" in table
    by_name = {r.name: r for r in result.layers}
    n_compute = SCHEMES[scheme].parties
    for layer in model.layers:
        row = by_name[layer.name]
        assert len(row.bytes_sent) == n_compute
        if isinstance(layer, L.ReLU):
            assert row.rounds == ROUNDS[scheme]["relu"] and row.items == RELU_ITEMS[scheme]
        elif isinstance(layer, L.Conv2d | L.Linear):
            assert row.items == AFFINE_ITEMS[scheme]
            assert row.rounds > 0 and max(row.bytes_sent) > 0
        elif isinstance(layer, L.Pool2d | L.Flatten):  # a local sum / a reshape
            assert layer.mode == "sum" if isinstance(layer, L.Pool2d) else True
            assert row.rounds == 0 and row.bytes_sent == (0,) * n_compute and row.items == 0
    assert sum(isinstance(layer, L.ReLU) for layer in model.layers) == 3
    assert sum(isinstance(layer, L.Pool2d) for layer in model.layers) == 2
    online = result.online_rounds  # the weights are shared in the setup phase, not online
    audit_reveals = len(model.layers) if scheme == AUDITED else 0
    # every reveal after the label's (the audit's, then the logits') is a later reveal
    later_reveals = (audit_reveals + 1) * ROUNDS[scheme]["reveal again"]
    assert online == sum(r.rounds for r in result.layers[1:]) + later_reveals
    assert result.setup_seconds > 0
    # every scheme sends in the setup: e.g. replicated one share of each weight, additive the
    # masked weights d = W - b, opened once per model and reused for every clip
    assert max(result.bytes_sent("setup")) > 0
    assert result.offline_seconds >= 0 and result.online_seconds > 0
    if SCHEMES[scheme].dealer:
        assert result.bytes_sent("offline")[-1] > 0  # the dealer's one message


# -- who learns what -------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", tuple(SCHEMES))
def test_only_the_client_learns_the_label(reference, runs, scheme):
    result = runs[scheme]
    compute = result.parties[:SCHEMES[scheme].parties]
    assert len(result.parties) == SCHEMES[scheme].endpoints(len(compute))
    assert [p.party_id for p in compute] == list(range(len(compute)))
    assert compute[CLIENT].result.labels is not None
    assert compute[CLIENT].result.logits is not None  # reveal_logits was asked for
    for party in compute[1:]:
        assert party.result.labels is None
        assert party.result.logits is None  # revealed to the client only, even so
        if party.result.intermediate is not None:  # audit: the client only, too
            assert all(v is None for v in party.result.intermediate)
    for dealer in result.parties[len(compute):]:
        assert dealer.result is None


@pytest.fixture(scope="module")
def tiny():
    return tiny_cnn(4)


@pytest.mark.parametrize("scheme", tuple(SCHEMES))
def test_logits_stay_secret_unless_asked_for(tiny, scheme):
    module, model, features = tiny
    result = classify(model, features, scheme=scheme)
    assert result.logits is None
    for party in result.parties:
        if party.result is not None:
            assert party.result.logits is None and party.result.intermediate is None
    assert all(r.max_error is None for r in result.layers)  # no audit
    ref = torch_logits(module, features)
    decisive = top2_margin(ref) > 2e-3
    np.testing.assert_array_equal(result.labels[decisive], ref.argmax(axis=1)[decisive])


def test_additive_with_more_parties(tiny):
    module, model, features = tiny
    result = classify(model, features, scheme="additive", n_parties=3, reveal_logits=True)
    assert [p.result.labels is None for p in result.parties[:3]] == [False, True, True]
    assert np.abs(result.logits - torch_logits(module, features)).max() < 1e-3


def test_one_example_without_a_batch_axis(tiny):
    _, model, features = tiny
    result = classify(model, features[0], scheme="replicated")
    assert result.labels.shape == (1,)


# -- audit mode ------------------------------------------------------------------------------
def test_audit_fills_every_layers_error_within_one_ulp_per_truncation(reference, runs):
    """Audit compares each layer's secure output with the emulator's: they differ only by the
    probabilistic truncations (at most one ULP each, then propagated through later layers'
    l1 norms; `conftest.audit_bounds`). The first convolution is within one ULP."""
    _, model, _, _ = reference
    result = runs[AUDITED]
    rows = result.layers[2:2 + len(model.layers)]
    assert [r.name for r in rows] == [layer.name for layer in model.layers]
    bounds = audit_bounds(model)
    for row, bound in zip(rows, bounds, strict=True):
        assert row.max_error is not None
        assert row.max_error <= bound + 1e-12, (row.name, row.max_error, bound)
    assert rows[0].max_error <= ULP
    assert all(r.max_error is None for r in result.layers[:2] + result.layers[-2:])
    assert "e-" in result.table()  # the error column is printed
    assert all(r.max_error is None for r in runs["additive"].layers)  # not audited


@pytest.mark.parametrize("scheme", tuple(SCHEMES))
def test_audit_on_a_small_model(tiny, scheme):
    _, model, features = tiny
    result = classify(model, features, scheme=scheme, audit=True)
    rows = result.layers[2:2 + len(model.layers)]
    for row, bound in zip(rows, audit_bounds(model), strict=True):
        assert row.max_error is not None and row.max_error <= bound + 1e-12


# -- bad features ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 1, 6, 5), (2, 6, 6), (1, 7, 6), (6, 6), (2, 2, 6, 6)])
def test_features_of_the_wrong_shape_raise(tiny, shape):
    _, model, _ = tiny
    with pytest.raises(ValueError, match="shape"):
        classify(model, np.zeros(shape), scheme="replicated")


def test_unknown_scheme_raises(tiny):
    """Bug found: an unknown scheme raised a bare KeyError('nonesuch') from a dictionary
    look-up in `classify`, not the ValueError naming the schemes that `protocols.run` gives."""
    _, model, features = tiny
    with pytest.raises(ValueError, match="unknown scheme 'nonesuch'.*replicated"):
        classify(model, features, scheme="nonesuch")
