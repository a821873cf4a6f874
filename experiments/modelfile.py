"""Bob's model: the model file every role reads, and the torch checkpoints it is made from.

A model file (`nn.modelfile`: JSON and arrays in an `.npz`, no pickle) is what `classify`,
`demo` and the deployment's model owner load; it needs no torch. A training checkpoint
(`experiments.train` writes one: the reference CNN's state dict, labels, feature settings
and held-out figures, read with `torch.load(weights_only=True)` so a pickled object that
could run code is refused, never executed) becomes a model file with `sottovoce import
--checkpoint`; that path, and importing any module (`nn.from_torch`), need torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import nn.modelfile
from audio import FeatureConfig
from mpc.errors import ConfigError
from nn import plain
from nn.errors import ModelFileError, ModelImportError
from nn.model import SecureModel

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_MODEL = ASSETS / "model.npz"
BUNDLED_CHECKPOINT = ASSETS / "model.pt"  # the training checkpoint it was made from
BUNDLED_CLIPS = ASSETS / "clips"
REQUIRED_KEYS = ("state_dict", "num_classes", "labels", "feature_config", "architecture")


@dataclass
class LoadedModel:
    """A model file's contents, with the feature settings parsed."""

    secure: SecureModel
    feature_config: FeatureConfig
    labels: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)


def load_model(path: str | Path) -> LoadedModel:
    """Read a model file (no torch); errors name the file and what is wrong with it."""
    path = Path(path)
    if path.is_file() and not nn.modelfile.is_model_file(path) and _is_checkpoint(path):
        raise ModelFileError(f"{path}: a torch checkpoint, not a model file; make one with "
                             f"`sottovoce import --checkpoint {path} --out MODEL.npz`")
    contents = nn.modelfile.load(path)
    try:
        config = FeatureConfig.from_dict(dict(contents.features))
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: bad feature settings: {exc}") from None
    model = contents.model
    if tuple(config.shape) != tuple(model.input_shape):
        raise ModelFileError(f"{path}: the feature settings make inputs of shape "
                             f"{tuple(config.shape)}, the model takes {model.input_shape}")
    labels = model.labels or tuple(str(i) for i in range(model.num_classes))
    return LoadedModel(model, config, labels, contents.metadata)


def _is_checkpoint(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def plaintext_logits(loaded: LoadedModel, features: np.ndarray) -> np.ndarray:
    """The float reference's logits (`nn.plain`), to compare the secure labels with."""
    return plain.forward(loaded.secure, features)


# -- training checkpoints (torch) ----------------------------------------------------------
@dataclass
class Checkpoint:
    """A training checkpoint, rebuilt in torch and imported for secure use."""

    torch_module: Any
    loaded: LoadedModel
    report: Any  # nn.importer.ImportReport, or None without the check


def import_checkpoint(path: str | Path, check: bool = True,
                      frac_bits: int | None = None) -> Checkpoint:
    """Load a checkpoint of `experiments.train` and import it; errors name the file."""
    import torch

    from experiments.models import ARCHITECTURE, reference_cnn
    from nn.importer import from_torch

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
                          f"{ARCHITECTURE!r}; import another architecture with `sottovoce "
                          "import --module`")
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
    options = {} if frac_bits is None else {"frac_bits": frac_bits}
    try:
        secure, report = from_torch(module, config.shape, labels=labels, check=check,
                                    **options)
    except ModelImportError as exc:
        raise ModelImportError(f"{path}: {exc}") from None
    metadata = {k: _plain(v) for k, v in data.items()
                if k not in ("state_dict", "feature_config", "labels")}
    return Checkpoint(module, LoadedModel(secure, config, labels, metadata), report)


def _plain(value: Any) -> Any:
    """A checkpoint's metadata as JSON (NaN as None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_model(path: str | Path, loaded: LoadedModel) -> Path:
    """Write `loaded` as a model file (atomically)."""
    return nn.modelfile.save(path, loaded.secure, loaded.feature_config.to_dict(),
                             loaded.metadata)


def torch_logits(module: Any, features: np.ndarray) -> np.ndarray:
    """A torch module's float logits (float32 inputs, as in training)."""
    import torch

    with torch.no_grad():
        return module(torch.as_tensor(features, dtype=torch.float32)).double().numpy()
