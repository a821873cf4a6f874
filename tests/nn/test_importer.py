"""`nn.from_torch`: what it refuses (with a message naming the module and its position), the
fixed-point range checks, and the report it returns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import randomize, torch_logits
from torch import nn

from experiments.models import INPUT_SHAPE, reference_cnn
from nn import layers as L
from nn.emulator import emulate
from nn.errors import ModelImportError
from nn.importer import (
    ACCUMULATOR_LIMIT,
    HEADROOM_BITS,
    MAX_FRAC_BITS,
    MIN_FRAC_BITS,
    from_torch,
)
from nn.inference import classify
from nn.plain import forward


def _refused(module: nn.Module, input_shape: tuple[int, ...], *fragments: str,
             **options) -> str:
    with pytest.raises(ModelImportError) as info:
        from_torch(module, input_shape, **options)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- unsupported modules ---------------------------------------------------------------------
@pytest.mark.parametrize("bad", [nn.ELU(), nn.Softplus(), nn.Mish(), nn.Hardswish(),
                                 nn.Softmax(dim=1)], ids=lambda m: type(m).__name__)
def test_unsupported_activation_named_with_position(bad):
    model = nn.Sequential(nn.Linear(4, 3), bad, nn.Linear(3, 2))
    message = _refused(model, (4,), type(bad).__name__, "position 1")
    assert "unsupported" in message


def test_unsupported_recurrent_layer():
    _refused(nn.Sequential(nn.LSTM(4, 3)), (5, 4), "LSTM", "position 0")


def test_unsupported_module_in_nested_sequential_names_its_path():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Sequential(nn.ELU())))
    _refused(model, (4,), "ELU", "position 1.1.0")


def test_a_module_with_its_own_forward_is_traced_not_replaced():
    """A Sequential subclass whose forward skips and reorders its children: the import
    follows forward (here: the second child only, then doubled), never the children."""
    class Net(nn.Sequential):
        def forward(self, x):
            return self[1](x) * 0 + torch.relu(self[1](x))

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return torch.relu(self.fc(x))

    plain_model, _ = from_torch(randomize(Plain(), 1), (4,))
    assert [type(layer).__name__ for layer in plain_model.layers] == ["Linear", "ReLU"]
    message = _refused(randomize(Net(nn.Linear(4, 3), nn.Linear(4, 2)), 1), (4,), "mul")
    assert "unsupported" in message


# -- unsupported parameters of supported modules ---------------------------------------------
@pytest.mark.parametrize("conv", [
    nn.Conv2d(2, 2, 3, dilation=2), nn.Conv2d(2, 2, 3, groups=2), nn.Conv1d(2, 2, 3, dilation=2),
    nn.Conv1d(2, 4, 3, groups=2)], ids=["conv2d-dilation", "conv2d-groups", "conv1d-dilation",
                                        "conv1d-groups"])
def test_dilated_or_grouped_convolution_imports_exactly(conv):
    """A grouped or dilated kernel becomes a dense one with zeros (block diagonal, spread
    taps): the same function, checked against torch in the emulator and in float."""
    shape = (2, 8, 8) if isinstance(conv, nn.Conv2d) else (2, 8)
    module = randomize(nn.Sequential(nn.ReLU(), conv), 2)
    model, report = from_torch(module, shape)
    assert report.logit_error < 1e-5 and report.agreement == 1.0
    x = np.random.default_rng(2).normal(size=(3, *shape))
    assert np.abs(forward(model, x) - torch_logits(module, x)).max() < 1e-5


@pytest.mark.parametrize("conv", [nn.Conv2d(1, 2, 4, padding="same"),
                                  nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")],
                         ids=["same-even-kernel", "reflect"])
def test_non_numeric_or_non_zero_padding_refused(conv):
    _refused(nn.Sequential(conv), (1, 6, 6), "Conv2d", "padding")


@pytest.mark.parametrize("pool", [
    nn.MaxPool2d(2, ceil_mode=True), nn.AvgPool2d(2, ceil_mode=True),
    nn.AvgPool2d(2, padding=1, count_include_pad=False)],
    ids=["max-ceil", "avg-ceil", "avg-pad-excluded"])
def test_pooling_with_ceil_mode_or_uncounted_padding_refused(pool):
    _refused(nn.Sequential(pool), (1, 7, 7), type(pool).__name__, "position 0")


@pytest.mark.parametrize("pool", [
    nn.AvgPool2d(2, padding=1), nn.MaxPool2d(3, padding=1), nn.AvgPool1d(2, padding=1),
    nn.MaxPool1d(2, padding=1)], ids=["avg2d-pad", "max2d-pad", "avg1d-pad", "max1d-pad"])
def test_pooling_with_padding_imports_exactly(pool):
    """Padding is a frame of zeros (average, counted) or of -2^31 (max): torch's result."""
    shape = (1, 7, 7) if "2d" in type(pool).__name__ else (1, 7)
    module = nn.Sequential(pool, nn.Flatten())
    model, report = from_torch(module, shape)
    x = np.random.default_rng(1).normal(size=(3, *shape)) - 2
    assert np.abs(forward(model, x) - torch_logits(module, x)).max() < 1e-9
    assert report.logit_error < 1e-5


def test_dilated_max_pooling_refused():
    _refused(nn.Sequential(nn.MaxPool2d(2, dilation=2)), (1, 8, 8), "MaxPool2d", "dilat")


def test_average_pooling_with_divisor_override_refused():
    """Bug found: `divisor_override` was ignored, so the import silently divided by the window
    size where torch divides by the override (the emulator then differed from torch by
    whole units, and the import still succeeded)."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.AvgPool2d(2, divisor_override=1), nn.Flatten(),
                          nn.Linear(8, 3))
    _refused(model, (1, 4, 4), "AvgPool2d", "position 1", "divisor_override")


def test_adaptive_pooling_to_a_size_that_does_not_divide_is_refused():
    _refused(nn.Sequential(nn.AdaptiveAvgPool2d(4)), (1, 6, 6), "AdaptiveAvgPool2d", "divide")
    _refused(nn.Sequential(nn.AdaptiveAvgPool1d(4)), (1, 6), "AdaptiveAvgPool1d", "divide")


# -- batch-norm placement --------------------------------------------------------------------
@pytest.mark.parametrize("model, shape", [
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2)), (4,)),
    (nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 2, 3, padding=1)), (1, 6, 6)),
    (nn.Sequential(nn.BatchNorm2d(1), nn.ReLU(), nn.Conv2d(1, 2, 3)), (1, 6, 6)),
    (nn.Sequential(nn.BatchNorm1d(4)), (4,))],
    ids=["after-relu", "input-before-padded-conv", "input-before-relu", "alone"])
def test_a_batchnorm_no_neighbour_absorbs_is_a_channel_affine_layer(model, shape):
    """Where a batch-norm cannot fold (after a ReLU, on the input before a padded
    convolution or a ReLU, alone), it stays Bob's private
    per-channel affine map: the same function as torch's."""
    module = randomize(model, 3)
    secure, report = from_torch(module, shape)
    assert any(isinstance(layer, L.ChannelAffine) for layer in secure.layers)
    assert report.logit_error < 1e-5 and report.agreement == 1.0
    x = np.random.default_rng(3).normal(size=(4, *shape))
    assert np.abs(forward(secure, x) - torch_logits(module, x)).max() < 1e-5


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
    """Biases join the accumulator at scale 2^32, leaving 29 integer bits (at the 16
    fractional bits given here; with the precision chosen, see
    `test_a_large_bias_gets_fewer_fractional_bits`)."""
    model = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        model[0].bias[0] = 1e9
    _refused(model, (4,), "Linear", "fixed-point range", frac_bits=16)


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


class _FourBranches(nn.Module):
    """A residual-style sum of four copies of a linear layer's output, then a ReLU."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)
        with torch.no_grad():
            self.linear.weight.fill_(weight)
            self.linear.bias.zero_()

    def forward(self, x):
        y = self.linear(x)
        return torch.relu(y + y + y + y)


def test_compared_values_beyond_the_comparison_width_refused():
    """At 16 fractional bits the comparisons hold [-2^47, 2^47) (`comparison_bits`): a sum
    4 * 2^28 * 1.5 ~ 2^30.6, whose difference with another needs 2^(31.6 + 16), is refused,
    naming the layer, although each accumulator (2^28.6 at scale 2^32 = 2^60.6) fits."""
    probes = np.full((2, 1), 1.5)
    with pytest.raises(ModelImportError, match=r"reaches .* comparisons hold differences"):
        from_torch(_FourBranches(2.0**28), (1,), probes=probes, frac_bits=16)
    model, _ = from_torch(_FourBranches(2.0**26), (1,), probes=probes, frac_bits=16)
    assert L.comparison_bits(model.fixed.frac_bits) == 47


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


# -- the precision chosen per model ----------------------------------------------------------
# The reference CNN with seeded N(0, 1/fan_in) weights (`randomize`): folding the pools' 1/4
# into the next weights costs them two bits, so at 16 fractional bits its logits are off by
# 1.3e-3 on these inputs; the importer chooses 24 (MAX_FRAC_BITS), 3.6e-6.
REFERENCE_ERROR = 2e-4
# The secure logits differ from the emulator's by the truncations' floor-or-one-more only:
# measured at most 3 units of 2^-24 (1.8e-7) over 10 clips under `replicated`; allowed 32
# units of 2^-f, ten times that.
TRUNCATION_ULPS = 32


def _accumulator_peaks(module: nn.Module, probes: np.ndarray) -> dict[int, float]:
    """torch's peak |output| of every top-level Conv / Linear module on `probes`."""
    peaks: dict[int, float] = {}
    hooks = [m.register_forward_hook(
        lambda _m, _i, out, k=k: peaks.__setitem__(k, float(out.abs().max())))
        for k, m in enumerate(module) if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            module(torch.as_tensor(probes, dtype=torch.float32))
    finally:
        for hook in hooks:
            hook.remove()
    return peaks


def _fits(peak: float, f: int) -> bool:
    """The choice's rule: the accumulator HEADROOM_BITS clear of the limit at f bits."""
    return peak * 2.0 ** (2 * f) < ACCUMULATOR_LIMIT / 2.0**HEADROOM_BITS


@pytest.fixture(scope="module")
def reference():
    """The reference CNN (seeded random weights) imported with the chosen precision and
    with 16 fractional bits, 4 seeded inputs and torch's float64 logits on them."""
    module = randomize(reference_cnn(8), 0)
    chosen = from_torch(module, INPUT_SHAPE)
    sixteen = from_torch(module, INPUT_SHAPE, frac_bits=16)
    features = np.random.default_rng(1).normal(size=(4, *INPUT_SHAPE))
    return module, chosen, sixteen, features, torch_logits(module, features)


def test_the_reference_cnn_gets_more_fractional_bits_and_a_smaller_error(reference):
    _, (model, report), _, features, ref = reference
    assert model.fixed.frac_bits > 16
    assert (report.frac_bits, report.int_bits) == (model.fixed.frac_bits, model.fixed.int_bits)
    assert report.headroom_bits >= HEADROOM_BITS and report.bound_by
    text = report.table()
    assert f"{report.frac_bits} fractional bits" in text and report.bound_by in text
    assert f"headroom: {report.headroom_bits:.1f} bits" in text
    error = np.abs(emulate(model, features)[0] - ref).max()
    assert error <= REFERENCE_ERROR, (model.fixed, error)


def test_sixteen_fractional_bits_given_keep_the_old_precision(reference):
    """The same model at the old default: the choice is what makes the error small."""
    _, _, (model, report), features, ref = reference
    assert (model.fixed.frac_bits, model.fixed.int_bits) == (16, 31)
    assert report.frac_bits == 16 and report.bound_by == ""
    assert "frac_bits given" in report.table()
    error = np.abs(emulate(model, features)[0] - ref).max()
    assert error > REFERENCE_ERROR, error


def test_secure_logits_at_the_chosen_precision_are_within_the_error(reference):
    _, (model, _), _, features, ref = reference
    emulated = emulate(model, features[:2])[0]
    result = classify(model, features[:2], scheme="replicated", reveal_logits=True)
    allowance = TRUNCATION_ULPS * 2.0**-model.fixed.frac_bits
    assert np.abs(result.logits - emulated).max() <= allowance
    assert np.abs(result.logits - ref[:2]).max() <= REFERENCE_ERROR + allowance
    np.testing.assert_array_equal(result.labels, ref[:2].argmax(axis=1))


def _scaled(factor: float) -> nn.Sequential:
    """A small CNN without biases (so its outputs scale with its inputs) whose linear
    layer's weights are multiplied by `factor`."""
    module = randomize(nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(),
                                     nn.AvgPool2d(2), nn.Flatten(),
                                     nn.Linear(4 * 3 * 3, 3, bias=False)), 2)
    with torch.no_grad():
        module[4].weight.mul_(factor)
    return module


def test_larger_activations_get_fewer_fractional_bits_with_the_headroom_kept():
    probes = np.random.default_rng(5).normal(size=(8, 1, 8, 8))
    plain, _ = from_torch(_scaled(1.0), (1, 8, 8), probes=probes)
    module = _scaled(1e4)
    model, report = from_torch(module, (1, 8, 8), probes=probes)
    f = model.fixed.frac_bits
    assert MIN_FRAC_BITS <= f < plain.fixed.frac_bits
    peaks = _accumulator_peaks(module, probes)
    assert all(_fits(peak, f) for peak in peaks.values())  # the stated headroom, at f
    assert not _fits(peaks[4], f + 1)  # the largest f: one more bit would eat into it
    assert "Linear at position 4" in report.bound_by
    assert report.headroom_bits == pytest.approx(
        math.log2(ACCUMULATOR_LIMIT / (max(peaks.values()) * 2.0 ** (2 * f))))
    # inputs 2^HEADROOM_BITS / 2 times larger than the probes still come out right
    big = probes * 2.0 ** (HEADROOM_BITS - 1)
    ref = torch_logits(module, big)
    np.testing.assert_allclose(emulate(model, big)[0], ref, rtol=1e-4,
                               atol=1e-4 * np.abs(ref).max())
    # the precision chosen for the unscaled model overflows this one
    with pytest.raises(ModelImportError, match=r"Linear at position 4.*overflows"):
        from_torch(module, (1, 8, 8), probes=probes, frac_bits=MAX_FRAC_BITS)


def test_a_large_bias_gets_fewer_fractional_bits():
    """The model refused at 16 fractional bits (its bias does not fit at scale 2^32) imports
    with the precision chosen: the accumulator it joins bounds f."""
    model = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        model[0].bias[0] = 1e9
    secure, report = from_torch(model, (4,))
    assert MIN_FRAC_BITS <= secure.fixed.frac_bits < 16
    assert "Linear at position 0" in report.bound_by and "accumulator" in report.bound_by
    assert report.headroom_bits >= HEADROOM_BITS and report.agreement == 1.0


def test_a_range_no_precision_holds_is_refused_naming_the_layer_and_its_peak():
    """Accumulators of about 1e12 need 2^(2f) < 2^53 / 1e12: f < 6, below MIN_FRAC_BITS."""
    module = randomize(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(8, 3)), 3)
    with torch.no_grad():
        module[0].weight.mul_(1e6)
        module[3].weight.mul_(1e6)
    probes = np.random.default_rng(0).normal(size=(4, 1, 4, 4))
    peak = _accumulator_peaks(module, probes)[3]
    assert not _fits(peak, MIN_FRAC_BITS) and _fits(_accumulator_peaks(module, probes)[0],
                                                    MIN_FRAC_BITS)
    with pytest.raises(ModelImportError) as info:
        from_torch(module, (1, 4, 4), probes=probes)
    message = str(info.value)
    assert "Linear at position 3" in message and f"{peak:.3g}" in message, message
    assert f"{MIN_FRAC_BITS} fractional bits" in message, message


def test_the_choice_does_not_depend_on_the_check():
    """Without the check torch still runs on the probes to choose: the same model either way
    (the deployment loads models with check=False)."""
    module = randomize(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2),
                                     nn.Flatten(), nn.Linear(8, 3)), 0)
    with torch.no_grad():
        module[4].weight.mul_(1e3)
    checked, report = from_torch(module, (1, 6, 6))
    unchecked, none = from_torch(module, (1, 6, 6), check=False)
    assert none is None and report.frac_bits < MAX_FRAC_BITS
    assert unchecked.fixed == checked.fixed
    for a, b in zip(checked.layers, unchecked.layers, strict=True):
        assert type(a) is type(b)
        if isinstance(a, L.Conv2d | L.Linear):
            assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
