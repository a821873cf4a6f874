"""What a party receives during an active scheme's comparison does not depend on the secret.

The same statistics as the passive schemes' test in test_comparison.py (whose helpers this
reuses): word by word, the received words for x = +5 and x = -5 have the same distribution,
and every byte and bit is uniform. Hash digests (rep4's vouching) are bytes, not ring words,
and are left out of the transcript.
"""

from __future__ import annotations

import numpy as np
import pytest
from protocol_helpers import run_secure, secret, u64
from scipy import stats
from test_comparison import (
    P_FLOOR,
    bit_uniformity_pvalue,
    byte_uniformity_pvalue,
    top_nibble_pvalues,
)

from mpc.net.channel import Channel

RUNS = 200


def transcripts(monkeypatch, scheme: str, n_parties: int, observer: int, value: int
                ) -> np.ndarray:
    log: list[np.ndarray] = []
    original = Channel.exchange

    def recording(self, outgoing, receive_from=None):
        received = original(self, outgoing, receive_from)
        if self.party_id == observer and self.step == "online":
            for peer in sorted(received):
                if received[peer].dtype == np.uint64:
                    log.append(received[peer].reshape(-1).copy())
        return received

    monkeypatch.setattr(Channel, "exchange", recording)
    value_array = u64(np.array([value]))

    def program(p):
        secret(p, value_array, 0).ltz()

    rows = []
    for _ in range(RUNS):
        log.clear()
        run_secure(scheme, n_parties, program)
        rows.append(np.concatenate(log))
    monkeypatch.undo()
    return np.stack(rows)


@pytest.mark.parametrize(("scheme", "n_parties"),
                         [("rep4", 4), ("spdz2k", 2), ("replicated_mac", 3)])
def test_active_comparison_view_is_independent_of_the_secret(monkeypatch, scheme, n_parties):
    positive = transcripts(monkeypatch, scheme, n_parties, 1, 5)
    negative = transcripts(monkeypatch, scheme, n_parties, 1, -5)
    assert positive.shape == negative.shape and positive.shape[1] > 2
    pvalues = top_nibble_pvalues(positive, negative)
    assert pvalues.min() * pvalues.size > P_FLOOR, int(pvalues.argmin())
    ks = [stats.ks_2samp(positive[:, j].astype(np.float64), negative[:, j].astype(np.float64))
          .pvalue for j in range(positive.shape[1])]
    assert min(ks) * len(ks) > P_FLOOR, int(np.argmin(ks))
    for sample in (positive, negative):
        assert byte_uniformity_pvalue(sample) > P_FLOOR
        assert bit_uniformity_pvalue(sample) > P_FLOOR
