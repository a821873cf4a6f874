"""SPDZ2k's values from and to endpoints outside the computation (issue 17): inputs masked
by dealt [r] with r known to the source, outputs masked by dealt [s] known to the target.

A small program (the owner's w and the client's x, y = x * w + x) runs every role as a
thread: fast, 2 and 3 parties, every deviation. The bundled model through
`experiments.deploy.run_deployment` (the honest labels, and compute party 1 shifting its
share of the features or the weights, altering the result it sends the client, or lying in
the hash comparison) is tested for every active scheme in
tests/experiments/test_deploy_integrity.py; the replicated schemes' outside values in
test_external.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import lie_about_masked_inputs, shift_input

from experiments.deploy import Roles
from mpc import ring128 as r128
from mpc.errors import CheatingDetected, ConfigError, ProtocolError
from mpc.launch import run_threads
from mpc.prg import PRG
from mpc.runtime import Runtime
from protocols import registry
from protocols.preprocessing import spdz2k_material as material
from protocols.preprocessing.correlations import Request
from protocols.run import dealer_role, party_role, plan_of
from protocols.schemes.spdz2k import Spdz2k
from protocols.tensor import SecretTensor

SCHEME = registry.get("spdz2k")
DEVIANT = 1
SHAPE = (5,)
Hook = Callable[[Runtime], None]


# -- a small deployment: the owner's w, the client's x, y = x * w + x back to the client ------
@dataclass
class Affine:
    roles: Roles

    def setup(self, protocol) -> None:
        self.w = SecretTensor.input_external(protocol, self.roles.model_owner, SHAPE)

    def __call__(self, protocol) -> dict:
        traffic = protocol.channel.traffic if protocol.channel is not None else None
        start = traffic.rounds if traffic else 0
        x = SecretTensor.input_external(protocol, self.roles.client, SHAPE)
        middle = traffic.rounds if traffic else 0
        (x * self.w + x).reveal_external(self.roles.client)
        end = traffic.rounds if traffic else 0
        return {"input": middle - start, "output": end - middle - 1}  # less the product's


def _small(n: int, w: np.ndarray, x: np.ndarray, hooks: dict[int, Hook] | None = None,
           client: Callable | None = None) -> tuple[np.ndarray, list[dict]]:
    """Run every role as a thread: the client's result, and each compute party's rounds."""
    roles = Roles.for_scheme(SCHEME, n)
    ends = roles.endpoints
    plan = plan_of(Affine(roles), n, SCHEME)

    def take(runtime: Runtime) -> np.ndarray:
        Spdz2k.give_external(runtime.channel, ends, x)
        return Spdz2k.take_external(runtime.channel, ends, SHAPE)

    def give(runtime: Runtime) -> None:
        Spdz2k.give_external(runtime.channel, ends, w)

    jobs = [functools.partial(party_role, scheme=SCHEME, program=Affine(roles), plan=plan)
            for _ in range(n)]
    jobs.append(functools.partial(dealer_role, scheme=SCHEME, plan=plan))
    jobs += [client or take, give]

    def hooked(endpoint: int, runtime: Runtime):
        if hooks and endpoint in hooks:
            hooks[endpoint](runtime)
        return jobs[endpoint](runtime)

    results = run_threads([functools.partial(hooked, k) for k in range(len(jobs))],
                          roles.run_config(timeout=20.0))
    return results[roles.client], [r.result for r in results[:n]]


def _values(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The owner's w and the client's x: uniform ring elements, fixed per seed."""
    prg = PRG(seed.to_bytes(16, "little"))
    return prg.ring_elements(SHAPE), prg.ring_elements(SHAPE)


def _send_hook(to: Callable[[Runtime, int], bool], delta: int) -> Hook:
    """Party DEVIANT adds `delta` to the first word of every array it sends to `to`."""
    def hook(runtime: Runtime) -> None:
        channel = runtime.channel
        send = channel._send

        def altered(peer: int, array: np.ndarray) -> None:
            if to(runtime, peer) and array.size:
                array = np.array(array, copy=True)
                array.reshape(-1)[0] += np.array(delta).astype(array.dtype)
            send(peer, array)

        channel._send = altered
    return hook


def _to_client(runtime: Runtime, peer: int) -> bool:
    return peer == Roles.for_scheme(SCHEME, runtime.n_parties).client


# -- the small deployment ----------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3])
def test_values_cross_in_and_out_exactly(n):
    w, x = _values(n)
    result, rounds = _small(n, w, x)
    assert np.array_equal(result, x * w + x)
    # input: c, then the hash comparison; output: the first MAC check (5), the opening,
    # its check (4), the copies to the client
    assert rounds == [{"input": 2, "output": 11}] * n


def test_planner_records_outside_masks_and_refuses_compute_parties():
    planner = Spdz2k.planner(2)
    share = planner.input_external(4, (2, 3))
    planner.reveal_external(share[:, 0], 3)
    assert planner.plan == [Request("input", (2, 3), (4,)), Request("reveal", (3,), (3,))]
    with pytest.raises(ValueError, match="is a compute party"):
        planner.input_external(1, (2,))
    with pytest.raises(ValueError, match="is a compute party"):
        planner.reveal_external(share, 0)
    assert material.outside_endpoints(planner.plan, 2) == [3, 4]


@pytest.mark.parametrize("n", [2, 3])
def test_outside_masks_are_the_dealt_values(n):
    """What the dealer sends an outside endpoint is the value of the authenticated mask the
    parties expand (value and MAC summed), request by request."""
    outside = n + 1
    plan = [Request("input", (3,), (outside,)), Request("reveal", (2,), (outside,))]
    keys = [PRG.fresh().derive(str(i)) for i in range(n)]
    known = [PRG.fresh().derive(f"k{i}") for i in range(n)]
    key = PRG.fresh().random_bytes(16)
    fresh = lambda ks: [PRG(k._key) for k in ks]  # noqa: E731 - same streams again
    alpha = r128.lift(np.array([987654321987654321], dtype=np.uint64))[:, 0]
    sent = list(material.outside_masks(plan, n, {outside: PRG(key)}))
    flat = np.empty(sum(material.correction_words(r, n) for r in plan), dtype=np.uint64)
    dealer_known = {**dict(enumerate(fresh(known))), outside: PRG(key)}
    offset, prgs = 0, fresh(keys)
    for request in plan:
        size = material.correction_words(request, n)
        material.deal_into(request, prgs, dealer_known, alpha, PRG.fresh(),
                           flat[offset:offset + size])
        offset += size
    stores = [material.LazyStore(plan, p, kp, i, flat if i == n - 1 else None, n)
              for i, (p, kp) in enumerate(zip(fresh(keys), fresh(known), strict=True))]
    names = ["r", f"mask{outside}"]
    assert [e for e, _ in sent] == [outside, outside]
    for request, name, (_, mask) in zip(plan, names, sent, strict=True):
        parts = [s.take(request) for s in stores]
        assert not any(k.endswith("_value") for k in parts[0])  # no compute party knows it
        acc = parts[0][name]
        for other in parts[1:]:
            acc = r128.add(acc, other[name])
        assert np.array_equal(acc[0], mask)
        assert np.array_equal(acc[2:4], r128.mul(alpha.reshape(2, 1), acc[0:2]))


@pytest.mark.parametrize("source", ["client", "model_owner"])
def test_a_shifted_share_of_an_outside_input_is_caught(monkeypatch, source):
    w, x = _values(7)
    shift_input(monkeypatch, SCHEME.name, DEVIANT, getattr(Roles.for_scheme(SCHEME, 2), source),
                1 << 20)
    with pytest.raises(CheatingDetected, match="MAC check failed"):
        _small(2, w, x)


def test_a_party_that_uses_another_masked_input_is_caught(monkeypatch):
    """Party 1 hashes the c it received but adds c + 1: its shares and MACs are off."""
    original = Spdz2k.add_public

    def deviating(self, share, value):
        if self.party_id == DEVIANT and np.shape(value) == SHAPE:
            value = value + np.uint64(1)
        return original(self, share, value)

    monkeypatch.setattr(Spdz2k, "add_public", deviating)
    w, x = _values(8)
    with pytest.raises(CheatingDetected, match="MAC check failed"):
        _small(2, w, x)


@pytest.mark.parametrize("n", [2, 3])
def test_an_altered_result_copy_is_refused_by_the_client(n):
    w, x = _values(9)
    with pytest.raises(ProtocolError, match="sent different masked results: refusing"):
        _small(n, w, x, {DEVIANT: _send_hook(_to_client, 1)})


def test_refusal_does_not_depend_on_the_result():
    """The selective-failure probe: the same alteration of the copy sent to the client is
    refused with the same error whatever the result (a zero one included)."""
    w, x = _values(10)
    errors = []
    for client_x in (x, np.zeros_like(x), x + np.uint64(1)):
        with pytest.raises(ProtocolError) as caught:
            _small(2, w, client_x, {DEVIANT: _send_hook(_to_client, 3)})
        errors.append(str(caught.value).split("\n")[0])
    assert len(set(errors)) == 1


def test_a_wrong_hash_stops_the_honest_party(monkeypatch):
    """Party 1 sends a wrong hash in every `confirm_same`."""
    lie_about_masked_inputs(monkeypatch, SCHEME.name, DEVIANT)
    w, x = _values(11)
    with pytest.raises(CheatingDetected, match="received a different masked input from the "
                                               "model owner"):
        _small(2, w, x)


def test_a_source_that_sends_different_values_is_caught():
    w, x = _values(12)
    roles = Roles.for_scheme(SCHEME, 3)

    def client(runtime: Runtime) -> np.ndarray:  # c + 1 to party 2 only
        channel, ends = runtime.channel, roles.endpoints
        r = channel.recv(ends.dealer)
        channel.exchange({p: x - r + np.uint64(p == 2) for p in ends.parties}, ())
        return Spdz2k.take_external(channel, ends, SHAPE)

    with pytest.raises(CheatingDetected, match="masked input from the client"):
        _small(3, w, x, client=client)


def test_a_dealer_less_endpoint_list_is_refused():
    from protocols.external import Endpoints

    with pytest.raises(ConfigError, match="need the dealer"):
        Spdz2k.give_external(None, Endpoints(2), np.zeros(2, dtype=np.uint64))
