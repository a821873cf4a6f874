"""What a party receives during an active scheme's comparison does not depend on the secret.

The same statistics as the passive schemes' test in tests/protocols/test_masked.py (whose helpers this
reuses): word by word, the received words for x = +5 and x = -5 have the same distribution,
and every byte and bit is uniform. Hash digests (rep4's vouching) are bytes, not ring words,
and are left out of the transcript.

spdz2k with 2 parties compares through DCF keys evaluated locally, so one comparison shows
a party only two words (the masked input and the opened c = x + r); it compares four copies
of the secret at once so that the transcript has more than the helper's minimum of 2 words.
"""

from __future__ import annotations

import pytest
from test_masked import assert_same_and_uniform, transcripts

COPIES = {"spdz2k": 4}


@pytest.mark.parametrize(("scheme", "n_parties"),
                         [("rep4", 4), ("spdz2k", 2), ("replicated_mac", 3)])
def test_active_comparison_view_is_independent_of_the_secret(monkeypatch, scheme, n_parties):
    copies = COPIES.get(scheme)
    value = (lambda v: [v] * copies) if copies else (lambda v: v)
    positive = transcripts(monkeypatch, scheme, n_parties, 1, value(5), ring_words_only=True)
    negative = transcripts(monkeypatch, scheme, n_parties, 1, value(-5), ring_words_only=True)
    assert positive.shape[1] == (2 * copies if copies else positive.shape[1])
    assert_same_and_uniform(positive, negative)
