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
    loaded = load_model(BUNDLED_MODEL, check=False)
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
