"""The plaintext fixed-point emulator: the secure program run by the `Clear` protocol.

It executes the same integer arithmetic as the parties (same encodings, same folded layers,
same sums for pooling) with exact floor truncation, so the secure result differs from it
only by the probabilistic truncation's one unit in the last place per layer.
"""

from __future__ import annotations

import numpy as np

from nn.model import SecureModel, secure_forward
from protocols.clear import Clear


def emulate(model: SecureModel, features: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Float logits (batch, classes) and every layer's decoded output for float `features`
    of shape (batch, *model.input_shape)."""
    features = np.asarray(features, dtype=np.float64)
    encoded = model.fixed.encode(features)
    out = secure_forward(Clear(n_parties=2), model, encoded, features.shape[0],
                         reveal_logits=True, audit=True)
    decode = model.fixed.decode
    return decode(out.logits), [decode(v) for v in out.intermediate]


def emulate_labels(model: SecureModel, features: np.ndarray) -> np.ndarray:
    """The labels a secure run should give, computed in the clear to check it against."""
    return emulate(model, features)[0].argmax(axis=1)
