"""Import of any module torch.fx can trace (`nn.tracing`, `nn.convert`): custom forward,
functional calls, residual adds, concatenation, reshapes, means, a final softmax; each
traced model gives torch's labels under every scheme, and what cannot be imported is named
with its line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import every_scheme_once, randomize, torch_logits
from torch import nn

from nn import graph
from nn import layers as L
from nn.describe import describe, from_description
from nn.errors import ModelImportError
from nn.importer import from_torch
from nn.inference import classify
from nn.plain import forward

#: |secure logits - float64 torch| for these small models at the chosen precision (f = 24
#: for all of them): the emulator's error is below 1e-5, probabilistic truncation adds a few
#: 2^-24 per layer; the bound leaves two orders of magnitude.
LOGIT_BOUND = 1e-3


class Residual(nn.Module):
    """Residual block, a pooled branch joined by concat, a global mean, a final softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.inner = nn.Sequential(nn.Conv2d(4, 4, 3, padding="same"), nn.ReLU(),
                                   nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.relu(x + self.inner(x))
        x = F.avg_pool2d(x, 2)
        x = torch.cat([x, F.max_pool2d(x, kernel_size=1)], dim=1)
        x = x.mean(dim=(2, 3))
        return F.softmax(self.head(x.view(x.size(0), -1)), dim=1)


class Mixed(nn.Module):
    """Values of different scales meet: an average-pooled map added to a max-pooled one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 3 * 3, 2)

    def forward(self, x):
        y = self.conv(x)
        joined = nn.functional.avg_pool2d(y, 2) + F.max_pool2d(y, 2)
        return self.fc(torch.flatten(joined, 1))


class Wave(nn.Module):
    """A 1-D model on a (channels, samples) input, with a residual and adaptive pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(2, 4, 5, stride=2)
        self.b = nn.Conv1d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool1d(2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.a(x))
        x = F.max_pool1d(x + self.b(x), 2)
        return self.fc(self.pool(x).flatten(1))


MODELS = {"residual": (Residual, (1, 8, 8)), "mixed-scales": (Mixed, (1, 8, 8)),
          "wave": (Wave, (2, 36))}


def _imported(name: str, seed: int = 3):
    make, shape = MODELS[name]
    module = randomize(make(), seed)
    model, report = from_torch(module, shape)
    features = np.random.default_rng(seed).normal(size=(3, *shape))
    return module, model, report, features


def _secure_matches_torch(module: nn.Module, shape: tuple[int, ...], scheme: str,
                          n_parties: int, seed: int, offset: float = 0.0) -> None:
    """Import `module`, classify 3 seeded inputs (normal, plus `offset`) under `scheme`:
    logits within LOGIT_BOUND of float64 torch, and torch's labels."""
    model, _ = from_torch(module, shape)
    features = np.random.default_rng(seed).normal(size=(3, *shape)) + offset
    expected = torch_logits(module, features)
    result = classify(model, features, scheme=scheme, n_parties=n_parties, reveal_logits=True)
    assert np.abs(result.logits - expected).max() < LOGIT_BOUND
    assert np.array_equal(result.labels, expected.argmax(axis=1))


@pytest.mark.parametrize("name", MODELS)
def test_a_traced_model_matches_torch_in_the_emulator_and_the_float_reference(name) -> None:
    module, model, report, features = _imported(name)
    assert report.agreement == 1.0 and report.logit_error < 1e-5, report.table()
    expected = torch_logits(module, features)
    if name == "residual":  # the final softmax is dropped: logits are its input
        assert not graph.is_chain(model.layers) and model.output == "softmax"
        assert describe(from_description(describe(model))) == describe(model)
        assert np.array_equal(forward(model, features).argmax(1), expected.argmax(1))
    else:
        assert np.abs(forward(model, features) - expected).max() < 1e-5


def test_branches_of_different_scales_are_rescaled_before_they_meet() -> None:
    _, model, _, _ = _imported("mixed-scales")
    kinds = [type(layer).__name__ for layer in model.layers]
    add = kinds.index("Add")
    sources = model.layers[add].inputs
    assert any(isinstance(model.layers[i], L.Scale) for i in sources), kinds


@every_scheme_once
@pytest.mark.parametrize("name", MODELS)
def test_a_traced_model_gives_torchs_labels_under_every_scheme(scheme, n_parties, name) -> None:
    module, model, _, features = _imported(name)
    result = classify(model, features, scheme=scheme, n_parties=n_parties,
                      reveal_logits=True)
    expected = torch_logits(module, features)
    # the residual model ends with a softmax, dropped at import: the client applies it to
    # the revealed logits (`probabilities`), which gives torch's output
    assert np.abs(result.probabilities - expected).max() < LOGIT_BOUND
    assert (result.output == "softmax") == (name == "residual")
    assert np.array_equal(result.labels, expected.argmax(axis=1))


def test_forward_that_branches_on_values_is_refused_naming_the_line() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return self.fc(x)
            return self.fc(-x)

    with pytest.raises(ModelImportError) as info:
        from_torch(Branchy(), (4,))
    message = str(info.value)
    assert "Branchy: torch.fx cannot trace its forward at test_tracing.py:" in message
    assert "if x.sum() > 0" in message and "no `if` or loop on tensor values" in message


def test_a_wrong_input_shape_is_reported_at_the_layer_that_cannot_take_it() -> None:
    with pytest.raises(ModelImportError) as info:
        from_torch(randomize(Mixed(), 0), (1, 12, 12))
    assert str(info.value).startswith(
        "Mixed: with inputs of shape (1, 12, 12) per example, Linear at position fc "
        "(test_tracing.py:")
    assert "receives (50,) and fails: mat1 and mat2 shapes cannot be multiplied" in str(
        info.value)
    with pytest.raises(ModelImportError, match=r"Conv2d at position 0 receives \(2, 8, 8\) "
                       "and fails: .*expected input.* to have 1 channels"):
        from_torch(nn.Sequential(nn.Conv2d(1, 2, 3)), (2, 8, 8))


def test_linear_on_a_map_and_an_op_on_the_batch_axis_are_named() -> None:
    with pytest.raises(ModelImportError, match="Linear at position 0: Linear on a tensor of "
                       r"shape \(1, 4, 4\) per example"):
        from_torch(nn.Sequential(nn.Linear(4, 2)), (1, 4, 4))

    class Batchy(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], dim=0)

    with pytest.raises(ModelImportError, match="batch axis"):
        from_torch(Batchy(), (4,))


def test_an_unsupported_function_names_itself_and_the_alternatives() -> None:
    class Sorty(nn.Module):
        def forward(self, x):
            return torch.sort(x, dim=1).values

    with pytest.raises(ModelImportError) as info:
        from_torch(Sorty(), (4,))
    assert "unsupported operation" in str(info.value)
    assert "supported: Conv1d" in str(info.value) or "does not return one tensor" in str(
        info.value)


ACTIVATIONS = {
    "LeakyReLU": nn.LeakyReLU(0.1), "ReLU6": nn.ReLU6(), "Hardtanh": nn.Hardtanh(-0.5, 0.5),
    "Sigmoid": nn.Sigmoid(), "Tanh": nn.Tanh(), "GELU": nn.GELU(), "SiLU": nn.SiLU()}


class Activated(nn.Module):
    """The activation twice: on an average-pooled map (a sum here, 4x torch's values, so
    a clamp or smooth function is given a rescaled input), then on its own output."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.act, self.fc = nn.Conv2d(1, 3, 3), act, nn.Linear(3 * 3 * 3, 4)

    def forward(self, x):
        x = self.act(F.avg_pool2d(self.conv(x), 2))
        return self.fc(torch.flatten(self.act(x), 1))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_an_activation_layer_follows_torch_within_its_bound(name) -> None:
    from protocols.activations import error_bound

    module = randomize(Activated(ACTIVATIONS[name]), 4)
    model, report = from_torch(module, (1, 8, 8))
    assert report.agreement == 1.0
    smooth = name in ("Sigmoid", "Tanh", "GELU", "SiLU")
    # two activations, each within its bound, through a linear layer of 27 inputs
    bound = 27 * 2 * error_bound(name.lower(), model.fixed.frac_bits) if smooth else 1e-5
    assert report.logit_error < bound, report.table()
    x = np.random.default_rng(4).normal(size=(3, 1, 8, 8))
    assert np.abs(forward(model, x) - torch_logits(module, x)).max() < 1e-5


@pytest.mark.parametrize("name", ["LeakyReLU", "Hardtanh", "GELU"])
@every_scheme_once
def test_an_activation_layer_gives_torchs_labels_under_every_scheme(scheme, n_parties,
                                                                    name) -> None:
    module = randomize(Activated(ACTIVATIONS[name]), 5)
    model, _ = from_torch(module, (1, 8, 8))
    features = np.random.default_rng(5).normal(size=(4, 1, 8, 8))
    expected = torch_logits(module, features)
    result = classify(model, features, scheme=scheme, n_parties=n_parties, reveal_logits=True)
    assert np.abs(result.logits - expected).max() < 0.2
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.2  # labels must agree where torch's is not a tie
    assert np.array_equal(result.labels[clear], expected.argmax(axis=1)[clear])


class NormAfterReLU(nn.Module):
    """Batch-norms no linear layer can absorb: after a ReLU (res8's order), and on a map a
    residual connection also reads."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        y = self.bn1(F.relu(self.conv(x)))
        y = F.avg_pool2d(y + self.bn2(y), 2)
        return self.fc(y.flatten(1))


def test_a_batchnorm_that_cannot_fold_is_a_private_channel_affine_layer() -> None:
    module = randomize(NormAfterReLU(), 6)
    model, report = from_torch(module, (1, 8, 8))
    assert sum(isinstance(layer, L.ChannelAffine) for layer in model.layers) == 2
    assert report.agreement == 1.0 and report.logit_error < 1e-5
    public = model.public()
    assert all(layer.weight is None for layer in public.layers
               if isinstance(layer, L.ChannelAffine))


@every_scheme_once
def test_a_channel_affine_layer_gives_torchs_logits_under_every_scheme(scheme,
                                                                       n_parties) -> None:
    _secure_matches_torch(randomize(NormAfterReLU(), 6), (1, 8, 8), scheme, n_parties, 6)


class PaddedPools(nn.Module):
    """Max and average pooling with padding, and nearest upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fc = nn.Linear(2 * 5 * 5, 3)

    def forward(self, x):
        y = F.max_pool2d(self.conv(x), 3, stride=2, padding=1)  # (2, 3, 3)
        y = F.avg_pool2d(y, 2, stride=1, padding=1)  # (2, 4, 4)
        y = F.max_pool2d(self.up(y), 2, padding=1)  # (2, 8, 8) -> (2, 5, 5)
        return self.fc(y.flatten(1))


def test_padded_pools_and_upsampling_follow_torch() -> None:
    module = randomize(PaddedPools(), 7)
    model, report = from_torch(module, (1, 8, 8))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Pad") == 3 and "Upsample" in kinds
    assert report.agreement == 1.0 and report.logit_error < 1e-5, report.table()
    x = np.random.default_rng(7).normal(size=(3, 1, 8, 8)) - 3  # negative: padding matters
    assert np.abs(forward(model, x) - torch_logits(module, x)).max() < 1e-5


@every_scheme_once
def test_padded_pools_and_upsampling_under_every_scheme(scheme, n_parties) -> None:
    """Negative inputs, so that a max pool's padding would win if it were not below them."""
    _secure_matches_torch(randomize(PaddedPools(), 7), (1, 8, 8), scheme, n_parties, 8, -3.0)


@pytest.mark.parametrize("slopes", [1, 3], ids=["one-slope", "per-channel"])
def test_prelu_keeps_its_learned_slopes_private_and_follows_torch(slopes) -> None:
    module = nn.Sequential(nn.Conv2d(1, 3, 3), nn.PReLU(slopes), nn.Flatten(),
                           nn.Linear(3 * 6 * 6, 2))
    randomize(module, 10)
    with torch.no_grad():
        module[1].weight.copy_(torch.linspace(-0.5, 0.7, slopes))
    model, report = from_torch(module, (1, 8, 8))
    assert report.logit_error < 1e-5 and report.agreement == 1.0
    assert all(layer.weight is None for layer in model.public().layers
               if isinstance(layer, L.ChannelAffine))
    features = np.random.default_rng(10).normal(size=(3, 1, 8, 8))
    result = classify(model, features, scheme="rep4", reveal_logits=True)
    assert np.abs(result.logits - torch_logits(module, features)).max() < LOGIT_BOUND


class Normed(nn.Module):
    """GroupNorm (with gamma and beta) on a map, LayerNorm with its affine on the features,
    LayerNorm without on a (C, L) signal."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.group = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4 * 6 * 6, 8)
        self.layer = nn.LayerNorm(8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        y = F.relu(self.group(self.conv(x)))
        return self.out(self.layer(self.fc(y.flatten(1))))


def _normed():
    module = randomize(Normed(), 11)
    with torch.no_grad():
        module.group.weight.copy_(torch.tensor([0.5, 1.5, -1.0, 2.0]))
        module.layer.bias.copy_(torch.linspace(-1, 1, 8))
    return module


def test_layer_and_group_norm_import_with_private_affine_parts() -> None:
    module = _normed()
    model, report = from_torch(module, (1, 8, 8))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Norm") == 2 and kinds.count("ChannelAffine") == 2, kinds
    assert report.agreement == 1.0 and report.logit_error < 1e-3, report.table()
    x = np.random.default_rng(11).normal(size=(3, 1, 8, 8))
    assert np.abs(forward(model, x) - torch_logits(module, x)).max() < 1e-5


@every_scheme_once
def test_layer_and_group_norm_under_every_scheme(scheme, n_parties) -> None:
    _secure_matches_torch(_normed(), (1, 8, 8), scheme, n_parties, 12)
