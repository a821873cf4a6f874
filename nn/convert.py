"""Traced torch ops (`nn.tracing`) to float layer specs: what each op becomes, in the clear.

Each spec reads the outputs of earlier specs (`inputs`; -1 is the model's input), so
residual connections and branches carry over. Conversion folds what is free in the clear:
a batch-norm into the convolution or linear layer before it (or, on the model's input, the
one after it), dropout and identities vanish, a final softmax is dropped (only the argmax
is revealed, and softmax keeps it). Models of 1-D signals (inputs (C, L)) run as 2-D ones
of height 1: a torch (C, L) tensor is (C, 1, L) here. Anything else is refused naming the
op, its source line and what is supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nn.errors import ModelImportError
from nn.tracing import MODEL_INPUT, Op, Traced

SUPPORTED = ("Conv1d, Conv2d (zero or 'same' padding, groups, dilation), Linear, "
             "BatchNorm1d/2d (folded into a convolution or linear layer where it can be, else "
             "a per-channel affine layer), LayerNorm, GroupNorm, ReLU (module, F.relu, "
             "torch.relu, .relu()), AvgPool1d/2d, MaxPool1d/2d (module or F.avg_pool*/"
             "F.max_pool*, padding included), nearest Upsample/interpolate, "
             "AdaptiveAvgPool1d/2d (to 1 or a size dividing the input), mean over the "
             "spatial axes, LeakyReLU, PReLU, Hardtanh, ReLU6, clamp, Sigmoid, Tanh, GELU, "
             "SiLU (modules or functions), Flatten, flatten, view, reshape, x + y, torch.cat, "
             "Dropout, Identity, a final Softmax/LogSoftmax")

_RELU = {"relu", "relu_"}
_ADD = {"add", "iadd", "__add__", "__iadd__", "add_"}
_CAT = {"cat", "concat", "concatenate"}
_RESHAPE = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
_VANISH = {"dropout", "dropout1d", "dropout2d", "alpha_dropout", "contiguous", "clone",
           "identity"}
_SOFTMAX = {"softmax", "log_softmax"}
_MEAN = {"mean"}
#: What a max pool's padding holds: -2^31, below every value the fixed-point format holds at
#: the importer's 31 integer bits, so never the maximum of a window with a real value in it;
#: encoded at f <= 30 fractional bits its differences with values stay below 2^62.
PAD_BELOW = 2.0**31
_SMOOTH = {"sigmoid": "sigmoid", "tanh": "tanh", "gelu": "gelu", "silu": "silu"}


@dataclass
class Spec:
    """A layer in floating point, before encoding; `torch_index` is the op it reproduces."""

    kind: str
    torch_index: int
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    params: dict = field(default_factory=dict)
    inputs: tuple[int, ...] = (MODEL_INPUT,)


def _as_tuple(value: object) -> tuple:
    return tuple(value) if isinstance(value, tuple | list) else (value,)


def _pair(value: object) -> tuple[int, int]:
    values = _as_tuple(value)
    return (int(values[0]), int(values[-1])) if len(values) in (1, 2) else (0, 0)


def _argument(op: Op, position: int, name: str, default: Any) -> Any:
    """A call's argument by position (counting the tensor first) or keyword."""
    if name in op.kwargs:
        return op.kwargs[name]
    return op.args[position] if len(op.args) > position else default


def _dense_kernel(w: np.ndarray, groups: int, dilation: tuple[int, ...]) -> np.ndarray:
    """The weight of a grouped or dilated convolution as that of a plain one: zeros between
    the taps of a dilated kernel, and between the groups' channels (block diagonal). Exact;
    it costs the multiply-adds of the dense convolution (local work, no extra rounds)."""
    if any(d != 1 for d in dilation):
        spread = tuple(d * (k - 1) + 1 for k, d in zip(w.shape[2:], dilation, strict=True))
        dense = np.zeros(w.shape[:2] + spread)
        dense[(slice(None), slice(None), *(slice(None, None, d) for d in dilation))] = w
        w = dense
    if groups != 1:
        out_per, in_per = w.shape[0] // groups, w.shape[1]
        dense = np.zeros((w.shape[0], in_per * groups) + w.shape[2:])
        for g in range(groups):
            dense[g * out_per:(g + 1) * out_per, g * in_per:(g + 1) * in_per] = \
                w[g * out_per:(g + 1) * out_per]
        w = dense
    return w


def _per_example(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A torch per-example shape as run here: (C, L) becomes (C, 1, L)."""
    return (shape[0], 1, shape[1]) if len(shape) == 2 else shape


def _axis(op: Op, dim: int, rank: int) -> int:
    """A torch axis (batch included, rank `rank`) as an axis of the per-example shape here."""
    dim = dim + rank if dim < 0 else dim
    if dim == 0 or not 0 < dim < rank:
        raise ModelImportError(f"{op.where}: acts on the batch axis (dim {dim}); only "
                               "per-example axes are supported")
    return 2 if rank == 3 and dim == 2 else dim - 1


class _Converter:
    """Walks the ops in order, appending specs; `value[op]` is the spec giving its output."""

    def __init__(self, traced: Traced, input_shape: tuple[int, ...]) -> None:
        self.traced, self.specs = traced, []
        self.value: dict[int, int] = {MODEL_INPUT: MODEL_INPUT}
        self.pending: tuple[np.ndarray, np.ndarray, Op] | None = None  # an input batch-norm
        self.output = "logits"  # or the final softmax dropped
        if len(input_shape) == 2:
            self.value[MODEL_INPUT] = self.add(Spec("reshape", -1, params={
                "shape": _per_example(tuple(input_shape))}))

    def shape_in(self, op: Op) -> tuple[int, ...]:
        """The torch shape (batch included) of the op's first input."""
        source = op.inputs[0]
        return self.traced.ops[source].shape if source >= 0 else self.traced.input_shape

    def add(self, spec: Spec) -> int:
        if self.pending is not None and self.value[MODEL_INPUT] in spec.inputs:
            self._fold_input_batchnorm(spec)
        self.specs.append(spec)
        return len(self.specs) - 1

    def _fold_input_batchnorm(self, spec: Spec) -> None:
        """The input batch-norm waiting in `pending` meets its reader `spec`: folded into it
        if it is a convolution without padding or a linear layer, else made a per-channel
        affine layer that `spec` reads instead of the input."""
        a, c, bn = self.pending
        if spec.kind == "reshape" and spec.torch_index == -1:
            return
        self.pending = None
        if spec.kind == "linear" or (spec.kind == "conv" and not any(spec.params["padding"])):
            a_b = np.broadcast_to(a, (spec.weight.shape[1],))
            c_b = np.broadcast_to(c, (spec.weight.shape[1],))
            if spec.kind == "conv":
                spec.bias = spec.bias + (spec.weight * c_b[None, :, None, None]).sum((1, 2, 3))
                spec.weight = spec.weight * a_b[None, :, None, None]
            else:
                spec.bias = spec.bias + spec.weight @ c_b
                spec.weight = spec.weight * a_b[None, :]
            return
        source = self.value[MODEL_INPUT]
        self.specs.append(Spec("affine", bn.index, a, c, inputs=(source,)))
        spec.inputs = tuple(len(self.specs) - 1 if i == source else i for i in spec.inputs)

    def convert(self) -> list[Spec]:
        for op in self.traced.ops:
            ins = tuple(self.value[i] for i in op.inputs)
            result = self.op(op, ins)
            self.value[op.index] = result if result is not None else ins[0]
        if self.pending is not None:  # an input batch-norm nothing but the caller reads
            a, c, bn = self.pending
            self.pending = None
            self.specs.append(Spec("affine", bn.index, a, c, inputs=(self.value[MODEL_INPUT],)))
            self.value[bn.index] = len(self.specs) - 1
        out = self.value[self.traced.output]
        if out != len(self.specs) - 1:
            raise ModelImportError("the model's output is not its last operation; remove "
                                   "unused branches from forward")
        return self.specs

    # -- one op -> a spec (its index), or None when it vanishes --------------------------
    def op(self, op: Op, ins: tuple[int, ...]) -> int | None:
        import torch.nn as tnn

        m, name = op.target, op.name.lower()
        if op.kind == "module":
            if isinstance(m, tnn.Conv2d | tnn.Conv1d):
                return self.conv(op, m, ins)
            if isinstance(m, tnn.Linear):
                return self.linear(op, m, ins)
            if isinstance(m, tnn.BatchNorm1d | tnn.BatchNorm2d):
                return self.batchnorm(op, m, ins)
            if isinstance(m, tnn.ReLU):
                return self.add(Spec("relu", op.index, inputs=ins))
            if isinstance(m, tnn.AvgPool2d | tnn.AvgPool1d | tnn.MaxPool2d | tnn.MaxPool1d):
                mode = "sum" if isinstance(m, tnn.AvgPool2d | tnn.AvgPool1d) else "max"
                return self.pool(op, ins, mode, m.kernel_size, m.stride, m.padding,
                                 m.ceil_mode, getattr(m, "dilation", 1),
                                 getattr(m, "divisor_override", None),
                                 getattr(m, "count_include_pad", True))
            if isinstance(m, tnn.AdaptiveAvgPool2d | tnn.AdaptiveAvgPool1d):
                return self.adaptive(op, ins, m.output_size)
            if isinstance(m, tnn.Flatten):
                return self.reshape(op, ins)
            if isinstance(m, tnn.Dropout | tnn.Dropout1d | tnn.Dropout2d | tnn.Identity):
                return None
            if isinstance(m, tnn.Softmax | tnn.LogSoftmax):
                return self.softmax(op)
            if isinstance(m, tnn.LayerNorm | tnn.GroupNorm):
                return self.norm(op, m, ins)
            if isinstance(m, tnn.PReLU):
                return self.prelu(op, m, ins)
            if isinstance(m, tnn.Upsample):
                return self.upsample(op, ins, m.mode)
            if isinstance(m, tnn.LeakyReLU):
                return self.add(Spec("leaky", op.index, inputs=ins,
                                     params={"slope": float(m.negative_slope)}))
            if isinstance(m, tnn.Hardtanh):  # ReLU6 is a Hardtanh
                return self.clamp(op, ins, m.min_val, m.max_val)
            if isinstance(m, tnn.Sigmoid | tnn.Tanh | tnn.GELU | tnn.SiLU):
                return self.add(Spec("smooth", op.index, inputs=ins,
                                     params={"function": type(m).__name__.lower()}))
            raise self.unsupported(op)
        if name in _RELU:
            return self.add(Spec("relu", op.index, inputs=ins))
        if name in _ADD:
            if len(ins) != 2 or op.kwargs.get("alpha", 1) != 1:
                raise ModelImportError(f"{op.where}: only the sum of two tensors is "
                                       "supported (no constants, no alpha)")
            return self.add(Spec("add", op.index, inputs=ins))
        if name in _CAT:
            dim = _argument(op, 1, "dim", 0)
            return self.add(Spec("concat", op.index, inputs=ins, params={
                "axis": _axis(op, int(dim), len(op.shape))}))
        if name in _RESHAPE:
            return self.reshape(op, ins)
        if name in _VANISH:
            return None
        if name in _SOFTMAX:
            return self.softmax(op)
        if name in _MEAN:
            return self.mean(op, ins)
        if name in ("interpolate", "upsample", "upsample_nearest"):
            return self.upsample(op, ins)
        if name in ("leaky_relu", "leaky_relu_"):
            return self.add(Spec("leaky", op.index, inputs=ins, params={
                "slope": float(_argument(op, 1, "negative_slope", 0.01))}))
        if name in ("relu6",):
            return self.clamp(op, ins, 0.0, 6.0)
        if name in ("hardtanh", "hardtanh_"):
            return self.clamp(op, ins, _argument(op, 1, "min_val", -1.0),
                              _argument(op, 2, "max_val", 1.0))
        if name in ("clamp", "clip", "clamp_"):
            return self.clamp(op, ins, _argument(op, 1, "min", None),
                              _argument(op, 2, "max", None))
        if name in _SMOOTH:
            return self.add(Spec("smooth", op.index, inputs=ins,
                                 params={"function": _SMOOTH[name]}))
        if name in ("avg_pool2d", "avg_pool1d", "max_pool2d", "max_pool1d", "_max_pool2d",
                    "_max_pool1d", "max_pool2d_with_indices"):
            mode = "sum" if name.startswith("avg") else "max"
            kernel = _argument(op, 1, "kernel_size", None)
            stride = _argument(op, 2, "stride", None) or kernel
            padding = _argument(op, 3, "padding", 0)
            ceil = _argument(op, 4 if mode == "sum" else 5, "ceil_mode", False)
            dilation = 1 if mode == "sum" else _argument(op, 4, "dilation", 1)
            divisor = _argument(op, 6, "divisor_override", None) if mode == "sum" else None
            include = _argument(op, 5, "count_include_pad", True) if mode == "sum" else True
            return self.pool(op, ins, mode, kernel, stride, padding, ceil, dilation, divisor,
                             include)
        if name in ("adaptive_avg_pool2d", "adaptive_avg_pool1d"):
            return self.adaptive(op, ins, _argument(op, 1, "output_size", None))
        raise self.unsupported(op)

    def clamp(self, op: Op, ins: tuple[int, ...], low: Any, high: Any) -> int:
        for bound in (low, high):
            if bound is not None and not isinstance(bound, int | float):
                raise ModelImportError(f"{op.where}: clamp bounds must be numbers, not "
                                       "tensors")
        return self.add(Spec("clamp", op.index, inputs=ins, params={
            "low": None if low is None else float(low),
            "high": None if high is None else float(high)}))

    def norm(self, op: Op, m: Any, ins: tuple[int, ...]) -> int:
        """LayerNorm or GroupNorm: the normalisation, then Bob's gamma and beta (if any) as
        a per-channel affine layer."""
        import torch.nn as tnn

        rank = len(self.shape_in(op))
        if isinstance(m, tnn.GroupNorm):
            if rank not in (3, 4):
                raise ModelImportError(f"{op.where}: GroupNorm needs (C, L) or (C, H, W) inputs")
            spec = Spec("norm", op.index, inputs=ins, params={
                "axes": (0, 1, 2), "groups": int(m.num_groups), "eps": float(m.eps)})
            affine = m.affine
        else:
            count = len(m.normalized_shape)
            axes = tuple(sorted({_axis(op, d, rank) for d in range(rank - count, rank)}))
            spec = Spec("norm", op.index, inputs=ins, params={
                "axes": axes, "groups": 0, "eps": float(m.eps)})
            affine = m.elementwise_affine
            if affine and not (rank == 2 and count == 1):
                raise ModelImportError(f"{op.where}: LayerNorm's element-wise affine is "
                                       "supported over the features of a flat input only; "
                                       "use elementwise_affine=False or a flat input")
        normed = self.add(spec)
        if not affine:
            return normed
        weight = m.weight.detach().double().numpy()
        bias = m.bias.detach().double().numpy() if m.bias is not None else np.zeros_like(weight)
        return self.add(Spec("affine", op.index, weight, bias, inputs=(normed,)))

    def prelu(self, op: Op, m: Any, ins: tuple[int, ...]) -> int:
        """a x + (1 - a) relu(x) = relu(x) + a min(x, 0), with Bob's slopes a private: two
        per-channel affine layers (bias 0) and an add, after one comparison."""
        channels = self.shape_in(op)[1] if len(self.shape_in(op)) > 1 else 1
        slope = np.broadcast_to(m.weight.detach().double().numpy(), (channels,)).copy()
        zero = np.zeros(channels)
        relu = self.add(Spec("relu", op.index, inputs=ins))
        kept = self.add(Spec("affine", op.index, 1 - slope, zero, inputs=(relu,)))
        scaled = self.add(Spec("affine", op.index, slope, zero, inputs=ins))
        return self.add(Spec("add", op.index, inputs=(kept, scaled)))

    def upsample(self, op: Op, ins: tuple[int, ...], mode: str | None = None) -> int:
        mode = mode or _argument(op, 4, "mode", "nearest")
        before, after = self.shape_in(op), op.shape
        factors = [a // b for a, b in zip(after[2:], before[2:], strict=True)]
        if mode != "nearest" or any(a != b * f for a, b, f in zip(after[2:], before[2:],
                                                                  factors, strict=True)):
            raise ModelImportError(f"{op.where}: only nearest upsampling by whole factors is "
                                   f"supported (mode {mode!r}, {before[2:]} -> {after[2:]})")
        factor = (1, factors[0]) if len(factors) == 1 else tuple(factors)
        return self.add(Spec("upsample", op.index, inputs=ins, params={"factor": factor}))

    def unsupported(self, op: Op) -> ModelImportError:
        return ModelImportError(f"unsupported operation {op.where}; supported: {SUPPORTED}")

    def conv(self, op: Op, m: Any, ins: tuple[int, ...]) -> int:
        if m.padding_mode != "zeros":
            raise ModelImportError(f"{op.where}: only zero padding is supported")
        dilation = _as_tuple(m.dilation)
        if isinstance(m.padding, str):
            if m.padding == "valid":
                padding = (0,) * len(m.kernel_size)
            elif all(k % 2 for k in m.kernel_size):  # "same", stride 1
                padding = tuple(d * (k // 2) for k, d in zip(m.kernel_size, dilation,
                                                             strict=True))
            else:
                raise ModelImportError(f"{op.where}: padding='same' with an even kernel pads "
                                       "unevenly; use an odd kernel or numeric padding")
        else:
            padding = _as_tuple(m.padding)
        w = _dense_kernel(m.weight.detach().double().numpy(), m.groups, dilation)
        if w.ndim == 3:  # Conv1d: height 1
            w = w[:, :, None, :]
            stride, padding = (1, m.stride[0]), (0, padding[0])
        else:
            stride, padding = _pair(m.stride), _pair(padding)
        bias = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(w.shape[0])
        return self.add(Spec("conv", op.index, w, bias, {"stride": stride, "padding": padding},
                             inputs=ins))

    def linear(self, op: Op, m: Any, ins: tuple[int, ...]) -> int:
        shape = self.shape_in(op)
        if len(shape) != 2:
            raise ModelImportError(f"{op.where}: Linear on a tensor of shape {shape[1:]} per "
                                   "example; only flat inputs are supported (flatten first)")
        bias = m.bias.detach().double().numpy() if m.bias is not None \
            else np.zeros(m.out_features)
        return self.add(Spec("linear", op.index, m.weight.detach().double().numpy(), bias,
                             inputs=ins))

    def batchnorm(self, op: Op, m: Any, ins: tuple[int, ...]) -> int | None:
        if m.running_mean is None:
            raise ModelImportError(f"{op.where}: batch-norm without running statistics")
        var = m.running_var.detach().double().numpy()
        mean = m.running_mean.detach().double().numpy()
        a = 1 / np.sqrt(var + m.eps)
        if m.affine:
            a = m.weight.detach().double().numpy() * a
        shift = (m.bias.detach().double().numpy() if m.affine else 0.0) - mean * a
        source, readers = ins[0], self.traced.readers.get(op.inputs[0], 0)
        if source >= 0 and self.specs[source].kind in ("conv", "linear") and readers == 1:
            prev = self.specs[source]
            prev.weight = prev.weight * a.reshape((-1,) + (1,) * (prev.weight.ndim - 1))
            prev.bias = prev.bias * a + shift
            prev.torch_index = op.index
            return source
        a, shift = np.asarray(a, float) * np.ones_like(var), np.asarray(shift, float) + 0 * var
        if op.inputs[0] == MODEL_INPUT and readers == 1 and self.pending is None \
                and self.traced.readers.get(op.index, 0) == 1:
            self.pending = (a, shift, op)  # folded into its reader if it can be
            return None
        # anywhere else: Bob's per-channel affine map, as its own (secret) layer
        return self.add(Spec("affine", op.index, a, shift, inputs=ins))

    def pool(self, op: Op, ins: tuple[int, ...], mode: str, kernel: Any, stride: Any,
             padding: Any, ceil_mode: bool, dilation: Any, divisor: Any,
             count_include_pad: bool = True) -> int:
        if ceil_mode:
            raise ModelImportError(f"{op.where}: pooling with ceil_mode is not supported")
        pad = _as_tuple(padding)
        if any(p != 0 for p in pad):
            if mode == "sum" and not count_include_pad:
                raise ModelImportError(f"{op.where}: average pooling with padding and "
                                       "count_include_pad=False is not supported")
            pad = (0, int(pad[0])) if len(self.shape_in(op)) == 3 else _pair(pad)
            ins = (self.add(Spec("pad", op.index, inputs=ins, params={
                "padding": pad, "value": 0.0 if mode == "sum" else -PAD_BELOW})),)
        if divisor:
            raise ModelImportError(f"{op.where}: average pooling with divisor_override is "
                                   "not supported")
        if any(d != 1 for d in _as_tuple(dilation)):
            raise ModelImportError(f"{op.where}: dilated max pooling is not supported")
        kernel, stride = _as_tuple(kernel), _as_tuple(stride or kernel)
        if len(self.shape_in(op)) == 3:  # 1-D: height 1
            kernel, stride = (1, int(kernel[0])), (1, int(stride[0]))
        else:
            kernel, stride = _pair(kernel), _pair(stride)
        return self.add(Spec("pool", op.index, inputs=ins, params={
            "kernel": kernel, "stride": stride, "mode": mode}))

    def adaptive(self, op: Op, ins: tuple[int, ...], output_size: Any) -> int:
        shape = self.shape_in(op)
        spatial = shape[2:]
        sizes = [spatial[k] if o is None else int(o)
                 for k, o in enumerate(_as_tuple(output_size) * (len(spatial) // max(
                     1, len(_as_tuple(output_size)))))]
        if all(s == 1 for s in sizes):
            return self.add(Spec("global", op.index, inputs=ins))
        if any(n % s for n, s in zip(spatial, sizes, strict=True)):
            raise ModelImportError(f"{op.where}: adaptive pooling to {tuple(sizes)} from "
                                   f"{tuple(spatial)}; supported: output sizes that divide the "
                                   "input")
        kernel = tuple(n // s for n, s in zip(spatial, sizes, strict=True))
        kernel = (1, kernel[0]) if len(kernel) == 1 else kernel
        return self.add(Spec("pool", op.index, inputs=ins, params={
            "kernel": kernel, "stride": kernel, "mode": "sum"}))

    def mean(self, op: Op, ins: tuple[int, ...]) -> int:
        rank = len(self.shape_in(op))
        dims = _argument(op, 1, "dim", None)
        dims = {d + rank if d < 0 else d for d in _as_tuple(dims)} if dims is not None else {}
        if dims != set(range(2, rank)) or rank < 3:
            raise ModelImportError(f"{op.where}: mean over axes {sorted(dims)} of a rank-{rank}"
                                   " tensor; supported: the mean over every spatial axis "
                                   "(a global average)")
        keep = bool(_argument(op, 2, "keepdim", False))
        return self.add(Spec("global", op.index, inputs=ins, params={"squeeze": not keep}))

    def reshape(self, op: Op, ins: tuple[int, ...]) -> int:
        if op.shape[0] != self.traced.batch:
            raise ModelImportError(f"{op.where}: gives shape {op.shape}, mixing the batch axis "
                                   "into the others; keep the batch axis first and whole")
        shape = op.shape[1:]
        if len(shape) == 1:
            return self.add(Spec("flatten", op.index, inputs=ins))
        if not 2 <= len(shape) <= 3:
            raise ModelImportError(f"{op.where}: gives {len(shape)} axes per example; at most "
                                   "3 (channels, height, width) are supported")
        return self.add(Spec("reshape", op.index, inputs=ins,
                             params={"shape": _per_example(shape)}))

    def softmax(self, op: Op) -> None:
        self.output = "log_softmax" if "log" in op.name.lower() else "softmax"
        if op.index != self.traced.output:
            raise ModelImportError(f"{op.where}: unsupported before the last operation: "
                                   "a softmax is supported only as the model's output (it "
                                   "is dropped there, since it keeps the argmax)")
        return None


def convert(traced: Traced, input_shape: tuple[int, ...]
            ) -> tuple[list[Spec], list[str], str]:
    """The float specs of a traced module, each op's description (by op index), and what
    the model's output is made of the logits ("logits", or the dropped final softmax)."""
    converter = _Converter(traced, tuple(input_shape))
    specs = converter.convert()
    return specs, [op.where for op in traced.ops], converter.output
