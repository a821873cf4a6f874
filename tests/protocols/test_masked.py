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
    busiest_rounds,
    over_schemes,
    run_secure,
    secret,
)

#: one opening, ceil(log2 64) levels of ANDs, one bit-to-arithmetic round
ROUND_BOUND = 1 + int(np.ceil(np.log2(64))) + 1


def comparison_rounds(scheme: str, n_parties: int, kind: str, size: int) -> int:
    values = np.arange(size, dtype=np.int64) - size // 2

    def inputs_only(p):
        secret(p, values, 0)

    def with_comparison(p):
        x = secret(p, values, 0)
        getattr(x, kind)()

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
