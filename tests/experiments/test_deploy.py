"""Multi-host roles, run as separate processes from a generated cluster file (loopback)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.modelfile import BUNDLED_CLIPS, BUNDLED_MODEL, load_model, plaintext_logits

CLI = [sys.executable, "-m", "experiments.cli"]
CLIPS = sorted(BUNDLED_CLIPS.glob("*.wav"))[:3]


def _start(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.mark.parametrize("scheme", ["replicated", "additive"])
def test_roles_in_separate_processes_classify_like_plaintext(tmp_path: Path, scheme: str):
    done = subprocess.run([*CLI, "cluster", str(tmp_path), "--scheme", scheme],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    config = str(tmp_path / "cluster.toml")
    n = {"replicated": 3, "additive": 2}[scheme]
    procs = [_start("party", "--config", config, "--id", str(i), log=tmp_path / f"p{i}.log")
             for i in range(n)]
    if scheme == "additive":
        procs.append(_start("dealer", "--config", config, log=tmp_path / "dealer.log"))
    procs.append(_start("model-owner", "--config", config, "--model", str(BUNDLED_MODEL),
                        log=tmp_path / "owner.log"))
    client = subprocess.run([*CLI, "client", "--config", config, "--json", *map(str, CLIPS)],
                            capture_output=True, text=True, timeout=240)
    for proc in procs:
        assert proc.wait(timeout=60) == 0, (tmp_path / "p0.log").read_text()
    assert client.returncode == 0, client.stderr
    labels = [c["label"] for c in json.loads(client.stdout)["clips"]]
    loaded = load_model(BUNDLED_MODEL)
    import audio

    feats = [audio.features(audio.load(c, sample_rate=loaded.feature_config.sample_rate),
                            loaded.feature_config) for c in CLIPS]
    import numpy as np

    plain = plaintext_logits(loaded, np.stack(feats)).argmax(axis=1)
    assert labels == [loaded.labels[i] for i in plain]


def test_missing_party_is_named_within_the_timeout(tmp_path: Path):
    done = subprocess.run([*CLI, "cluster", str(tmp_path), "--scheme", "replicated"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    config = tmp_path / "cluster.toml"
    config.write_text(config.read_text().replace("connect_timeout = 30.0",
                                                 "connect_timeout = 3.0"))
    start = time.monotonic()
    client = subprocess.run([*CLI, "client", "--config", str(config), str(CLIPS[0])],
                            capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert client.returncode == 2
    assert "could not reach party 0 at 127.0.0.1:" in client.stderr
    assert "Traceback" not in client.stderr
    assert elapsed < 3.0 + 10.0  # the connect timeout plus interpreter start-up


class _ResidualOnMaps:
    """A traced model (residual add, a batch-norm after a ReLU, a global mean) on the
    bundled feature maps, built lazily so torch loads only for this test."""

    @staticmethod
    def build():
        import torch
        import torch.nn.functional as F
        from torch import nn

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.stem = nn.Conv2d(1, 4, 5, stride=4)
                self.body = nn.Conv2d(4, 4, 3, padding=1)
                self.norm = nn.BatchNorm2d(4)
                self.head = nn.Linear(4, 3)

            def forward(self, x):
                x = F.relu(self.stem(x))
                x = x + self.norm(F.relu(self.body(x)))
                return self.head(torch.mean(x, dim=(2, 3)))

        return Net()


@pytest.mark.parametrize("scheme", ["replicated", "rep4"])
def test_a_traced_graph_model_is_deployed_like_a_chain(scheme: str):
    """The description carries the graph (inputs of each layer) to every role; the client
    gets the float reference's labels."""
    import numpy as np
    from conftest import randomize

    import audio
    from experiments.deploy import run_deployment
    from nn import graph
    from nn.importer import from_torch
    from nn.plain import forward

    loaded = load_model(BUNDLED_MODEL)
    module = randomize(_ResidualOnMaps.build(), 8)
    model, _ = from_torch(module, loaded.secure.input_shape, labels=("x", "y", "z"))
    assert not graph.is_chain(model.layers)
    labels = run_deployment(scheme, model, loaded.feature_config.to_dict(), CLIPS[:2],
                            timeout=120)
    config = loaded.feature_config
    feats = np.stack([audio.features(audio.load(c, sample_rate=config.sample_rate), config)
                      for c in CLIPS[:2]])
    assert labels == [model.labels[i] for i in forward(model, feats).argmax(axis=1)]
