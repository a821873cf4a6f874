"""Claims of SECURITY.md that no other test checked (issue 10, part 4).

* Every random value of a secure classification comes from the AES-CTR PRG: with numpy's
  and the standard library's generators patched to fail, a classification runs under every
  scheme and gives the same labels.
* Nothing secret reaches logs or error messages: a classification with every logger at
  DEBUG leaves no record holding a feature, weight or message word; the errors of an aborted
  run (a tampered message under each active scheme) and of refused preprocessing or frames
  hold no array contents.
* The batch limit (`mpc.limits.MAX_BATCH`) is enforced with a clear ValueError.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
from conftest import ACTIVE_SCHEMES, tiny_cnn

from mpc.errors import CheatingDetected, PreprocessingError, ProtocolError, SottovoceError
from mpc.limits import MAX_BATCH
from mpc.net import framing
from nn.inference import classify
from protocols import registry
from protocols.preprocessing.correlations import Request
from protocols.preprocessing.store import MaterialStore
from protocols.testing.tamper import Tamper

SCHEMES = tuple(registry.SCHEMES)


@pytest.fixture(scope="module")
def tiny():
    _, model, features = tiny_cnn(2)
    return model, features


# -- randomness ---------------------------------------------------------------------------------
class _NotAllowed(AssertionError):
    pass


def _forbidden(name: str):
    def call(*args, **kwargs):
        raise _NotAllowed(f"{name} was called during a secure computation")
    return call


def _patch_generators(monkeypatch) -> list[str]:
    """Make every public function and generator class of numpy.random and random raise."""
    patched = []
    for name in dir(np.random):
        if name.startswith("_") or not callable(getattr(np.random, name)):
            continue
        monkeypatch.setattr(np.random, name, _forbidden(f"numpy.random.{name}"))
        patched.append(f"numpy.random.{name}")
    for name in ("random", "randint", "randrange", "getrandbits", "randbytes", "choice",
                 "choices", "shuffle", "sample", "uniform", "gauss", "normalvariate", "seed",
                 "Random", "SystemRandom"):
        monkeypatch.setattr(random, name, _forbidden(f"random.{name}"))
        patched.append(f"random.{name}")
    return patched


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_random_value_comes_from_the_aes_prg(tiny, monkeypatch, scheme):
    model, features = tiny
    expected = classify(model, features, scheme=scheme).labels
    patched = _patch_generators(monkeypatch)
    assert "numpy.random.default_rng" in patched and "numpy.random.randint" in patched
    with pytest.raises(_NotAllowed):  # the patch is live
        np.random.default_rng(0)
    result = classify(model, features, scheme=scheme)
    assert np.array_equal(result.labels, expected)


# -- logs and error messages --------------------------------------------------------------------
def _secret_strings(*arrays: np.ndarray, limit: int = 2000) -> set[str]:
    """Decimal (and hex) spellings of words that could not appear by chance in a message:
    at least six digits."""
    out: set[str] = set()
    for array in arrays:
        flat = np.asarray(array).reshape(-1)[:limit]
        for value in flat.tolist():
            text = repr(value)
            if len(text.lstrip("-").replace(".", "")) >= 6:
                out.add(text)
                if isinstance(value, int):
                    out.add(hex(value))
    return out


class _Recorder:
    """A `protocols.run` hook that keeps a copy of every message a party sends."""

    def __init__(self) -> None:
        self.sent: list[np.ndarray] = []

    def __call__(self, runtime) -> None:
        channel = runtime.channel
        original = channel._send

        def send(peer, array):
            self.sent.append(np.array(array, copy=True))
            original(peer, array)

        channel._send = send


def test_no_secret_in_logs_at_debug_level(tiny, caplog, monkeypatch):
    import protocols.run as run_module

    model, features = tiny
    recorder = _Recorder()
    original_run = run_module.run
    monkeypatch.setattr("nn.inference.run",
                        lambda *a, **k: original_run(*a, **{**k, "hook": recorder}))
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    levels = [logger.level for logger in loggers]
    try:
        with caplog.at_level(logging.DEBUG):  # the root logger, and every named one below
            for logger in loggers:
                logger.setLevel(logging.DEBUG)
            result = classify(model, features, scheme="replicated")
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    assert recorder.sent, "the recorder saw no messages"
    weights = [layer.weight for layer in model.layers if getattr(layer, "weight", None)
               is not None]
    secrets = _secret_strings(model.fixed.encode(features), features, *weights,
                              *recorder.sent)
    assert len(secrets) > 100
    text = "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records)
    leaked = [s for s in secrets if s in text]
    assert not leaked, leaked[:5]
    assert result.labels is not None


@pytest.mark.parametrize("scheme", ACTIVE_SCHEMES)
def test_an_aborted_run_names_the_check_but_no_values(tiny, scheme):
    model, features = tiny
    recorder = _Recorder()
    tamper = Tamper(party=1, message_index=3, delta=12345)

    def hook(runtime):
        recorder(runtime)
        tamper(runtime)

    import protocols.run as run_module
    from nn.layers import MODEL_OWNER
    from nn.model import CLIENT, PrivateInference

    n = registry.SCHEMES[scheme].parties
    encoded = model.fixed.encode(features)
    programs = [PrivateInference(model if p == MODEL_OWNER else model.public(),
                                 encoded if p == CLIENT else None, len(features))
                for p in range(n)]
    with pytest.raises(SottovoceError) as info:
        run_module.run(scheme, programs, transport="threads", timeout=10, hook=hook)
    assert isinstance(info.value, CheatingDetected), info.value
    text = "\n".join([str(info.value), *getattr(info.value, "__notes__", ())])
    secrets = _secret_strings(encoded, *recorder.sent)
    assert not [s for s in secrets if s in text], text


def test_refused_material_and_frames_describe_shapes_not_contents():
    secret = np.array([1234567891234, 9876543219876, 5555555555555], dtype=np.uint64)
    store = MaterialStore()
    store.add(Request("trunc", (3,)), {"r": secret})
    with pytest.raises(PreprocessingError) as info:
        store.take(Request("trunc", (4,)))
    frame = bytearray(framing.encode(secret, 0))
    frame[16] ^= 1  # the declared length no longer matches the shape
    with pytest.raises(ProtocolError) as frame_info:
        framing.decode(bytes(frame), 0)
    for error in (info.value, frame_info.value):
        assert not [s for s in _secret_strings(secret) if s in str(error)], str(error)


# -- limits -------------------------------------------------------------------------------------
def test_a_batch_above_the_maximum_is_refused(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match=f"a batch of {MAX_BATCH + 1} examples; classify "
                                         f"takes 1..{MAX_BATCH}"):
        classify(model, np.zeros((MAX_BATCH + 1, 1, 6, 6)))
    with pytest.raises(ValueError, match="a batch of 0 examples"):
        classify(model, np.zeros((0, 1, 6, 6)))
