"""Model descriptions from a peer: every field checked, the totals bounded, nothing allocated."""

from __future__ import annotations

import copy
import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from experiments.modelfile import BUNDLED_MODEL, load_model
from experiments.models import INPUT_SHAPE, reference_cnn
from mpc import limits
from mpc.errors import ConfigError
from nn.describe import checked, describe, from_description
from nn.errors import ModelDescriptionError
from nn.footprint import Footprint
from nn.importer import from_torch

Doc = dict[str, Any]
HUGE = 2 ** 40


@pytest.fixture(scope="module")
def bundled() -> Doc:
    """The bundled model's description, as a peer would receive it (through JSON)."""
    return json.loads(json.dumps(describe(load_model(BUNDLED_MODEL).secure)))


def _conv(cout: int, cin: int, k: int, padding: int = 0) -> Doc:
    return {"type": "Conv2d", "name": f"conv{cout}x{cin}", "weight_shape": [cout, cin, k, k],
            "bias_shape": [cout], "stride": [1, 1], "padding": [padding, padding]}


def _refused(doc: Doc, layer: int | None, field: str) -> ModelDescriptionError:
    with pytest.raises(ModelDescriptionError) as caught:
        from_description(doc)
    error = caught.value
    assert isinstance(error, ConfigError)  # what a role reports for a bad peer document
    assert (error.layer, error.field) == (layer, field), str(error)
    assert field in str(error)
    assert len(str(error)) < 400  # a peer's huge value is shown shortened
    if layer is not None:
        assert f"layer {layer} " in str(error)
    return error


def _set(layer: int, **fields: Any) -> Callable[[Doc], None]:
    return lambda doc: doc["layers"][layer].update(fields)


# layer 0: Conv2d 8x1x5x5 on 1x40x350; 2: Pool2d 2x2 on 8x36x346; 3: Conv2d 16x8x5x5;
# 6: Flatten; 7: Linear 9408 -> 64; 9: Linear 64 -> 6.
FIELD_CASES = {
    "stride 0": (_set(0, stride=[0, 1]), 0, "stride", "0 is below 1"),
    "padding 2^40": (_set(0, padding=[HUGE, HUGE]), 0, "padding", str(HUGE)),
    "padding 2^40 with a larger kernel": (
        _set(0, padding=[HUGE, HUGE], weight_shape=[8, 1, 2 * HUGE, 2 * HUGE]), 0, "padding",
        "MAX_ACTIVATION"),
    "padding as large as the kernel": (_set(0, padding=[5, 0]), 0, "padding", "kernel 5x5"),
    "negative padding": (_set(0, padding=[-1, 0]), 0, "padding", "-1 is below 0"),
    "negative channels": (_set(3, weight_shape=[-16, 8, 5, 5]), 3, "weight_shape", "-16"),
    "zero kernel": (_set(3, weight_shape=[16, 8, 0, 5]), 3, "weight_shape", "0 is below 1"),
    "float stride": (_set(0, stride=[1.5, 1]), 0, "stride", "1.5 is not an integer"),
    "bool stride": (_set(0, stride=[True, 1]), 0, "stride", "True is not an integer"),
    "string kernel": (_set(2, kernel=[2, "2"]), 2, "kernel", "'2' is not an integer"),
    "three strides": (_set(2, stride=[2, 2, 2]), 2, "stride", "list of 2 integers"),
    "weight shape not a list": (_set(7, weight_shape="9408x64"), 7, "weight_shape", "9408x64"),
    "mismatched conv channels": (_set(3, weight_shape=[16, 4, 5, 5]), 3, "weight_shape",
                                 "previous layer gives 8"),
    "mismatched linear inputs": (_set(7, weight_shape=[9000, 64]), 7, "weight_shape",
                                 "previous layer gives 9408"),
    "mismatched bias": (_set(0, bias_shape=[7]), 0, "bias_shape", "[8]"),
    "kernel larger than the input": (_set(0, weight_shape=[8, 1, 41, 5]), 0, "weight_shape",
                                     "larger than the padded input 40x350"),
    "pool larger than the input": (_set(2, kernel=[37, 2]), 2, "kernel", "36x346"),
    "pool stride beyond the input": (_set(2, stride=[2, HUGE]), 2, "stride", "36x346"),
    "pool mode": (_set(2, mode="avg"), 2, "mode", "'avg'"),
    "unknown field": (_set(2, dilation=[2, 2]), 2, "dilation", "not a field"),
    "missing field": (lambda d: d["layers"][0].pop("stride"), 0, "stride", "missing"),
    "unknown type": (_set(1, type="Sigmoid"), 1, "type", "'Sigmoid'"),
    "type a list": (_set(1, type=["ReLU"]), 1, "type", "['ReLU']"),
    "a million-entry shape": (_set(7, weight_shape=list(range(10 ** 6))), 7, "weight_shape",
                              "list of 2 integers"),
    "long name": (_set(1, name="x" * 1000), 1, "name", "128"),
    "linear on a map": (lambda d: d["layers"].pop(6), 6, "input", "flat input"),
    "conv on a flat input": (lambda d: d["layers"].insert(7, _conv(8, 1, 5)), 7, "input",
                             "(channels, height, width)"),
    "reshape to another size": (lambda d: d["layers"].insert(6, {
        "type": "Reshape", "name": "r", "shape": [16, 7, 85]}), 6, "shape", "9408"),
    "scale NaN": (lambda d: d["layers"].append({"type": "Scale", "name": "s",
                                                "factor": float("nan")}), 10, "factor",
                  "finite"),
    "scale out of range": (lambda d: d["layers"].append({"type": "Scale", "name": "s",
                                                         "factor": 1e300}), 10, "factor",
                           "fixed-point"),
    "zero input dimension": (lambda d: d.update(input_shape=[0, 40, 350]), None,
                             "input_shape", "0 is below 1"),
    "input too large": (lambda d: d.update(input_shape=[1, HUGE, HUGE]), None, "input_shape",
                        "MAX_ACTIVATION"),
    "frac bits a string": (lambda d: d.update(frac_bits="16"), None, "frac_bits", "'16'"),
    "fixed point too wide": (lambda d: d.update(frac_bits=40), None, "frac_bits, int_bits",
                             "62"),
    "labels for other outputs": (lambda d: d.update(labels=["a"]), None, "labels",
                                 "1 labels for 6 outputs"),
    "unknown top-level field": (lambda d: d.update(weights=[1, 2]), None, "weights",
                                "not a field"),
    "no layers": (lambda d: d.update(layers=[]), None, "layers", "must be a list of 1 to"),
    "wrong format": (lambda d: d.update(format="sottovoce-model/2"), None, "format",
                     "sottovoce-model/1"),
}


@pytest.mark.parametrize("case", FIELD_CASES, ids=list(FIELD_CASES))
def test_a_field_out_of_range_is_refused_naming_layer_and_field(bundled: Doc, case: str
                                                                ) -> None:
    mutate, layer, field, detail = FIELD_CASES[case]
    doc = copy.deepcopy(bundled)
    mutate(doc)
    error = _refused(doc, layer, field)
    assert detail in str(error)


def _linear(n_in: int, n_out: int) -> Doc:
    return {"type": "Linear", "name": "fc", "weight_shape": [n_in, n_out], "bias_shape": [n_out]}


RELU = {"type": "ReLU", "name": "relu"}
TOTAL_CASES = {
    # 9408 x 1000 weights and 1000 biases: 9.4 M parameters
    "parameters": (lambda d: d["layers"][7].update(weight_shape=[9408, 1000],
                                                   bias_shape=[1000]),
                   7, "weight_shape", "MAX_PARAMETERS"),
    # 200 maps of 36 x 346: 2.5 M elements per example
    "activation": (lambda d: d["layers"][0].update(weight_shape=[200, 1, 5, 5],
                                                   bias_shape=[200]),
                   0, "weight_shape", "MAX_ACTIVATION"),
    # 128 maps of 36 x 346 through a 1x1 convolution of 128 x 128: 204 M multiply-adds
    "multiply-adds": (lambda d: d.update(layers=[_conv(128, 1, 5), _conv(128, 128, 1)]),
                      1, "weight_shape", "MAX_MULTIPLY_ADDS"),
    # two ReLUs over 64 maps of 36 x 346: 1.6 M comparisons
    "comparisons": (lambda d: d.update(layers=[_conv(64, 1, 5), RELU, RELU]), 2, "input",
                    "MAX_COMPARISONS"),
    "layers": (lambda d: d.update(layers=[RELU] * (limits.MAX_LAYERS + 1)), None, "layers",
               "MAX_LAYERS"),
    "the final argmax": (lambda d: d.update(layers=[_linear(4, 2 ** 20 + 2)],
                                            input_shape=[4]), None, "output shape",
                         "MAX_COMPARISONS"),
}


@pytest.mark.parametrize("case", TOTAL_CASES, ids=list(TOTAL_CASES))
def test_totals_above_a_limit_are_refused(bundled: Doc, case: str) -> None:
    mutate, layer, field, limit = TOTAL_CASES[case]
    doc = copy.deepcopy(bundled)
    mutate(doc)
    error = _refused(doc, layer, field)
    assert f"mpc.limits.{limit} ({getattr(limits, limit)})" in str(error)


@pytest.mark.parametrize("mutate", [
    _set(0, padding=[HUGE, HUGE], weight_shape=[8, 1, 2 * HUGE, 2 * HUGE]),
    _set(7, weight_shape=[9408, HUGE], bias_shape=[HUGE]),
    lambda d: d.update(input_shape=[1, HUGE, HUGE]),
    _set(0, stride=[0, 0]),
], ids=["padding", "linear", "input", "stride"])
def test_a_huge_description_is_refused_without_allocating(bundled: Doc, mutate) -> None:
    doc = copy.deepcopy(bundled)
    mutate(doc)
    tracemalloc.start()
    try:
        with pytest.raises(ModelDescriptionError):
            from_description(doc)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2 ** 20  # bytes: nothing sized from the description


@pytest.mark.parametrize("num_classes", [2, 6, 35])
def test_reference_models_round_trip_within_the_limits(num_classes: int) -> None:
    model, _ = from_torch(reference_cnn(num_classes), INPUT_SHAPE, check=False,
                          labels=tuple(f"c{k}" for k in range(num_classes)))
    doc = json.loads(json.dumps(describe(model)))
    back = from_description(doc)
    assert back.layers == model.public().layers
    assert (back.input_shape, back.fixed, back.labels) == (model.input_shape, model.fixed,
                                                           model.labels)
    assert describe(back) == doc


def test_the_bundled_model_round_trips(bundled: Doc) -> None:
    model = load_model(BUNDLED_MODEL).secure
    back = from_description(bundled)
    assert back.layers == model.public().layers and back.labels == model.labels
    assert describe(back) == bundled


def test_reference_figures_and_margins(bundled: Doc) -> None:
    """The figures mpc.limits states, and the margins it claims over them."""
    _, footprint = checked(bundled)
    assert footprint == Footprint(parameters=605_990, activation=473_200,
                                  multiply_adds=10_664_896, comparisons=137_573)
    assert len(bundled["layers"]) == 10
    assert limits.MAX_LAYERS >= 6 * 10
    assert limits.MAX_PARAMETERS >= 13 * footprint.parameters
    assert limits.MAX_ACTIVATION >= 4 * footprint.activation
    assert limits.MAX_MULTIPLY_ADDS >= 12 * footprint.multiply_adds
    assert limits.MAX_COMPARISONS >= 7 * footprint.comparisons
    assert all(len(layer["name"]) <= limits.MAX_NAME_LENGTH for layer in bundled["layers"])


def test_small_imported_models_round_trip() -> None:
    """1-D layers, max pooling, global averages and a final rescale, as the importer makes
    them, are all within the checks."""
    from torch import nn

    one_d = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool1d(3, stride=2),
                          nn.Conv1d(8, 8, 3, stride=2), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                          nn.Linear(8, 3))
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3, padding=2), nn.ReLU(), nn.AvgPool2d(2),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for module, shape in ((one_d, (4, 50)), (pooled, (1, 9, 9))):
        model, _ = from_torch(module, shape, check=False)
        doc = json.loads(json.dumps(describe(model)))
        assert from_description(doc).layers == model.public().layers


def _graph_document() -> Doc:
    """The description of a traced graph with every layer kind the importer makes."""
    import torch
    import torch.nn.functional as F
    from conftest import randomize
    from torch import nn

    class Every(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.norm = nn.BatchNorm2d(2)
            self.fc = nn.Linear(4 * 4 * 4, 3)

        def forward(self, x):
            y = self.norm(F.leaky_relu(self.conv(x), 0.2))
            y = torch.cat([torch.sigmoid(y), F.hardtanh(y + torch.relu(y))], dim=1)
            return self.fc(F.avg_pool2d(y, 2).flatten(1))

    model, _ = from_torch(randomize(Every(), 9), (1, 8, 8), check=False)
    return json.loads(json.dumps(describe(model)))


def test_a_graph_with_every_layer_kind_round_trips() -> None:
    document = _graph_document()
    kinds = {entry["type"] for entry in document["layers"]}
    assert {"Add", "Concat", "LeakyReLU", "Clamp", "Smooth", "ChannelAffine"} <= kinds
    assert any("inputs" in entry for entry in document["layers"])
    assert describe(from_description(document)) == document


@pytest.mark.parametrize("inputs, why", [
    ([5, 5], "must name earlier layers"), ([-2, 0], "is below -1"), ([0], "list of 2 to 8"),
    ("0", "must be a list")])
def test_a_layer_reading_a_later_or_missing_layer_is_refused(inputs, why) -> None:
    document = _graph_document()
    join = next(k for k, e in enumerate(document["layers"]) if e["type"] == "Add")
    document["layers"][join]["inputs"] = inputs
    with pytest.raises(ModelDescriptionError, match=why) as info:
        from_description(document)
    assert info.value.layer == join and info.value.field == "inputs"


def test_joined_shapes_that_disagree_are_refused() -> None:
    document = _graph_document()
    join = next(k for k, e in enumerate(document["layers"]) if e["type"] == "Add")
    document["layers"][join]["inputs"] = [-1, join - 1]  # the model input and a 2-channel map
    with pytest.raises(ModelDescriptionError, match="must all have one shape"):
        from_description(document)
