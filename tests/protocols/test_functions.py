"""`protocols/functions.py` under every scheme: maximum and argmax against numpy, argmax's
ties, and its round count (one comparison depth)."""

from __future__ import annotations

import numpy as np
from conftest import EXAMPLES, ROUNDS, every_scheme, i64, op_rounds, reveal_all, run_secure, secret
from hypothesis import given
from hypothesis import strategies as st

from protocols.functions import argmax, maximum


@every_scheme
def test_argmax_breaks_ties_towards_the_first_index_like_numpy(scheme, n_parties):
    values = np.array([[3, 3, 1, 0], [-2, 5, 5, 5], [7, 7, 7, 7], [0, -1, 4, 4]],
                      dtype=np.int64)

    def program(p):
        return reveal_all(argmax(secret(p, values, 0)))

    got = run_secure(scheme, n_parties, program)[0].result
    assert np.array_equal(got, np.argmax(values, axis=-1).astype(np.uint64))


@every_scheme
@EXAMPLES
@given(data=st.data())
def test_maximum_and_argmax_agree_with_numpy(scheme, n_parties, data):
    rows = data.draw(st.integers(1, 3), label="rows")
    classes = data.draw(st.integers(1, 9), label="classes")
    bound = (1 << 61) - 1  # differences stay within the comparison's range
    flat = data.draw(st.lists(st.integers(-bound, bound), min_size=rows * classes,
                              max_size=rows * classes, unique=True), label="distinct values")
    values = np.array(flat, dtype=np.int64).reshape(rows, classes)

    def program(p):
        x = secret(p, values, 0)
        return reveal_all(maximum(x)), reveal_all(argmax(x)), reveal_all(argmax(x[0]))

    for report in run_secure(scheme, n_parties, program):
        biggest, index, first_index = report.result
        assert np.array_equal(i64(biggest), values.max(axis=-1))
        assert np.array_equal(index, np.argmax(values, axis=-1).astype(np.uint64))
        assert int(first_index) == int(np.argmax(values[0]))


@every_scheme
def test_argmax_takes_one_comparison_depth(scheme, n_parties):
    """All C(C-1)/2 pairs in one comparison, then ceil(log2(C-1)) product rounds."""
    classes = 8
    rounds = op_rounds(scheme, n_parties, lambda x, y: argmax(x.reshape(1, -1)), classes)
    assert rounds == ROUNDS[scheme]["ltz"] + int(np.ceil(np.log2(classes - 1)))
