"""The reference CNN (see docs/architecture.md, "Reference model").

Built only from module types that ``nn.from_torch`` imports: BatchNorm2d, Conv2d, ReLU,
AvgPool2d, Flatten, Dropout, Linear. The first layer, ``BatchNorm2d(1)``, is a *frozen input
normaliser*: always in eval mode, ``running_mean``/``running_var`` hold the training-set
feature mean and variance, weight 1 and bias 0. Normalisation is therefore part of Bob's
model (folded into the first convolution at import) and never computed by Alice.
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
