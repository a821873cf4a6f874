"""What a role of a service keeps on its own disk: its shares of each published model.

One file per version, `model-<version>.npz` (mode 0600, in a 0700 folder, written
atomically), holding this role's shares of the weights, its keys of the MAC key the shares
are authenticated under, the model's description and feature settings; `current.json` names
the version served. A restarted role reads them back, so it resumes without the model owner.
The dealer keeps the description and its MAC key seed (its shares are empty).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mpc.atomic import write_npz
from mpc.errors import ConfigError
from nn.describe import from_description
from nn.model import SecureModel

_VERSION = re.compile(r"[A-Za-z0-9_.+-]{1,64}")


def checked_version(version: object) -> str:
    """A version name that is safe as part of a file name, or a ConfigError."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise ConfigError(f"a model version must be 1-64 letters, digits or '_.+-', got "
                          f"{version!r}")
    return version


@dataclass
class Published:
    """One published model as one role holds it."""

    version: str
    description: dict  # {"model": ..., "features": ...} as the model owner published it
    shares: np.ndarray  # this role's shares of every weight, in parameter-slot order
    mac_keys: dict[int, bytes]
    model: SecureModel = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.model = from_description(self.description["model"])


class Store:
    """A role's folder of published models."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, published: Published) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        keys = {f"key_{peer}": np.frombuffer(k, dtype=np.uint8)
                for peer, k in published.mac_keys.items()}
        doc = np.frombuffer(json.dumps(published.description).encode(), dtype=np.uint8)
        write_npz(self.folder / f"model-{published.version}.npz",
                  {"shares": published.shares, "description": doc, **keys})
        self._write_current(published.version)

    def _write_current(self, version: str) -> None:
        tmp = self.folder / f".current.{os.getpid()}.partial"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"version": version}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.folder / "current.json")

    def stamp(self) -> float:
        """When the version served last changed (0 before the first publish)."""
        try:
            return (self.folder / "current.json").stat().st_mtime_ns / 1e9
        except OSError:
            return 0.0

    def load_current(self) -> Published | None:
        """The version being served, as saved; None before the first publish."""
        current = self.folder / "current.json"
        if not current.is_file():
            return None
        try:
            version = checked_version(json.loads(current.read_text())["version"])
            with np.load(self.folder / f"model-{version}.npz", allow_pickle=False) as data:
                keys = {int(name[4:]): data[name].tobytes() for name in data.files
                        if name.startswith("key_")}
                description = json.loads(data["description"].tobytes().decode())
                return Published(version, description, data["shares"].copy(), keys)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{self.folder}: the saved model cannot be read ({exc}); "
                              "publish it again or restore the folder") from None
