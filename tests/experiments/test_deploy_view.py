"""In a passive deployment the compute parties open only label + mask, never the label."""

from __future__ import annotations

import numpy as np

from experiments.deploy import Roles, run_deployment
from experiments.modelfile import BUNDLED_CLIPS, BUNDLED_MODEL, load_model, plaintext_logits
from protocols import registry

CLIPS = sorted(BUNDLED_CLIPS.glob("*.wav"))[:3]


def _spy(sent: list[tuple[int, str, np.ndarray]]):
    """A hook recording every array its endpoint sends: (peer, step, copy)."""
    def hook(runtime) -> None:
        channel = runtime.channel
        send = channel.send

        def recording(peer: int, array: np.ndarray) -> None:
            sent.append((peer, channel.step, np.array(array, copy=True)))
            send(peer, array)

        channel.send = recording
    return hook


def test_compute_parties_open_only_the_masked_label():
    loaded = load_model(BUNDLED_MODEL)
    roles = Roles.for_scheme(registry.get("replicated"))
    sent = {k: [] for k in range(roles.n_endpoints)}
    hooks = {k: _spy(sent[k]) for k in sent}
    labels = run_deployment("replicated", loaded.secure, loaded.feature_config.to_dict(),
                            CLIPS, hooks=hooks)
    import audio

    config = loaded.feature_config
    features = np.stack([audio.features(audio.load(c, sample_rate=config.sample_rate), config)
                         for c in CLIPS])
    plain = plaintext_logits(loaded, features).argmax(axis=1)
    assert labels == [loaded.labels[i] for i in plain]
    # what each compute party sent the client: one array, the same at every party ...
    opened = [[a for peer, _, a in sent[p] if peer == roles.client] for p in range(3)]
    assert all(len(o) == 1 for o in opened)
    for value in opened:
        assert np.array_equal(value[0], opened[0][0])
    # ... which the client's mask (the pieces it sent in the labels step) unmasks to the labels
    mask = sum(a for peer, step, a in sent[roles.client]
               if step == "labels" and peer < roles.compute)
    assert np.array_equal(opened[0][0] - mask, plain.astype(np.uint64))
    assert not np.any(opened[0][0] == plain.astype(np.uint64))  # and is not the label
