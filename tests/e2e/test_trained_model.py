"""The bundled trained model: secure labels equal torch's on 50 realistic inputs.

Inputs are the bundled clips' feature maps and variants of them (time shift, gain, noise
in the feature domain), so they look like what a client sends, not random probes. Inputs
whose two best torch logits are closer than the logit error bound are replaced (a tie
within fixed-point error is not a disagreement); the test keeps 50.
"""

from __future__ import annotations

import numpy as np
import pytest

import audio
from experiments.modelfile import (
    BUNDLED_CHECKPOINT,
    BUNDLED_CLIPS,
    BUNDLED_MODEL,
    import_checkpoint,
    load_model,
    torch_logits,
)
from nn.inference import classify

# Measured: 0.012 at most on these inputs. The input normaliser folds 1/std of dB features
# into the first convolution, so its weights are small and 2^-16 rounding weighs more than
# on standard-normal probes (2e-4 there).
LOGIT_BOUND = 0.05
MARGIN = LOGIT_BOUND


@pytest.fixture(scope="module")
def trained():
    loaded = load_model(BUNDLED_MODEL)
    config = loaded.feature_config
    base = [audio.features(audio.load(c, sample_rate=config.sample_rate), config)
            for c in sorted(BUNDLED_CLIPS.glob("*.wav"))]
    rng = np.random.default_rng(7)
    inputs = []
    while len(inputs) < 64:
        x = base[len(inputs) % len(base)].copy()
        x = np.roll(x, int(rng.integers(-40, 40)), axis=-1)  # time shift
        x = x + rng.normal(0.0, 1.0) + rng.normal(0.0, 0.5, x.shape)  # gain (dB) and noise
        inputs.append(x.astype(np.float32))
    features = np.stack(inputs)
    logits = torch_logits(import_checkpoint(BUNDLED_CHECKPOINT, check=False).torch_module,
                          features)
    top2 = np.sort(logits, axis=1)[:, -2:]
    keep = (top2[:, 1] - top2[:, 0]) > MARGIN
    features, logits = features[keep][:50], logits[keep][:50]
    assert len(features) == 50
    return loaded, features, logits


@pytest.fixture(scope="module")
def passive(trained):
    """replicated's labels of the first 20 inputs, which the active schemes must equal."""
    loaded, features, _ = trained
    return classify(loaded.secure, features[:20], scheme="replicated").labels


@pytest.mark.parametrize("scheme", ["replicated", "additive"])
def test_trained_model_secure_labels_equal_torch_on_50_inputs(trained, scheme):
    loaded, features, logits = trained
    result = classify(loaded.secure, features, scheme=scheme, reveal_logits=True)
    assert np.array_equal(result.labels, logits.argmax(axis=1))
    assert np.abs(result.logits - logits).max() < LOGIT_BOUND


def test_rep4_labels_equal_the_passive_schemes_on_20_inputs(trained, passive):
    loaded, features, logits = trained
    active = classify(loaded.secure, features[:20], scheme="rep4")
    assert np.array_equal(active.labels, passive)
    assert np.array_equal(active.labels, logits[:20].argmax(axis=1))



def test_replicated_mac_labels_equal_the_passive_schemes_on_20_inputs(trained, passive):
    """Issue 7's bar for the 3-party MAC scheme: the 20 inputs in one batch (binary gates
    verified every 2^20 logged words, so memory stays bounded)."""
    loaded, features, logits = trained
    active = classify(loaded.secure, features[:20], scheme="replicated_mac", timeout=300)
    assert np.array_equal(active.labels, passive)
    assert np.array_equal(active.labels, logits[:20].argmax(axis=1))


def test_spdz2k_labels_equal_the_passive_schemes_on_20_inputs(trained, passive):
    """Issue 7's bar for the 2-party MAC scheme (its DCF comparison path). Two clips per run:
    a clip's dealer material is ~0.9 GB a party, so a batch of 20 would not fit in memory;
    pairs cost 13 % less time than single clips (measured on 4 clips: 17.9 s against 20.6)."""
    loaded, features, logits = trained
    active = np.concatenate([classify(loaded.secure, features[k:k + 2], scheme="spdz2k").labels
                             for k in range(0, 20, 2)])
    assert np.array_equal(active, passive)
    assert np.array_equal(active, logits[:20].argmax(axis=1))
