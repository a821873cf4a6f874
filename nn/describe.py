"""The public description of a model: architecture, shapes, fixed point, labels; no weights.

The model owner sends it to every other role as JSON, so no party ever unpickles anything
another party sent; `from_description` validates every field.
"""

from __future__ import annotations

from typing import Any

from mpc.errors import ConfigError
from mpc.fixedpoint import FixedPoint
from nn import layers as L
from nn.model import SecureModel

_KINDS = {"Conv2d": L.Conv2d, "Linear": L.Linear, "ReLU": L.ReLU, "Flatten": L.Flatten,
          "Pool2d": L.Pool2d, "Scale": L.Scale, "Reshape": L.Reshape}
_FIELDS = {"Conv2d": ("weight_shape", "bias_shape", "stride", "padding"),
           "Linear": ("weight_shape", "bias_shape"), "ReLU": (), "Flatten": (),
           "Pool2d": ("kernel", "stride", "mode"), "Scale": ("factor",), "Reshape": ("shape",)}


def describe(model: SecureModel) -> dict[str, Any]:
    layers = []
    for layer in model.layers:
        kind = type(layer).__name__
        entry = {"type": kind, "name": layer.name}
        for key in _FIELDS[kind]:
            value = getattr(layer, key)
            entry[key] = list(value) if isinstance(value, tuple) else value
        layers.append(entry)
    return {"format": "sottovoce-model/1", "input_shape": list(model.input_shape),
            "frac_bits": model.fixed.frac_bits, "int_bits": model.fixed.int_bits,
            "labels": list(model.labels), "layers": layers}


def _ints(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise ConfigError(f"model description: {where} must be a list of non-negative integers")
    return tuple(value)


def from_description(data: Any) -> SecureModel:
    """A public SecureModel (no weights) from `describe`'s output, checked field by field."""
    if not isinstance(data, dict) or data.get("format") != "sottovoce-model/1":
        raise ConfigError("model description: not a sottovoce-model/1 document")
    layers = []
    for index, entry in enumerate(data.get("layers", [])):
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind not in _KINDS:
            raise ConfigError(f"model description: layer {index} has unknown type {kind!r}")
        kwargs: dict[str, Any] = {}
        for key in _FIELDS[kind]:
            if key not in entry:
                raise ConfigError(f"model description: layer {index} ({kind}) lacks {key}")
            value = entry[key]
            if key == "mode":
                if value not in ("sum", "max"):
                    raise ConfigError(f"model description: layer {index} mode {value!r}")
            elif key == "factor":
                if not isinstance(value, int | float):
                    raise ConfigError(f"model description: layer {index} factor {value!r}")
            else:
                value = _ints(value, f"layer {index} {key}")
            kwargs[key] = value
        layers.append(_KINDS[kind](str(entry.get("name", f"layer{index}")), **kwargs))
    if not layers:
        raise ConfigError("model description: no layers")
    try:
        fixed = FixedPoint(frac_bits=data["frac_bits"], int_bits=data["int_bits"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"model description: bad fixed-point format ({exc})") from None
    labels = data.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ConfigError("model description: labels must be a list of strings")
    return SecureModel(layers, _ints(data.get("input_shape"), "input_shape"), fixed,
                       tuple(labels))
