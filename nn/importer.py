"""Import a PyTorch module for secure inference, and check it before it runs.

Conversion folds what is free in the clear: batch-norm into the neighbouring convolution or
linear layer, and the 1/k of average pooling into the next linear layer (pooling becomes a
local sum). The imported model is then run on probe inputs in torch and in the fixed-point
emulator; the import reports each layer's maximum error and refuses a model whose
fixed-point range overflows or whose emulated label disagrees with torch's.

The precision is chosen per model unless given: folding 1/k into weights costs weight bits
(at 16 fractional bits the reference CNN's logits are off by 1e-3 to 3e-3), while the ring holds
many more than a small model's accumulators need. So the importer takes the largest number
of fractional bits whose accumulators stay HEADROOM_BITS clear of the limit on the probes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mpc.errors import EncodingError
from mpc.fixedpoint import MAX_VALUE_BITS, FixedPoint
from nn import layers as L
from nn import tracing
from nn.convert import Spec, convert
from nn.emulator import emulate
from nn.errors import ModelImportError
from nn.model import SecureModel
from nn.tracing import MODEL_INPUT
from protocols.activations import APPROXIMATIONS

ACCUMULATOR_LIMIT = L.ACCUMULATOR_LIMIT  # pre-truncation values (scale 2^2f) stay below it
# The chosen precision (frac_bits=None): the largest f in MIN_FRAC_BITS..MAX_FRAC_BITS whose
# accumulators, on the probes, stay below ACCUMULATOR_LIMIT / 2^HEADROOM_BITS, i.e. inputs
# 2^HEADROOM_BITS = 256 times larger than any probe still fit (for a linear model exactly;
# ReLU and pooling keep the factor, biases only shrink it).
MIN_FRAC_BITS = 8  # below this, rounding weights to 2^-9 loses most models: refuse instead
MAX_FRAC_BITS = 24  # reference CNN's logit error: 4e-6 here (1e-3 at 16); more eats headroom
HEADROOM_BITS = 8
# Weights and inputs keep 31 integer bits whatever f (f + 31 + sign <= MAX_VALUE_BITS for
# every f in the range): what a client may send does not depend on the model's precision,
# and 31 bits are far more than any accumulator-bounded value can use.
INT_BITS = 31
# Labels may differ from torch only where torch's two classes are closer than this: a tie
# that the emulator's error (a few 2^-f per layer, f the fractional bits) may break
# either way. Fixed, not measured from the probes, so a model that loses its labels to
# rounding (too few fractional bits) is refused.
TIE_TOLERANCE = 1e-3


@dataclass
class ImportReport:
    """Per-layer maximum absolute difference between emulator and torch on the probes, and
    the fixed-point format with what it leaves: `headroom_bits` = log2(ACCUMULATOR_LIMIT /
    the largest accumulator on the probes), at layer `tightest`; `bound_by` says what set
    `frac_bits` when it was chosen (a layer's range or the top of the range), "" when the
    caller gave it."""

    layer_errors: list[tuple[str, float]]
    logit_error: float
    agreement: float
    probes: int
    frac_bits: int
    int_bits: int
    headroom_bits: float
    tightest: str
    bound_by: str = ""

    def table(self) -> str:
        """The format, the per-layer errors and the label agreement as text, for the
        command line."""
        kept = f" (the choice keeps >= {HEADROOM_BITS})" if self.bound_by else ""
        lines = [f"fixed point: {self.frac_bits} fractional bits, {self.int_bits} integer "
                 f"bits; set by {self.bound_by or 'the caller (frac_bits given)'}",
                 f"accumulator headroom: {self.headroom_bits:.1f} bits on the probes{kept} "
                 f"at {self.tightest}",
                 "layer                 max |emulator - torch|"]
        lines += [f"{name:<22}{err:.3g}" for name, err in self.layer_errors]
        lines.append(f"labels agree on {self.agreement:.0%} of {self.probes} probes")
        return "\n".join(lines)


def from_torch(module, input_shape: tuple[int, ...], probes: np.ndarray | None = None,
               frac_bits: int | None = None, labels: tuple[str, ...] = (),
               check: bool = True) -> tuple[SecureModel, ImportReport | None]:
    """Convert `module` (an nn.Sequential, nested ones too) for inputs of `input_shape`
    (per example, e.g. (1, 40, 350) or (C, L) for 1-D models).

    Returns the model and, when `check`, the probe report. `probes` are float inputs of
    shape (n, *input_shape); by default 8 standard-normal ones (seeded).

    `frac_bits=None` chooses the precision from torch's ranges on the probes (see
    `choose_frac_bits`), so torch runs on them even without `check`; an integer fixes it,
    and a model that overflows with it is refused.
    """
    module = module.eval()
    traced = tracing.trace(module, tuple(input_shape))
    specs, names, output = convert(traced, tuple(input_shape))
    fixed = None if frac_bits is None else FixedPoint(frac_bits=frac_bits, int_bits=INT_BITS)
    layer_list, torch_index, scales, affine = _build(specs, names, tuple(input_shape), fixed)
    if fixed is not None and not check:
        return SecureModel(layer_list, tuple(input_shape), fixed, tuple(labels), torch_index,
                           scales, output), None
    probes = _default_probes(input_shape) if probes is None else probes
    probes = np.asarray(probes, dtype=np.float64)
    torch_pass, bound_by = None, ""
    if fixed is None:
        torch_pass = tracing.outputs(traced, probes)
        ranges = _ranges(probes, affine, layer_list, torch_index, names, torch_pass[0])
        chosen, bound_by = choose_frac_bits(ranges)
        fixed = FixedPoint(frac_bits=chosen, int_bits=INT_BITS)
        for layer, where, weight, bias in affine:
            _encode_affine(layer, where, weight, bias, fixed)
    model = SecureModel(layer_list, tuple(input_shape), fixed, tuple(labels), torch_index, scales,
                        output)
    if not check:
        return model, None
    report = validate(model, traced, probes, torch_pass)
    report.bound_by = bound_by
    return model, report


def _default_probes(input_shape: tuple[int, ...]) -> np.ndarray:
    """8 seeded standard-normal inputs: the ranges the choice and the check rest on."""
    import torch

    return torch.randn((8, *input_shape), generator=torch.Generator().manual_seed(0)).numpy()


_AffineFloats = tuple[L._Affine, str, np.ndarray, np.ndarray]  # layer, where, w, bias


def _build(specs: list[Spec], names: list[str], input_shape: tuple[int, ...],
           fixed: FixedPoint | None) -> tuple[list[L.Layer], list[int], list[float],
                                               list[_AffineFloats]]:
    """Secure layers from the float specs, with the torch index and scale of each.

    A sum standing for an average makes its output `scale` times torch's; the next linear
    layer divides its weights by it (free), a ReLU or max keeps it, and where values of
    different scales meet (an add, a concat) or the model ends, a `Scale` layer brings them
    back to 1. Weights are encoded here when `fixed` is known (so a range error comes
    before a later layer's shape error); otherwise they are left for after the choice of
    precision, and returned in float (folded 1/k included) with their layers."""
    layers: list[L.Layer] = []
    torch_index: list[int] = []
    scales: list[float] = []
    affine: list[_AffineFloats] = []
    shapes: dict[int, tuple[int, ...]] = {MODEL_INPUT: _internal(input_shape)}
    layer_of: dict[int, int] = {MODEL_INPUT: MODEL_INPUT}  # spec -> layer giving its output

    def scale_of(k: int) -> float:
        return 1.0 if k == MODEL_INPUT else scales[k]

    def append(layer: L.Layer, sources: tuple[int, ...], index: int, scale: float,
               where: str) -> int:
        k = len(layers)
        layer.inputs = () if sources == (k - 1,) else tuple(sources)
        try:
            shapes[k] = tuple(layer.out_shape_of([shapes[i] for i in sources]))
        except (ValueError, IndexError) as exc:
            raise ModelImportError(f"{where}: does not fit input shape "
                                   f"{[shapes[i] for i in sources]}: {exc}") from None
        layers.append(layer)
        torch_index.append(index)
        scales.append(scale)
        return k

    def at_unit_scale(k: int, where: str) -> int:
        if scale_of(k) == 1.0:
            return k
        # the rescaled value is the source op's torch value again (what the report compares)
        return append(L.Scale(f"rescale{len(layers)}", factor=1.0 / scale_of(k)), (k,),
                      torch_index[k], 1.0, where)

    for number, spec in enumerate(specs):
        name = f"{spec.kind}{number}"
        where = names[spec.torch_index] if spec.torch_index >= 0 else "input"
        sources = tuple(layer_of[i] for i in spec.inputs)
        scale = scale_of(sources[0])
        if spec.kind in ("conv", "linear"):
            weight = spec.weight / scale
            if spec.kind == "conv":
                layer = L.Conv2d(name, None, None, weight.shape, (weight.shape[0],),
                                 **spec.params)
            else:
                weight = weight.T.copy()  # stored (in, out)
                layer = L.Linear(name, None, None, weight.shape, (weight.shape[1],))
            affine.append((layer, where, weight, spec.bias))
            if fixed is not None:
                _encode_affine(layer, where, weight, spec.bias, fixed)
            scale = 1.0
        elif spec.kind == "affine":  # y = a x + c on torch's values: a / scale on ours
            layer = L.ChannelAffine(name, None, None, spec.weight.shape, spec.bias.shape)
            affine.append((layer, where, spec.weight / scale, spec.bias))
            if fixed is not None:
                _encode_affine(layer, where, spec.weight / scale, spec.bias, fixed)
            scale = 1.0
        elif spec.kind in ("add", "concat"):
            if len({scale_of(k) for k in sources}) > 1:
                sources = tuple(at_unit_scale(k, where) for k in sources)
                scale = 1.0
            layer = L.Add(name) if spec.kind == "add" else L.Concat(name, **spec.params)
        elif spec.kind == "relu":
            layer = L.ReLU(name)
        elif spec.kind == "pad":  # zeros keep any scale; a max pool's frame is below all
            layer = L.Pad(name, **spec.params)
        elif spec.kind == "upsample":
            layer = L.Upsample(name, factor=spec.params["factor"])
        elif spec.kind == "leaky":  # commutes with a positive scale, like ReLU
            layer = L.LeakyReLU(name, slope=spec.params["slope"])
        elif spec.kind == "norm":  # the true values (eps would not scale)
            sources = (at_unit_scale(sources[0], where),)
            scale = 1.0
            layer = L.Norm(name, **spec.params)
        elif spec.kind in ("clamp", "smooth"):  # needs the true values: scale 1
            sources = (at_unit_scale(sources[0], where),)
            scale = 1.0
            layer = L.Clamp(name, **spec.params) if spec.kind == "clamp" \
                else L.Smooth(name, **spec.params)
        elif spec.kind == "flatten":
            layer = L.Flatten(name)
        elif spec.kind == "reshape":
            layer = L.Reshape(name, shape=spec.params["shape"])
        elif spec.kind == "pool":
            layer = L.Pool2d(name, **spec.params)
            if spec.params["mode"] == "sum":
                scale *= spec.params["kernel"][0] * spec.params["kernel"][1]
        elif spec.kind == "global":
            c, h, w = shapes[sources[0]]
            pooled = append(L.Pool2d(name, kernel=(h, w), stride=(h, w), mode="sum"), sources,
                            spec.torch_index, scale * h * w, where)
            if spec.params.get("squeeze", True):
                pooled = append(L.Reshape(f"squeeze{number}", shape=(c,)), (pooled,),
                                spec.torch_index, scale * h * w, where)
            layer_of[number] = pooled
            continue
        else:
            raise AssertionError(spec.kind)
        layer_of[number] = append(layer, sources, spec.torch_index, scale, where)
    if scales[-1] != 1.0:
        append(L.Scale("rescale", factor=1.0 / scales[-1]), (len(layers) - 1,),
               torch_index[-1], 1.0, "output")
    return layers, torch_index, scales, affine


def _internal(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A per-example input shape as the layers see it: (C, L) runs as (C, 1, L)."""
    return (shape[0], 1, shape[1]) if len(shape) == 2 else tuple(shape)


def _encode_affine(layer: L.Conv2d | L.Linear, where: str, weight: np.ndarray,
                   bias: np.ndarray, fixed: FixedPoint) -> None:
    """Fill in the layer's encoded weight (scale 2^f) and bias (2^2f)."""
    try:
        layer.weight = fixed.encode(weight)
        layer.bias = _encode_bias(bias, fixed)
    except EncodingError as exc:
        raise ModelImportError(f"{where}: weights out of fixed-point range ({exc})") from None


def _bias_format(fixed: FixedPoint) -> FixedPoint:
    """Biases join the accumulator before truncation: scale 2^(2f), the integer bits left."""
    return FixedPoint(frac_bits=2 * fixed.frac_bits,
                      int_bits=MAX_VALUE_BITS - 2 * fixed.frac_bits - 1)


def _encode_bias(bias: np.ndarray, fixed: FixedPoint) -> np.ndarray:
    """Bias at scale 2^(2f): it joins the accumulator before truncation."""
    return _bias_format(fixed).encode(bias)


@dataclass
class _Range:
    """One quantity the fixed-point format must hold, and its peak |value| on the probes.

    `what` is "input" or "weights" (encoded at 2^f with INT_BITS integer bits), "bias"
    (encoded at 2^2f) or "accumulator" (a truncation's input, at 2^2f, which must stay
    HEADROOM_BITS below ACCUMULATOR_LIMIT)."""

    where: str
    what: str
    peak: float
    function: str = ""  # for an "activation": which smooth function

    def fits(self, f: int) -> bool:
        """Whether `f` fractional bits hold the peak (monotone: fewer bits hold more)."""
        if self.what == "accumulator":
            return self.peak * 2.0 ** (2 * f) < ACCUMULATOR_LIMIT / 2.0**HEADROOM_BITS
        if self.what == "norm input":  # protocols.normalization: |x| < 2^(29 - f), kept 2x
            return 2 * self.peak < 2.0 ** (29 - f)
        if self.what == "activation":  # a piecewise cubic's products at scale 2^(2f + s)
            try:
                APPROXIMATIONS[self.function].check_headroom(f)
            except ValueError:
                return False
            return True
        fixed = FixedPoint(frac_bits=f, int_bits=INT_BITS)
        try:
            (_bias_format(fixed) if self.what == "bias" else fixed).encode(self.peak)
        except EncodingError:
            return False
        return True

    def describe(self) -> str:
        return f"{self.where}: {self.what} peak {self.peak:.3g}"

    def refusal(self) -> str:
        """Why no precision in the range fits, naming the layer and its peak."""
        if self.what == "norm input":
            return (f"{self.where}: normalises values up to {self.peak:.3g} on the probes; "
                    f"the secure normalisation holds |x| < 2^(29 - f), so at most "
                    f"{2.0 ** (28 - MIN_FRAC_BITS):.3g} with {MIN_FRAC_BITS} fractional bits")
        if self.what == "accumulator":
            ceiling = ACCUMULATOR_LIMIT / 2.0 ** (2 * MIN_FRAC_BITS + HEADROOM_BITS)
            return (f"{self.where} reaches {self.peak:.3g} on the probes; fixed point "
                    f"overflows above {ceiling:.3g} even with {MIN_FRAC_BITS} fractional bits "
                    f"(MIN_FRAC_BITS) and {HEADROOM_BITS} bits of headroom")
        fixed = FixedPoint(frac_bits=MIN_FRAC_BITS, int_bits=INT_BITS)
        fixed = _bias_format(fixed) if self.what == "bias" else fixed
        return (f"{self.where}: {self.what} out of fixed-point range (peak {self.peak:.3g}; "
                f"FixedPoint(frac_bits={fixed.frac_bits}, int_bits={fixed.int_bits}) holds "
                f"|x| <= {fixed.max_abs:.3g})")


def _ranges(probes: np.ndarray, affine: list[_AffineFloats], layers: list[L.Layer],
            torch_index: list[int], names: list[str],
            outputs: dict[int, np.ndarray]) -> list[_Range]:
    """What gets encoded (probes, weights, biases) and every truncation's input, in order."""
    ranges = [_Range("the probes", "input", _peak(probes))]
    for layer, where, weight, bias in affine:
        ranges.append(_Range(f"layer {layer.name} ({where})", "weights", _peak(weight)))
        ranges.append(_Range(f"layer {layer.name} ({where})", "bias", _peak(bias)))
    ranges += [_Range(f"layer {name} ({names[index]})", "accumulator", peak)
               for name, index, peak in _accumulators(layers, torch_index, outputs)]
    ranges += [_Range(f"layer {layer.name} ({names[index]})", "activation", 0.0,
                      layer.function)
               for layer, index in zip(layers, torch_index, strict=True)
               if isinstance(layer, L.Smooth)]
    for k, layer in enumerate(layers):
        if isinstance(layer, L.Norm):
            source = (layer.inputs or (k - 1,))[0]
            values = probes if source < 0 else outputs.get(torch_index[source], probes)
            ranges.append(_Range(f"layer {layer.name} ({names[torch_index[k]]})",
                                 "norm input", _peak(values)))
    return ranges


def _peak(values: np.ndarray) -> float:
    return float(np.abs(values).max()) if np.size(values) else 0.0


def _accumulators(layers: list[L.Layer], torch_index: list[int],
                  outputs: dict[int, np.ndarray]) -> list[tuple[str, int, float]]:
    """(layer name, torch index, peak |value|) of each truncation's input on the probes: a
    linear layer's output, or the final rescale's (the model's output), before the 2^-f."""
    return [(layer.name, index, _peak(outputs[index]))
            for layer, index in zip(layers, torch_index, strict=True)
            if isinstance(layer, L.Conv2d | L.Linear | L.ChannelAffine | L.Scale)
            and index in outputs]


def choose_frac_bits(ranges: list[_Range]) -> tuple[int, str]:
    """The largest f in MIN_FRAC_BITS..MAX_FRAC_BITS that holds every range, and what bound
    it. More fractional bits cost nothing online (the ring is Z_2^64 whatever f), but
    every bit of f takes two bits of the accumulators' headroom."""
    for r in ranges:
        if not r.fits(MIN_FRAC_BITS):
            raise ModelImportError(r.refusal())
    f = MAX_FRAC_BITS
    while not all(r.fits(f) for r in ranges):
        f -= 1
    if f == MAX_FRAC_BITS:
        return f, f"MAX_FRAC_BITS = {MAX_FRAC_BITS} (the top of the range)"
    binding = next(r for r in ranges if not r.fits(f + 1))
    return f, binding.describe()


def _check_compared_values(model: SecureModel, outputs: dict[int, np.ndarray],
                           where: list[str]) -> None:
    """Refuse a model whose comparisons would leave their width on the probes: every layer's
    output may be compared (by a ReLU, or the argmax over the logits), as itself or as the
    difference of two, within [-2^bits, 2^bits) (`nn.layers.comparison_bits`)."""
    f = model.fixed.frac_bits
    bits = L.comparison_bits(f)
    for layer, index in zip(model.layers, model.torch_index, strict=True):
        if index not in outputs:
            continue
        peak = float(np.abs(outputs[index]).max())
        if 2 * peak * 2.0**f >= 2.0**bits:
            raise ModelImportError(
                f"layer {layer.name} ({where[index]}) reaches {peak:.3g} on the probes; "
                f"with {f} fractional bits the comparisons hold differences below "
                f"{2.0 ** (bits - f):.3g}")


def validate(model: SecureModel, traced: tracing.Traced, probes: np.ndarray,
             torch_pass: tuple[dict[int, np.ndarray], np.ndarray] | None = None
             ) -> ImportReport:
    """Run torch and the emulator on `probes`; refuse overflow or disagreeing labels.

    `torch_pass` is `tracing.outputs(traced, probes)` when the caller already ran it."""
    outputs, torch_logits = tracing.outputs(traced, probes) if torch_pass is None \
        else torch_pass
    where = [op.where for op in traced.ops]
    f = model.fixed.frac_bits
    for layer, index in zip(model.layers, model.torch_index, strict=True):
        if isinstance(layer, L.Conv2d | L.Linear | L.ChannelAffine) and index in outputs:
            peak = float(np.abs(outputs[index]).max()) * 2.0 ** (2 * f)
            if peak >= ACCUMULATOR_LIMIT:
                raise ModelImportError(
                    f"layer {layer.name} ({where[index]}) reaches {peak / 2 ** (2 * f):.3g} "
                    "on the probes; "
                    f"fixed point with {f} fractional bits overflows above "
                    f"{ACCUMULATOR_LIMIT / 2 ** (2 * f):.3g}")
    _check_compared_values(model, outputs, where)
    logits, per_layer = emulate(model, probes)
    errors = []
    for layer, index, scale, value in zip(model.layers, model.torch_index, model.scale,
                                          per_layer, strict=True):
        if index in outputs and outputs[index].size == value.size:
            diff = np.abs(value.reshape(outputs[index].shape) / scale - outputs[index])
            errors.append((layer.name, float(diff.max())))
    if model.torch_index and model.torch_index[-1] in outputs:
        # what the last secure layer reproduces: the logits, also when a final softmax
        # (which keeps the argmax) was dropped
        torch_logits = outputs[model.torch_index[-1]].reshape(len(probes), -1)
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
    headroom, tightest = math.inf, "no truncation"
    for name, index, peak in _accumulators(model.layers, model.torch_index, outputs):
        bits = math.log2(ACCUMULATOR_LIMIT / (peak * 2.0 ** (2 * f))) if peak > 0 else math.inf
        if bits < headroom:
            headroom, tightest = bits, f"layer {name} ({where[index]}), peak {peak:.3g}"
    return ImportReport(errors, logit_error, float((ours == theirs).mean()), len(probes),
                        f, model.fixed.int_bits, headroom, tightest)
