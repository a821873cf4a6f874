"""When a role of a deployment dies, every other role, the client included, is told which
one: the survivors stop with an abort frame that carries the root cause (`Channel.abort`),
instead of the client learning only that some other party closed its link."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import bundled_clips, deploy

from experiments.deploy import Roles
from mpc.errors import PartyFailed
from protocols import registry

CLIPS = bundled_clips(None)[:1]
VICTIM = 1


class Killed(BaseException):
    """The victim's thread ends here, as a killed process would."""


def _dies_at_send(count: int):
    """A hook: the endpoint's `count`-th send kills it; like a killed process it sends no
    abort frame, its links simply close."""
    def hook(runtime) -> None:
        channel = runtime.channel
        send, sent = channel._send, [0]

        def dying(peer: int, array: np.ndarray) -> None:
            sent[0] += 1
            if sent[0] == count:
                raise Killed
            send(peer, array)

        channel._send = dying
        channel.abort = lambda error: channel.close()  # a dead process says nothing
    return hook


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheme", sorted(registry.SCHEMES))
def test_the_client_is_told_which_party_died(scheme: str) -> None:
    roles = Roles.for_scheme(registry.get(scheme))
    with pytest.raises(PartyFailed) as caught:
        deploy(scheme, CLIPS, hooks={VICTIM: _dies_at_send(4)})
    assert isinstance(caught.value.__cause__, Killed)
    notes = "\n".join(caught.value.__cause__.__notes__)
    told = re.search(rf"^party {roles.client}: \w+: (.*)$", notes, re.MULTILINE)
    assert told, notes
    # the client names the victim as the one whose link went, whoever it was waiting on
    assert re.search(rf"party {VICTIM} closed its (link|connection)", told.group(1)), told
    others = "|".join(str(p) for p in range(roles.n_endpoints) if p != VICTIM)
    assert not re.search(rf"(party|the) ({others}|dealer|model owner) closed its",
                         told.group(1)), told
