"""End to end through the command line: real processes, TCP with mutual TLS on loopback."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio import FeatureConfig
from experiments import cli
from experiments.modelfile import BUNDLED_CLIPS, BUNDLED_MODEL
from experiments.models import reference_cnn
from mpc.errors import SottovoceError

CLI = [sys.executable, "-m", "experiments.cli"]


def _sottovoce(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def model_and_clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("cli")
    torch.manual_seed(3)
    module = reference_cnn(3)
    torch.save({"state_dict": module.state_dict(), "num_classes": 3, "labels": ["a", "b", "c"],
                "feature_config": FeatureConfig().to_dict(), "architecture": "reference_cnn"},
               folder / "model.pt")
    done = _sottovoce("import", "--checkpoint", str(folder / "model.pt"), "--out",
                      str(folder / "model.npz"))
    assert done.returncode == 0, done.stderr
    assert "labels agree on 100% of 8 probes" in done.stdout
    t = np.arange(48000 * 2) / 48000
    clips = []
    for k, freq in enumerate((220.0, 440.0, 900.0)):
        path = folder / f"tone{k}.wav"
        sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t) * np.exp(-k * t), 48000,
                 subtype="PCM_16")
        clips.append(path)
    return folder / "model.npz", clips


@pytest.mark.parametrize("scheme", ["replicated", "additive"])
def test_classify_over_tcp_matches_plaintext(model_and_clips, scheme: str) -> None:
    model, clips = model_and_clips
    done = _sottovoce("classify", *map(str, clips), "--model", str(model), "--scheme", scheme,
                      "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["summary"]["agree"] == len(clips)
    assert [c["secure"] for c in out["clips"]] == [c["plaintext"] for c in out["clips"]]
    assert out["summary"]["online_rounds"] > 0
    assert all(b > 0 for b in out["summary"]["online_bytes_sent"][:2])


def test_demo_labels_equal_plaintext() -> None:
    assert BUNDLED_MODEL.is_file() and list(BUNDLED_CLIPS.glob("*.wav")), "bundled assets"
    done = _sottovoce("demo", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["summary"]["agree"] == out["summary"]["clips"] >= 6
    for clip in out["clips"]:
        assert clip["secure"] == clip["plaintext"]


def test_bad_model_file_is_a_clear_error(tmp_path: Path, model_and_clips) -> None:
    _, clips = model_and_clips
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    done = _sottovoce("classify", str(clips[0]), "--model", str(bad))
    assert done.returncode == 2
    assert "bad.pt" in done.stderr and "Traceback" not in done.stderr


def test_missing_clip_is_a_clear_error(model_and_clips, tmp_path: Path) -> None:
    model, _ = model_and_clips
    done = _sottovoce("classify", str(tmp_path / "nope.wav"), "--model", str(model))
    assert done.returncode == 2
    assert "nope.wav" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture
def classify_spy(monkeypatch: pytest.MonkeyPatch) -> dict:
    """`nn.inference.classify` replaced by one that records its arguments and stops."""
    import nn.inference

    seen: dict = {}

    def classify(model, features, **kwargs):
        seen.update(kwargs)
        raise SottovoceError("stopped by the test after classify was called")

    monkeypatch.setattr(nn.inference, "classify", classify)
    return seen


@pytest.mark.parametrize(("given", "expected"), [(None, 60.0), ("7.5", 7.5)])
def test_classify_passes_the_timeout_to_classify(model_and_clips, classify_spy, given,
                                                 expected: float) -> None:
    model, clips = model_and_clips
    args = ["classify", str(clips[0]), "--model", str(model), "--transport", "threads"]
    assert cli.main(args + (["--timeout", given] if given else [])) == 2
    assert classify_spy["timeout"] == expected
    assert classify_spy["transport"] == "threads"


def test_demo_passes_the_timeout_to_classify(classify_spy) -> None:
    assert cli.main(["demo", "--timeout", "90"]) == 2
    assert classify_spy["timeout"] == 90.0


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", "soon"])
@pytest.mark.parametrize("command", ["demo", "classify"])
def test_a_timeout_that_is_not_positive_seconds_is_refused(command: str, bad: str,
                                                           capsys) -> None:
    extra = ["clip.wav", "--model", "model.pt"] if command == "classify" else []
    with pytest.raises(SystemExit) as stopped:
        cli.build_parser().parse_args([command, *extra, "--timeout", bad])
    assert stopped.value.code == 2
    assert "positive number of seconds" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["demo", "classify"])
def test_the_timeout_help_states_unit_and_default(command: str, capsys) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--timeout SECONDS" in help_text and "(default: 60 s)" in help_text


def test_a_torch_checkpoint_given_as_model_says_how_to_convert_it(model_and_clips) -> None:
    model, clips = model_and_clips
    done = _sottovoce("classify", str(clips[0]), "--model", str(model.with_suffix(".pt")))
    assert done.returncode == 2
    assert "a torch checkpoint, not a model file" in done.stderr
    assert "sottovoce import --checkpoint" in done.stderr and "Traceback" not in done.stderr



MY_MODEL = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 2, 5, stride=4), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(2 * 9 * 87, 3)

    def forward(self, x):
        return self.head(self.body(x))
"""


def test_import_a_module_from_a_python_file_and_classify_with_it(model_and_clips,
                                                                  tmp_path: Path) -> None:
    _, clips = model_and_clips
    source = tmp_path / "my_model.py"
    source.write_text(MY_MODEL)
    spec = importlib.util.spec_from_file_location("my_model", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(5)
    torch.save(module.Tiny().state_dict(), tmp_path / "weights.pt")
    out = tmp_path / "mine.npz"
    done = _sottovoce("import", "--module", f"{source}:Tiny", "--state-dict",
                      str(tmp_path / "weights.pt"), "--labels", "low,mid,high", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.is_file() and "labels low, mid, high" in done.stdout
    done = _sottovoce("classify", *map(str, clips), "--model", str(out), "--json",
                      "--transport", "threads")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["clips"]
    assert [r["secure"] for r in rows] == [r["plaintext"] for r in rows]
    assert {r["secure"] for r in rows} <= {"low", "mid", "high"}


def test_import_refuses_weights_that_do_not_fit_naming_the_file(tmp_path: Path) -> None:
    source = tmp_path / "my_model.py"
    source.write_text(MY_MODEL)
    torch.save({"body.0.weight": torch.zeros(3)}, tmp_path / "weights.pt")
    done = _sottovoce("import", "--module", f"{source}:Tiny", "--state-dict",
                      str(tmp_path / "weights.pt"), "--out", str(tmp_path / "x.npz"))
    assert done.returncode == 2
    assert "weights.pt: the weights do not fit" in done.stderr
    assert not (tmp_path / "x.npz").exists()
