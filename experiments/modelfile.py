"""Bob's model file: load it safely, rebuild the torch module, import it for secure use.

Files are read with `torch.load(weights_only=True)`: tensors and plain containers only, so
a file that carries a pickled object (which could run code) is refused, never executed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio import FeatureConfig
from experiments.models import ARCHITECTURE, reference_cnn
from mpc.errors import ConfigError
from nn.errors import ModelImportError
from nn.importer import ImportReport, from_torch
from nn.model import SecureModel

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_MODEL = ASSETS / "model.pt"
BUNDLED_CLIPS = ASSETS / "clips"
REQUIRED_KEYS = ("state_dict", "num_classes", "labels", "feature_config", "architecture")


@dataclass
class LoadedModel:
    torch_module: object
    secure: SecureModel
    report: ImportReport | None
    feature_config: FeatureConfig
    labels: tuple[str, ...]
    metadata: dict


def load_model(path: str | Path, check: bool = True) -> LoadedModel:
    """Load and import a model file; errors name the file and what is wrong with it."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: model file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise ConfigError(f"{path}: not a loadable weights-only model file ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a dict with {REQUIRED_KEYS}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ConfigError(f"{path}: missing keys {missing}")
    if data["architecture"] != ARCHITECTURE:
        raise ConfigError(f"{path}: architecture {data['architecture']!r} is not "
                          f"{ARCHITECTURE!r}")
    try:
        config = FeatureConfig.from_dict(dict(data["feature_config"]))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: bad feature_config: {exc}") from None
    module = reference_cnn(int(data["num_classes"]))
    try:
        module.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{path}: weights do not fit the architecture: {exc}") from None
    for name, tensor in data["state_dict"].items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ConfigError(f"{path}: weight {name} has non-finite values")
    module.eval()
    labels = tuple(str(label) for label in data["labels"])
    try:
        secure, report = from_torch(module, config.shape, labels=labels, check=check)
    except ModelImportError as exc:
        raise ModelImportError(f"{path}: {exc}") from None
    return LoadedModel(module, secure, report, config, labels, data)


def plaintext_logits(loaded: LoadedModel, features: np.ndarray) -> np.ndarray:
    """The float model's logits, for comparison with the secure labels."""
    import torch

    with torch.no_grad():
        return loaded.torch_module(torch.as_tensor(features, dtype=torch.float32)).numpy()
