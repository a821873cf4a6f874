"""The public description of a model: architecture, shapes, fixed point, labels; no weights.

The model owner sends it to every other role as JSON, so no party ever unpickles anything
another party sent; `from_description` validates every field.
"""

from __future__ import annotations

import math
from typing import Any

from mpc import limits
from mpc.fixedpoint import FixedPoint
from nn.footprint import FIELDS as _FIELDS
from nn.footprint import MAX_RANK, Footprint, Where, integer, ints, layers_of, text
from nn.model import SecureModel

FORMAT = "sottovoce-model/1"
_KEYS = ("format", "input_shape", "frac_bits", "int_bits", "labels", "layers", "output")
OUTPUTS = ("logits", "softmax", "log_softmax")


def describe(model: SecureModel) -> dict[str, Any]:
    """The model's public description as JSON-ready data (no weights), for the owner to send
    to the other roles; `from_description` reads it back."""
    layers = []
    for layer in model.layers:
        kind = type(layer).__name__
        entry = {"type": kind, "name": layer.name}
        if layer.inputs:
            entry["inputs"] = list(layer.inputs)
        for key in _FIELDS[kind]:
            value = getattr(layer, key)
            entry[key] = list(value) if isinstance(value, tuple) else value
        layers.append(entry)
    return {"format": "sottovoce-model/1", "input_shape": list(model.input_shape),
            "frac_bits": model.fixed.frac_bits, "int_bits": model.fixed.int_bits,
            "labels": list(model.labels), "layers": layers,
            **({"output": model.output} if model.output != "logits" else {})}


def checked(data: Any) -> tuple[SecureModel, Footprint]:
    """A public SecureModel (no weights) from `describe`'s output and its footprint; every
    field is checked, and the totals against `mpc.limits`, before any array exists."""
    top = Where(None, None)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise top.fail("format", data.get("format") if isinstance(data, dict) else data,
                       f"not a {FORMAT} document")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise top.fail(unknown[0], data[unknown[0]], "is not a field of a model description")
    for key in ("frac_bits", "int_bits"):
        integer(data.get(key), top, key, 0)
    try:
        fixed = FixedPoint(frac_bits=data["frac_bits"], int_bits=data["int_bits"])
    except ValueError as exc:
        raise top.fail("frac_bits, int_bits", [data["frac_bits"], data["int_bits"]],
                       f"not a fixed-point format ({exc})") from None
    shape = ints(data.get("input_shape"), top, "input_shape", range(1, MAX_RANK + 1), 1)
    if math.prod(shape) > limits.MAX_ACTIVATION:
        raise top.fail("input_shape", list(shape), f"{math.prod(shape)} values per example "
                       f"is above mpc.limits.MAX_ACTIVATION ({limits.MAX_ACTIVATION})")
    layers, out, footprint = layers_of(data.get("layers"), shape, fixed)
    labels = data.get("labels", [])
    if not isinstance(labels, list):
        raise top.fail("labels", labels, "must be a list of strings")
    if labels and len(labels) != math.prod(out):
        raise top.fail("labels", labels, f"{len(labels)} labels for {math.prod(out)} outputs")
    labels = [text(label, top, "labels") for label in labels]
    output = data.get("output", "logits")
    if output not in OUTPUTS:
        raise top.fail("output", output, f"must be one of {list(OUTPUTS)}")
    return SecureModel(layers, shape, fixed, tuple(labels), output=output), footprint


def from_description(data: Any) -> SecureModel:
    """A public SecureModel (no weights) from `describe`'s output, checked field by field
    (`ModelDescriptionError`, a `ConfigError`, names the layer, the field and the value)."""
    return checked(data)[0]
