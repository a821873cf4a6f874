"""Model files (`nn.modelfile`): what is saved loads back equal, and a broken or hostile
file is a `ModelFileError` naming the file, raised before anything large is read."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_cnn
from hypothesis import given, settings
from hypothesis import strategies as st

import nn
from nn import modelfile
from nn.describe import describe
from nn.errors import ModelFileError
from nn.plain import forward


@pytest.fixture(scope="module")
def model():
    return tiny_cnn(2)[1]


@pytest.fixture
def saved(tmp_path, model) -> Path:
    return nn.save(tmp_path / "m.npz", model, {"sample_rate": 16000}, {"note": "x"})


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def test_what_is_saved_loads_back_equal(saved, model) -> None:
    loaded = nn.load(saved)
    assert describe(loaded.model) == describe(model)
    assert loaded.features == {"sample_rate": 16000} and loaded.metadata == {"note": "x"}
    x = np.random.default_rng(0).normal(size=(3, *model.input_shape))
    assert np.array_equal(forward(loaded.model, x), forward(model, x))
    assert os.stat(saved).st_mode & 0o077 == 0  # the owner's weights: owner-readable only


def test_a_public_model_or_a_wrong_name_is_not_saved(tmp_path, model) -> None:
    with pytest.raises(ModelFileError, match="a public model cannot be saved"):
        nn.save(tmp_path / "p.npz", model.public())
    with pytest.raises(ModelFileError, match=r"named \*\.npz"):
        nn.save(tmp_path / "p.pt", model)
    with pytest.raises(ModelFileError, match="plain JSON"):
        nn.save(tmp_path / "p.npz", model, metadata={"x": object()})
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_an_object_array_is_refused_without_running_it(tmp_path, saved) -> None:
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    members = _members(saved)
    name = next(n for n in members if n.startswith("bias/"))
    members[name] = _npy(np.array([Payload()], dtype=object))
    path = _write(tmp_path / "evil.npz", members)
    with pytest.raises(ModelFileError, match="cannot be read without pickle|is object") as info:
        nn.load(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    pickle.loads(pickle.dumps(Payload()))  # the payload is live: unpickling runs it
    assert marker.is_dir()


def _header(members: dict[str, bytes]) -> dict:
    raw = np.load(io.BytesIO(members["model.json.npy"]))
    return json.loads(raw.tobytes())


def _with_header(members: dict[str, bytes], header: dict) -> dict[str, bytes]:
    data = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    return {**members, "model.json.npy": _npy(data)}


BROKEN = {
    "missing array": (lambda m: {k: v for k, v in m.items() if k != "weight/0.npy"},
                      r"missing \['weight/0'\]"),
    "extra array": (lambda m: {**m, "extra.npy": _npy(np.zeros(2))}, r"unexpected \['extra'\]"),
    "wrong dtype": (lambda m: {**m, "weight/0.npy": _npy(np.zeros((2, 1, 3, 3)))},
                    "is float64"),
    "wrong shape": (lambda m: {**m, "weight/0.npy": _npy(np.zeros((2, 1, 3), np.uint64))},
                    "expected uint64"),
    "oversized member": (lambda m: {**m, "bias/0.npy": _npy(np.zeros(10**6, np.uint64))},
                         "needs at most"),
    "no header": (lambda m: {k: v for k, v in m.items() if k != "model.json.npy"},
                  "no model.json"),
    "header not JSON": (lambda m: {**m, "model.json.npy": _npy(np.frombuffer(b"{", np.uint8))},
                        "not JSON"),
    "wrong format": (lambda m: _with_header(m, {**_header(m), "format": "other/1"}),
                     "format 'other/1'"),
    "unknown field": (lambda m: _with_header(m, {**_header(m), "extra": 1}),
                      r"unknown \['extra'\]"),
    "bad description": (lambda m: _with_header(m, {**_header(m), "model": {
        **_header(m)["model"], "frac_bits": -1}}), "frac_bits"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_model_file_names_the_file_and_the_problem(tmp_path, saved, case) -> None:
    change, message = BROKEN[case]
    path = _write(tmp_path / "broken.npz", change(_members(saved)))
    with pytest.raises(ModelFileError, match=message) as info:
        nn.load(path)
    assert str(path) in str(info.value)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_corrupted_bytes_are_a_model_file_error_or_load(data, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    blob = bytearray(nn.save(folder / "ok.npz", tiny_cnn(1)[1]).read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[:data.draw(st.integers(0, len(blob)), label="keep")]
    for _ in range(data.draw(st.integers(1, 6), label="corruptions")):
        if blob:
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    path = folder / "fuzz.npz"
    path.write_bytes(bytes(blob))
    try:
        modelfile.load(path)
    except ModelFileError as exc:
        assert str(path) in str(exc)


def test_a_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(ModelFileError, match="model file not found"):
        nn.load(tmp_path / "nope.npz")
