"""Secure layers, written once against `SecretTensor` (so against every scheme).

Values are fixed point with `frac_bits` fractional bits. A linear layer multiplies by
weights at the same scale, adds a bias encoded at twice the scale, and truncates once.
Pooling by averaging is a local sum: its 1/k factor was folded into the next linear layer
at import, so it costs no truncation and no communication.

A model is a graph: each layer reads the outputs named by `inputs` (-1 is the model's
input; empty means the previous layer's output, so a chain needs no indices) and
`nn.graph.evaluate` runs them in order. `Add` and `Concat` are the layers with several
inputs (residual connections, branches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from protocols import activations, normalization, ops
from protocols.base import Protocol
from protocols.functions import maximum
from protocols.preprocessing.correlations import FULL_BITS
from protocols.tensor import SecretTensor

MODEL_OWNER = 1
#: Pre-truncation values (scale 2^2f) stay below this: the import check refuses a model
#: whose accumulators reach it on the probes (truncation itself needs |x| < 2^62).
ACCUMULATOR_LIMIT = 2.0**61


def comparison_bits(frac_bits: int) -> int:
    """How many bits the model's ReLUs and its argmax compare (`Protocol.ltz`).

    A layer's output at scale 2^f is a truncated accumulator, below ACCUMULATOR_LIMIT / 2^f
    = 2^(61 - f), or built from a few of them (a pooled value, a residual sum); what is
    compared is one such value (a ReLU's input) or the difference of two (the argmax's).
    [-2^(63 - f), 2^(63 - f)) holds four times the bound, and the import check refuses a
    model whose layer outputs do not fit on the probes (`nn.importer.validate`). Where a
    scheme narrows its comparisons, this cuts their AND gates and mask bits by f / 63: 38 %
    at f = 24. Max pools compare all 64 bits: a padded window holds -2^31."""
    return FULL_BITS - frac_bits


@dataclass
class Layer:
    """Base: a layer maps a (batch, ...) tensor to another; `out_shape` is per example."""

    name: str
    inputs: tuple[int, ...] = field(default=(), kw_only=True)
    arity = 1  # how many inputs the layer reads

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The per-example output shape, so a model's shapes are known without running it."""
        return shape

    def out_shape_of(self, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
        """The output shape from every input's shape (one input: `out_shape`)."""
        return self.out_shape(shapes[0])

    def call(self, xs: Sequence[SecretTensor], params: dict[str, SecretTensor],
             frac_bits: int) -> SecretTensor:
        """The layer on its inputs' values (one input: `forward`)."""
        return self.forward(xs[0], params, frac_bits)

    def share_params(self, protocol: Protocol, owner: int) -> dict[str, SecretTensor]:
        """Secret-share the layer's private values from `owner`; most layers have none."""
        return {}

    def forward(self, x: SecretTensor, params: dict[str, SecretTensor],
                frac_bits: int) -> SecretTensor:
        """The layer on secret fixed-point values, with `params` from `share_params`."""
        raise NotImplementedError

    def public(self) -> Layer:
        """This layer without its private values (what the client may see)."""
        return self


@dataclass
class _Affine(Layer):
    """Shared parts of layers with private weights and bias (ring-encoded)."""

    weight: np.ndarray | None = None  # encoded at frac_bits
    bias: np.ndarray | None = None  # encoded at 2 * frac_bits
    weight_shape: tuple[int, ...] = ()
    bias_shape: tuple[int, ...] = ()

    def share_params(self, protocol: Protocol, owner: int) -> dict[str, SecretTensor]:
        """Share weight and bias from `owner`; the weight is declared a fixed operand so
        schemes can mask it once for every clip."""
        mine = protocol.plays(owner)
        w = SecretTensor.input(protocol, self.weight if mine else None, owner, self.weight_shape)
        b = SecretTensor.input(protocol, self.bias if mine else None, owner, self.bias_shape)
        protocol.fix_operand(w.share)  # the same weights serve every clip
        return {"weight": w, "bias": b}

    def public(self) -> Layer:
        """Without weight and bias but with their shapes: what the other parties may see."""
        return replace(self, weight=None, bias=None)


@dataclass
class Conv2d(_Affine):
    """2-D convolution with a private (out, in, kh, kw) weight and bias, public stride and
    zero padding."""

    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """(out channels, height, width) of a (C, H, W) input."""
        _, _, kh, kw = self.weight_shape
        h = (shape[1] + 2 * self.padding[0] - kh) // self.stride[0] + 1
        w = (shape[2] + 2 * self.padding[1] - kw) // self.stride[1] + 1
        return (self.weight_shape[0], h, w)

    def forward(self, x, params, frac_bits):
        """Convolve, add the bias and truncate once, in one bilinear step."""
        op = ops.Conv2d(tuple(self.stride), tuple(self.padding))
        out = op.out_shape(self.weight_shape, x.shape)
        bias = _broadcast_bias(params["bias"], out, axis=1)
        return params["weight"].bilinear_trunc(x, op, bias, frac_bits)


@dataclass
class Linear(_Affine):
    """Fully connected layer: a private weight stored transposed, (in, out), and bias."""

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """(out features,); the input is already flat."""
        return (self.weight_shape[1],)

    def forward(self, x, params, frac_bits):
        """x @ weight + bias, truncated once."""
        out = (x.shape[0], self.weight_shape[1])  # weight stored transposed: (in, out)
        bias = _broadcast_bias(params["bias"], out, axis=1)
        return x.bilinear_trunc(params["weight"], ops.MatMul(), bias, frac_bits)


def _broadcast_bias(bias: SecretTensor, shape: tuple[int, ...], axis: int) -> SecretTensor:
    """The bias repeated to `shape` along every axis but `axis` (a local copy of shares)."""
    view = [1] * len(shape)
    view[axis] = shape[axis]
    share = np.broadcast_to(bias.share.reshape(bias.share.shape[0], *view),
                            (bias.share.shape[0], *shape))
    return SecretTensor(bias.protocol, np.ascontiguousarray(share))


@dataclass
class ChannelAffine(_Affine):
    """x * weight + bias with one private weight and bias per channel (the first axis of an
    example): a batch-norm that no neighbouring linear layer can absorb (after a ReLU, or
    read by a residual connection). One secret product and one truncation."""

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Element-wise: the shape is kept."""
        return shape

    def share_params(self, protocol: Protocol, owner: int) -> dict[str, SecretTensor]:
        """Share weight and bias from `owner`; not a fixed operand, since it is broadcast
        to each batch's shape before the product."""
        mine = protocol.plays(owner)
        w = SecretTensor.input(protocol, self.weight if mine else None, owner, self.weight_shape)
        b = SecretTensor.input(protocol, self.bias if mine else None, owner, self.bias_shape)
        return {"weight": w, "bias": b}

    def forward(self, x, params, frac_bits):
        """Both broadcast along the channel axis (local copies), one fused product."""
        weight = _broadcast_bias(params["weight"], x.shape, axis=1)
        bias = _broadcast_bias(params["bias"], x.shape, axis=1)
        return x.bilinear_trunc(weight, ops.Mul(), bias, frac_bits)


@dataclass
class ReLU(Layer):
    """max(x, 0) by a secure comparison of every value: the interactive non-linearity."""

    def forward(self, x, params, frac_bits):
        """Element-wise max(x, 0) through the scheme's comparison."""
        return x.relu(comparison_bits(frac_bits))


@dataclass
class Flatten(Layer):
    """Each example as one axis, between the convolutions and the linear layers."""

    def out_shape(self, shape):
        """One axis holding every value of the example."""
        return (int(np.prod(shape)),)

    def forward(self, x, params, frac_bits):
        """A local reshape of the shares: no communication."""
        return x.reshape(x.shape[0], -1)


@dataclass
class Pool2d(Layer):
    """Windows of a (C, H, W) map: `mode` "sum" (average with the factor folded forward)
    or "max"."""

    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    mode: str = "sum"
    _index: np.ndarray | None = field(default=None, repr=False)

    def out_shape(self, shape):
        """(C, Ho, Wo): channels kept, windows without padding."""
        c, h, w = shape
        return (c, (h - self.kernel[0]) // self.stride[0] + 1,
                (w - self.kernel[1]) // self.stride[1] + 1)

    def window_index(self, h: int, w: int) -> np.ndarray:
        """(Ho*Wo, kh*kw) flat indices of each window's cells."""
        kh, kw = self.kernel
        sh, sw = self.stride
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
        rows = (np.arange(ho)[:, None] * sh + np.arange(kh)[None, :])  # (ho, kh)
        cols = (np.arange(wo)[:, None] * sw + np.arange(kw)[None, :])  # (wo, kw)
        index = rows[:, None, :, None] * w + cols[None, :, None, :]  # (ho, wo, kh, kw)
        return index.reshape(ho * wo, kh * kw)

    def forward(self, x, params, frac_bits):
        """Sum or maximum of each window; aligned, non-overlapping windows are a reshape,
        others are gathered by `window_index`."""
        b, c, h, w = x.shape
        ho, wo = self.out_shape((c, h, w))[1:]
        if self.kernel == self.stride and h % self.kernel[0] == 0 and w % self.kernel[1] == 0:
            kh, kw = self.kernel
            windows = x.reshape(b, c, ho, kh, wo, kw).transpose(0, 1, 2, 4, 3, 5)
            windows = windows.reshape(b, c, ho, wo, kh * kw)
        else:
            index = self.window_index(h, w)
            windows = x.reshape(b, c, h * w)[:, :, index].reshape(b, c, ho, wo, -1)
        if self.mode == "sum":
            return windows.sum(axis=-1)
        return maximum(windows)  # all 64 bits: a padded window holds -2^31 (nn.convert)


@dataclass
class Scale(Layer):
    """Multiply by a public fixed-point factor and truncate: used only when an average's
    factor has no later linear layer to fold into."""

    factor: float = 1.0

    def forward(self, x, params, frac_bits):
        """Multiply by the encoded public factor (local) and truncate once."""
        encoded = int(round(self.factor * (1 << frac_bits)))
        return (x * encoded).trunc(frac_bits)


@dataclass
class Reshape(Layer):
    """Per-example reshape (1-D layers run as 2-D ones with height 1)."""

    shape: tuple[int, ...] = ()

    def out_shape(self, shape):
        """The configured shape; the input must hold as many values."""
        return self.shape

    def forward(self, x, params, frac_bits):
        """A local reshape of the shares, keeping the batch axis."""
        return x.reshape(x.shape[0], *self.shape)


@dataclass
class Add(Layer):
    """The sum of its inputs (a residual connection): local, at one scale."""

    arity = 2

    def out_shape_of(self, shapes):
        """Every input has the same shape, which is the output's."""
        return shapes[0]

    def call(self, xs, params, frac_bits):
        """Shares add locally: no communication."""
        total = xs[0]
        for x in xs[1:]:
            total = total + x
        return total


@dataclass
class Concat(Layer):
    """Its inputs joined along the per-example `axis` (0: channels): a local copy."""

    axis: int = 0
    arity = 2

    def out_shape_of(self, shapes):
        """The inputs' sizes along `axis` add up; the other axes agree."""
        first = list(shapes[0])
        first[self.axis] = sum(s[self.axis] for s in shapes)
        return tuple(first)

    def call(self, xs, params, frac_bits):
        """A local join of the shares (the batch axis comes first)."""
        return SecretTensor.concatenate(list(xs), axis=self.axis + 1)


@dataclass
class LeakyReLU(Layer):
    """max(x, 0) + slope * min(x, 0): one comparison, exact up to the slope's rounding."""

    slope: float = 0.01

    def forward(self, x, params, frac_bits):
        """`protocols.activations.leaky_relu`."""
        return activations.leaky_relu(x, frac_bits, self.slope)


@dataclass
class Clamp(Layer):
    """min(max(x, low), high), either side optional (Hardtanh, ReLU6, clamp): exact."""

    low: float | None = None
    high: float | None = None

    def forward(self, x, params, frac_bits):
        """`protocols.activations.clamp`: both comparisons in one call."""
        return activations.clamp(x, frac_bits, self.low, self.high)


#: The smooth activations and their secure forms (piecewise cubics, `protocols.activations`).
SMOOTH = {"sigmoid": activations.sigmoid, "tanh": activations.tanh,
          "gelu": activations.gelu, "silu": activations.silu}


@dataclass
class Smooth(Layer):
    """Sigmoid, tanh, GELU or SiLU by a piecewise-cubic approximation whose error bound
    holds on the whole real line (`protocols.activations.error_bound`)."""

    function: str = "sigmoid"

    def forward(self, x, params, frac_bits):
        """Five comparisons a value, then two product rounds."""
        return SMOOTH[self.function](x, frac_bits)


@dataclass
class Pad(Layer):
    """A (C, H, W) map framed by `padding` rows and columns of the public `value` (zero for
    an average pool that counts the padding, very negative for a max pool): local."""

    padding: tuple[int, int] = (0, 0)
    value: float = 0.0

    def out_shape(self, shape):
        """Height and width grow by twice the padding."""
        c, h, w = shape
        return (c, h + 2 * self.padding[0], w + 2 * self.padding[1])

    def forward(self, x, params, frac_bits):
        """Zeros joined around the shares, then the public value added where they are."""
        (ph, pw), (b, c, h, w) = self.padding, x.shape
        zero = x[:, :, :1, :1] * 0
        row = SecretTensor.concatenate([zero] * (w + 2 * pw), axis=3)
        column = SecretTensor.concatenate([zero] * pw, axis=3) if pw else None
        middle = x if column is None else SecretTensor.concatenate(
            [SecretTensor.concatenate([column] * h, axis=2), x,
             SecretTensor.concatenate([column] * h, axis=2)], axis=3)
        if ph:
            rows = SecretTensor.concatenate([row] * ph, axis=2)
            middle = SecretTensor.concatenate([rows, middle, rows], axis=2)
        if self.value == 0:
            return middle
        frame = np.ones((h + 2 * ph, w + 2 * pw), dtype=bool)
        frame[ph:ph + h, pw:pw + w] = False
        encoded = np.uint64(int(round(self.value * (1 << frac_bits))) % (1 << 64))
        return middle + np.broadcast_to(frame * encoded, (b, c) + frame.shape)


@dataclass
class Upsample(Layer):
    """Nearest-neighbour upsampling of a (C, H, W) map by whole factors: a local gather."""

    factor: tuple[int, int] = (2, 2)

    def out_shape(self, shape):
        """Height and width times the factors."""
        c, h, w = shape
        return (c, h * self.factor[0], w * self.factor[1])

    def forward(self, x, params, frac_bits):
        """Each output cell reads the input cell it falls in."""
        b, c, h, w = x.shape
        sh, sw = self.factor
        rows = np.arange(h * sh) // sh
        cols = np.arange(w * sw) // sw
        index = (rows[:, None] * w + cols[None, :]).reshape(-1)
        return x.reshape(b, c, h * w)[:, :, index].reshape(b, c, h * sh, w * sw)


@dataclass
class Norm(Layer):
    """LayerNorm over the per-example `axes` (groups = 0) or GroupNorm with `groups` groups,
    without the affine part (a `ChannelAffine` after it carries Bob's gamma and beta):
    `protocols.normalization`, whose stated bound needs |x| < 2^(29 - f) and at most
    `MAX_NORMALISED` values normalised together."""

    axes: tuple[int, ...] = (0,)
    groups: int = 0
    eps: float = 1e-5

    def forward(self, x, params, frac_bits):
        """One batched comparison per group of values, then Newton steps (20-24 rounds)."""
        if self.groups:
            return normalization.group_norm(x, frac_bits, self.groups, self.eps)
        return normalization.layer_norm(x, frac_bits, tuple(a + 1 for a in self.axes),
                                        self.eps)


MAX_NORMALISED = 1 << 12  # values normalised together (protocols.normalization's range)
