"""Dataset readers on synthetic trees, and the bundled model and demo clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import audio
from audio.datasets import (
    HEDGEWARS_LABELS,
    HEDGEWARS_PHRASES,
    audio_fingerprint,
    dedupe,
    hedgewars_clips,
    hedgewars_group,
    parse_ravdess_name,
    ravdess_clips,
    split_by_group,
)
from audio.errors import AudioError, SplitLeakError

ASSETS = Path(__file__).resolve().parents[2] / "experiments" / "assets"


def write_tone(path: Path, freq: float, rate: int = 16000, seconds: float = 0.3,
               fmt: str | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format=fmt)


# --------------------------------------------------------------------------------------------
# RAVDESS
# --------------------------------------------------------------------------------------------

def test_parse_ravdess_name():
    m = parse_ravdess_name("03-01-05-02-01-02-13.wav")
    assert m["modality"] == 3 and m["modality_label"] == "audio-only"
    assert m["vocal_channel_label"] == "speech"
    assert m["emotion"] == 5 and m["emotion_label"] == "angry"
    assert m["intensity_label"] == "strong"
    assert m["statement_text"] == "Kids are talking by the door"
    assert m["repetition"] == 2 and m["actor"] == 13 and m["sex"] == "male"
    names = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    for code, name in enumerate(names, start=1):
        assert parse_ravdess_name(f"03-01-{code:02d}-01-02-01-24.wav")["emotion_label"] == name
    assert parse_ravdess_name("/x/Actor_24/03-01-08-01-02-01-24.WAV")["sex"] == "female"


@pytest.mark.parametrize("bad", ["03-01-09-01-01-01-01.wav", "03-01-05-03-01-01-01.wav",
                                 "03-01-05-01-01-01-25.wav", "03-01-05-01-01.wav",
                                 "notes.txt", "04-01-05-01-01-01-01.wav"])
def test_parse_ravdess_rejects(bad):
    with pytest.raises(ValueError):
        parse_ravdess_name(bad)


def make_ravdess(root: Path, actors=(1, 2, 3, 4)) -> None:
    for a in actors:
        for emo in (1, 3, 5):
            for rep in (1, 2):
                name = f"03-01-{emo:02d}-01-01-{rep:02d}-{a:02d}.wav"
                write_tone(root / f"Actor_{a:02d}" / name, 200 + 10 * a + emo + 0.5 * rep)
        write_tone(root / f"Actor_{a:02d}" / f"03-02-03-01-01-01-{a:02d}.wav", 900 + a)  # song
    (root / "README.txt").write_text("not audio")


def test_ravdess_reader_and_actor_split(tmp_path):
    make_ravdess(tmp_path)
    clips = ravdess_clips(tmp_path)
    assert len(clips) == 4 * 3 * 2  # song files skipped
    assert {c.label for c in clips} == {"neutral", "happy", "angry"}
    assert {c.group for c in clips} == {f"Actor_{a:02d}" for a in (1, 2, 3, 4)}
    assert len(ravdess_clips(tmp_path, speech_only=False)) == 28
    train, test = split_by_group(clips, ["Actor_03", "Actor_04"])
    assert len(train) == len(test) == 12
    assert {c.speaker for c in train}.isdisjoint({c.speaker for c in test})
    with pytest.raises(ValueError):
        split_by_group(clips, ["Actor_09"])
    with pytest.raises(AudioError):
        ravdess_clips(tmp_path / "missing")
    # the features pipeline reads them
    f = audio.features(audio.load(clips[0].path))
    assert f.shape == (1, 40, 350)


def test_ravdess_duplicate_across_actors_raises(tmp_path):
    make_ravdess(tmp_path, actors=(1, 2))
    src = tmp_path / "Actor_01" / "03-01-03-01-01-01-01.wav"
    (tmp_path / "Actor_02" / "03-01-03-01-01-01-02.wav").write_bytes(src.read_bytes())
    with pytest.raises(SplitLeakError, match="03-01-03-01-01-01-0"):
        split_by_group(ravdess_clips(tmp_path), ["Actor_02"])


# --------------------------------------------------------------------------------------------
# Hedgewars
# --------------------------------------------------------------------------------------------

def make_hedgewars(root: Path) -> None:
    """Fake voices tree: Classic/Default/Default_uk share files, Pirate and British not."""
    phrases = ["Laugh", "Traitor", "Incoming", "Nooo", "Oops", "Hello", "Jump1", "Melon"]
    for i, pack in enumerate(["Default", "Pirate", "British"]):
        for j, ph in enumerate(phrases):
            write_tone(root / pack / f"{ph}.ogg", 150 + 40 * i + 7 * j, rate=44100,
                       fmt="OGG")
    # Classic shares two files with Default, Default_uk one; plus own recordings
    for ph in ("Laugh", "Traitor"):
        (root / "Classic").mkdir(exist_ok=True)
        (root / "Classic" / f"{ph}.ogg").write_bytes((root / "Default" / f"{ph}.ogg").read_bytes())
    write_tone(root / "Classic" / "hello.ogg", 555, rate=44100, fmt="OGG")  # lower case name
    (root / "Default_uk").mkdir()
    (root / "Default_uk" / "Nooo.ogg").write_bytes((root / "Default" / "Nooo.ogg").read_bytes())
    write_tone(root / "Default_uk" / "Uh-oh.ogg", 610, rate=44100, fmt="OGG")
    (root / "Pirate" / "notes.txt").write_text("x")


def test_hedgewars_reader(tmp_path):
    make_hedgewars(tmp_path)
    clips = hedgewars_clips(tmp_path)
    by = {(c.speaker, c.meta["phrase"]): c for c in clips}
    assert ("Pirate", "Jump1") not in by and ("Pirate", "Melon") not in by  # unmapped phrases
    assert by[("Pirate", "Laugh")].label == "happy"
    assert by[("Pirate", "Traitor")].label == "angry"
    assert by[("Pirate", "Incoming")].label == "fearful"
    assert by[("Pirate", "Nooo")].label == "sad"
    assert by[("Pirate", "Oops")].label == "surprised"
    assert by[("Classic", "hello")].label == "neutral"  # case-insensitive match
    assert by[("Default_uk", "Uh-oh")].label == "fearful"
    assert {c.group for c in clips} == {"Default", "Pirate", "British"}
    assert by[("Classic", "Laugh")].group == "Default" == by[("Default_uk", "Nooo")].group
    assert len(clips) == 3 * 6 + 3 + 2
    assert len(dedupe(clips)) == len(clips) - 3


def test_hedgewars_split_and_duplicate_detection(tmp_path):
    make_hedgewars(tmp_path)
    clips = hedgewars_clips(tmp_path)
    train, test = split_by_group(clips, ["Pirate", "British"])
    assert {c.group for c in train} == {"Default"}
    assert len(test) == 12
    # holding out the shared group is fine: duplicates stay on one side
    train, test = split_by_group(clips, ["Default"])
    assert {c.speaker for c in test} == {"Default", "Classic", "Default_uk"}
    # splitting by pack instead of voice group puts identical audio on both sides
    import dataclasses

    by_pack = [dataclasses.replace(c, group=c.speaker) for c in clips]
    with pytest.raises(SplitLeakError, match="Classic"):
        split_by_group(by_pack, ["Classic"])
    with pytest.raises(SplitLeakError):
        split_by_group(by_pack, ["Default_uk"], kind="samples")


def test_fingerprints(tmp_path):
    a, b = tmp_path / "a.wav", tmp_path / "b.flac"
    write_tone(a, 300)
    sf.write(b, sf.read(a, dtype="float32")[0], 16000, format="FLAC", subtype="PCM_16")
    assert audio_fingerprint(a) != audio_fingerprint(b)
    assert audio_fingerprint(a, "samples") == audio_fingerprint(b, "samples")
    with pytest.raises(ValueError):
        audio_fingerprint(a, "md5")


def test_hedgewars_constants():
    assert set(HEDGEWARS_LABELS) == set(HEDGEWARS_PHRASES)
    phrases = [p.lower() for ps in HEDGEWARS_PHRASES.values() for p in ps]
    assert len(phrases) == len(set(phrases)) == 31
    assert hedgewars_group("CLASSIC") == "Default" and hedgewars_group("Pirate") == "Pirate"
    with pytest.raises(AudioError, match="fetch_hedgewars"):
        hedgewars_clips("/nonexistent/voices")


def test_fetch_ar_parser():
    from audio.errors import FetchError
    from audio.fetch_hedgewars import _ar_members
    from mpc.errors import SottovoceError

    blob = b"!<arch>\n"
    for name, data in [(b"debian-binary", b"2.0\n"), (b"data.tar.xz", b"abc")]:
        header = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) * 2 + b"100644".ljust(8)
        header += str(len(data)).encode().ljust(10) + b"`\n"
        blob += header + data + (b"\n" if len(data) % 2 else b"")
    members = _ar_members(blob)
    assert members == {"debian-binary": b"2.0\n", "data.tar.xz": b"abc"}
    with pytest.raises(FetchError):
        _ar_members(b"not an archive")
    assert issubclass(FetchError, SottovoceError) and issubclass(FetchError, RuntimeError)


# --------------------------------------------------------------------------------------------
# Bundled model and clips
# --------------------------------------------------------------------------------------------

def test_bundled_model_and_clips():
    torch = pytest.importorskip("torch")
    from experiments.models import load_model, predict_logits

    path = ASSETS / "model.pt"
    assert path.stat().st_size < 3_000_000
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["architecture"] == "reference_cnn"
    assert saved["num_classes"] == len(saved["labels"]) == 6
    assert all(v.dtype in (torch.float32, torch.int64) for v in saved["state_dict"].values())
    assert 0.0 <= saved["heldout"]["accuracy"] <= 1.0
    config = audio.FeatureConfig.from_dict(saved["feature_config"])
    assert config.shape == (1, 40, 350)
    model, _ = load_model(path)
    types = {type(m).__name__ for m in model}
    assert types <= {"BatchNorm2d", "Conv2d", "ReLU", "AvgPool2d", "Flatten", "Dropout",
                     "Linear"}

    clip_dir = ASSETS / "clips"
    table = json.loads((clip_dir / "labels.json").read_text())
    assert 6 <= len(table) <= 8
    assert (clip_dir / "LICENSE.md").exists()
    for name, entry in table.items():
        info = sf.info(clip_dir / name)
        assert (info.samplerate, info.channels, info.subtype) == (48000, 1, "PCM_16")
        assert entry["label"] in saved["labels"]
        feats = audio.features(audio.load(clip_dir / name, config.sample_rate), config)
        pred = saved["labels"][int(predict_logits(model, feats).argmax())]
        assert pred == entry["predicted"], name


def test_bundled_model_figures_are_the_recorded_ones():
    """The model file's held-out figures are the README's and those of the training run's
    results/train/metrics.json and cv.json (committed with the model).

    Retraining is not part of the test suite (minutes on 2 cores).
    """
    import torch

    root = ASSETS.parents[1]
    heldout = torch.load(ASSETS / "model.pt", map_location="cpu", weights_only=True)["heldout"]
    matrix = np.array(heldout["confusion"])
    assert matrix.sum() == heldout["clips"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(heldout["accuracy"])
    per_group = heldout["per_group"]
    assert sum(g["clips"] for g in per_group.values()) == heldout["clips"]
    assert sum(g["accuracy"] * g["clips"] for g in per_group.values()) == pytest.approx(
        heldout["accuracy"] * heldout["clips"])
    readme = (root / "README.md").read_text()
    assert f"**{100 * heldout['accuracy']:.1f} %**" in readme
    assert f"{100 * heldout['balanced_accuracy']:.1f} %" in readme
    for g in per_group.values():
        assert f"{100 * g['accuracy']:.1f} %" in readme
    results = root / "results" / "train"
    assert heldout == json.loads((results / "metrics.json").read_text())
    cv = json.loads((results / "cv.json").read_text())
    assert f"**{100 * cv['accuracy']:.1f} %**" in readme
