"""Tier 1: fixed-point encoding, its error messages, and exact truncation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpc import ring as R
from mpc.errors import EncodingError
from mpc.fixedpoint import MAX_VALUE_BITS, FixedPoint, truncate_exact

settings.register_profile("fixedpoint", max_examples=60, deadline=None)
settings.load_profile("fixedpoint")

FP = FixedPoint()
in_range = st.floats(-FP.max_abs, FP.max_abs, allow_nan=False)


@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3), elements=in_range))
def test_round_trip_within_half_ulp(x: np.ndarray) -> None:
    enc = FP.encode(x)
    assert enc.dtype == np.uint64 and enc.shape == x.shape
    assert np.all(np.abs(FP.decode(enc) - x) <= 2.0**-FP.frac_bits / 2)


@given(st.integers(0, 40), st.integers(1, 20), st.data())
def test_round_trip_other_parameters(f: int, i: int, data: st.DataObject) -> None:
    fp = FixedPoint(frac_bits=f, int_bits=i)
    x = data.draw(st.lists(st.floats(-fp.max_abs, fp.max_abs), min_size=1, max_size=5))
    got = fp.decode(fp.encode(np.array(x)))
    assert np.all(np.abs(got - np.array(x)) <= 2.0**-f / 2)


def test_negative_values_are_twos_complement() -> None:
    enc = FP.encode(np.array([-1.0, -0.5, -(2.0**-16), 0.0, 2.5]))
    assert R.to_pyint(enc).tolist() == [
        (1 << 64) - (1 << 16),
        (1 << 64) - (1 << 15),
        (1 << 64) - 1,
        0,
        5 << 15,
    ]
    assert FP.decode(enc).tolist() == [-1.0, -0.5, -(2.0**-16), 0.0, 2.5]


def test_scale_and_max_abs() -> None:
    assert FP.scale == 1 << 16
    assert FP.max_abs == 2.0**31 - 2.0**-16
    assert FP.decode(FP.encode(FP.max_abs)) == FP.max_abs
    assert FP.decode(FP.encode(-FP.max_abs)) == -FP.max_abs


@pytest.mark.parametrize(
    "bad",
    [math.nan, math.inf, -math.inf, 2.0**31, -(2.0**31), 1e300, 2.0**31 - 2.0**-18],
)
def test_unencodable_values_name_index_value_and_range(bad: float) -> None:
    x = np.zeros((2, 3))
    x[1, 2] = 7.0  # fine
    x[1, 1] = bad
    x[1, 2] = bad  # a later offender: the message names the first one
    with pytest.raises(EncodingError) as info:
        FP.encode(x)
    msg = str(info.value)
    assert "flat index 4" in msg and "(1, 1)" in msg
    assert repr(bad) in msg
    assert repr(FP.max_abs) in msg and "2^31" in msg


def test_encoding_error_is_a_value_error_for_scalars() -> None:
    with pytest.raises(ValueError, match="flat index 0"):
        FP.encode(float("nan"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frac_bits": -1},
        {"int_bits": 0},
        {"frac_bits": 31, "int_bits": 31},  # 63 bits with the sign
        {"frac_bits": 1.5},
        {"int_bits": True},
        {"frac_bits": "16"},
    ],
)
def test_bad_parameters_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FixedPoint(**kwargs)


def test_largest_allowed_parameters() -> None:
    fp = FixedPoint(frac_bits=30, int_bits=MAX_VALUE_BITS - 31)
    x = np.array([fp.max_abs, -fp.max_abs, 1.25])
    assert np.array_equal(fp.decode(fp.encode(x)), x)


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        FP.frac_bits = 3  # type: ignore[misc]


@given(
    st.lists(st.integers(-(1 << 63), (1 << 63) - 1), min_size=1, max_size=10),
    st.integers(0, 70),
)
def test_truncate_exact_is_floor_division(values: list[int], f: int) -> None:
    a = R.from_int(np.array(values, dtype=object))
    got = R.signed64(truncate_exact(a, f)).tolist()
    assert got == [v // (1 << f) for v in values]


def test_truncate_exact_of_a_product() -> None:
    x, w = FP.encode(np.array([-1.5, 2.25])), FP.encode(np.array([0.5, -3.0]))
    prod = truncate_exact(R.mul(x, w), FP.frac_bits)
    assert FP.decode(prod).tolist() == [-0.75, -6.75]
    with pytest.raises(ValueError):
        truncate_exact(x, -1)
