"""Every field of a model description checked while walking its shapes, and its footprint.

A description comes from a peer (the model owner), and every other role sizes arrays from it:
so each field's type and range is checked against the shape the previous layer gives, and the
running totals (parameters, the largest tensor per example, multiply-adds, comparisons)
against `mpc.limits`, all on plain Python integers before any array exists. A problem is a
`ModelDescriptionError` naming the layer, the field and the value.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mpc import limits
from mpc.fixedpoint import FixedPoint
from nn import layers as L
from nn.errors import ModelDescriptionError

Shape = tuple[int, ...]

KINDS: dict[str, type[L.Layer]] = {
    "Conv2d": L.Conv2d, "Linear": L.Linear, "ReLU": L.ReLU, "Flatten": L.Flatten,
    "Pool2d": L.Pool2d, "Scale": L.Scale, "Reshape": L.Reshape, "Add": L.Add,
    "Concat": L.Concat, "LeakyReLU": L.LeakyReLU, "Clamp": L.Clamp, "Smooth": L.Smooth,
    "ChannelAffine": L.ChannelAffine, "Pad": L.Pad, "Upsample": L.Upsample, "Norm": L.Norm}
FIELDS: dict[str, tuple[str, ...]] = {
    "Conv2d": ("weight_shape", "bias_shape", "stride", "padding"),
    "Linear": ("weight_shape", "bias_shape"), "ReLU": (), "Flatten": (),
    "Pool2d": ("kernel", "stride", "mode"), "Scale": ("factor",), "Reshape": ("shape",),
    "Add": (), "Concat": ("axis",), "LeakyReLU": ("slope",), "Clamp": ("low", "high"),
    "Smooth": ("function",), "ChannelAffine": ("weight_shape", "bias_shape"),
    "Pad": ("padding", "value"), "Upsample": ("factor",), "Norm": ("axes", "groups", "eps")}
#: Comparisons per normalised group of values (`protocols.normalization`'s range reduction).
NORM_COMPARISONS = 41
#: Comparisons a value costs in each smooth activation (its breakpoints).
SMOOTH_COMPARISONS = 5
MAX_INPUTS = 8  # inputs of one Add or Concat
MAX_RANK = 3  # every layer works on at most (channels, height, width) per example
_SHORT = reprlib.Repr()  # Python 3.11 takes the sizes as attributes only
_SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxlong = 6, 4, 60, 40


@dataclass(frozen=True)
class Footprint:
    """What a model costs per example: parameters, the largest tensor, multiply-adds and
    secure comparisons (ReLU, max-pooling, the final argmax)."""

    parameters: int = 0
    activation: int = 0
    multiply_adds: int = 0
    comparisons: int = 0


class Where:
    """One field of one layer, to name in errors."""

    def __init__(self, layer: int | None, kind: str | None, name: str | None = None) -> None:
        self.layer, self.kind, self.name = layer, kind, name

    def fail(self, field: str, value: Any, why: str) -> ModelDescriptionError:
        shown = _SHORT.repr(value)  # a peer's value can be huge: never repr it whole
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        if self.layer is None:
            where = field
        elif self.kind is None:
            where = f"layer {self.layer} {field}"
        else:
            label = f"{self.kind} {self.name!r}" if self.name is not None else self.kind
            where = f"layer {self.layer} ({label}) {field}"
        return ModelDescriptionError(f"model description: {where} = {shown}: {why}",
                                     self.layer, field)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def ints(value: Any, where: Where, field: str, length: int | range, minimum: int) -> Shape:
    """`value` as a tuple of integers >= `minimum`, of `length` (or a length in the range)."""
    lengths = range(length, length + 1) if isinstance(length, int) else length
    if not isinstance(value, list) or len(value) not in lengths:
        raise where.fail(field, value, f"must be a list of {_count(lengths)} integers")
    for v in value:
        if not _is_int(v):
            raise where.fail(field, value, f"{v!r} is not an integer")
        if v < minimum:
            raise where.fail(field, value, f"{v} is below {minimum}")
    return tuple(value)


def integer(value: Any, where: Where, field: str, minimum: int) -> int:
    """`value` if it is an integer >= `minimum` (not a bool, not a float)."""
    if not _is_int(value) or value < minimum:
        raise where.fail(field, value, f"must be an integer of at least {minimum}")
    return value


def _count(lengths: range) -> str:
    first, last = lengths[0], lengths[-1]
    return str(first) if first == last else f"{first} to {last}"


class _Walk:
    """The running shape and totals of a description, checked after every layer."""

    def __init__(self, input_shape: Shape) -> None:
        self.shape = input_shape
        self.inputs: list[Shape] = [input_shape]  # the current layer's input shapes
        self.parameters = self.multiply_adds = self.comparisons = 0
        self.activation = math.prod(input_shape)

    def tensor(self, where: Where, field: str, value: Any, elements: int, what: str) -> None:
        """A tensor of `elements` per example that the layer makes (`what` it is)."""
        if elements > limits.MAX_ACTIVATION:
            raise where.fail(field, value, f"{what} of {elements} elements per example is "
                             f"above mpc.limits.MAX_ACTIVATION ({limits.MAX_ACTIVATION})")
        self.activation = max(self.activation, elements)

    def add(self, where: Where, field: str, value: Any, *, parameters: int = 0,
            multiply_adds: int = 0, comparisons: int = 0) -> None:
        """Add a layer's costs to the totals; the first layer over a limit is named."""
        self.parameters += parameters
        self.multiply_adds += multiply_adds
        self.comparisons += comparisons
        for total, name, what in (
                (self.parameters, "MAX_PARAMETERS", "parameters"),
                (self.multiply_adds, "MAX_MULTIPLY_ADDS", "multiply-adds per example"),
                (self.comparisons, "MAX_COMPARISONS", "comparisons per example")):
            limit = getattr(limits, name)
            if total > limit:
                raise where.fail(field, value, f"brings the model to {total} {what}, above "
                                 f"mpc.limits.{name} ({limit})")

    def footprint(self) -> Footprint:
        """The totals so far, frozen."""
        return Footprint(self.parameters, self.activation, self.multiply_adds,
                         self.comparisons)


def _planes(walk: _Walk, where: Where) -> Shape:
    if len(walk.shape) != 3:
        raise where.fail("input", list(walk.shape), "this layer takes (channels, height, "
                         "width) per example; the previous layer gives another shape")
    return walk.shape


def _conv2d(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
    c, h, w = _planes(walk, where)
    weight = ints(f["weight_shape"], where, "weight_shape", 4, 1)
    cout, cin, kh, kw = weight
    if cin != c:
        raise where.fail("weight_shape", f["weight_shape"], f"takes {cin} input channels; "
                         f"the previous layer gives {c}")
    if ints(f["bias_shape"], where, "bias_shape", 1, 1) != (cout,):
        raise where.fail("bias_shape", f["bias_shape"], f"must be [{cout}], one per output "
                         "channel")
    stride = ints(f["stride"], where, "stride", 2, 1)
    padding = ints(f["padding"], where, "padding", 2, 0)
    if padding[0] >= kh or padding[1] >= kw:
        raise where.fail("padding", f["padding"], f"must be smaller than the kernel {kh}x{kw} "
                         "(at k - 1 every output still sees an input value)")
    hp, wp = h + 2 * padding[0], w + 2 * padding[1]
    walk.tensor(where, "padding", f["padding"], c * hp * wp, "the padded input")
    if kh > hp or kw > wp:
        raise where.fail("weight_shape", f["weight_shape"], f"kernel {kh}x{kw} is larger than "
                         f"the padded input {hp}x{wp}")
    if stride[0] > hp or stride[1] > wp:
        raise where.fail("stride", f["stride"], f"must be at most the padded input {hp}x{wp}")
    ho, wo = (hp - kh) // stride[0] + 1, (wp - kw) // stride[1] + 1
    walk.tensor(where, "weight_shape", f["weight_shape"], cin * kh * kw * ho * wo,
                "the unfolded input")
    walk.tensor(where, "weight_shape", f["weight_shape"], cout * ho * wo, "the output")
    walk.add(where, "weight_shape", f["weight_shape"], parameters=math.prod(weight) + cout,
             multiply_adds=cout * ho * wo * cin * kh * kw)
    return (cout, ho, wo)


def _linear(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
    if len(walk.shape) != 1:
        raise where.fail("input", list(walk.shape), "a linear layer takes a flat input; "
                         "add a Flatten before it")
    n_in, n_out = ints(f["weight_shape"], where, "weight_shape", 2, 1)
    if n_in != walk.shape[0]:
        raise where.fail("weight_shape", f["weight_shape"], f"takes {n_in} inputs; the "
                         f"previous layer gives {walk.shape[0]}")
    if ints(f["bias_shape"], where, "bias_shape", 1, 1) != (n_out,):
        raise where.fail("bias_shape", f["bias_shape"], f"must be [{n_out}], one per output")
    walk.tensor(where, "weight_shape", f["weight_shape"], n_out, "the output")
    walk.add(where, "weight_shape", f["weight_shape"], parameters=n_in * n_out + n_out,
             multiply_adds=n_in * n_out)
    return (n_out,)


def _channel_affine(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
    channels = walk.shape[0]
    for key in ("weight_shape", "bias_shape"):
        if ints(f[key], where, key, 1, 1) != (channels,):
            raise where.fail(key, f[key], f"must be [{channels}], one per channel of the "
                             f"input {list(walk.shape)}")
    walk.add(where, "weight_shape", f["weight_shape"], parameters=2 * channels,
             multiply_adds=math.prod(walk.shape))
    return walk.shape


def _pad(fixed: FixedPoint) -> Callable[[_Walk, Where, dict[str, Any]], Shape]:
    def check(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
        c, h, w = _planes(walk, where)
        ph, pw = ints(f["padding"], where, "padding", 2, 0)
        _number(f["value"], where, "value", fixed)
        shape = (c, h + 2 * ph, w + 2 * pw)
        walk.tensor(where, "padding", f["padding"], math.prod(shape), "the padded map")
        return shape
    return check


def _norm(fixed: FixedPoint) -> Callable[[_Walk, Where, dict[str, Any]], Shape]:
    def check(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
        rank = len(walk.shape)
        axes = ints(f["axes"], where, "axes", range(1, rank + 1), 0)
        if len(set(axes)) != len(axes) or any(a >= rank for a in axes):
            raise where.fail("axes", f["axes"], f"must be distinct axes of {list(walk.shape)}")
        groups = integer(f["groups"], where, "groups", 0)
        eps = _number(f["eps"], where, "eps", fixed)
        if eps < 0:
            raise where.fail("eps", f["eps"], "must not be negative")
        if groups:
            if rank != 3 or walk.shape[0] % groups:
                raise where.fail("groups", groups, f"must divide the channels of a (C, H, W) "
                                 f"map; the input is {list(walk.shape)}")
            together, count = math.prod(walk.shape) // groups, groups
        else:
            together = math.prod(walk.shape[a] for a in axes)
            count = math.prod(walk.shape) // together
        if together > L.MAX_NORMALISED:
            raise where.fail("axes", f["axes"], f"normalises {together} values together; at "
                             f"most {L.MAX_NORMALISED}")
        walk.add(where, "axes", f["axes"], comparisons=NORM_COMPARISONS * count)
        return walk.shape
    return check


def _upsample(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
    c, h, w = _planes(walk, where)
    sh, sw = ints(f["factor"], where, "factor", 2, 1)
    shape = (c, h * sh, w * sw)
    walk.tensor(where, "factor", f["factor"], math.prod(shape), "the upsampled map")
    return shape


def _relu(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
    walk.add(where, "input", list(walk.shape), comparisons=math.prod(walk.shape))
    return walk.shape


def _flatten(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
    return (math.prod(walk.shape),)


def _pool2d(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
    c, h, w = _planes(walk, where)
    kh, kw = ints(f["kernel"], where, "kernel", 2, 1)
    if kh > h or kw > w:
        raise where.fail("kernel", f["kernel"], f"is larger than the input {h}x{w}")
    stride = ints(f["stride"], where, "stride", 2, 1)
    if stride[0] > h or stride[1] > w:
        raise where.fail("stride", f["stride"], f"must be at most the input {h}x{w}")
    if f["mode"] not in ("sum", "max"):
        raise where.fail("mode", f["mode"], 'must be "sum" or "max"')
    ho, wo = (h - kh) // stride[0] + 1, (w - kw) // stride[1] + 1
    walk.tensor(where, "kernel", f["kernel"], c * ho * wo * kh * kw, "the windows")
    walk.add(where, "kernel", f["kernel"],
             comparisons=c * ho * wo * (kh * kw - 1) if f["mode"] == "max" else 0)
    return (c, ho, wo)


def _scale(fixed: FixedPoint) -> Callable[[_Walk, Where, dict[str, Any]], Shape]:
    def check(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
        factor = f["factor"]
        if not isinstance(factor, int | float) or isinstance(factor, bool) or \
                not math.isfinite(factor):
            raise where.fail("factor", factor, "must be a finite number")
        if abs(factor) >= 2 ** fixed.int_bits:
            raise where.fail("factor", factor, f"does not fit the fixed-point format "
                             f"(|factor| < 2^{fixed.int_bits})")
        return walk.shape
    return check


def _add(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
    if any(shape != walk.inputs[0] for shape in walk.inputs):
        raise where.fail("inputs", f.get("inputs"), "must all have one shape; they have "
                         f"{[list(s) for s in walk.inputs]}")
    return walk.inputs[0]


def _concat(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
    rank = len(walk.inputs[0])
    axis = integer(f["axis"], where, "axis", 0)
    if axis >= rank or any(len(s) != rank for s in walk.inputs):
        raise where.fail("axis", f["axis"], f"must be an axis of inputs of one rank; they "
                         f"have shapes {[list(s) for s in walk.inputs]}")
    rest = {s[:axis] + s[axis + 1:] for s in walk.inputs}
    if len(rest) != 1:
        raise where.fail("inputs", f.get("inputs"), f"must agree on every axis but {axis}; "
                         f"they have shapes {[list(s) for s in walk.inputs]}")
    shape = list(walk.inputs[0])
    shape[axis] = sum(s[axis] for s in walk.inputs)
    walk.tensor(where, "inputs", f.get("inputs"), math.prod(shape), "the output")
    return tuple(shape)


def _sources(entry: dict[str, Any], index: int, where: Where, arity: int) -> tuple[int, ...]:
    """The layer's `inputs` field: indices of earlier layers, or -1 for the model's input;
    () when absent (the previous layer)."""
    if "inputs" not in entry:
        if arity > 1:
            raise where.fail("inputs", None, "is missing (this layer joins several)")
        return ()
    counts = range(2, MAX_INPUTS + 1) if arity > 1 else 1
    sources = ints(entry["inputs"], where, "inputs", counts, -1)
    if any(i >= index for i in sources):
        raise where.fail("inputs", entry["inputs"], "must name earlier layers (or -1, the "
                         "model's input)")
    return sources


def _number(value: Any, where: Where, field: str, fixed: FixedPoint,
            optional: bool = False) -> float | None:
    """A finite number that fits the fixed-point format (or None when `optional`)."""
    if value is None and optional:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or \
            not math.isfinite(value) or abs(value) >= 2 ** fixed.int_bits:
        raise where.fail(field, value, "must be a finite number that fits the fixed-point "
                         f"format (|value| < 2^{fixed.int_bits})")
    return float(value)


def _activations(fixed: FixedPoint) -> dict[str, Callable[[_Walk, Where, dict[str, Any]], Shape]]:
    def leaky(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
        _number(f["slope"], where, "slope", fixed)
        walk.add(where, "input", list(walk.shape), comparisons=math.prod(walk.shape))
        return walk.shape

    def clamp(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
        low = _number(f["low"], where, "low", fixed, optional=True)
        high = _number(f["high"], where, "high", fixed, optional=True)
        if low is not None and high is not None and low > high:
            raise where.fail("low", f["low"], f"is above high ({high})")
        sides = (low is not None) + (high is not None)
        walk.add(where, "input", list(walk.shape), comparisons=sides * math.prod(walk.shape))
        return walk.shape

    def smooth(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
        if f["function"] not in L.SMOOTH:
            raise where.fail("function", f["function"], f"must be one of {sorted(L.SMOOTH)}")
        walk.add(where, "input", list(walk.shape),
                 comparisons=SMOOTH_COMPARISONS * math.prod(walk.shape))
        return walk.shape

    return {"LeakyReLU": leaky, "Clamp": clamp, "Smooth": smooth}


def _reshape(walk: _Walk, where: Where, f: dict[str, Any]) -> Shape:
    shape = ints(f["shape"], where, "shape", range(1, MAX_RANK + 1), 1)
    if math.prod(shape) != math.prod(walk.shape):
        raise where.fail("shape", f["shape"], f"holds {math.prod(shape)} values; the "
                         f"previous layer gives {math.prod(walk.shape)} ({list(walk.shape)})")
    return shape


def text(value: Any, where: Where, field: str) -> str:
    """A name or label: a string of at most `mpc.limits.MAX_NAME_LENGTH` characters."""
    if not isinstance(value, str) or len(value) > limits.MAX_NAME_LENGTH:
        raise where.fail(field, value, f"must be a string of at most "
                         f"{limits.MAX_NAME_LENGTH} characters")
    return value


def layers_of(entries: Any, input_shape: Shape, fixed: FixedPoint
              ) -> tuple[list[L.Layer], Shape, Footprint]:
    """The checked layers of a description, the output shape per example and the totals."""
    if not isinstance(entries, list) or not 1 <= len(entries) <= limits.MAX_LAYERS:
        shown = f"{len(entries)} layers" if isinstance(entries, list) else entries
        raise Where(None, None).fail("layers", shown, "must be a list of 1 to mpc.limits."
                                     f"MAX_LAYERS ({limits.MAX_LAYERS}) layers")
    checks = {"Conv2d": _conv2d, "Linear": _linear, "ReLU": _relu, "Flatten": _flatten,
              "Pool2d": _pool2d, "Scale": _scale(fixed), "Reshape": _reshape, "Add": _add,
              "Concat": _concat, "ChannelAffine": _channel_affine, "Pad": _pad(fixed),
              "Upsample": _upsample, "Norm": _norm(fixed), **_activations(fixed)}
    walk = _Walk(input_shape)
    shapes: dict[int, Shape] = {-1: input_shape}
    layers = []
    for index, entry in enumerate(entries):
        kind = entry.get("type") if isinstance(entry, dict) else None
        if not isinstance(kind, str) or kind not in KINDS:
            raise Where(index, None).fail("type", kind, f"must be one of {sorted(KINDS)}")
        where = Where(index, kind)
        name = text(entry.get("name", f"layer{index}"), where, "name")
        where = Where(index, kind, name)
        unknown = sorted(set(entry) - {"type", "name", "inputs", *FIELDS[kind]})
        if unknown:
            raise where.fail(unknown[0], entry[unknown[0]], f"is not a field of {kind}")
        missing = [key for key in FIELDS[kind] if key not in entry]
        if missing:
            raise where.fail(missing[0], None, "is missing")
        sources = _sources(entry, index, where, KINDS[kind].arity)
        walk.inputs = [shapes[i] for i in (sources or (index - 1,))]
        walk.shape = walk.inputs[0]
        walk.shape = shapes[index] = checks[kind](walk, where, entry)
        kwargs = {key: tuple(v) if isinstance(v, list) else v
                  for key, v in entry.items() if key in FIELDS[kind]}
        layers.append(KINDS[kind](name, inputs=sources, **kwargs))
    walk.add(Where(None, None), "output shape", list(walk.shape),
             comparisons=math.prod(walk.shape) - 1)  # the argmax over the logits
    return layers, walk.shape, walk.footprint()
