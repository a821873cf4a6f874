"""`nn.from_torch`: what it refuses (with a message naming the module and its position), the
fixed-point range checks, and the report it returns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randomize
from torch import nn

from nn import layers as L
from nn.errors import ModelImportError
from nn.importer import from_torch


def _refused(module: nn.Module, input_shape: tuple[int, ...], *fragments: str) -> str:
    with pytest.raises(ModelImportError) as info:
        from_torch(module, input_shape)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- unsupported modules ---------------------------------------------------------------------
@pytest.mark.parametrize("bad", [nn.Sigmoid(), nn.Tanh(), nn.GELU(), nn.LeakyReLU(),
                                 nn.Softmax(dim=1)], ids=lambda m: type(m).__name__)
def test_unsupported_activation_named_with_position(bad):
    model = nn.Sequential(nn.Linear(4, 3), bad, nn.Linear(3, 2))
    message = _refused(model, (4,), type(bad).__name__, "position 1")
    assert "unsupported" in message


def test_unsupported_recurrent_layer():
    _refused(nn.Sequential(nn.LSTM(4, 3)), (5, 4), "LSTM", "position 0")


def test_unsupported_module_in_nested_sequential_names_its_path():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Sequential(nn.Sigmoid())))
    _refused(model, (4,), "Sigmoid", "position 1.1.0")


def test_a_model_that_is_not_a_sequential_is_refused():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    _refused(Net(), (4,), "Net")


# -- unsupported parameters of supported modules ---------------------------------------------
@pytest.mark.parametrize("conv", [
    nn.Conv2d(2, 2, 3, dilation=2), nn.Conv2d(2, 2, 3, groups=2), nn.Conv1d(2, 2, 3, dilation=2),
    nn.Conv1d(2, 4, 3, groups=2)], ids=["conv2d-dilation", "conv2d-groups", "conv1d-dilation",
                                        "conv1d-groups"])
def test_dilated_or_grouped_convolution_refused(conv):
    shape = (2, 8, 8) if isinstance(conv, nn.Conv2d) else (2, 8)
    _refused(nn.Sequential(nn.ReLU(), conv), shape, type(conv).__name__, "position 1",
             "dilation")


@pytest.mark.parametrize("conv", [nn.Conv2d(1, 2, 3, padding="same"),
                                  nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")],
                         ids=["same", "reflect"])
def test_non_numeric_or_non_zero_padding_refused(conv):
    _refused(nn.Sequential(conv), (1, 6, 6), "Conv2d", "padding")


@pytest.mark.parametrize("pool", [
    nn.AvgPool2d(2, padding=1), nn.MaxPool2d(3, padding=1), nn.AvgPool1d(2, padding=1),
    nn.MaxPool1d(2, padding=1), nn.MaxPool2d(2, ceil_mode=True), nn.AvgPool2d(2, ceil_mode=True)],
    ids=["avg2d-pad", "max2d-pad", "avg1d-pad", "max1d-pad", "max-ceil", "avg-ceil"])
def test_pooling_with_padding_or_ceil_mode_refused(pool):
    shape = (1, 7, 7) if "2d" in type(pool).__name__ else (1, 7)
    _refused(nn.Sequential(pool), shape, type(pool).__name__, "position 0")


def test_dilated_max_pooling_refused():
    _refused(nn.Sequential(nn.MaxPool2d(2, dilation=2)), (1, 8, 8), "MaxPool2d", "dilat")


def test_average_pooling_with_divisor_override_refused():
    """Bug found: `divisor_override` was ignored, so the import silently divided by the window
    size where torch divides by the override (the emulator then differed from torch by
    whole units, and the import still succeeded)."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.AvgPool2d(2, divisor_override=1), nn.Flatten(),
                          nn.Linear(8, 3))
    _refused(model, (1, 4, 4), "AvgPool2d", "position 1", "divisor_override")


def test_adaptive_pooling_to_more_than_one_cell_refused():
    _refused(nn.Sequential(nn.AdaptiveAvgPool2d(2)), (1, 6, 6), "AdaptiveAvgPool2d", "size 1")
    _refused(nn.Sequential(nn.AdaptiveAvgPool1d(3)), (1, 6), "AdaptiveAvgPool1d", "size 1")


# -- batch-norm placement --------------------------------------------------------------------
def test_batchnorm_after_relu_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2))
    _refused(model, (4,), "BatchNorm1d", "position 2")


def test_input_batchnorm_before_padded_conv_refused():
    _refused(nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 2, 3, padding=1)), (1, 6, 6),
             "Conv2d", "position 1", "padding")


def test_input_batchnorm_not_followed_by_a_linear_layer_refused():
    _refused(nn.Sequential(nn.BatchNorm2d(1), nn.ReLU(), nn.Conv2d(1, 2, 3)), (1, 6, 6),
             "BatchNorm2d", "position 0")


def test_batchnorm_without_running_statistics_refused():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False))
    _refused(model, (3,), "BatchNorm1d", "running statistics")


# -- fixed-point range -----------------------------------------------------------------------
def test_weights_beyond_the_fixed_point_range_refused():
    """Weights are encoded with 31 integer bits: 2^31 does not fit."""
    model = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight[1, 2] = 2.0**31
    _refused(model, (4,), "Linear", "position 0", "fixed-point range")


def test_bias_beyond_the_fixed_point_range_refused():
    """Biases join the accumulator at scale 2^32, leaving 29 integer bits."""
    model = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        model[0].bias[0] = 1e9
    _refused(model, (4,), "Linear", "fixed-point range")


def test_activations_that_overflow_the_accumulator_refused():
    """Encodable weights (1e6 each) whose products exceed 2^61 / 2^32 ~ 5.4e8 before the
    truncation of the second layer: the import names that layer."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        for k in (0, 2):
            model[k].weight.fill_(1e6)
            model[k].bias.zero_()
    probes = np.abs(np.random.default_rng(0).normal(size=(4, 8)))
    with pytest.raises(ModelImportError, match=r"Linear at position 2.*overflows"):
        from_torch(model, (8,), probes=probes)


def test_a_model_within_range_imports():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight.fill_(1e3)
    secure, report = from_torch(model, (8,))
    assert report.agreement == 1.0 and report.probes == 8


# -- what the import produces ----------------------------------------------------------------
def test_import_report_lists_layers_and_agreement():
    model = randomize(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2),
                                    nn.Flatten(), nn.Linear(8, 3)), 0)
    secure, report = from_torch(model, (1, 6, 6), labels=("a", "b", "c"))
    names = [layer.name for layer in secure.layers]
    assert names == ["conv0", "relu1", "pool2", "flatten3", "linear4"]
    assert [name for name, _ in report.layer_errors] == names
    assert all(err < 1e-3 for _, err in report.layer_errors)
    assert report.logit_error < 1e-3 and report.agreement == 1.0
    text = report.table()
    assert all(name in text for name in names) and "100% of 8 probes" in text
    assert secure.labels == ("a", "b", "c") and secure.num_classes == 3
    assert secure.input_shape == (1, 6, 6)


def test_average_pooling_folds_into_the_next_linear_layer():
    """The pool is a plain sum and the next weights carry the 1/k (no Scale layer)."""
    model = randomize(nn.Sequential(nn.Conv2d(1, 2, 1), nn.AvgPool2d(2), nn.Flatten(),
                                    nn.Linear(8, 3)), 0)
    secure, _ = from_torch(model, (1, 4, 4))
    assert not any(isinstance(layer, L.Scale) for layer in secure.layers)
    pool = secure.layers[1]
    assert isinstance(pool, L.Pool2d) and pool.mode == "sum"
    folded = secure.fixed.decode(secure.layers[-1].weight)  # (in, out)
    expected = model[3].weight.detach().double().numpy().T / 4
    np.testing.assert_allclose(folded, expected, atol=2.0**-17)


def test_trailing_average_gets_one_rescale():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.AvgPool2d(2), nn.Flatten())
    secure, _ = from_torch(model, (1, 4, 4))
    assert isinstance(secure.layers[-1], L.Scale) and secure.layers[-1].factor == 0.25


def test_public_model_has_no_weights():
    model = randomize(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3)), 0)
    secure, _ = from_torch(model, (1, 4, 4))
    public = secure.public()
    for layer in public.layers:
        if isinstance(layer, L.Conv2d | L.Linear):
            assert layer.weight is None and layer.bias is None and layer.weight_shape
    assert secure.layers[0].weight is not None  # the owner's copy is untouched


def test_model_whose_fixed_point_labels_disagree_is_refused():
    """With 4 fractional bits, weights of 0.05 round to 0: the emulator's logits are all 0
    and its label is class 0 on every probe, where torch's labels vary. The module docstring
    promises a refusal for a model 'whose emulated label disagrees with torch's'."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.mul_(0.05)
        model[0].bias.zero_()
    with pytest.raises(ModelImportError):
        _, report = from_torch(model, (4,), frac_bits=4)
        print(report.table())  # agreement 25% of 8 probes, yet imported
