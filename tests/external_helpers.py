"""Helpers of the tests of values from and to endpoints outside the computation (issue 17).

`run_external` runs the compute parties of a scheme with a client and a model owner as
threads: a small program on a value from each, its result back to the client, so the four
`Protocol` methods are tested in a second, not the time of a whole deployment. `deploy` runs
a real deployment of the bundled model. The deviations are those of one compute party:
`shift_input` (its share of an outside value after `input_external`), `alter_sent` (one array
it sends an outside endpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mpc.launch import run_threads
from mpc.runtime import RunConfig, Runtime
from protocols import registry
from protocols.base import Protocol
from protocols.external import Endpoints

_LOADED: list = []


# The deployment stack (audio, models, roles) is imported when a test uses it, so that the
# protocol tests importing this module do not depend on it.
def bundled_clips(count: int = 2) -> list:
    from experiments.modelfile import BUNDLED_CLIPS

    return sorted(BUNDLED_CLIPS.glob("*.wav"))[:count]


def loaded():
    """The bundled model, loaded once per test session."""
    if not _LOADED:
        from experiments.modelfile import BUNDLED_MODEL, load_model

        _LOADED.append(load_model(BUNDLED_MODEL, check=False))
    return _LOADED[0]


def plaintext_labels(clips) -> list[str]:
    import audio
    from experiments.modelfile import plaintext_logits

    model = loaded()
    config = model.feature_config
    features = np.stack([audio.features(audio.load(c, sample_rate=config.sample_rate), config)
                         for c in clips])
    return [model.labels[i] for i in plaintext_logits(model, features).argmax(axis=1)]


def deploy(scheme: str, clips, hooks=None) -> list[str]:
    from experiments.deploy import run_deployment

    model = loaded()
    return run_deployment(scheme, model.secure, model.feature_config.to_dict(), list(clips),
                          timeout=60.0, hooks=hooks)


def run_external(scheme: str, features: np.ndarray, weights: np.ndarray,
                 program: Callable[[Protocol, Any, Any], Any],
                 hooks: dict[int, Callable[[Runtime], None]] | None = None) -> np.ndarray:
    """The compute parties enter `weights` from the owner and `features` from the client,
    compute `program(protocol, [w], [x])` and send it to the client; the client's result."""
    cls = registry.get(scheme).protocol
    n = cls.default_parties
    client, owner = n, n + 1
    ends = Endpoints(n)

    def party(runtime: Runtime) -> None:
        protocol = cls(runtime)
        w = protocol.input_external(owner, weights.shape)
        x = protocol.input_external(client, features.shape)
        y = program(protocol, w, x)
        protocol.reveal_external(y, client)

    def client_role(runtime: Runtime) -> np.ndarray:
        cls.give_external(runtime.channel, ends, features)
        return cls.take_external(runtime.channel, ends, features.shape)

    def owner_role(runtime: Runtime) -> None:
        cls.give_external(runtime.channel, ends, weights)

    def hooked(k: int, role: Callable[[Runtime], Any]) -> Callable[[Runtime], Any]:
        def body(runtime: Runtime) -> Any:
            if hooks and k in hooks:
                hooks[k](runtime)
            with np.errstate(over="ignore"):
                return role(runtime)
        return body

    roles = [party] * n + [client_role, owner_role]
    results = run_threads([hooked(k, role) for k, role in enumerate(roles)],
                          RunConfig(n_parties=n, timeout=20.0, external=2))
    return results[client]


def shift_input(monkeypatch, scheme: str, party: int, source: int, delta: int,
                position: int = 0) -> None:
    """`party` adds `delta` to word `position` of the first component of its share of the
    value from `source`, right after `input_external`."""
    cls = registry.get(scheme).protocol
    original = cls.input_external

    def deviating(self, src: int, shape: tuple[int, ...]) -> np.ndarray:
        share = original(self, src, shape)
        if self.party_id == party and src == source:
            share = share.copy()
            share[0].reshape(-1)[position] += np.uint64(delta % (1 << 64))
        return share

    monkeypatch.setattr(cls, "input_external", deviating)


def alter_sent(to: int, index: int, delta: int = 1, position: int = 0
               ) -> Callable[[Runtime], None]:
    """A hook: the endpoint it is installed in adds `delta` to word `position` of the
    index-th array it sends endpoint `to`."""
    def hook(runtime: Runtime) -> None:
        channel = runtime.channel
        send = channel._send
        count = [0]

        def altered(peer: int, array: np.ndarray) -> None:
            if peer == to:
                if count[0] == index:
                    array = np.array(array, copy=True)
                    array.reshape(-1)[position] += np.uint64(delta % (1 << 64))
                count[0] += 1
            send(peer, array)

        channel._send = altered
    return hook
