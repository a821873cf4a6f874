"""Deployment integrity: one deviating compute party cannot change what goes in or comes out.

Every role of a deployment runs as a thread (`experiments.deploy.run_deployment`) and
compute party 1 follows the protocol in every step except one: it shifts its share of the
client's features or of the owner's weights right after they enter, it claims to have
received another masked input than it did, or it alters one of the arrays it sends to the
client. Under every active scheme each deviation ends in an error (`CheatingDetected` at
the compute parties, or the client's refusal naming party 1), never in labels; and whether
the client refuses does not depend on the label (no selective-failure bit). Under the
passive schemes the same deviation changes the label undetected: they protect privacy only,
as SECURITY.md says. The helpers (`deploy`, `shift_input`, `alter_sent`, ...) are
conftest's; the same deviations on a small program, message kind by message kind, are in
tests/protocols/test_external.py and test_spdz2k_external.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest
from conftest import (
    ACTIVE_SCHEMES,
    MASKED_INPUT_LIE_CAUGHT,
    PASSIVE_SCHEMES,
    REFUSAL_NAMES,
    alter_sent,
    bundled_clips,
    deploy,
    lie_about_masked_inputs,
    loaded,
    plaintext_labels,
    shift_input,
)

from experiments.deploy import Roles
from mpc.errors import CheatingDetected, ProtocolError
from protocols import registry

DEVIANT = 1
CLIPS = bundled_clips(None)
#: What the client's refusal calls each array party 1 sends it, in order: under rep4 and
#: replicated_mac the seeds of its input's mask components, then its copies of the label's
#: components; under spdz2k its copy of the masked label.
SENT_TO_CLIENT = {"rep4": ("seeds", "copies"), "replicated_mac": ("seeds", "copies"),
                  "spdz2k": ("masked results",)}
#: The check that stops the compute parties when party 1 shifts its share of an input.
SHIFT_CAUGHT_BY = {"rep4": "redundancy check", "replicated_mac": "MAC check",
                   "spdz2k": "MAC check failed"}


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
    return deploy(scheme, clips, {DEVIANT: hook}), counted[0]


def _refused(scheme: str, clips, hooks=None, expected=(CheatingDetected, ProtocolError),
             match: str | None = None) -> BaseException:
    with pytest.raises(expected, match=match) as caught:
        deploy(scheme, clips, hooks)
    return caught.value


def _client(scheme: str) -> int:
    return Roles.for_scheme(registry.get(scheme)).client


@pytest.mark.parametrize("scheme", ACTIVE_SCHEMES)
def test_an_honest_deployment_labels_like_plaintext(scheme):
    """A batch of two clips, every role honest."""
    assert deploy(scheme, CLIPS[:2]) == plaintext_labels(CLIPS[:2])


@pytest.mark.parametrize("scheme", ACTIVE_SCHEMES)
def test_every_array_a_deviating_party_sends_the_client_is_caught(scheme):
    """The honest deployment labels like plaintext; then each array party 1 sends the
    client (input masks, label copies), altered in turn, makes the client refuse, naming
    party 1."""
    labels, sent = _honest_to_client(scheme, 0)
    assert labels == plaintext_labels(CLIPS[:1])
    assert sent == len(SENT_TO_CLIENT[scheme])
    names = REFUSAL_NAMES[scheme].format(p=DEVIANT)
    for index, what in enumerate(SENT_TO_CLIENT[scheme]):
        refusal = _refused(scheme, CLIPS[:1], {DEVIANT: alter_sent(_client(scheme), index)},
                           ProtocolError, f"{names} {what}")
        assert f"party {DEVIANT}" in str(refusal)


@pytest.mark.parametrize("scheme", ACTIVE_SCHEMES)
@pytest.mark.parametrize(("source", "position"), [("client", 0), ("model owner", -1)])
def test_a_shifted_input_share_is_caught(monkeypatch, scheme, source, position):
    """Party 1 shifts its share of a feature, or of the last bias entry by 1000 (in the
    passive method that made every clip come out as that class)."""
    roles = Roles.for_scheme(registry.get(scheme))
    frac = loaded().secure.fixed.frac_bits
    delta = 1000 << (frac if source == "client" else 2 * frac)  # biases are at scale 2f
    shift_input(monkeypatch, scheme, DEVIANT,
                roles.client if source == "client" else roles.model_owner, delta, position)
    _refused(scheme, CLIPS[:1], expected=CheatingDetected, match=SHIFT_CAUGHT_BY[scheme])


@pytest.mark.parametrize("scheme", ACTIVE_SCHEMES)
def test_a_false_confirmation_of_a_masked_input_is_caught(monkeypatch, scheme):
    """Party 1 tells the others it received another masked input than it did (rep4's and
    replicated_mac's vouches, spdz2k's hash comparison): the honest parties stop."""
    lie_about_masked_inputs(monkeypatch, scheme, DEVIANT)
    caught = _refused(scheme, CLIPS[:1], expected=CheatingDetected,
                      match=MASKED_INPUT_LIE_CAUGHT[scheme])
    assert f"party {DEVIANT}" in str(caught)


@pytest.mark.parametrize("scheme", ACTIVE_SCHEMES)
def test_refusal_does_not_depend_on_the_label(scheme):
    """The selective-failure probe: shifting the label copy by classes - 1 is refused for
    clips whose true labels differ, so refusing tells the deviating party nothing."""
    plain = plaintext_labels(CLIPS)
    first = 0
    other = next(k for k, label in enumerate(plain) if label != plain[first])
    _, sent = _honest_to_client(scheme, first)
    delta = len(loaded().labels) - 1
    outcomes = [type(_refused(scheme, CLIPS[k:k + 1],
                              {DEVIANT: alter_sent(_client(scheme), sent - 1, delta)}))
                for k in (first, other)]
    assert outcomes[0] is outcomes[1]


@pytest.mark.parametrize("scheme", PASSIVE_SCHEMES)
def test_passive_schemes_protect_privacy_only(monkeypatch, scheme):
    """The stated limitation: under a passive scheme, party 1 adding 1000 to its piece of the
    last bias entry goes undetected and decides the label of every clip."""
    from experiments.deploy import flat_weights

    model = loaded()
    cls = registry.get(scheme).protocol
    weights = flat_weights(model.secure).size
    original = cls.input

    def deviating(self, value, owner, shape):
        if self.party_id == DEVIANT and value is not None and value.size == weights:
            value = value.copy()
            value[-1] += np.uint64(1000 << (2 * model.secure.fixed.frac_bits))  # bias: 2f
        return original(self, value, owner, shape)

    monkeypatch.setattr(cls, "input", deviating)
    assert plaintext_labels(CLIPS[:3]) != [model.labels[-1]] * 3
    assert deploy(scheme, CLIPS[:3]) == [model.labels[-1]] * 3
