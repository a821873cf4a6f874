"""Hostile and broken input through the public entry points (issue 10, part 2).

Every input either works or raises one documented error type, naming the file where there
is one, and nothing is half-written:

* audio files, `audio.load` (and `sottovoce classify`): `AudioError`;
* training checkpoints, `experiments.modelfile.import_checkpoint` (what `sottovoce import
  --checkpoint` reads): `ConfigError` (file problems) or `nn.errors.ModelImportError`
  (weights the secure model cannot represent); model files, the `.npz` that inference
  reads, are fuzzed in tests/nn/test_modelfile.py;
* cluster files, `mpc.cluster.load_cluster`: `ConfigError`;
* wire frames, `mpc.net.framing.decode` and the TCP reader `mpc.net.tcp._read_frame`:
  `ProtocolError` (or `PeerLost` for a stream cut short).

Already covered elsewhere, not repeated here: truncated WAV/FLAC/Ogg, a wrong RIFF header,
zero-length files, NaN/inf samples, huge declared WAV and FLAC lengths, 8-bit unsigned and
32-bit float WAV, 6 channels (tests/audio/test_loading.py: test_truncated_wav,
test_truncated_flac_ogg, test_wrong_header, test_zero_length_file, test_nan_samples,
test_huge_declared_length_does_not_allocate, test_huge_declared_flac_length_rejected_before_
decoding, test_load_formats_rates_channels); a missing cluster party, duplicate ports and
missing certificate paths (tests/mpc/test_cluster.py: test_cluster_validation_errors); every
header field of a frame set to a bad value, one at a time, and random corruption of frames
(tests/mpc/test_framing.py: test_corrupt_header_fields, test_random_corruption_is_protocol_error_
or_decodes, test_arbitrary_bytes_never_crash); a model file that is not a model
(tests/experiments/test_cli.py: test_bad_model_file_is_a_clear_error).

Hypothesis runs a bounded number of examples; `SOTTOVOCE_FUZZ_LONG=1` multiplies them by 50.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import audio
from audio import FeatureConfig
from audio.errors import AudioError
from experiments.modelfile import import_checkpoint, save_model
from experiments.models import reference_cnn
from mpc import cluster
from mpc.errors import ConfigError, PeerLost, ProtocolError, SottovoceError
from mpc.net import framing, tcp
from mpc.net.certs import make_certificates
from nn.errors import ModelImportError

LONG = os.environ.get("SOTTOVOCE_FUZZ_LONG") == "1"
CLI = [sys.executable, "-m", "experiments.cli"]


def examples(n: int) -> settings:
    return settings(max_examples=n * (50 if LONG else 1), deadline=None, derandomize=not LONG,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def _tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def _loads_or_audio_error(path: Path) -> np.ndarray | None:
    """`audio.load` either gives a finite mono float32 signal or an AudioError naming the file."""
    try:
        signal = audio.load(path)
    except AudioError as exc:
        assert str(path) in str(exc), exc
        return None
    assert signal.dtype == np.float32 and signal.ndim == 1 and signal.size > 0
    assert np.all(np.isfinite(signal))
    return signal


# -- audio ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("clips")
    out = {}
    for fmt, ext, subtype in (("WAV", "wav", "PCM_16"), ("WAV", "wav", "FLOAT"),
                              ("FLAC", "flac", "PCM_16"), ("OGG", "ogg", "VORBIS")):
        path = folder / f"c.{ext}"
        sf.write(path, _tone(0.5, 16000), 16000, format=fmt, subtype=subtype)
        out[f"{subtype}.{ext}"] = path.read_bytes()
    return out


@given(data=st.data())
@examples(40)
def test_truncated_or_corrupted_audio_is_an_audio_error_or_decodes(clips, tmp_path, data):
    name = data.draw(st.sampled_from(sorted(clips)), label="format")
    blob = bytearray(clips[name])
    cut = data.draw(st.integers(0, len(blob)), label="keep bytes")
    blob = blob[:cut]
    for _ in range(data.draw(st.integers(0, 4), label="corruptions")):
        if blob:
            where = data.draw(st.integers(0, min(len(blob) - 1, 80)), label="header byte")
            blob[where] = data.draw(st.integers(0, 255))
    path = tmp_path / f"fuzz.{name.split('.')[-1]}"
    path.write_bytes(bytes(blob))
    _loads_or_audio_error(path)


def test_8_bit_signed_and_32_bit_float_with_six_channels(tmp_path):
    aiff = tmp_path / "s8.aiff"
    sf.write(aiff, _tone(1.0, 16000), 16000, format="AIFF", subtype="PCM_S8")
    wav = tmp_path / "f32x6.wav"
    sf.write(wav, _tone(1.0, 22050, channels=6), 22050, subtype="FLOAT")
    for path in (aiff, wav):
        signal = audio.load(path)
        assert abs(signal.size - 16000) <= 2 and 0.3 < np.abs(signal).max() < 0.5


def test_float_samples_far_outside_the_unit_range_still_give_finite_features(tmp_path):
    path = tmp_path / "loud.wav"
    sf.write(path, _tone(1.0, 16000) * np.float32(1e30), 16000, subtype="FLOAT")
    assert np.all(np.isfinite(audio.features(audio.load(path))))


@pytest.mark.parametrize("rate, seconds", [(1, 3.0), (2000, 1.0), (400000, 0.5)])
def test_sample_rates_outside_the_supported_range_are_refused(tmp_path, rate, seconds):
    path = tmp_path / f"rate{rate}.wav"
    sf.write(path, np.full(max(1, int(rate * seconds)), 0.1, dtype=np.float32), rate,
             subtype="FLOAT")
    with pytest.raises(AudioError, match=f"sample rate {rate} Hz is outside") as info:
        audio.load(path)
    assert str(path) in str(info.value)


def test_384_khz_is_resampled(tmp_path):
    path = tmp_path / "hi.wav"
    sf.write(path, _tone(1.0, 384000), 384000, subtype="FLOAT")
    signal = audio.load(path)
    assert abs(signal.size - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(signal.size)))
    assert abs(np.fft.rfftfreq(signal.size, 1 / 16000)[spectrum.argmax()] - 440) < 3


def test_a_two_hour_clip_is_refused_from_its_header(tmp_path):
    """A complete, consistent WAV of 2 hours (sparse on disk) is refused by its declared
    length before anything is decoded or allocated."""
    rate, seconds = 8000, 2 * 3600
    path = tmp_path / "two-hours.wav"
    sf.write(path, np.zeros(8000, dtype=np.int16), rate, subtype="PCM_16")
    data_bytes = rate * seconds * 2
    head = bytearray(path.read_bytes()[:44])
    assert head[36:40] == b"data"
    struct.pack_into("<I", head, 4, 36 + data_bytes)
    struct.pack_into("<I", head, 40, data_bytes)
    with open(path, "r+b") as handle:
        handle.write(head)
        handle.truncate(44 + data_bytes)  # a hole: no disk space used
    assert sf.info(str(path)).duration == pytest.approx(seconds)
    with pytest.raises(AudioError, match=r"clip too long: 7200\.00 s declared, maximum is 60"):
        audio.load(path)


# -- training checkpoints ------------------------------------------------------------------------
def _model_dict(num_classes: int = 3) -> dict:
    torch.manual_seed(5)
    return {"state_dict": reference_cnn(num_classes).state_dict(), "num_classes": num_classes,
            "labels": [str(i) for i in range(num_classes)],
            "feature_config": FeatureConfig().to_dict(), "architecture": "reference_cnn"}


def _save(tmp_path: Path, data: dict, name: str = "model.pt") -> Path:
    path = tmp_path / name
    torch.save(data, path)
    return path


def _last_weight(state: dict) -> str:
    return [k for k in state if k.endswith(".weight")][-1]


def _broken(case: str) -> dict:
    data = _model_dict()
    state = data["state_dict"]
    last = _last_weight(state)
    if case == "wrong shape":
        state[last] = torch.zeros(5, 64)
    elif case == "missing top-level key":
        del data["labels"]
    elif case == "missing weight":
        del state[last]
    elif case == "extra weight":
        state["12.weight"] = torch.zeros(3)
    elif case == "NaN weight":
        state[last][0, 0] = float("nan")
    elif case == "infinite bias":
        state[last.replace("weight", "bias")][1] = float("inf")
    elif case == "wrong architecture":
        data["architecture"] = "resnet"
    elif case == "bad feature config":
        data["feature_config"] = {**data["feature_config"], "n_mels": -1}
    elif case == "not a dict":
        return [1, 2, 3]  # type: ignore[return-value]
    return data


@pytest.mark.parametrize("case, message", [
    ("wrong shape", "do not fit the architecture"),
    ("missing top-level key", r"missing keys \['labels'\]"),
    ("missing weight", "do not fit the architecture"),
    ("extra weight", "do not fit the architecture"),
    ("NaN weight", "non-finite values"),
    ("infinite bias", "non-finite values"),
    ("wrong architecture", "is not 'reference_cnn'"),
    ("bad feature config", "bad feature_config"),
    ("not a dict", "expected a dict"),
])
def test_broken_model_files_are_config_errors_naming_the_file(tmp_path, case, message):
    path = _save(tmp_path, _broken(case))
    with pytest.raises(ConfigError, match=message) as info:
        import_checkpoint(path, check=False)
    assert str(path) in str(info.value)


def test_weights_beyond_the_fixed_point_range_are_refused(tmp_path):
    data = _model_dict()
    last = _last_weight(data["state_dict"])
    data["state_dict"][last] = data["state_dict"][last] * 1e16  # encodings past 2^47
    path = _save(tmp_path, data)
    with pytest.raises(ModelImportError, match="out of fixed-point range") as info:
        import_checkpoint(path, check=False)
    assert str(path) in str(info.value)  # the error names the model file


class _Payload:
    """Unpickling this calls os.mkdir(marker): proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickled_object_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    data = _model_dict()
    data["labels"] = _Payload(marker)
    path = _save(tmp_path, data)
    with pytest.raises(ConfigError, match="not a loadable weights-only model file") as info:
        import_checkpoint(path, check=False)
    assert str(path) in str(info.value)
    assert not marker.exists(), "the payload ran while loading the model"
    # the payload is live: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.is_dir()


@given(data=st.data())
@examples(15)
def test_corrupted_model_files_are_config_errors_or_load(tmp_path, data):
    blob = bytearray(_model_bytes())
    cut = data.draw(st.integers(0, len(blob)), label="keep bytes")
    blob = blob[:cut] if data.draw(st.booleans(), label="truncate") else blob
    for _ in range(data.draw(st.integers(1, 6), label="corruptions")):
        if blob:
            where = data.draw(st.integers(0, len(blob) - 1), label="byte")
            blob[where] ^= data.draw(st.integers(1, 255))
    path = tmp_path / "fuzz.pt"
    path.write_bytes(bytes(blob))
    try:
        import_checkpoint(path, check=False)
    except ConfigError as exc:
        assert str(path) in str(exc)
    except ModelImportError:
        pass  # a flipped exponent bit can push a weight out of the fixed-point range


_MODEL_BYTES: list[bytes] = []


def _model_bytes() -> bytes:
    if not _MODEL_BYTES:
        buffer = io.BytesIO()
        torch.save(_model_dict(2), buffer)
        _MODEL_BYTES.append(buffer.getvalue())
    return _MODEL_BYTES[0]


def test_a_bad_clip_through_the_command_line_prints_nothing_on_stdout(tmp_path):
    """`sottovoce classify --json` with one good and one NaN clip: exit 2, the bad file
    named on stderr, no JSON (not even for the good clip) on stdout."""
    model = save_model(tmp_path / "model.npz",
                       import_checkpoint(_save(tmp_path, _model_dict()), check=False).loaded)
    good, bad = tmp_path / "good.wav", tmp_path / "bad.wav"
    sf.write(good, _tone(1.0, 16000), 16000, subtype="PCM_16")
    samples = _tone(1.0, 16000)
    samples[100] = np.nan
    sf.write(bad, samples, 16000, subtype="FLOAT")
    done = subprocess.run([*CLI, "classify", str(good), str(bad), "--model", str(model),
                           "--json", "--transport", "threads"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "bad.wav" in done.stderr and "NaN" in done.stderr
    assert "Traceback" not in done.stderr


# -- cluster files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster_text(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("cluster")
    make_certificates(folder / "certs", 3)
    path = cluster.write_cluster(folder / "cluster.toml", 3, cert_dir=folder / "certs",
                                 base_port=9300)
    return folder, path.read_text()


@given(data=st.data())
@examples(60)
def test_mutated_cluster_files_are_config_errors_or_load(cluster_text, data):
    folder, text = cluster_text
    lines = text.splitlines()
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        k = data.draw(st.integers(0, len(lines) - 1), label="line")
        edit = data.draw(st.sampled_from(["drop", "duplicate", "value", "garbage"]))
        if edit == "drop":
            del lines[k]
        elif edit == "duplicate":
            lines.insert(k, lines[k])
        elif edit == "value" and "=" in lines[k]:
            key = lines[k].split("=")[0]
            value = data.draw(st.sampled_from(['""', "0", "-3", "70000", "1e400", "true",
                                               '"../../../etc/passwd"', '"certs"', "[1, 2]",
                                               '"party-9.pem"', "{a = 1}", "nan"]))
            lines[k] = f"{key}= {value}"
        else:
            lines[k] = data.draw(st.text(max_size=30), label="garbage line")
        if not lines:
            break
    path = folder / "fuzz.toml"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "replace"))
    try:
        loaded = cluster.load_cluster(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
        return
    assert sorted(loaded.parties) == list(range(loaded.n_endpoints))
    assert len({spec.address for spec in loaded.parties.values()}) == loaded.n_endpoints


def test_cluster_paths_that_are_not_files(cluster_text, tmp_path):
    folder, text = cluster_text
    # a directory where a certificate should be, and a cluster "file" that is a directory
    bad = text.replace('certs/party-1.pem"', 'certs"', 1)
    path = folder / "dir-cert.toml"
    path.write_text(bad)
    with pytest.raises(ConfigError, match=r"party 1 cert file .* does not exist"):
        cluster.load_cluster(path)
    with pytest.raises(ConfigError, match="cannot read the cluster file"):
        cluster.load_cluster(tmp_path)
    raw = folder / "latin1.toml"
    raw.write_bytes(text.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        cluster.load_cluster(raw)


def test_a_certificate_path_to_a_file_that_is_not_a_certificate(cluster_text, tmp_path):
    """The file exists (so the cluster file loads) but holds no certificate: starting the
    party is a ConfigError naming the file, not an ssl traceback."""
    folder, text = cluster_text
    junk = folder / "junk.pem"
    junk.write_text("not a certificate\n")
    path = folder / "junk-cert.toml"
    path.write_text(text.replace('certs/party-0.pem"', 'junk.pem"', 1))
    spec = cluster.load_cluster(path)
    listener = tcp.listen(("127.0.0.1", 0))
    with pytest.raises(ConfigError, match="junk.pem"):
        cluster.start_party(spec, 0, listener=listener)


# -- wire frames on a live stream -------------------------------------------------------------
_FIELDS = {"magic": (0, "2s"), "version": (2, "B"), "dtype": (3, "B"), "ndim": (4, "B"),
           "sequence": (8, "Q"), "length": (16, "Q")}


@given(data=st.data())
@examples(150)
def test_a_frame_with_any_header_field_corrupted_on_a_socket(data):
    """The TCP reader (not just `framing.decode`) meets a frame with one header field (or one
    shape dimension) replaced: a ProtocolError before any large allocation, PeerLost when the
    stream ends short of what the header promised, or an array exactly as declared."""
    array = np.arange(6, dtype=np.uint64).reshape(2, 3)
    frame = bytearray(framing.encode(array, 0))
    field = data.draw(st.sampled_from([*_FIELDS, "shape"]), label="field")
    if field == "shape":
        offset, fmt = framing.HEADER_SIZE + 8 * data.draw(st.integers(0, 1)), "Q"
    else:
        offset, fmt = _FIELDS[field]
    size = struct.calcsize(fmt)
    if fmt == "2s":
        value = data.draw(st.binary(min_size=2, max_size=2))
    else:
        value = data.draw(st.one_of(st.integers(0, 16), st.integers(0, 2 ** (8 * size) - 1)))
    original = struct.unpack_from("<" + fmt, frame, offset)[0]
    assume(value != original)
    struct.pack_into("<" + fmt, frame, offset, value)
    reader, writer = socket.socketpair()
    try:
        writer.sendall(bytes(frame))
        writer.shutdown(socket.SHUT_WR)
        reader.settimeout(5)
        try:
            got = tcp._read_frame(reader, 0, max_payload=1 << 20)
        except (ProtocolError, PeerLost):
            return
        assert got is not None and got.nbytes <= 1 << 20
        assert got.nbytes == struct.unpack_from("<Q", frame, 16)[0]
    finally:
        reader.close()
        writer.close()


def test_every_error_type_here_is_a_sottovoce_error():
    for error in (AudioError, ConfigError, ProtocolError, PeerLost, ModelImportError):
        assert issubclass(error, SottovoceError)
