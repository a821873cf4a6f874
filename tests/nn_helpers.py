"""Helpers of the secure neural-network tests: tiny random models, float64 torch references,
and the a-priori error bounds the tests assert.

Error model (frac_bits f = 16, one unit in the last place ``ULP = 2^-16``). Let ``e`` bound
the absolute error of the current secure value against the exact real value, in the units
the secure model uses (an average pool is a sum, its 1/k folded into the next weights), and
``m`` bound the magnitude of the exact value (taken from the emulator's layer outputs plus e):

* encoding the input:                       e = ULP / 2 (round to nearest);
* conv / linear with encoded weights W^, fan-in F and A = max_out sum |W^| (a row's l1 norm):
  e' = A e + (ULP / 2) F (m + e) + ULP + 2^-(2f+1)
  -- the propagated error, the weights' rounding (each within ULP / 2, folding batch-norm
  and 1/k is done in float64 before that single rounding), one truncation (the emulator
  floors, the secure truncation is floor or floor + 1: either way within one ULP), and the
  bias's rounding at scale 2^2f;
* sum pooling over k cells:                  e' = k e;
* the final rescale by a public factor c^:   e' = |c^| e + (ULP / 2)(m + e) + ULP;
* ReLU, max pooling, flatten, reshape:      e' = e (1-Lipschitz, exact on shares).

The logits' error is the last e. It bounds both |emulator - torch| and |secure - torch| for
every example, torch being evaluated in float64 on the same float32 weights (so the only
differences are fixed point's); truncation's failure probability (2^-(64 - value bits)) is
neglected. For the tiny models of these tests (weights ~ N(0, 1/fan_in), inputs ~ N(0, 1))
the bound is between 2e-5 and 1e-2 (worst cases are wide fan-ins); the measured errors are far
smaller: at most 2.6e-4 over 533 random models of `test_nn_layers` (a one-off run with 40
hypothesis examples per test), so the tests also hold every tiny model to ``TINY_LIMIT`` = 1e-3.

Audit mode compares every layer's secure output with the emulator's, which shares the
encodings, so only truncations differ: per layer e' = A e + ULP (conv, linear),
k e (sum pool), |c^| e + ULP (rescale), e otherwise, starting from e = 0.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from nn import layers as L
from nn.emulator import emulate
from nn.importer import from_torch
from nn.inference import classify
from nn.model import SecureModel

FRAC_BITS = 16
ULP = 2.0**-FRAC_BITS
SCHEMES = ("replicated", "additive")
TINY_LIMIT = 1e-3  # empirical cap on |logits - torch| for the tiny test models (see above)


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Seeded weights: conv / linear ~ N(0, 1/fan_in), biases ~ N(0, 0.25); batch-norm with
    random running statistics and affine parameters. Returns `module` in eval mode."""
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(normal(m.weight.shape, fan_in**-0.5))
                if m.bias is not None:
                    m.bias.copy_(normal(m.bias.shape, 0.5))
            elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(normal((n,), 0.5))
                m.running_var.copy_(0.5 + 1.5 * torch.rand((n,), generator=gen))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand((n,), generator=gen))
                    m.bias.copy_(normal((n,), 0.5))
    return module.eval()


def torch_logits(module: nn.Module, features: np.ndarray) -> np.ndarray:
    """(batch, classes) logits of `module` evaluated in float64 (on a copy)."""
    double = copy.deepcopy(module).double().eval()
    with torch.no_grad():
        out = double(torch.as_tensor(np.asarray(features, dtype=np.float64)))
    return out.numpy().reshape(len(features), -1)


def top2_margin(logits: np.ndarray) -> np.ndarray:
    """Per example, the gap between the largest and the second largest logit."""
    if logits.shape[1] < 2:
        return np.full(len(logits), np.inf)
    top = np.sort(logits, axis=1)
    return top[:, -1] - top[:, -2]


def _affine_norms(layer: L.Layer, model: SecureModel) -> tuple[float, int]:
    """(A, F): the largest l1 norm of an output's weights, and the fan-in."""
    w = np.abs(model.fixed.decode(layer.weight))
    if isinstance(layer, L.Conv2d):  # (Cout, Cin, kh, kw)
        return float(w.sum(axis=(1, 2, 3)).max()), int(np.prod(w.shape[1:]))
    return float(w.sum(axis=0).max()), int(w.shape[0])  # Linear: (in, out)


def _encoded_factor(layer: L.Scale) -> float:
    return round(layer.factor * 2**FRAC_BITS) / 2**FRAC_BITS


def error_bound(model: SecureModel, features: np.ndarray) -> float:
    """A bound on |logits - torch's| for `features`, emulated or secure (module docstring)."""
    features = np.asarray(features, dtype=np.float64)
    _, outputs = emulate(model, features)
    e = ULP / 2
    m = float(np.abs(features).max())
    for layer, out in zip(model.layers, outputs, strict=True):
        if isinstance(layer, L.Conv2d | L.Linear):
            a, fan_in = _affine_norms(layer, model)
            e = a * e + ULP / 2 * fan_in * (m + e) + ULP + 2.0 ** (-2 * FRAC_BITS - 1)
        elif isinstance(layer, L.Pool2d) and layer.mode == "sum":
            e = layer.kernel[0] * layer.kernel[1] * e
        elif isinstance(layer, L.Scale):
            e = abs(_encoded_factor(layer)) * e + ULP / 2 * (m + e) + ULP
        m = float(np.abs(out).max()) + e
    return e


def audit_bounds(model: SecureModel) -> list[float]:
    """Per layer, a bound on |secure - emulator| (module docstring: one ULP per truncation,
    propagated through the later layers)."""
    bounds, e = [], 0.0
    for layer in model.layers:
        if isinstance(layer, L.Conv2d | L.Linear):
            e = _affine_norms(layer, model)[0] * e + ULP
        elif isinstance(layer, L.Pool2d) and layer.mode == "sum":
            e = layer.kernel[0] * layer.kernel[1] * e
        elif isinstance(layer, L.Scale):
            e = abs(_encoded_factor(layer)) * e + ULP
        bounds.append(e)
    return bounds


def check_against_torch(module: nn.Module, input_shape: tuple[int, ...], *, batch: int = 3,
                        seed: int = 0, schemes: tuple[str, ...] = SCHEMES) -> dict[str, float]:
    """Import `module` (from_torch checks emulator against torch on its probes), then assert
    that emulated and secure logits (every scheme in `schemes`) are within `error_bound` of
    torch's float64 logits, and that the secure labels are torch's wherever torch's top-2
    margin exceeds twice the bound (closer calls may legitimately flip).

    Returns the measured maximum errors and the bound, for the record."""
    module = module.eval()
    model, report = from_torch(module, input_shape)
    assert report is not None and report.agreement == 1.0
    features = np.random.default_rng(seed).normal(size=(batch, *input_shape))
    ref = torch_logits(module, features)
    bound = error_bound(model, features)
    emulated, _ = emulate(model, features)
    assert emulated.shape == ref.shape
    measured = {"bound": bound, "emulator": float(np.abs(emulated - ref).max())}
    assert measured["emulator"] <= min(bound, TINY_LIMIT), measured
    decisive = top2_margin(ref) > 2 * bound
    for scheme in schemes:
        result = classify(model, features, scheme=scheme, reveal_logits=True)
        assert result.logits.shape == ref.shape
        measured[scheme] = float(np.abs(result.logits - ref).max())
        assert measured[scheme] <= min(bound, TINY_LIMIT), (scheme, measured)
        assert result.labels.shape == (batch,)
        np.testing.assert_array_equal(result.labels[decisive], ref.argmax(axis=1)[decisive])
    MEASURED.append(measured)
    return measured


#: Every check's measured errors (inspected when choosing and documenting the bounds).
MEASURED: list[dict[str, float]] = []
