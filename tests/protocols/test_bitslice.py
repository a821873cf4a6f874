"""Bit-slicing round trips, and the dealer's correlations: `deal` on the dealer's side and
`expand` on every party's side reconstruct to fields with the promised relations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpc.prg import PRG
from protocols.blocks import bitslice
from protocols.ops import Conv2d, MatMul, Mul
from protocols.preprocessing.correlations import (
    ARITH,
    BOOL,
    Request,
    and_gates_per_comparison,
    comparison_tree,
    correction_words,
    deal,
    expand,
    fields,
    split_corrections,
)

ring_vectors = hnp.arrays(np.uint64, st.integers(0, 300),
                          elements=st.integers(0, (1 << 64) - 1))
bit_vectors = hnp.arrays(np.uint8, st.integers(0, 300), elements=st.integers(0, 1))


# -- slicing -------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(values=ring_vectors)
def test_slice_then_unslice_gives_every_bit_back(values):
    planes = bitslice.slice_bits(values)
    words = bitslice.words_for(values.size)
    assert planes.shape == (64, words) and planes.dtype == np.uint64
    rebuilt = np.zeros(values.size, dtype=np.uint64)
    for i in range(64):
        bits = bitslice.unslice_bit(planes[i], values.size)
        assert bits.dtype == np.uint64 and bits.shape == values.shape
        assert np.array_equal(bits, (values >> np.uint64(i)) & np.uint64(1))
        rebuilt |= bits << np.uint64(i)
    assert np.array_equal(rebuilt, values)
    # bits past the last value are zero in every plane
    if values.size % 64:
        assert not np.any(planes[:, -1] >> np.uint64(values.size % 64))


@settings(max_examples=60, deadline=None)
@given(bits=bit_vectors)
def test_pack_and_unslice_are_inverse(bits):
    plane = bitslice.pack_bits(bits)
    assert plane.shape == (bitslice.words_for(bits.size),) and plane.dtype == np.uint64
    assert np.array_equal(bitslice.unslice_bit(plane, bits.size), bits.astype(np.uint64))
    assert np.array_equal(bitslice.pack_bits(bitslice.unslice_bit(plane, bits.size)), plane)


@settings(max_examples=30, deadline=None)
@given(values=ring_vectors)
def test_each_sliced_plane_packs_its_bits(values):
    planes = bitslice.slice_bits(values)
    for i in (0, 1, 31, 62, 63):
        bits = (values >> np.uint64(i)) & np.uint64(1)
        assert np.array_equal(planes[i], bitslice.pack_bits(bits))


@settings(max_examples=30, deadline=None)
@given(a=ring_vectors, data=st.data())
def test_word_operations_on_planes_act_bitwise_on_values(a, data):
    b = data.draw(hnp.arrays(np.uint64, a.shape, elements=st.integers(0, (1 << 64) - 1)))
    pa, pb = bitslice.slice_bits(a), bitslice.slice_bits(b)
    assert np.array_equal(pa ^ pb, bitslice.slice_bits(a ^ b))
    assert np.array_equal(pa & pb, bitslice.slice_bits(a & b))


def test_word_counts():
    assert [bitslice.words_for(n) for n in (0, 1, 63, 64, 65, 128, 129)] == [0, 1, 1, 1, 2, 2, 3]
    assert comparison_tree() == [32, 16, 8, 4, 2, 1]
    assert and_gates_per_comparison() == 2 * (16 + 8 + 4 + 2 + 1)
    assert comparison_tree(39) == [20, 10, 5, 3, 2, 1]
    assert comparison_tree(32) == [16, 8, 4, 2, 1]
    assert comparison_tree(1) == [1] and and_gates_per_comparison(1) == 0


# -- dealing and expanding -----------------------------------------------------------------------

REQUESTS = {
    "mul": Request("triple", (3, 4), (3, 4), op=Mul()),
    "mul-broadcast": Request("triple", (2, 3), (3,), op=Mul()),
    "matmul": Request("triple", (3, 5), (5, 2), op=MatMul()),
    "matmul-batched": Request("triple", (2, 3, 5), (5, 2), op=MatMul()),
    "conv": Request("triple", (4, 2, 3, 3), (2, 2, 6, 5), op=Conv2d((2, 1), (1, 1))),
    "trunc": Request("trunc", (7, 3), frac_bits=16),
    "trunc-wide": Request("trunc", (50,), frac_bits=40),
    "ltz": Request("ltz", (5, 3)),
    "ltz-words": Request("ltz", (130,)),
    "relu": Request("relu", (70,)),
    "relu-one": Request("relu", (1,)),
    "ltz-narrow": Request("ltz", (70,), bits=39),
    "relu-narrow-odd": Request("relu", (130,), bits=7),
    "relu-one-bit": Request("relu", (3,), bits=1),
}


def deal_and_expand(request: Request, n_parties: int, seed: int
                    ) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    keys = [bytes([seed, i]) * 8 for i in range(n_parties)]
    corrections = deal(request, [PRG(k) for k in keys])
    supply = iter(corrections)
    shares = [expand(request, PRG(k), i == n_parties - 1, lambda field: next(supply))
              for i, k in enumerate(keys)]
    return shares, corrections


def reconstruct(request: Request, shares: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    free, dependent = fields(request)
    out = {}
    for field in free + dependent:
        parts = [s[field.name] for s in shares]
        assert all(p.shape == field.shape and p.dtype == np.uint64 for p in parts), field
        total = parts[0].copy()
        for part in parts[1:]:
            total = total + part if field.domain == ARITH else total ^ part
        out[field.name] = total
    return out


@pytest.mark.parametrize("n_parties", [2, 3, 4])
@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_dealt_material_has_the_promised_relations(name, n_parties):
    request = REQUESTS[name]
    shares, corrections = deal_and_expand(request, n_parties, seed=len(name))
    assert sum(c.size for c in corrections) == correction_words(request)
    v = reconstruct(request, shares)
    if request.kind == "triple":
        assert v["a"].shape == request.shape and v["b"].shape == request.other
        assert np.array_equal(v["c"], request.op(v["a"], v["b"]))
        return
    if request.kind == "trunc":
        r = v["r"]
        assert np.array_equal(v["r_msb"], r >> np.uint64(63))
        low = r & np.uint64((1 << 63) - 1)
        assert np.array_equal(v["r_low_shifted"], low >> np.uint64(request.frac_bits))
        # [r] = 2^63 [r_msb] + [r_low]: the identity truncation rests on
        assert np.array_equal(r, (v["r_msb"] << np.uint64(63)) + low)
        return
    size = request.size
    words = bitslice.words_for(size)
    r = v["r"]
    assert r.shape == (size,)
    # bits 0..request.bits of r (all 64 planes for a comparison over the whole ring)
    assert np.array_equal(v["r_bits"], bitslice.slice_bits(r)[:request.bits + 1])
    bits = v["r_bits"]
    pairs = request.bits // 2
    assert v["pair_products"].shape == (pairs, words)
    for j in range(pairs):  # products of neighbouring low bits (2j+1, 2j)
        assert np.array_equal(v["pair_products"][j], bits[2 * j + 1] & bits[2 * j])
    assert v["and_a"].shape == (and_gates_per_comparison(request.bits), words)
    assert np.array_equal(v["and_c"], v["and_a"] & v["and_b"])
    rho = v["rho"]
    assert set(np.unique(rho)) <= {0, 1}
    assert np.array_equal(rho, bitslice.unslice_bit(v["rho_bits"], size))
    if request.kind == "relu":
        assert np.array_equal(v["x_mask_rho"], v["x_mask"] * rho)
    else:
        assert "x_mask" not in v


@pytest.mark.parametrize("n_parties", [2, 3, 4])
def test_only_the_last_party_depends_on_corrections(n_parties):
    """Parties other than the last expand everything from their seed: the same seed gives
    the same shares, and the corrections are all the dealer sends."""
    request = REQUESTS["relu"]
    shares, _ = deal_and_expand(request, n_parties, seed=9)
    again, _ = deal_and_expand(request, n_parties, seed=9)
    for i in range(n_parties - 1):
        for name in shares[i]:
            assert np.array_equal(shares[i][name], again[i][name])

    def refuse(field):
        raise AssertionError(f"party asked for a correction of {field.name}")

    expand(request, PRG(bytes(16)), False, refuse)  # a non-last party never asks
    # the free fields of every party are uniform-looking PRG output, not the values
    values = reconstruct(request, shares)
    for i in range(n_parties):
        assert not np.array_equal(shares[i]["r"], values["r"])


@pytest.mark.parametrize("n_parties", [2, 3, 4])
def test_a_whole_plan_deals_as_one_flat_message(n_parties):
    """A plan's corrections concatenated and cut back give the same material per request."""
    plan = [REQUESTS[k] for k in ("mul", "trunc", "relu", "conv", "ltz")]
    keys = [bytes([77, i]) * 8 for i in range(n_parties)]
    dealer = [PRG(k) for k in keys]
    flat = np.concatenate([c.reshape(-1) for r in plan for c in deal(r, dealer)])
    assert flat.size == sum(correction_words(r) for r in plan)
    parties = [PRG(k) for k in keys]
    material: list[list[dict]] = [[] for _ in range(n_parties)]
    for request, arrays in zip(plan, split_corrections(plan, flat), strict=True):
        for i, prg in enumerate(parties):
            supply = iter(arrays)
            material[i].append(expand(request, prg, i == n_parties - 1,
                                      lambda field, s=supply: next(s)))
    for j, request in enumerate(plan):
        v = reconstruct(request, [material[i][j] for i in range(n_parties)])
        if request.kind == "triple":
            assert np.array_equal(v["c"], request.op(v["a"], v["b"]))
        elif request.kind == "trunc":
            assert np.array_equal(v["r_msb"], v["r"] >> np.uint64(63))
        else:
            assert np.array_equal(v["r_bits"], bitslice.slice_bits(v["r"]))
            assert np.array_equal(v["and_c"], v["and_a"] & v["and_b"])
    with pytest.raises(ValueError, match="the plan needs"):
        list(split_corrections(plan, np.concatenate([flat, flat[:1]])))
    with pytest.raises(ValueError):
        list(split_corrections(plan, flat[:-1]))


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="unknown preprocessing kind"):
        fields(Request("square", (3,)))
    assert {f.domain for f in fields(REQUESTS["ltz"])[0]} == {ARITH, BOOL}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, (1 << 64) - 1), min_size=0, max_size=300))
def test_slice_bits_kernel_is_bit_exact_with_its_numpy_twin(values):
    array = np.array(values, dtype=np.uint64)
    assert np.array_equal(bitslice.slice_bits(array), bitslice.slice_bits_numpy(array))
