"""Each layer type of `nn.from_torch`, imported from torch and run in the emulator and under
the passive schemes of the registry (the fastest; tests/nn/test_inference.py runs CNNs under
every scheme), against torch in float64 on random shapes.

Every check goes through `conftest.check_against_torch`: emulated and secure logits must be
within the a-priori bound derived in conftest.py (one rounding per weight and input, one
truncation per linear layer, propagated through the layers' l1 norms; of the order of 1e-4
to 1e-3 for these tiny models at 16 fractional bits), and secure labels must equal torch's
wherever torch's top-2 margin exceeds twice that bound.
"""

from __future__ import annotations

import numpy as np
from conftest import check_against_torch, randomize, torch_logits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from nn import layers as L
from nn.emulator import emulate
from nn.importer import from_torch

FEW = settings(max_examples=5, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow])

seeds = st.integers(0, 2**16)
classes = st.integers(2, 4)


def _out_len(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# -- convolution and linear ------------------------------------------------------------------
@FEW
@given(cin=st.integers(1, 3), cout=st.integers(1, 4), kernel=st.integers(1, 3),
       stride=st.integers(1, 2), padding=st.integers(0, 2), bias=st.booleans(),
       h=st.integers(3, 7), w=st.integers(3, 7), n_classes=classes, seed=seeds)
def test_conv2d(cin, cout, kernel, stride, padding, bias, h, w, n_classes, seed):
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
    flat = cout * _out_len(h, kernel, stride, padding) * _out_len(w, kernel, stride, padding)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(flat, n_classes))
    check_against_torch(randomize(model, seed), (cin, h, w), seed=seed)


@FEW
@given(kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 2), sw=st.integers(1, 2),
       ph=st.integers(0, 1), pw=st.integers(0, 2), seed=seeds)
def test_conv2d_rectangular(kh, kw, sh, sw, ph, pw, seed):
    """Non-square kernels, strides and paddings; the conv's output is the logits."""
    model = nn.Sequential(nn.Conv2d(2, 2, (kh, kw), stride=(sh, sw), padding=(ph, pw)))
    check_against_torch(randomize(model, seed), (2, 5, 6), seed=seed)


@FEW
@given(cin=st.integers(1, 3), cout=st.integers(1, 4), kernel=st.integers(1, 4),
       stride=st.integers(1, 3), padding=st.integers(0, 2), bias=st.booleans(),
       length=st.integers(4, 12), n_classes=classes, seed=seeds)
def test_conv1d(cin, cout, kernel, stride, padding, bias, length, n_classes, seed):
    conv = nn.Conv1d(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
    flat = cout * _out_len(length, kernel, stride, padding)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(flat, n_classes))
    check_against_torch(randomize(model, seed), (cin, length), seed=seed)


@FEW
@given(n_in=st.integers(1, 24), hidden=st.integers(1, 12), bias=st.booleans(),
       n_classes=classes, seed=seeds)
def test_linear_and_relu(n_in, hidden, bias, n_classes, seed):
    model = nn.Sequential(nn.Linear(n_in, hidden, bias=bias), nn.ReLU(),
                          nn.Linear(hidden, n_classes, bias=bias))
    check_against_torch(randomize(model, seed), (n_in,), seed=seed)


@FEW
@given(n_in=st.integers(1, 16), n_out=st.integers(2, 6), seed=seeds)
def test_single_linear(n_in, n_out, seed):
    model = nn.Sequential(nn.Linear(n_in, n_out))
    check_against_torch(randomize(model, seed), (n_in,), seed=seed)


# -- pooling ---------------------------------------------------------------------------------
def _pool_case(pool: nn.Module, then: str, channels: int, out_hw: tuple[int, ...],
               n_classes: int) -> nn.Sequential:
    """conv -> ReLU -> pool -> `then`: "linear" (the 1/k folds into it), "conv" (folds into a
    convolution), or "end" (no linear layer follows: the importer appends a rescale)."""
    flat = channels * int(np.prod(out_hw))
    one_d = len(out_hw) == 1
    conv = nn.Conv1d if one_d else nn.Conv2d
    head = [conv(1, channels, 2, padding=1), nn.ReLU(), pool]
    if then == "linear":
        tail = [nn.Flatten(), nn.Linear(flat, n_classes)]
    elif then == "conv":
        tail = [conv(channels, 2, 1), nn.Flatten(), nn.Linear(2 * flat // channels, n_classes)]
    else:
        tail = [nn.Flatten()]
    return nn.Sequential(*head, *tail)


pool_args = dict(kernel=st.integers(1, 3), stride_delta=st.integers(-1, 1),
                 then=st.sampled_from(["linear", "conv", "end"]), n_classes=classes, seed=seeds)


def _stride(kernel: int, delta: int) -> int:
    return max(1, kernel + delta)  # kernel == stride, or overlapping / gapped windows


@FEW
@given(max_pool=st.booleans(), h=st.integers(3, 7), w=st.integers(3, 8), **pool_args)
def test_pool2d(max_pool, h, w, kernel, stride_delta, then, n_classes, seed):
    stride = _stride(kernel, stride_delta)
    pool = (nn.MaxPool2d if max_pool else nn.AvgPool2d)(kernel, stride)
    # the conv (kernel 2, padding 1) makes the map (h + 1) x (w + 1)
    out_hw = (_out_len(h + 1, kernel, stride), _out_len(w + 1, kernel, stride))
    model = _pool_case(pool, then, 3, out_hw, n_classes)
    check_against_torch(randomize(model, seed), (1, h, w), seed=seed)


@FEW
@given(max_pool=st.booleans(), length=st.integers(3, 12), **pool_args)
def test_pool1d(max_pool, length, kernel, stride_delta, then, n_classes, seed):
    stride = _stride(kernel, stride_delta)
    pool = (nn.MaxPool1d if max_pool else nn.AvgPool1d)(kernel, stride)
    out_len = _out_len(length + 1, kernel, stride)
    model = _pool_case(pool, then, 3, (out_len,), n_classes)
    check_against_torch(randomize(model, seed), (1, length), seed=seed)


def test_pool_kernel_equal_stride_and_not():
    """Both code paths of Pool2d (a reshape when windows tile the map, an index otherwise),
    explicitly, for sum and max, on maps that tile and on maps that do not."""
    for pool_type in (nn.AvgPool2d, nn.MaxPool2d):
        for kernel, stride, size in [(2, 2, 6), (2, 2, 7), (3, 2, 7), (2, 3, 8), (3, 1, 5)]:
            model = nn.Sequential(nn.Conv2d(1, 2, 1), pool_type(kernel, stride), nn.Flatten(),
                                  nn.Linear(2 * _out_len(size, kernel, stride) ** 2, 3))
            check_against_torch(randomize(model, kernel * 10 + stride), (1, size, size))


@FEW
@given(h=st.integers(2, 6), w=st.integers(2, 6), channels=st.integers(1, 4),
       then_linear=st.booleans(), n_classes=classes, seed=seeds)
def test_adaptive_avg_pool2d(h, w, channels, then_linear, n_classes, seed):
    tail = [nn.Linear(channels, n_classes)] if then_linear else []
    model = nn.Sequential(nn.Conv2d(2, channels, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), *tail)
    check_against_torch(randomize(model, seed), (2, h, w), seed=seed)


@FEW
@given(length=st.integers(2, 12), channels=st.integers(1, 4), then_linear=st.booleans(),
       n_classes=classes, seed=seeds)
def test_adaptive_avg_pool1d(length, channels, then_linear, n_classes, seed):
    tail = [nn.Linear(channels, n_classes)] if then_linear else []
    model = nn.Sequential(nn.Conv1d(2, channels, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool1d(1), nn.Flatten(), *tail)
    check_against_torch(randomize(model, seed), (2, length), seed=seed)


# -- batch-norm ------------------------------------------------------------------------------
@FEW
@given(affine=st.booleans(), padding=st.integers(0, 1), seed=seeds)
def test_batchnorm2d_after_conv(affine, padding, seed):
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=padding), nn.BatchNorm2d(3, affine=affine),
                          nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * (4 + 2 * padding) ** 2, 3))
    check_against_torch(randomize(model, seed), (2, 6, 6), seed=seed)


@FEW
@given(affine=st.booleans(), seed=seeds)
def test_batchnorm1d_after_linear_and_conv1d(affine, seed):
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3, affine=affine), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * 6, 5), nn.BatchNorm1d(5, affine=affine),
                          nn.ReLU(), nn.Linear(5, 3))
    check_against_torch(randomize(model, seed), (2, 8), seed=seed)


@FEW
@given(channels=st.integers(1, 3), kernel=st.integers(1, 3), stride=st.integers(1, 2),
       seed=seeds)
def test_batchnorm2d_first_before_conv(channels, kernel, stride, seed):
    """An input normaliser (as in the reference CNN) folds into an unpadded convolution."""
    model = nn.Sequential(nn.BatchNorm2d(channels), nn.Conv2d(channels, 2, kernel, stride),
                          nn.ReLU(), nn.Flatten(), nn.Linear(2 * _out_len(6, kernel, stride) ** 2,
                                                             3))
    check_against_torch(randomize(model, seed), (channels, 6, 6), seed=seed)


@FEW
@given(n_in=st.integers(1, 10), seed=seeds)
def test_batchnorm1d_first_before_linear(n_in, seed):
    model = nn.Sequential(nn.BatchNorm1d(n_in), nn.Linear(n_in, 4), nn.ReLU(), nn.Linear(4, 3))
    check_against_torch(randomize(model, seed), (n_in,), seed=seed)


def test_batchnorm1d_first_before_conv1d():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Conv1d(3, 2, 3, stride=2), nn.Flatten(),
                          nn.Linear(2 * 4, 3))
    check_against_torch(randomize(model, 5), (3, 10), seed=5)


def test_batchnorm_is_folded_away():
    """Batch-norm leaves no layer of its own: it is free in the secure model."""
    model = randomize(nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2),
                                    nn.Flatten(), nn.Linear(2 * 16, 4), nn.BatchNorm1d(4)), 1)
    secure, _ = from_torch(model, (1, 6, 6))
    assert [type(layer) for layer in secure.layers] == [L.Conv2d, L.Flatten, L.Linear]


# -- no-ops and nesting ----------------------------------------------------------------------
def test_dropout_and_identity_are_no_ops():
    """Dropout (even with the module in training mode: import evaluates) and Identity add no
    layer: the imported model is the one without them, bit for bit."""
    plain = randomize(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(2 * 9, 3)), 3)
    noisy = nn.Sequential(nn.Identity(), plain[0], nn.Dropout(0.5), plain[1], nn.Identity(),
                          plain[2], nn.Dropout(0.9), plain[3], nn.Identity())
    noisy.train()
    a, _ = from_torch(plain, (1, 5, 5))
    b, _ = from_torch(noisy, (1, 5, 5))
    assert [type(layer) for layer in a.layers] == [type(layer) for layer in b.layers]
    x = np.random.default_rng(0).normal(size=(4, 1, 5, 5))
    np.testing.assert_array_equal(emulate(a, x)[0], emulate(b, x)[0])
    np.testing.assert_allclose(torch_logits(noisy, x), torch_logits(plain, x))
    check_against_torch(noisy, (1, 5, 5), seed=1)


def test_nested_sequentials():
    model = randomize(nn.Sequential(
        nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 3, 3), nn.ReLU()),
        nn.Sequential(nn.Sequential(nn.AvgPool2d(2)), nn.Conv2d(3, 2, 2, padding=1)),
        nn.Sequential(nn.ReLU(), nn.MaxPool2d(2, 1), nn.Flatten()),
        nn.Linear(2 * 3 * 3, 4)), 9)
    secure, report = from_torch(model, (1, 8, 8))
    assert [type(layer) for layer in secure.layers] == [
        L.Conv2d, L.ReLU, L.Pool2d, L.Conv2d, L.ReLU, L.Pool2d, L.Flatten, L.Linear]
    check_against_torch(model, (1, 8, 8), seed=2)
