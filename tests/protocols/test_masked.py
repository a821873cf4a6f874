"""Tier 2: comparison with zero, ReLU, maximum and argmax; their round counts; and what a
party sees during a comparison (uniform, whatever the secret)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_helpers import (
    VALUE_MAX,
    busiest_rounds,
    every_scheme,
    i64,
    reveal_all,
    run_secure,
    secret,
    u64,
)
from scipy import stats

from mpc.net.channel import Channel
from protocols.functions import argmax, maximum

EXAMPLES = settings(max_examples=12, deadline=None)

#: 0, one unit either side, the ends of the promised range, and the ends of the ring
EDGES = [0, 1, -1, 2, -2, VALUE_MAX, -VALUE_MAX, VALUE_MAX - 1, -VALUE_MAX + 1,
         1 << 61, -(1 << 61), (1 << 63) - 1, -(1 << 63), (1 << 62), -(1 << 62)]


# -- exactness ---------------------------------------------------------------------------------

def test_edges_include_one_ulp_below_zero_as_the_top_ring_element():
    assert u64(np.array([-1]))[0] == np.uint64((1 << 64) - 1)


@every_scheme
@EXAMPLES
@given(drawn=st.lists(st.integers(-VALUE_MAX, VALUE_MAX), min_size=1, max_size=60))
def test_ltz_and_relu_are_exact(scheme, n_parties, drawn):
    values = np.array(drawn + EDGES, dtype=np.int64)

    def program(p):
        x = secret(p, values, 0)
        matrix = secret(p, values[:10].reshape(2, 5), p.n_parties - 1)
        return (reveal_all(x.ltz()), reveal_all(x.relu()), reveal_all(matrix.ltz()),
                reveal_all(matrix.relu()))

    reports = run_secure(scheme, n_parties, program)
    for report in reports:
        ltz, relu, ltz_m, relu_m = report.result
        assert np.array_equal(ltz, (values < 0).astype(np.uint64))
        assert np.array_equal(i64(relu), np.maximum(values, 0))
        assert ltz_m.shape == relu_m.shape == (2, 5)
        assert np.array_equal(ltz_m, (values[:10] < 0).astype(np.uint64).reshape(2, 5))
        assert np.array_equal(i64(relu_m), np.maximum(values[:10], 0).reshape(2, 5))


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
def test_argmax_breaks_ties_towards_the_first_index_like_numpy(scheme, n_parties):
    values = np.array([[3, 3, 1, 0], [-2, 5, 5, 5], [7, 7, 7, 7], [0, -1, 4, 4]],
                      dtype=np.int64)

    def program(p):
        return reveal_all(argmax(secret(p, values, 0)))

    got = run_secure(scheme, n_parties, program)[0].result
    assert np.array_equal(got, np.argmax(values, axis=-1).astype(np.uint64))


# -- rounds ------------------------------------------------------------------------------------

EXPECTED_ROUNDS = {"additive": 7, "replicated": 8}
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


@every_scheme
@pytest.mark.parametrize("kind", ["ltz", "relu"])
def test_comparison_round_count(scheme, n_parties, kind):
    rounds = comparison_rounds(scheme, n_parties, kind, 1)
    assert rounds <= ROUND_BOUND
    assert rounds == EXPECTED_ROUNDS[scheme]


@pytest.mark.parametrize(("scheme", "n_parties"), [("additive", 2), ("replicated", 3)])
def test_a_layer_of_comparisons_costs_the_rounds_of_one(scheme, n_parties):
    one = comparison_rounds(scheme, n_parties, "relu", 1)
    layer = comparison_rounds(scheme, n_parties, "relu", 10_000)
    assert layer == one == EXPECTED_ROUNDS[scheme]


@every_scheme
def test_argmax_takes_one_comparison_depth(scheme, n_parties):
    """All C(C-1)/2 pairs in one comparison, then ceil(log2(C-1)) product rounds."""
    classes = 8
    values = np.arange(classes, dtype=np.int64)[::-1].copy()

    def inputs_only(p):
        secret(p, values, 0)

    def program(p):
        argmax(secret(p, values, 0))

    base = busiest_rounds(run_secure(scheme, n_parties, inputs_only))
    rounds = busiest_rounds(run_secure(scheme, n_parties, program)) - base
    assert rounds == EXPECTED_ROUNDS[scheme] + int(np.ceil(np.log2(classes - 1)))


# -- what a party sees ---------------------------------------------------------------------------

RUNS = 200
P_FLOOR = 1e-6  # a genuine leak gives p far below this; a correct protocol almost never does


def transcripts(monkeypatch, scheme: str, n_parties: int, observer: int, value: int,
                runs: int = RUNS, ring_words_only: bool = False) -> np.ndarray:
    """Everything `observer` receives during one `ltz` of `value`, once per run:
    (runs, words) uint64, each row the run's messages concatenated in order.
    `ring_words_only` leaves out messages that are not uint64 (rep4's hash digests)."""
    log: list[np.ndarray] = []
    original = Channel.exchange

    def recording(self, outgoing, receive_from=None):
        received = original(self, outgoing, receive_from)
        if self.party_id == observer and self.step == "online":
            for peer in sorted(received):
                if ring_words_only and received[peer].dtype != np.uint64:
                    continue
                log.append(np.asarray(received[peer], dtype=np.uint64).reshape(-1).copy())
        return received

    monkeypatch.setattr(Channel, "exchange", recording)
    value_array = u64(np.array([value]))

    def program(p):
        secret(p, value_array, 0).ltz()

    rows = []
    for _ in range(runs):
        log.clear()
        run_secure(scheme, n_parties, program)
        rows.append(np.concatenate(log))
    monkeypatch.undo()
    out = np.stack(rows)
    assert out.shape[0] == runs and out.shape[1] > 2  # every run sends the same shape
    return out


def top_nibble_pvalues(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per message word, a two-sample chi-square test of the top 4 bits' distribution."""
    pvalues = []
    for column in range(a.shape[1]):
        counts = np.stack([np.bincount((a[:, column] >> np.uint64(60)).astype(np.int64),
                                       minlength=16),
                           np.bincount((b[:, column] >> np.uint64(60)).astype(np.int64),
                                       minlength=16)])
        counts = counts[:, counts.sum(axis=0) > 0]
        if counts.shape[1] < 2:  # one value in both samples: identical distributions
            pvalues.append(1.0)
            continue
        pvalues.append(stats.chi2_contingency(counts)[1])
    return np.array(pvalues)


def byte_uniformity_pvalue(words: np.ndarray) -> float:
    counts = np.bincount(np.ascontiguousarray(words).view(np.uint8).reshape(-1), minlength=256)
    return float(stats.chisquare(counts).pvalue)


def bit_uniformity_pvalue(words: np.ndarray) -> float:
    """Every (word position, bit) of the transcript against a fair coin: the smallest
    two-sided binomial p-value, Bonferroni-corrected over all positions."""
    runs, width = words.shape
    bits = (words[:, :, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    ones = bits.sum(axis=0).astype(np.float64).reshape(-1)
    z = np.abs(ones - runs / 2) / np.sqrt(runs / 4)
    return float(min(1.0, 2 * stats.norm.sf(z.max()) * ones.size))


@pytest.mark.parametrize(("scheme", "n_parties"), [("additive", 2), ("replicated", 3)])
def test_messages_during_a_comparison_are_uniform_whatever_the_secret(
        monkeypatch, scheme, n_parties):
    observer = 1  # in the replicated scheme party 1 is in the masked pair
    positive = transcripts(monkeypatch, scheme, n_parties, observer, 5)
    negative = transcripts(monkeypatch, scheme, n_parties, observer, -5)
    assert_same_and_uniform(positive, negative)


def assert_same_and_uniform(positive: np.ndarray, negative: np.ndarray) -> None:
    """The transcripts for two secrets have the same distribution, word by word, and it is
    uniform (bytes and single bits)."""
    assert positive.shape == negative.shape
    # same distribution for both secrets, word by word (Bonferroni over the words)
    pvalues = top_nibble_pvalues(positive, negative)
    assert pvalues.min() * pvalues.size > P_FLOOR, int(pvalues.argmin())
    ks = [stats.ks_2samp(positive[:, j].astype(np.float64), negative[:, j].astype(np.float64))
          .pvalue for j in range(positive.shape[1])]
    assert min(ks) * len(ks) > P_FLOOR, int(np.argmin(ks))
    # and that distribution is uniform: byte values, and every single bit
    for sample in (positive, negative):
        assert byte_uniformity_pvalue(sample) > P_FLOOR
        assert bit_uniformity_pvalue(sample) > P_FLOOR


def test_the_leak_tests_catch_a_leak():
    """Negative control: a 'protocol' that opens x + r with a mask r too short for x (40
    bits for |x| = 2^50, so the sign shows through) fails the tests the real transcripts
    pass."""
    rng = np.random.default_rng(7)
    shape = (RUNS, 4)

    def noise():
        return rng.integers(0, 1 << 64, shape, dtype=np.uint64)

    weak_mask = rng.integers(0, 1 << 40, shape, dtype=np.uint64)
    positive, negative = noise(), noise()
    positive[:, 0] = u64(np.full(RUNS, 1 << 50)) + weak_mask[:, 0]
    negative[:, 0] = u64(np.full(RUNS, -(1 << 50))) + weak_mask[:, 1]
    assert top_nibble_pvalues(positive, negative).min() * shape[1] < P_FLOOR
    assert byte_uniformity_pvalue(positive) < P_FLOOR
    assert bit_uniformity_pvalue(negative) < P_FLOOR
    # and accept honest noise
    assert top_nibble_pvalues(noise(), noise()).min() * shape[1] > P_FLOOR
    assert bit_uniformity_pvalue(noise()) > P_FLOOR
