"""The float reference: a `SecureModel` evaluated in float64 numpy, layer by layer.

It runs the same layers as the parties (folded batch-norms, pooling sums, the final
rescale) on the decoded weights, so it needs no torch: it is the plaintext answer a secure
run is compared with when only the model file is at hand. Its logits equal the original
torch module's up to the weights' rounding to `frac_bits` (the importer reports that error).
"""

from __future__ import annotations

import math

import numpy as np

from nn import graph
from nn import layers as L
from nn.model import SecureModel


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(x / 2))  # no overflow for large |x|


_erf = np.vectorize(math.erf, otypes=[np.float64])
SMOOTH = {"sigmoid": _sigmoid, "tanh": np.tanh,
          "gelu": lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
          "silu": lambda x: x * _sigmoid(x)}


def _conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, layer: L.Conv2d) -> np.ndarray:
    (ph, pw), (sh, sw) = layer.padding, layer.stride
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = w.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw]  # (B, C, Ho, Wo, kh, kw)
    return np.einsum("bchwij,ocij->bohw", windows, w, optimize=True) + b[None, :, None, None]


def _pool2d(x: np.ndarray, layer: L.Pool2d) -> np.ndarray:
    b, c, h, w = x.shape
    ho, wo = layer.out_shape((c, h, w))[1:]
    windows = x.reshape(b, c, h * w)[:, :, layer.window_index(h, w)].reshape(b, c, ho, wo, -1)
    return windows.sum(axis=-1) if layer.mode == "sum" else windows.max(axis=-1)


def forward(model: SecureModel, features: np.ndarray) -> np.ndarray:
    """Float logits (batch, outputs) of `model` (with weights) on float `features` of shape
    (batch, *model.input_shape)."""
    x = np.asarray(features, dtype=np.float64)
    if x.shape[1:] != tuple(model.input_shape):
        raise ValueError(f"features of shape {x.shape[1:]}, the model takes "
                         f"{tuple(model.input_shape)}")
    fixed = model.fixed
    wide = 2.0 ** (-2 * fixed.frac_bits)

    def step(k: int, layer: L.Layer, xs: list[np.ndarray]) -> np.ndarray:
        x = xs[0]
        if isinstance(layer, L.Add):
            return sum(xs[1:], xs[0])
        if isinstance(layer, L.Concat):
            return np.concatenate(xs, axis=layer.axis + 1)
        if isinstance(layer, L.ChannelAffine):
            view = (1, -1) + (1,) * (x.ndim - 2)
            weight = fixed.decode(layer.weight).reshape(view)
            return x * weight + (layer.bias.view(np.int64) * wide).reshape(view)
        if isinstance(layer, L.Conv2d | L.Linear):
            if layer.weight is None:
                raise ValueError(f"layer {layer.name} has no weights (a public model)")
            w = fixed.decode(layer.weight)
            bias = layer.bias.view(np.int64).astype(np.float64) * wide
            return _conv2d(x, w, bias, layer) if isinstance(layer, L.Conv2d) else x @ w + bias
        if isinstance(layer, L.ReLU):
            return np.maximum(x, 0.0)
        if isinstance(layer, L.Pool2d):
            return _pool2d(x, layer)
        if isinstance(layer, L.LeakyReLU):
            return np.where(x >= 0, x, layer.slope * x)
        if isinstance(layer, L.Clamp):
            return np.clip(x, layer.low, layer.high)
        if isinstance(layer, L.Smooth):
            return SMOOTH[layer.function](x)
        if isinstance(layer, L.Norm):
            b = x.shape[0]
            grouped = x.reshape(b, layer.groups, -1) if layer.groups else x
            axes = (2,) if layer.groups else tuple(a + 1 for a in layer.axes)
            mean = grouped.mean(axis=axes, keepdims=True)
            var = grouped.var(axis=axes, keepdims=True)
            return ((grouped - mean) / np.sqrt(var + layer.eps)).reshape(x.shape)
        if isinstance(layer, L.Pad):
            (ph, pw) = layer.padding
            return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=layer.value)
        if isinstance(layer, L.Upsample):
            return x.repeat(layer.factor[0], axis=2).repeat(layer.factor[1], axis=3)
        if isinstance(layer, L.Scale):
            return x * layer.factor
        if isinstance(layer, L.Flatten):
            return x.reshape(x.shape[0], -1)
        if isinstance(layer, L.Reshape):
            return x.reshape(x.shape[0], *layer.shape)
        raise TypeError(f"no float reference for layer {layer.name} ({type(layer).__name__})")

    x = graph.evaluate(model.layers, x, step)
    return x.reshape(x.shape[0], -1)
