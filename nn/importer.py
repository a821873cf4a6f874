"""Import a PyTorch `nn.Sequential` for secure inference, and check it before it runs.

Conversion folds what is free in the clear: batch-norm into the neighbouring convolution or
linear layer, and the 1/k of average pooling into the next linear layer (pooling becomes a
local sum). The imported model is then run on probe inputs in torch and in the fixed-point
emulator; the import reports each layer's maximum error and refuses a model whose
fixed-point range overflows or whose emulated label disagrees with torch's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mpc.errors import EncodingError
from mpc.fixedpoint import FixedPoint
from nn import layers as L
from nn.emulator import emulate
from nn.errors import ModelImportError
from nn.model import SecureModel

ACCUMULATOR_LIMIT = 2.0**61  # pre-truncation values (scale 2^2f) must stay below this
# Labels may differ from torch only where torch's two classes are closer than this: a tie
# that the emulator's error (a few 2^-16 per layer at the default precision) may break
# either way. Fixed, not measured from the probes, so a model that loses its labels to
# rounding (too few fractional bits) is refused.
TIE_TOLERANCE = 1e-3


@dataclass
class _Spec:
    """A layer in floating point, before encoding."""

    kind: str
    torch_index: int
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    params: dict = field(default_factory=dict)


@dataclass
class ImportReport:
    """Per-layer maximum absolute difference between emulator and torch on the probes."""

    layer_errors: list[tuple[str, float]]
    logit_error: float
    agreement: float
    probes: int

    def table(self) -> str:
        """The per-layer errors and the label agreement as text, for the command line."""
        lines = ["layer                 max |emulator - torch|"]
        lines += [f"{name:<22}{err:.3g}" for name, err in self.layer_errors]
        lines.append(f"labels agree on {self.agreement:.0%} of {self.probes} probes")
        return "\n".join(lines)


def _leaves(module, prefix: str = "") -> list[tuple[str, object]]:
    import torch.nn as tnn

    if isinstance(module, tnn.Sequential):
        out = []
        for name, child in module.named_children():
            out += _leaves(child, f"{prefix}{name}.")
        return out
    return [(prefix.rstrip("."), module)]


def _pair(value: object) -> tuple[int, int]:
    return tuple(value) if isinstance(value, tuple | list) else (int(value), int(value))


def _convert(module, input_shape: tuple[int, ...]) -> tuple[list[_Spec], list[str]]:
    """Leaf modules -> float specs; 1-D layers become 2-D layers of height 1."""
    import torch.nn as tnn

    leaves = _leaves(module)
    specs: list[_Spec] = []
    one_d = len(input_shape) == 2
    if one_d:
        specs.append(_Spec("reshape", -1, params={"shape": (input_shape[0], 1, input_shape[1])}))
    names = []
    for index, (path, m) in enumerate(leaves):
        where = f"{type(m).__name__} at position {path or index}"
        names.append(where)

        def t(x):
            return x.detach().double().numpy()
        if isinstance(m, tnn.Conv2d | tnn.Conv1d):
            if m.groups != 1 or any(d != 1 for d in _as_tuple(m.dilation)):
                raise ModelImportError(f"{where}: only groups=1 and dilation=1 are supported")
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ModelImportError(f"{where}: only numeric zero padding is supported")
            w = t(m.weight)
            if isinstance(m, tnn.Conv1d):
                w = w[:, :, None, :]
                stride, padding = (1, m.stride[0]), (0, m.padding[0])
            else:
                stride, padding = _pair(m.stride), _pair(m.padding)
            bias = t(m.bias) if m.bias is not None else np.zeros(w.shape[0])
            specs.append(_Spec("conv", index, w, bias, {"stride": stride, "padding": padding}))
        elif isinstance(m, tnn.Linear):
            bias = t(m.bias) if m.bias is not None else np.zeros(m.out_features)
            specs.append(_Spec("linear", index, t(m.weight), bias))
        elif isinstance(m, tnn.BatchNorm1d | tnn.BatchNorm2d):
            if m.running_mean is None:
                raise ModelImportError(f"{where}: batch-norm without running statistics")
            a = t(m.weight if m.affine else np.ones(1)) / np.sqrt(t(m.running_var) + m.eps) \
                if m.affine else 1 / np.sqrt(t(m.running_var) + m.eps)
            shift = (t(m.bias) if m.affine else 0.0) - t(m.running_mean) * a
            specs.append(_Spec("bn", index, np.asarray(a, float), np.asarray(shift, float)))
        elif isinstance(m, tnn.ReLU):
            specs.append(_Spec("relu", index))
        elif isinstance(m, tnn.AvgPool2d | tnn.AvgPool1d | tnn.MaxPool2d | tnn.MaxPool1d):
            if any(p != 0 for p in _as_tuple(m.padding)) or m.ceil_mode:
                raise ModelImportError(f"{where}: pooling with padding or ceil_mode is "
                                       "not supported")
            if getattr(m, "divisor_override", None):
                raise ModelImportError(f"{where}: average pooling with divisor_override is "
                                       "not supported")
            if isinstance(m, tnn.MaxPool2d | tnn.MaxPool1d) and \
                    any(d != 1 for d in _as_tuple(m.dilation)):
                raise ModelImportError(f"{where}: dilated max pooling is not supported")
            kernel, stride = _as_tuple(m.kernel_size), _as_tuple(m.stride or m.kernel_size)
            if isinstance(m, tnn.AvgPool1d | tnn.MaxPool1d):
                kernel, stride = (1, kernel[0]), (1, stride[0])
            else:
                kernel, stride = _pair(kernel if len(kernel) > 1 else kernel[0]), \
                    _pair(stride if len(stride) > 1 else stride[0])
            mode = "sum" if isinstance(m, tnn.AvgPool2d | tnn.AvgPool1d) else "max"
            specs.append(_Spec("pool", index, params={"kernel": kernel, "stride": stride,
                                                      "mode": mode}))
        elif isinstance(m, tnn.AdaptiveAvgPool2d | tnn.AdaptiveAvgPool1d):
            if any(o != 1 for o in _as_tuple(m.output_size)):
                raise ModelImportError(f"{where}: only output size 1 (global average) "
                                       "is supported")
            specs.append(_Spec("global", index))
        elif isinstance(m, tnn.Flatten):
            specs.append(_Spec("flatten", index))
        elif isinstance(m, tnn.Dropout | tnn.Identity):
            continue
        else:
            raise ModelImportError(f"unsupported module {where}; supported: Conv1d, Conv2d, "
                                   "Linear, ReLU, AvgPool1d/2d, MaxPool1d/2d, "
                                   "AdaptiveAvgPool(1), Flatten, Dropout, Identity, "
                                   "BatchNorm1d/2d")
    return specs, names


def _as_tuple(value: object) -> tuple:
    return tuple(value) if isinstance(value, tuple | list) else (value,)


def _fold_batchnorm(specs: list[_Spec], names: list[str]) -> list[_Spec]:
    out: list[_Spec] = []
    pending: _Spec | None = None  # a batch-norm waiting for the next linear layer
    for spec in specs:
        if spec.kind == "bn":
            prev = out[-1] if out else None
            if prev is not None and prev.kind in ("conv", "linear"):
                a, c = spec.weight, spec.bias
                shape = (-1,) + (1,) * (prev.weight.ndim - 1)
                prev.weight = prev.weight * a.reshape(shape)
                prev.bias = prev.bias * a + c
                prev.torch_index = spec.torch_index
            elif pending is None and all(s.kind in ("reshape",) for s in out):
                pending = spec
            else:
                raise ModelImportError(f"{names[spec.torch_index]}: batch-norm must follow a "
                                       "convolution or linear layer, or come first")
            continue
        if pending is not None and spec.kind in ("conv", "linear"):
            a, c = pending.weight, pending.bias
            if spec.kind == "conv":
                if any(spec.params["padding"]):
                    raise ModelImportError(f"{names[spec.torch_index]}: an input batch-norm "
                                           "folds only into a convolution without padding")
                a_b = np.broadcast_to(a, (spec.weight.shape[1],))
                c_b = np.broadcast_to(c, (spec.weight.shape[1],))
                spec.bias = spec.bias + (spec.weight * c_b[None, :, None, None]).sum((1, 2, 3))
                spec.weight = spec.weight * a_b[None, :, None, None]
            else:
                a_b = np.broadcast_to(a, (spec.weight.shape[1],))
                c_b = np.broadcast_to(c, (spec.weight.shape[1],))
                spec.bias = spec.bias + spec.weight @ c_b
                spec.weight = spec.weight * a_b[None, :]
            pending = None
        elif pending is not None and spec.kind not in ("reshape",):
            raise ModelImportError(f"{names[pending.torch_index]}: an input batch-norm must be "
                                   "followed directly by a convolution or linear layer")
        out.append(spec)
    return out


def from_torch(module, input_shape: tuple[int, ...], probes: np.ndarray | None = None,
               frac_bits: int = 16, labels: tuple[str, ...] = (),
               check: bool = True) -> tuple[SecureModel, ImportReport | None]:
    """Convert `module` (an nn.Sequential, nested ones too) for inputs of `input_shape`
    (per example, e.g. (1, 40, 350) or (C, L) for 1-D models).

    Returns the model and, when `check`, the probe report. `probes` are float inputs of
    shape (n, *input_shape); by default 8 standard-normal ones (seeded).
    """
    import torch

    module = module.eval()
    fixed = FixedPoint(frac_bits=frac_bits)
    specs, names = _convert(module, tuple(input_shape))
    specs = _fold_batchnorm(specs, names)
    layer_list, torch_index, scales = [], [], []
    scale = 1.0  # secure value / torch value, from sums that stand for averages
    shape = (input_shape[0], 1, input_shape[1]) if len(input_shape) == 2 else tuple(input_shape)
    for number, spec in enumerate(specs):
        name = f"{spec.kind}{number}"
        where = names[spec.torch_index] if spec.torch_index >= 0 else "input"
        if spec.kind in ("conv", "linear"):
            weight = spec.weight / scale
            scale = 1.0
            try:
                if spec.kind == "conv":
                    enc_w = fixed.encode(weight)
                    layer = L.Conv2d(name, enc_w, _encode_bias(spec.bias, fixed), weight.shape,
                                     (weight.shape[0],), **spec.params)
                else:
                    enc_w = fixed.encode(weight.T.copy())
                    layer = L.Linear(name, enc_w, _encode_bias(spec.bias, fixed),
                                     (weight.shape[1], weight.shape[0]), (weight.shape[0],))
            except EncodingError as exc:
                raise ModelImportError(f"{where}: weights out of fixed-point range "
                                       f"({exc})") from None
        elif spec.kind == "relu":
            layer = L.ReLU(name)
        elif spec.kind == "flatten":
            layer = L.Flatten(name)
        elif spec.kind == "reshape":
            layer = L.Reshape(name, shape=spec.params["shape"])
        elif spec.kind == "pool":
            layer = L.Pool2d(name, **spec.params)
            if spec.params["mode"] == "sum":
                scale *= spec.params["kernel"][0] * spec.params["kernel"][1]
        elif spec.kind == "global":
            layer = L.Pool2d(name, kernel=shape[1:], stride=shape[1:], mode="sum")
            scale *= shape[1] * shape[2]
            layer_list.append(layer)
            torch_index.append(spec.torch_index)
            scales.append(scale)
            shape = layer.out_shape(shape)
            layer = L.Reshape(f"squeeze{number}", shape=(shape[0],))
        else:
            raise AssertionError(spec.kind)
        layer_list.append(layer)
        torch_index.append(spec.torch_index)
        scales.append(scale)
        try:
            shape = layer.out_shape(shape)
        except (ValueError, IndexError) as exc:
            raise ModelImportError(f"{where}: does not fit input shape {shape}: {exc}") from None
    if scale != 1.0:
        layer_list.append(L.Scale("rescale", factor=1.0 / scale))
        torch_index.append(torch_index[-1])
        scales.append(1.0)
    model = SecureModel(layer_list, tuple(input_shape), fixed, tuple(labels), torch_index, scales)
    if not check:
        return model, None
    if probes is None:
        probes = torch.randn((8, *input_shape), generator=torch.Generator().manual_seed(0))
        probes = probes.numpy()
    return model, validate(model, module, np.asarray(probes, dtype=np.float64))


def _encode_bias(bias: np.ndarray, fixed: FixedPoint) -> np.ndarray:
    """Bias at scale 2^(2f): it joins the accumulator before truncation."""
    wide = FixedPoint(frac_bits=2 * fixed.frac_bits, int_bits=62 - 2 * fixed.frac_bits - 1)
    return wide.encode(bias)


def validate(model: SecureModel, module, probes: np.ndarray) -> ImportReport:
    """Run torch and the emulator on `probes`; refuse overflow or disagreeing labels."""
    import torch

    outputs: dict[int, np.ndarray] = {}
    leaves = _leaves(module)
    hooks = [m.register_forward_hook(
        lambda _m, _i, out, k=k: outputs.__setitem__(k, out.detach().double().numpy()))
        for k, (_, m) in enumerate(leaves)]
    try:
        with torch.no_grad():
            torch_logits = module(torch.as_tensor(probes, dtype=torch.float32)).double().numpy()
    finally:
        for hook in hooks:
            hook.remove()
    f = model.fixed.frac_bits
    for layer, index in zip(model.layers, model.torch_index, strict=True):
        if isinstance(layer, L.Conv2d | L.Linear) and index in outputs:
            peak = float(np.abs(outputs[index]).max()) * 2.0 ** (2 * f)
            if peak >= ACCUMULATOR_LIMIT:
                raise ModelImportError(
                    f"layer {layer.name} ({type(leaves[index][1]).__name__} at position "
                    f"{leaves[index][0]}) reaches {peak / 2 ** (2 * f):.3g} on the probes; "
                    f"fixed point with {f} fractional bits overflows above "
                    f"{ACCUMULATOR_LIMIT / 2 ** (2 * f):.3g}")
    logits, per_layer = emulate(model, probes)
    errors = []
    for layer, index, scale, value in zip(model.layers, model.torch_index, model.scale,
                                          per_layer, strict=True):
        if index in outputs and outputs[index].size == value.size:
            diff = np.abs(value.reshape(outputs[index].shape) / scale - outputs[index])
            errors.append((layer.name, float(diff.max())))
    logit_error = float(np.abs(logits - torch_logits.reshape(logits.shape)).max())
    ours, theirs = logits.argmax(axis=1), torch_logits.reshape(logits.shape).argmax(axis=1)
    for n in np.flatnonzero(ours != theirs):
        gap = torch_logits[n, theirs[n]] - torch_logits[n, ours[n]]
        if gap > TIE_TOLERANCE:
            raise ModelImportError(
                f"the fixed-point emulator picks class {ours[n]} on probe {n} where torch picks "
                f"{theirs[n]} (torch margin {gap:.3g}, logit error {logit_error:.3g}); "
                "the model does not survive fixed point with "
                f"{f} fractional bits")
    return ImportReport(errors, logit_error, float((ours == theirs).mean()), len(probes))
