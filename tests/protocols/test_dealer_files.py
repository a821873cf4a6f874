"""The dealer's file mode (`protocols/preprocessing/dealer_files.py`): material written to one
file per party runs a layer like the networked dealer, loads once, and refuses files of
another plan, party or party count, tampered or damaged files, and schemes without a
dealer."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import i64, reveal_all, run_clear, secret

from mpc.errors import PreprocessingError
from mpc.launch import run_threads
from mpc.runtime import RunConfig
from protocols.ops import Mul
from protocols.preprocessing import dealer_files
from protocols.preprocessing.correlations import Request
from protocols.run import plan_of, run
from protocols.schemes.additive import Additive
from protocols.schemes.replicated import Replicated

# -- the dealer's files -------------------------------------------------------------------------

F = 16
XS = np.array([1.5, -2.25, 3.0, -0.5, 0.0, 7.75, -8.0, 0.125], dtype=np.float64)
YS = np.array([2.0, 1.5, -1.25, -3.0, 4.0, -0.5, -0.25, 16.0], dtype=np.float64)


def layer(p):
    """A small layer: product, truncation, ReLU (and the comparison bit)."""
    x = secret(p, np.round(XS * (1 << F)).astype(np.int64), 0)
    y = secret(p, np.round(YS * (1 << F)).astype(np.int64), p.n_parties - 1)
    product = x * y
    scaled = product.trunc(F)
    return (reveal_all(product), reveal_all(scaled), reveal_all(scaled.relu()),
            reveal_all(scaled.ltz()))


def products_only(p):
    """Another program than `layer`: its product, truncated twice."""
    x = secret(p, np.round(XS * (1 << F)).astype(np.int64), 0)
    return reveal_all(((x * x).trunc(F) * x).trunc(F))


def file_party(runtime, program, plan, paths):
    protocol = Additive(runtime)
    dealer_files.use_material_file(protocol, paths[runtime.party_id], plan)
    with runtime.channel.stage("online"):
        return program(protocol), runtime.channel.traffic.copy()


def run_from_files(program, n_parties: int, paths, plan=None):
    plan = plan_of(program, n_parties, "additive") if plan is None else plan
    roles = [functools.partial(file_party, program=program, plan=plan, paths=paths)
             for _ in range(n_parties)]
    return run_threads(roles, RunConfig(n_parties=n_parties, timeout=20.0))


def check_layer(result):
    product, scaled, relu, ltz = result
    clear_product = run_clear(layer, 2)[0]
    assert np.array_equal(product, clear_product)  # exact in the ring
    error = i64(scaled) - (i64(product) >> F)
    assert set(np.unique(error)) <= {0, 1}
    assert np.array_equal(i64(relu), np.maximum(i64(scaled), 0))
    assert np.array_equal(ltz, (i64(scaled) < 0).astype(np.uint64))
    assert np.abs(i64(scaled) / (1 << F) - XS * YS).max() <= 2.0 ** -F


@pytest.mark.parametrize("n_parties", [2, 3])
def test_material_from_files_runs_a_layer_like_the_networked_dealer(tmp_path, n_parties):
    plan = plan_of(layer, n_parties, "additive")
    assert [r.kind for r in plan] == ["triple", "trunc", "relu", "ltz"]
    paths = dealer_files.write_material(plan, n_parties, tmp_path)
    assert [p.name for p in paths] == [f"party-{i}.material" for i in range(n_parties)]

    from_files = run_from_files(layer, n_parties, paths, plan)
    networked = run("additive", layer, n_parties=n_parties)[:n_parties]
    for (result, traffic), report in zip(from_files, networked, strict=True):
        check_layer(result)
        check_layer(report.result)
        assert np.array_equal(result[0], report.result[0])  # the exact part is identical
        assert traffic.rounds == report.online.rounds  # same online protocol
    for path in paths:  # every file was consumed, and nothing secret remains
        assert not path.exists()
        consumed = path.with_name(path.name + ".consumed")
        assert consumed.exists() and consumed.stat().st_size == 0


def test_a_file_loads_once(tmp_path):
    plan = plan_of(layer, 2, "additive")
    paths = dealer_files.write_material(plan, 2, tmp_path)
    store = dealer_files.load_material(paths[1], plan, 1, 2)
    assert len(store) == len(plan)
    with pytest.raises(PreprocessingError, match="already consumed"):
        dealer_files.load_material(paths[1], plan, 1, 2)
    # ... and a whole run over the half-used directory fails before the online phase
    with pytest.raises(PreprocessingError, match="already consumed"):
        run_from_files(layer, 2, paths, plan)


def test_files_are_plain_arrays_and_only_the_last_party_gets_corrections(tmp_path):
    plan = plan_of(layer, 3, "additive")
    paths = dealer_files.write_material(plan, 3, tmp_path)
    sizes = []
    for path in paths:
        with np.load(path, allow_pickle=False) as archive:  # no pickle inside
            assert set(archive.files) == {"format", "party", "fingerprint", "seed",
                                          "corrections"}
            assert archive["seed"].size == 16
            sizes.append(archive["corrections"].size)
    assert sizes[0] == sizes[1] == 0 and sizes[2] > 0
    seeds = [np.load(p)["seed"].tobytes() for p in paths]
    assert len(set(seeds)) == 3  # a fresh seed per party


def test_a_mismatched_plan_is_refused_and_leaves_the_file(tmp_path):
    plan = plan_of(layer, 2, "additive")
    paths = dealer_files.write_material(plan, 2, tmp_path)
    other_plan = plan_of(products_only, 2, "additive")
    with pytest.raises(PreprocessingError, match=r"party-0\.material.*different plan"):
        dealer_files.load_material(paths[0], other_plan, 0, 2)
    reordered = plan[1:] + plan[:1]
    with pytest.raises(PreprocessingError, match="different plan"):
        dealer_files.load_material(paths[0], reordered, 0, 2)
    resized = [Request("triple", (9,), (9,), op=Mul()), *plan[1:]]
    with pytest.raises(PreprocessingError, match="different plan"):
        dealer_files.load_material(paths[1], resized, 1, 2)
    # a refusal does not consume: the right plan still loads
    assert len(dealer_files.load_material(paths[0], plan, 0, 2)) == len(plan)


def test_a_file_for_another_party_or_party_count_is_refused(tmp_path):
    plan = plan_of(layer, 2, "additive")
    paths = dealer_files.write_material(plan, 2, tmp_path)
    with pytest.raises(PreprocessingError, match=r"party-1\.material.* dealt to party 1 of 2, "
                                                 r"not to party 0 of 2"):
        dealer_files.load_material(paths[1], plan, 0, 2)
    with pytest.raises(PreprocessingError, match="not to party 1 of 3"):
        dealer_files.load_material(paths[1], plan, 1, 3)


def rewrite(path, arrays) -> None:
    with open(path, "wb") as handle:  # a handle: savez would append ".npz" to a name
        np.savez(handle, **arrays)


def test_tampered_files_are_refused(tmp_path):
    plan = plan_of(layer, 2, "additive")
    paths = dealer_files.write_material(plan, 2, tmp_path)
    with np.load(paths[1]) as archive:
        arrays = {name: archive[name] for name in archive.files}
    # corrections cut short
    short = dict(arrays, corrections=arrays["corrections"][:-1])
    rewrite(paths[1], short)
    with pytest.raises(PreprocessingError, match="the plan needs"):
        dealer_files.load_material(paths[1], plan, 1, 2)
    # fingerprint altered
    bad = arrays["fingerprint"].copy()
    bad[0] ^= 1
    rewrite(paths[1], dict(arrays, fingerprint=bad))
    with pytest.raises(PreprocessingError, match="different plan"):
        dealer_files.load_material(paths[1], plan, 1, 2)
    # bytes damaged
    data = bytearray(paths[0].read_bytes())
    paths[0].write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(PreprocessingError, match=r"party-0\.material is damaged"):
        dealer_files.load_material(paths[0], plan, 0, 2)
    # a pickled object array is refused, not unpickled
    rewrite(paths[0], dict(arrays, seed=np.array([object()], dtype=object)))
    with pytest.raises(PreprocessingError, match="damaged"):
        dealer_files.load_material(paths[0], plan, 0, 2)


def test_missing_files_and_reused_directories_are_errors(tmp_path):
    plan = plan_of(layer, 2, "additive")
    with pytest.raises(PreprocessingError, match="does not exist"):
        dealer_files.load_material(tmp_path / "party-0.material", plan, 0, 2)
    dealer_files.write_material(plan, 2, tmp_path)
    with pytest.raises(PreprocessingError, match="already exists"):
        dealer_files.write_material(plan, 2, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["party-0.material",
                                                          "party-1.material"]


def test_only_dealer_schemes_take_material_files(tmp_path):
    plan = plan_of(products_only, 3, "additive")
    paths = dealer_files.write_material(plan, 3, tmp_path)
    replicated = object.__new__(Replicated)  # no runtime needed to be refused
    with pytest.raises(TypeError, match="replicated"):
        dealer_files.use_material_file(replicated, paths[0], plan)
    assert paths[0].exists()
