"""The model file: a model ready for secure inference, in one file read without pickles.

A model file is a zip of numpy arrays (`.npz`), read with `numpy.load(allow_pickle=False)`,
so loading one never runs code and needs neither torch nor the Python that made it:

* `model.json`: UTF-8 JSON stored as a uint8 array, an object with
  - `format`: `FORMAT`;
  - `model`: the public description (`nn.describe.describe`: layers, input shape, fixed
    point, labels), checked field by field on load like any peer's description;
  - `features`: the feature settings the model expects (a JSON object, interpreted by
    the caller, e.g. `audio.FeatureConfig.from_dict`);
  - `metadata`: anything JSON the owner records (training figures, the source module).
* `weight/<k>` and `bias/<k>` for every layer k with parameters: the encoded weight
  (uint64, `weight_shape`, at `frac_bits`) and bias (uint64, `bias_shape`, at twice
  `frac_bits`), exactly the integers the model owner inputs.

Before anything is read the archive's member list is checked against the description
(no member missing, none extra, none larger than its array), so a hostile file costs no
more memory than the model it claims to be. Errors name the file and what is wrong
(`nn.errors.ModelFileError`). Saving writes a temporary file beside the target and renames
it, so a crash never leaves half a model behind.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mpc.atomic import write_npz
from nn.describe import checked, describe
from nn.errors import ModelDescriptionError, ModelFileError
from nn.model import SecureModel

FORMAT = "sottovoce-modelfile/1"
SUFFIX = ".npz"
HEADER = "model.json"
#: Largest `model.json` accepted (a description is a few kB; metadata may hold figures).
MAX_HEADER_BYTES = 1 << 24
_NPY_HEADER = 1 << 12  # room for a .npy header in front of each array's bytes
_KEYS = ("format", "model", "features", "metadata")
_UNREADABLE = (OSError, zipfile.BadZipFile, EOFError, NotImplementedError, ValueError,
               KeyError, zlib.error, struct.error)


@dataclass
class ModelFile:
    """What a model file holds: the model with its weights, and what travels with it."""

    model: SecureModel
    features: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def _members(model: SecureModel) -> dict[str, tuple[int, ...]]:
    """Array name -> shape of every weight and bias, in layer order."""
    return {f"{key}/{k}": shape for k, key, shape in model.parameter_slots()}


def save(path: str | os.PathLike, model: SecureModel, features: dict[str, Any] | None = None,
         metadata: dict[str, Any] | None = None) -> Path:
    """Write `model` (with its encoded weights) and its companions to `path` (`.npz`)."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ModelFileError(f"{path}: a model file is named *{SUFFIX}")
    header = {"format": FORMAT, "model": describe(model), "features": dict(features or {}),
              "metadata": dict(metadata or {})}
    try:
        text = json.dumps(header, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: features and metadata must be plain JSON ({exc})"
                             ) from None
    arrays = {HEADER: np.frombuffer(text, dtype=np.uint8)}
    for name, shape in _members(model).items():
        kind, k = name.split("/")
        value = getattr(model.layers[int(k)], kind)
        if value is None or value.dtype != np.uint64 or value.shape != shape:
            raise ModelFileError(f"{path}: layer {model.layers[int(k)].name} has no encoded "
                                 f"{kind} of shape {shape} (a public model cannot be saved)")
        arrays[name] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    write_npz(path, arrays, compressed=True)
    return path


def is_model_file(path: str | os.PathLike) -> bool:
    """True if `path` is a zip holding `model.json` (a torch checkpoint is a zip too)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return f"{HEADER}.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def load(path: str | os.PathLike) -> ModelFile:
    """Read and check a model file; a `ModelFileError` names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        with zipfile.ZipFile(path) as archive:
            sizes = {info.filename: info.file_size for info in archive.infolist()}
        with np.load(path, allow_pickle=False) as arrays:
            header = _header(path, sizes, arrays)
            try:
                model = checked(header["model"])[0]
            except ModelDescriptionError as exc:
                raise ModelFileError(f"{path}: {exc}") from None
            expected = _members(model)
            _check_members(path, sizes, expected)
            weights = {name: _array(path, arrays, name, shape)
                       for name, shape in expected.items()}
    except ModelFileError:
        raise
    except _UNREADABLE as exc:  # what zipfile, zlib and numpy raise for damaged bytes
        raise ModelFileError(f"{path}: not a readable model file ({type(exc).__name__}: "
                             f"{exc})") from None
    layers = list(model.layers)
    for name, value in weights.items():
        kind, k = name.split("/")
        layers[int(k)] = replace(layers[int(k)], **{kind: value})
    return ModelFile(replace(model, layers=layers), header["features"], header["metadata"])


def _header(path: Path, sizes: dict[str, int], arrays: Any) -> dict[str, Any]:
    member = f"{HEADER}.npy"
    if member not in sizes:
        raise ModelFileError(f"{path}: no {HEADER} in the archive; not a {FORMAT} file")
    if sizes[member] > MAX_HEADER_BYTES + _NPY_HEADER:
        raise ModelFileError(f"{path}: {HEADER} of {sizes[member]} bytes, at most "
                             f"{MAX_HEADER_BYTES}")
    raw = _array(path, arrays, HEADER, None)
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"{path}: {HEADER} is not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ModelFileError(f"{path}: format {got!r}, expected {FORMAT!r}")
    missing = [k for k in _KEYS if k not in header]
    extra = sorted(set(header) - set(_KEYS))
    if missing or extra:
        raise ModelFileError(f"{path}: {HEADER} must hold exactly {', '.join(_KEYS)}"
                             f" (missing {missing}, unknown {extra})")
    for key in ("features", "metadata"):
        if not isinstance(header[key], dict):
            raise ModelFileError(f"{path}: {HEADER} field {key!r} must be an object")
    return header


def _check_members(path: Path, sizes: dict[str, int], expected: dict[str, tuple[int, ...]]
                   ) -> None:
    names = {f"{name}.npy": shape for name, shape in expected.items()}
    extra = sorted(set(sizes) - set(names) - {f"{HEADER}.npy"})
    missing = sorted(set(names) - set(sizes))
    if extra or missing:
        raise ModelFileError(f"{path}: the arrays do not match the description (missing "
                             f"{[m[:-4] for m in missing]}, unexpected {[m[:-4] for m in extra]})")
    for member, shape in names.items():
        limit = 8 * int(np.prod(shape, dtype=np.int64)) + _NPY_HEADER
        if sizes[member] > limit:
            raise ModelFileError(f"{path}: {member[:-4]} holds {sizes[member]} bytes; "
                                 f"shape {shape} needs at most {limit}")


def _array(path: Path, arrays: Any, name: str, shape: tuple[int, ...] | None) -> np.ndarray:
    """Member `name` as uint64 of `shape` (or flat uint8 for the header)."""
    try:
        value = arrays[name]
    except ValueError as exc:  # an object array would need pickle: refused
        raise ModelFileError(f"{path}: array {name} cannot be read without pickle ({exc})"
                             ) from None
    dtype = np.dtype(np.uint8) if shape is None else np.dtype(np.uint64)
    if value.dtype != dtype or (shape is None and value.ndim != 1) or \
            (shape is not None and value.shape != shape):
        want = f"{dtype}{'(?,)' if shape is None else shape}"
        raise ModelFileError(f"{path}: array {name} is {value.dtype}{value.shape}, "
                             f"expected {want}")
    return value
