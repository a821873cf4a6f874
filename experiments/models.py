"""The reference CNN (see docs/architecture.md, "Reference model").

Built only from module types that ``nn.from_torch`` imports: BatchNorm2d, Conv2d, ReLU,
AvgPool2d, Flatten, Dropout, Linear. The first layer, ``BatchNorm2d(1)``, is a *frozen input
normaliser*: always in eval mode, ``running_mean``/``running_var`` hold the training-set
feature mean and variance, weight 1 and bias 0. Normalisation is therefore part of Bob's
model (folded into the first convolution at import) and never computed by Alice.

Beyond it, published audio architectures that the importer traces (below the reference
CNN's helpers): `res8` (Tang & Lin 2018), `ds_cnn` (Zhang et al. 2017, "Hello Edge") and
`m5` (Dai et al. 2017), with their input shapes `RES8_INPUT_SHAPE`, `DS_CNN_INPUT_SHAPE`
and `M5_INPUT_SHAPE`. Training and model files (`load_model`) know only the reference CNN.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURE = "reference_cnn"
INPUT_SHAPE = (1, 40, 350)
# 40x350 -conv5-> 36x346 -pool-> 18x173 -conv5-> 14x169 -pool-> 7x84; 16 channels
FLAT_FEATURES = 16 * 7 * 84  # 9408


def reference_cnn(num_classes: int, dropout: float = 0.5) -> nn.Sequential:
    """The reference CNN for (1, 40, 350) inputs and ``num_classes`` outputs.

    BatchNorm2d(1) (frozen normaliser) -> Conv2d(1, 8, 5) -> ReLU -> AvgPool2d(2)
    -> Conv2d(8, 16, 5) -> ReLU -> AvgPool2d(2) -> Flatten -> Dropout -> Linear(9408, 64)
    -> ReLU -> Linear(64, num_classes).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    model = nn.Sequential(
        nn.BatchNorm2d(1),
        nn.Conv2d(1, 8, kernel_size=5),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 16, kernel_size=5),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(FLAT_FEATURES, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )
    set_input_normalisation(model, 0.0, 1.0)
    return model


def set_input_normalisation(model: nn.Sequential, mean: float, std: float) -> None:
    """Freeze ``model[0]`` (BatchNorm2d(1)) as ``(x - mean) / std`` (up to its eps).

    ``running_var`` is set to ``std**2 - eps`` so that the normaliser divides by ``std``
    exactly, whoever evaluates it (torch or the secure importer's folding).
    """
    bn = model[0]
    if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != 1:
        raise TypeError("model[0] must be BatchNorm2d(1)")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    with torch.no_grad():
        bn.running_mean.fill_(float(mean))
        bn.running_var.fill_(max(float(std) ** 2 - bn.eps, bn.eps))
        bn.weight.fill_(1.0)
        bn.bias.fill_(0.0)
    bn.weight.requires_grad_(False)
    bn.bias.requires_grad_(False)
    bn.momentum = 0.0  # even a stray forward in train mode leaves the statistics alone
    bn.eval()


def train_mode(model: nn.Sequential) -> None:
    """``model.train()`` except for the input normaliser, which stays frozen in eval mode."""
    model.train()
    model[0].eval()


def load_model(path) -> tuple[nn.Sequential, dict]:
    """Load a model file written by ``experiments.train`` (``torch.load(weights_only=True)``)
    and return ``(model in eval mode, the saved dict)``."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("architecture") != ARCHITECTURE:
        raise ValueError(f"{path}: unknown architecture {saved.get('architecture')!r}")
    model = reference_cnn(int(saved["num_classes"]))
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, saved


@torch.no_grad()
def predict_logits(model: nn.Sequential, feature_maps) -> torch.Tensor:
    """Logits for a batch ``(n, 1, 40, 350)`` or a single map ``(1, 40, 350)`` (eval mode)."""
    x = torch.as_tensor(feature_maps, dtype=torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        return model(x)
    finally:
        if was_training:
            train_mode(model)


# -- reference keyword-spotting and raw-waveform architectures beyond the seed CNN -----------
# Each function returns an untrained nn.Module in eval mode (seeding its weights is the
# caller's business) built only from what `nn.from_torch` traces (see nn/convert.py
# SUPPORTED). Their footprints at the defaults on these inputs are measured, against
# `mpc.limits`, by tests/experiments/test_models.py::test_full_size_architectures_fit_the_limits.

#: res8's input: a 1 s log-mel map, 40 bands x 100 frames at 10 ms hops
#: (``audio.FeatureConfig(duration=1.0)``; the paper's 101 frames of 40 MFCCs, near enough).
RES8_INPUT_SHAPE = (1, 40, 100)
#: DS-CNN's input: Hello Edge's 10 features x 49 frames (40 ms windows, 20 ms hops over 1 s);
#: here 10 log-mel bands x 50 frames (``audio.FeatureConfig(n_mels=10, win_length=640,
#: hop_length=320, duration=1.0)``, whose centred framing gives one frame more).
DS_CNN_INPUT_SHAPE = (1, 10, 50)
#: M5's input: 1 s of raw waveform at 16 kHz, one channel.
M5_INPUT_SHAPE = (1, 16000)


def _at_least_two(num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")


class Res8(nn.Module):
    """res8 of Tang & Lin (see `res8`): the layers of honk's ``SpeechResModel`` with
    ``n_layers=6, n_feature_maps=width, res_pool=(4, 3), use_dilation=False`` (honk's maps
    are (frames, bands), these (bands, frames): its (4, 3) pool is (3, 4) here)."""

    def __init__(self, num_classes: int, width: int = 45) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.pool = nn.AvgPool2d((3, 4))  # 3 bands by 4 frames
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False)
                                   for _ in range(6))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width, affine=False) for _ in range(6))
        self.output = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv0(x)))
        shortcut = x
        for i in range(0, 6, 2):  # three residual blocks of two convolutions each
            x = self.bns[i](torch.relu(self.convs[i](x)))
            x = torch.relu(self.convs[i + 1](x)) + shortcut
            shortcut = x  # the block's sum, before its batch-norm, feeds the next block
            x = self.bns[i + 1](x)
        return self.output(x.mean(dim=(2, 3)))


def res8(num_classes: int, width: int = 45) -> Res8:
    """res8 of Tang & Lin, "Deep residual learning for small-footprint keyword spotting"
    (ICASSP 2018), for log-mel maps ``(1, bands, frames)`` (`RES8_INPUT_SHAPE`, (1, 40, 100);
    any size of at least 4 x 3 works) and ``num_classes`` outputs.

    conv 3x3 (``width`` maps, padding 1, no bias) -> ReLU -> AvgPool2d((3, 4)) (the paper's
    4x3 pool: 4 frames by 3 bands, here (bands, frames)), then three
    residual blocks, each conv 3x3 -> ReLU -> BN -> conv 3x3 -> ReLU -> (+ the block's input)
    -> BN, the sum before its BN being the next block's shortcut (the paper's figure 1 and
    honk's code); BN without affine parameters, no dilation (res15's). Then the mean over
    the map and Linear(width, num_classes). Shapes for (1, 40, 100): (width, 40, 100) ->
    pooled (width, 13, 25), kept by every block -> (width,) -> (num_classes,). The paper's
    width is 45: 110,307 torch parameters at 12 classes (the paper's "110K").

    The BNs come after a ReLU or a sum, so no convolution absorbs them: the importer makes
    each a per-channel affine layer (`nn.layers.ChannelAffine`).
    """
    _at_least_two(num_classes)
    return Res8(num_classes, width).eval()


def ds_cnn(num_classes: int, width: int = 64, blocks: int = 4) -> nn.Sequential:
    """DS-CNN of Zhang et al., "Hello Edge: keyword spotting on microcontrollers"
    (arXiv:1711.07128, 2017), the small model at the defaults (64 maps, 4 blocks), for
    feature maps ``(1, bands, frames)`` (`DS_CNN_INPUT_SHAPE`, (1, 10, 50)) and
    ``num_classes`` outputs.

    Conv2d(1, width, (4, 10), stride 2, padding (1, 4)) -- the paper's 10x4 kernel, 10
    frames by 4 bands, here (bands, frames) -- -> BN -> ReLU, then ``blocks``
    depthwise-separable blocks: depthwise Conv2d(width, width, 3, padding 1, groups=width)
    -> BN -> ReLU -> pointwise Conv2d(width, width, 1) -> BN -> ReLU; then
    AdaptiveAvgPool2d(1) (the global average) -> Flatten -> Linear(width, num_classes).
    The padding is TensorFlow's "SAME" for (1, 10, 50), whose output (width, 5, 25) every
    block keeps (the paper's 25 x 5). Convolutions have no bias (each BN folds into the
    convolution before it).

    The importer expands each depthwise convolution to a dense one (zeros between the
    groups): exact, but ``width`` times the depthwise multiply-adds.
    """
    _at_least_two(num_classes)
    layers: list[nn.Module] = [nn.Conv2d(1, width, (4, 10), stride=2, padding=(1, 4),
                                         bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    for _ in range(blocks):
        layers += [nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU(),
                   nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers).eval()


def m5(num_classes: int, channels: int = 32) -> nn.Sequential:
    """M5 of Dai et al., "Very deep convolutional neural networks for raw waveforms"
    (ICASSP 2017), for raw waveforms ``(1, samples)`` (`M5_INPUT_SHAPE`, (1, 16000)) and
    ``num_classes`` outputs; ``c = channels`` (the paper's 128; 32 here keeps the
    comparisons within `mpc.limits.MAX_COMPARISONS`).

    Conv1d(1, c, 80, stride 4) -> BN -> ReLU -> MaxPool1d(4), then three blocks
    Conv1d(k=3, padding 1) -> BN -> ReLU -> MaxPool1d(4) of c, 2c and 2c channels, then the
    mean over time (AdaptiveAvgPool1d(1)) -> Flatten -> Linear(2c, num_classes). Shapes for
    (1, 16000): (c, 3981) -> (c, 995) -> (c, 248) -> (2c, 62) -> (2c, 15) -> (2c,) ->
    (num_classes,). Convolutions have no bias (each BN folds into the one before it).
    """
    _at_least_two(num_classes)
    c = channels
    layers: list[nn.Module] = [nn.Conv1d(1, c, 80, stride=4, bias=False), nn.BatchNorm1d(c),
                               nn.ReLU(), nn.MaxPool1d(4)]
    for c_in, c_out in ((c, c), (c, 2 * c), (2 * c, 2 * c)):
        layers += [nn.Conv1d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm1d(c_out),
                   nn.ReLU(), nn.MaxPool1d(4)]
    layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(2 * c, num_classes)]
    return nn.Sequential(*layers).eval()
