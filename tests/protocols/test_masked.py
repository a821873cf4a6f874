"""The masked sub-protocols (`protocols/blocks/masked.py`) of the additive and replicated
schemes: a comparison's rounds are within the bound of its construction, and a layer of
comparisons costs the rounds of one.

Exactness, round counts and the view of every scheme's comparisons, masked or not, are in
test_base.py; maximum and argmax in test_functions.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    DEFAULT_SCHEME_PARTIES,
    MASKED_SCHEME_PARTIES,
    ROUNDS,
    assert_same_and_uniform,
    busiest_rounds,
    over_schemes,
    run_secure,
    secret,
    transcripts,
)

from protocols.preprocessing.correlations import FULL_BITS, Request, correction_words

#: one opening, ceil(log2 64) levels of ANDs, one bit-to-arithmetic round
ROUND_BOUND = 1 + int(np.ceil(np.log2(64))) + 1


def comparison_rounds(scheme: str, n_parties: int, kind: str, size: int,
                      bits: int = FULL_BITS) -> int:
    values = np.arange(size, dtype=np.int64) - size // 2

    def inputs_only(p):
        secret(p, values, 0)

    def with_comparison(p):
        x = secret(p, values, 0)
        getattr(x, kind)(bits)

    base = busiest_rounds(run_secure(scheme, n_parties, inputs_only))
    return busiest_rounds(run_secure(scheme, n_parties, with_comparison)) - base


@over_schemes(MASKED_SCHEME_PARTIES)
@pytest.mark.parametrize("kind", ["ltz", "relu"])
def test_comparison_round_count(scheme, n_parties, kind):
    rounds = comparison_rounds(scheme, n_parties, kind, 1)
    assert rounds <= ROUND_BOUND
    assert rounds == ROUNDS[scheme][kind]


@over_schemes([pair for pair in MASKED_SCHEME_PARTIES if pair in DEFAULT_SCHEME_PARTIES])
def test_a_layer_of_comparisons_costs_the_rounds_of_one(scheme, n_parties):
    one = comparison_rounds(scheme, n_parties, "relu", 1)
    layer = comparison_rounds(scheme, n_parties, "relu", 10_000)
    assert layer == one == ROUNDS[scheme]["relu"]


# -- comparisons narrowed to [-2^bits, 2^bits) ---------------------------------------------------

@over_schemes([pair for pair in MASKED_SCHEME_PARTIES if pair in DEFAULT_SCHEME_PARTIES])
@pytest.mark.parametrize(("bits", "fewer"), [(39, 0), (32, 1), (16, 2), (2, 5)])
def test_a_narrowed_comparison_saves_a_round_each_time_the_width_halves(scheme, n_parties,
                                                                        bits, fewer):
    """The carry tree has ceil(log2(ceil(bits / 2))) AND levels: 5 over the whole ring."""
    for kind in ("ltz", "relu"):
        assert comparison_rounds(scheme, n_parties, kind, 100, bits) == \
            ROUNDS[scheme][kind] - fewer


def test_the_dealer_sends_less_for_a_narrowed_comparison():
    """Mask bits, pair products and AND triples shrink with the width; the daBit's
    arithmetic words (one per value, and one more for ReLU) do not: at 39 bits (a model
    with 24 fractional bits) the dealer's corrections fall by a fifth."""
    full = correction_words(Request("relu", (6400,)))
    narrow = correction_words(Request("relu", (6400,), bits=39))
    assert narrow < 0.8 * full
    assert correction_words(Request("relu", (6400,), bits=1)) < narrow
    with pytest.raises(ValueError, match="choose 1..63"):
        Request("ltz", (3,), bits=64)


@over_schemes([pair for pair in MASKED_SCHEME_PARTIES if pair in DEFAULT_SCHEME_PARTIES])
def test_a_narrowed_comparison_shows_uniform_messages_whatever_the_secret(
        monkeypatch, scheme, n_parties):
    """Narrowing changes what is compared, not what is opened: c = x + 2^bits + r with r
    uniform on the whole ring."""
    positive = transcripts(monkeypatch, scheme, n_parties, 1, 5, bits=20)
    negative = transcripts(monkeypatch, scheme, n_parties, 1, -5, bits=20)
    assert_same_and_uniform(positive, negative)
