"""Deployment integrity: one deviating compute party cannot change what goes in or comes out.

Every role of a deployment runs as a thread (`experiments.deploy.run_deployment`) and
compute party 1 follows the protocol in every step except one: it shifts its share of the
client's features or of the owner's weights right after they enter, or it alters one of the
arrays it sends to the client. Under every active scheme each deviation ends in an error
(`CheatingDetected` at the compute parties or a refusal at the client), never in labels;
and whether the client refuses does not depend on the label (no selective-failure bit).
Under the passive schemes the same deviation changes the label undetected: they protect
privacy only, as SECURITY.md says.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest

from experiments.deploy import Roles, run_deployment
from experiments.modelfile import BUNDLED_CLIPS, BUNDLED_MODEL, load_model, plaintext_logits
from mpc.errors import CheatingDetected, ProtocolError
from protocols import registry

ACTIVE = [s.name for s in registry.SCHEMES.values() if s.active]
PASSIVE = [s.name for s in registry.SCHEMES.values() if not s.active]
DEVIANT = 1
LOADED = load_model(BUNDLED_MODEL, check=False)
CLIPS = sorted(BUNDLED_CLIPS.glob("*.wav"))


def _plaintext(clips) -> list[str]:
    import audio

    config = LOADED.feature_config
    features = np.stack([audio.features(audio.load(c, sample_rate=config.sample_rate), config)
                         for c in clips])
    return [LOADED.labels[i] for i in plaintext_logits(LOADED, features).argmax(axis=1)]


def _deploy(scheme: str, clips, hooks=None) -> list[str]:
    return run_deployment(scheme, LOADED.secure, LOADED.feature_config.to_dict(), clips,
                          timeout=60.0, hooks=hooks)


def _shift_input(monkeypatch, scheme: str, source: str, position: int, delta: int) -> None:
    """Party DEVIANT adds `delta` to word `position` of its share of the value entered by
    `source` ("client" or "model owner"), right after `input_external`."""
    cls = registry.get(scheme).protocol
    roles = Roles.for_scheme(registry.get(scheme))
    endpoint = roles.client if source == "client" else roles.model_owner
    original = cls.input_external

    def deviating(self, src: int, shape: tuple[int, ...]) -> np.ndarray:
        share = original(self, src, shape)
        if self.party_id == DEVIANT and src == endpoint:
            share = share.copy()
            flat = share[0].reshape(-1)
            flat[position] += np.uint64(delta % (1 << 64))
        return share

    monkeypatch.setattr(cls, "input_external", deviating)


def _alter_sent(target: Callable[[int], bool], index: int, delta: int):
    """A hook for party DEVIANT: add `delta` to the first word of the index-th array it sends
    to an endpoint for which `target(endpoint)` holds."""
    def hook(runtime) -> None:
        channel = runtime.channel
        send = channel._send
        count = [0]

        def altered(peer: int, array: np.ndarray) -> None:
            if target(peer):
                if count[0] == index and array.size:
                    array = np.array(array, copy=True)
                    array.reshape(-1)[0] += np.array(delta, dtype=np.uint64).astype(array.dtype)
                count[0] += 1
            send(peer, array)

        channel._send = altered
    return hook


@functools.cache
def _honest_to_client(scheme: str, first: int) -> tuple[list[str], int]:
    """An honest run on clip `first`: its label, and how many arrays party DEVIANT sent the
    client (cached: several tests deviate in each of them)."""
    roles = Roles.for_scheme(registry.get(scheme))
    return _count_sent(scheme, CLIPS[first:first + 1], lambda peer: peer == roles.client)


def _count_sent(scheme: str, clips, target: Callable[[int], bool]) -> tuple[list[str], int]:
    """An honest run: the labels, and how many arrays party DEVIANT sent to `target`s."""
    counted = [0]

    def hook(runtime) -> None:
        channel = runtime.channel
        send = channel._send

        def counting(peer: int, array: np.ndarray) -> None:
            counted[0] += int(target(peer))
            send(peer, array)

        channel._send = counting
    return _deploy(scheme, clips, {DEVIANT: hook}), counted[0]


def _refused(scheme: str, clips, hooks=None) -> BaseException:
    with pytest.raises((CheatingDetected, ProtocolError)) as caught:
        _deploy(scheme, clips, hooks)
    return caught.value


@pytest.mark.parametrize("scheme", ACTIVE)
def test_every_array_a_deviating_party_sends_the_client_is_caught(scheme):
    """The honest deployment labels like plaintext; then each array party 1 sends the
    client (input masks, label copies), altered in turn, makes the run fail."""
    roles = Roles.for_scheme(registry.get(scheme))
    to_client = lambda peer: peer == roles.client  # noqa: E731
    labels, sent = _honest_to_client(scheme, 0)
    assert labels == _plaintext(CLIPS[:1])
    assert sent >= 1
    for index in range(sent):
        _refused(scheme, CLIPS[:1], {DEVIANT: _alter_sent(to_client, index, 1)})


@pytest.mark.parametrize("scheme", ACTIVE)
@pytest.mark.parametrize(("source", "position"), [("client", 0), ("model owner", -1)])
def test_a_shifted_input_share_is_caught(monkeypatch, scheme, source, position):
    """Party 1 shifts its share of a feature, or of the last bias entry by 1000 (in the
    passive method that made every clip come out as that class)."""
    frac = LOADED.secure.fixed.frac_bits
    delta = 1000 << (frac if source == "client" else 2 * frac)  # biases are at scale 2f
    _shift_input(monkeypatch, scheme, source, position, delta)
    _refused(scheme, CLIPS[:1])


@pytest.mark.parametrize("scheme", ACTIVE)
def test_refusal_does_not_depend_on_the_label(scheme):
    """The selective-failure probe: shifting the label copy by classes - 1 is refused for
    clips whose true labels differ, so refusing tells the deviating party nothing."""
    plain = _plaintext(CLIPS)
    first = 0
    other = next(k for k, label in enumerate(plain) if label != plain[first])
    roles = Roles.for_scheme(registry.get(scheme))
    to_client = lambda peer: peer == roles.client  # noqa: E731
    _, sent = _honest_to_client(scheme, first)
    delta = len(LOADED.labels) - 1
    outcomes = [type(_refused(scheme, CLIPS[k:k + 1],
                              {DEVIANT: _alter_sent(to_client, sent - 1, delta)}))
                for k in (first, other)]
    assert outcomes[0] is outcomes[1]


@pytest.mark.parametrize("scheme", PASSIVE)
def test_passive_schemes_protect_privacy_only(monkeypatch, scheme):
    """The stated limitation: under a passive scheme, party 1 adding 1000 to its piece of the
    last bias entry goes undetected and decides the label of every clip."""
    from experiments.deploy import flat_weights

    cls = registry.get(scheme).protocol
    weights = flat_weights(LOADED.secure).size
    original = cls.input

    def deviating(self, value, owner, shape):
        if self.party_id == DEVIANT and value is not None and value.size == weights:
            value = value.copy()
            value[-1] += np.uint64(1000 << (2 * LOADED.secure.fixed.frac_bits))  # bias: 2f
        return original(self, value, owner, shape)

    monkeypatch.setattr(cls, "input", deviating)
    assert _plaintext(CLIPS[:3]) != [LOADED.labels[-1]] * 3
    assert _deploy(scheme, CLIPS[:3]) == [LOADED.labels[-1]] * 3
