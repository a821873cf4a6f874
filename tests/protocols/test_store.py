"""The material store (`protocols/preprocessing/store.py`): material is single-use and is
handed out in plan order only, so a program that asks for more than its plan, or for
something else, fails."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import reveal_all, secret

from mpc.errors import PreprocessingError
from mpc.launch import run_threads
from mpc.runtime import RunConfig
from protocols.ops import MatMul, Mul
from protocols.preprocessing.correlations import Request
from protocols.preprocessing.store import MaterialStore
from protocols.registry import SCHEMES
from protocols.run import dealer_role, party_role, plan_of

# -- the store ---------------------------------------------------------------------------------

MUL3 = Request("triple", (3,), (3,), op=Mul())
TRUNC3 = Request("trunc", (3,), frac_bits=16)


def test_material_cannot_be_taken_twice():
    store = MaterialStore()
    store.add(MUL3, {"a": np.zeros(3, dtype=np.uint64)})
    assert len(store) == 1
    store.take(MUL3)
    assert len(store) == 0 and store.used == 1
    with pytest.raises(PreprocessingError, match="no preprocessing material left"):
        store.take(MUL3)


def test_material_is_handed_out_in_plan_order_only():
    store = MaterialStore()
    store.add(MUL3, {})
    store.add(TRUNC3, {})
    with pytest.raises(PreprocessingError, match="planned as triple .* asks for trunc"):
        store.take(TRUNC3)
    with pytest.raises(PreprocessingError, match="plan and program differ"):
        store.take(Request("triple", (3,), (3,), op=MatMul()))  # same shapes, other op
    with pytest.raises(PreprocessingError):
        store.take(Request("trunc", (3,), frac_bits=16))
    store.take(MUL3)
    with pytest.raises(PreprocessingError):
        store.take(Request("trunc", (3,), frac_bits=8))  # same kind and shape, other f
    store.take(TRUNC3)


# -- a program against another program's plan --------------------------------------------------

X = np.array([3, -4, 5], dtype=np.int64) << 16


def mul_once(p):
    x = secret(p, X, 0)
    return reveal_all((x * x).trunc(16))


def mul_twice(p):
    x = secret(p, X, 0)
    return reveal_all(((x * x).trunc(16) * x).trunc(16))


def compare_instead(p):
    x = secret(p, X, 0)
    return reveal_all(x.ltz().trunc(16))


def run_with_plan(scheme: str, n_parties: int, program, plan: list[Request]):
    """Like `protocols.run.run`, but the offline phase deals `plan`, not the program's."""
    entry = SCHEMES[scheme]
    roles = [functools.partial(party_role, scheme=entry, program=program, plan=plan)
             for _ in range(n_parties)]
    needs_dealer = entry.dealer
    if needs_dealer:
        roles.append(functools.partial(dealer_role, scheme=entry, plan=plan))
    return run_threads(roles, RunConfig(n_parties=n_parties, timeout=20.0,
                                        dealer=needs_dealer))


# The schemes whose material comes from a `MaterialStore` dealt to the plan (rep4 makes
# unplanned material online, replicated_mac has no offline phase, spdz2k its own store:
# tests/protocols/test_spdz2k.py::test_material_must_follow_the_plan).
@pytest.mark.parametrize(("scheme", "n_parties"), [("additive", 2), ("additive", 3),
                                                    ("replicated", 3)])
def test_asking_for_more_than_planned_fails(scheme, n_parties):
    plan = plan_of(mul_once, n_parties, scheme)
    assert run_with_plan(scheme, n_parties, mul_once, plan)  # the plan fits its program
    with pytest.raises(PreprocessingError, match="no preprocessing material left .* more "
                                                 "than was planned"):
        run_with_plan(scheme, n_parties, mul_twice, plan)


@pytest.mark.parametrize(("scheme", "n_parties"), [("additive", 2), ("replicated", 3)])
def test_asking_for_something_else_than_planned_fails(scheme, n_parties):
    plan = plan_of(mul_once, n_parties, scheme)
    with pytest.raises(PreprocessingError, match="plan and program differ"):
        run_with_plan(scheme, n_parties, compare_instead, plan)
