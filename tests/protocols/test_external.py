"""Values from and to endpoints outside the computation (issue 17): `protocols/external.py`
and the schemes' `input_external`, `reveal_external`, `give_external`, `take_external`.

`conftest.run_external` runs a scheme's compute parties (and its dealer) with a client and
a model owner as threads: both outside values enter, a product and a sum of them go back to
the client, so every party sends values that depend on both; compute party 1 deviates in
each way a scheme must catch. Covered here:

* the replicated seeds method, under `SEEDED`: the active schemes without a dealer (rep4
  and replicated_mac), with `HELD` the per-scheme constants;
* the passive method (`input_pieces`, `reveal_masked` and the endpoints' sides) under
  `PASSIVE`: additive and replicated;
* external.py's helpers on their own: `split`, `confirm_same`, `agreed`, `give_by_seeds`,
  `take_components`.

spdz2k's dealt masks are tested in test_spdz2k_external.py; the same deviations in a real
deployment of the bundled model, for every active scheme, in
tests/experiments/test_deploy_integrity.py.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import (
    MASKED_INPUT_LIE_CAUGHT,
    MASKED_INPUT_LIES,
    PASSIVE_SCHEMES,
    REFUSAL_NAMES,
    alter_sent,
    lie_about_masked_inputs,
    outside_ids,
    run_external,
    shift_input,
)

from mpc.errors import CheatingDetected, PeerLost, ProtocolError, SottovoceError
from mpc.launch import run_threads
from mpc.prg import PRG
from mpc.runtime import RunConfig, Runtime
from protocols import external, registry
from protocols.external import Endpoints
from protocols.ops import Mul

#: The schemes that enter outside values through the seeds of a replicated random sharing,
#: cross-checked at the source (`external.give_by_seeds`, `take_components`): the active
#: schemes without a dealer, rep4 and replicated_mac.
SEEDED = tuple(s.name for s in registry.SCHEMES.values() if s.active and not s.dealer)
#: The schemes on the passive method (pieces in, masked result out): additive, replicated.
PASSIVE = PASSIVE_SCHEMES
#: Per seeded scheme, the components of a sharing each compute party holds: it sends the
#: source one seed for each mask component, and the target its copy of each of the result's.
HELD = {"rep4": 3, "replicated_mac": 2}
SEED_WORDS = 2  # a 16-byte PRG seed
DEVIANT = 1


def _outside_values(seed: int = 0, size: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 1 << 64, size=(2, 3), dtype=np.uint64)
    w = rng.integers(0, 1 << 64, size=size, dtype=np.uint64)
    return x, w


def _product_and_sum(p, w, x):
    """Shares of x * w[:6] + x (shares carry their component axis first)."""
    return p.add(p.bilinear(x, w[:, :6].reshape(-1, 2, 3), Mul()), x)


def _expected(x, w):
    with np.errstate(over="ignore"):
        return x * w[:6].reshape(2, 3) + x


def _endpoint(scheme: str, which: str) -> int:
    _, client, owner = outside_ids(scheme)
    return client if which == "client" else owner


def test_every_seeded_scheme_has_its_constants_and_deviations():
    assert SEEDED and set(HELD) == set(SEEDED)
    assert set(SEEDED) <= set(MASKED_INPUT_LIES) & set(MASKED_INPUT_LIE_CAUGHT) & set(REFUSAL_NAMES)


# -- the replicated seeds method ----------------------------------------------------------------
@pytest.mark.parametrize("scheme", SEEDED)
def test_outside_values_enter_and_leave_exactly_and_masks_cost_seeds_only(scheme):
    """The client gets x w + x (under replicated_mac mod 2^64, so [r~] + c passed the MAC
    check as a correct authenticated sharing); the owner receives one 16-byte seed per held
    component from each party, whatever the size of its value."""
    n, owner = registry.get(scheme).parties, _endpoint(scheme, "owner")
    received = {}
    for size in (6, 6000):
        x, w = _outside_values(size=size)
        hook = lambda runtime, size=size: received.setdefault(size, runtime.channel)  # noqa: E731
        assert np.array_equal(run_external(scheme, x, w, _product_and_sum, {owner: hook}),
                              _expected(x, w))
    small, large = (received[s].traffic for s in (6, 6000))
    assert small.bytes_received == large.bytes_received <= n * (HELD[scheme] * 16 + 64)
    assert large.bytes_sent - small.bytes_sent == n * 8 * (6000 - 6)


@pytest.mark.parametrize("scheme", SEEDED)
@pytest.mark.parametrize("source", ["client", "owner"])
def test_a_shifted_share_of_an_outside_value_is_caught(monkeypatch, scheme, source):
    """(a) Party 1 adds to its share of the features or of the weights after the input."""
    x, w = _outside_values()
    shift_input(monkeypatch, scheme, DEVIANT, _endpoint(scheme, source), 1 << 20)
    with pytest.raises(CheatingDetected):
        run_external(scheme, x, w, _product_and_sum)


@pytest.mark.parametrize("scheme", SEEDED)
@pytest.mark.parametrize("to", ["client", "owner"])
@pytest.mark.parametrize("word", ["first", "last"])
def test_altered_mask_seeds_are_refused_naming_the_party(scheme, to, word):
    """(b) Party 1 alters a seed of a component of r it sends the outside endpoint (the
    first or the last word of its seeds)."""
    x, w = _outside_values()
    position = 0 if word == "first" else HELD[scheme] * SEED_WORDS - 1
    with pytest.raises(ProtocolError,
                       match=REFUSAL_NAMES[scheme].format(p=DEVIANT) + " seeds"):
        run_external(scheme, x, w, _product_and_sum,
                     {DEVIANT: alter_sent(_endpoint(scheme, to), 0, position=position)})


@pytest.mark.parametrize("scheme", SEEDED)
@pytest.mark.parametrize("word", ["first", "last"])
def test_altered_result_components_are_refused_whatever_the_result(scheme, word):
    """(c) Party 1 alters a copy of a component of the result it sends the client (the first
    or the last word of its copies): refused, naming party 1, for results that differ (so
    refusing tells party 1 nothing)."""
    client = _endpoint(scheme, "client")
    for seed in (0, 1):
        x, w = _outside_values(seed)
        position = 0 if word == "first" else HELD[scheme] * x.size - 1
        with pytest.raises(ProtocolError,
                           match=REFUSAL_NAMES[scheme].format(p=DEVIANT) + " copies"):
            run_external(scheme, x, w, _product_and_sum,
                         {DEVIANT: alter_sent(client, 1, position=position)})


@pytest.mark.parametrize("scheme", SEEDED)
def test_a_false_confirmation_of_the_masked_value_is_caught(monkeypatch, scheme):
    """(d) Party 1 vouches for another masked value than it received (rep4: `Rep4._vouch`,
    replicated_mac: `ReplicatedMac._vouch_received`)."""
    lie_about_masked_inputs(monkeypatch, scheme, DEVIANT)
    x, w = _outside_values()
    with pytest.raises(CheatingDetected, match=MASKED_INPUT_LIE_CAUGHT[scheme]):
        run_external(scheme, x, w, _product_and_sum)


@pytest.mark.parametrize("scheme", SEEDED)
def test_a_source_that_sends_parties_different_masked_values_is_caught(scheme):
    """The confirmation's other half: the owner sends party 2 another x - r, caught by the
    same comparison as a false confirmation."""
    x, w = _outside_values()
    with pytest.raises(CheatingDetected, match=MASKED_INPUT_LIE_CAUGHT[scheme]):
        run_external(scheme, x, w, _product_and_sum,
                     {_endpoint(scheme, "owner"): alter_sent(2, 0)})


# -- the passive method: additive pieces in, a masked result out ----------------------------
def _recording(log: list, method: str) -> Callable[[Runtime], None]:
    """A hook: the endpoint logs (peer, array) for every array it sends or receives."""
    def hook(runtime: Runtime) -> None:
        channel = runtime.channel
        original = getattr(channel, method)

        def logged(peer: int, *args: Any) -> Any:
            out = original(peer, *args)
            log.append((peer, np.array(args[0] if method == "_send" else out, copy=True)))
            return out

        setattr(channel, method, logged)
    return hook


@pytest.mark.parametrize("scheme", PASSIVE)
def test_passive_values_enter_as_pieces_and_leave_masked(scheme):
    """The owner sends one piece to each compute party, the pieces add up to its value and
    none is the value; the client sends a piece of x and then one of its mask m to each; it
    receives the same y + m from every party, never y itself, and unmasks y exactly."""
    n = registry.get(scheme).parties
    _, client, owner = outside_ids(scheme)
    x, w = _outside_values()
    owner_sent, client_sent, client_got = [], [], []
    hooks = {owner: _recording(owner_sent, "_send"),
             client: lambda runtime: (_recording(client_sent, "_send")(runtime),
                                      _recording(client_got, "_recv")(runtime))}
    result = run_external(scheme, x, w, _product_and_sum, hooks)
    assert np.array_equal(result, _expected(x, w))

    assert [peer for peer, _ in owner_sent] == list(range(n))
    assert np.array_equal(sum(piece for _, piece in owner_sent), w)
    assert not any(np.array_equal(piece, w) for _, piece in owner_sent)

    assert [peer for peer, _ in client_sent] == list(range(n)) * 2
    assert all(piece.shape == x.shape for _, piece in client_sent)
    assert np.array_equal(sum(piece for _, piece in client_sent[:n]), x)
    mask = sum(piece for _, piece in client_sent[n:])
    assert [peer for peer, _ in client_got] == list(range(n))
    opened = client_got[0][1]
    assert all(np.array_equal(copy, opened) for _, copy in client_got)
    assert np.array_equal(opened - mask, result)
    assert not np.array_equal(opened, result)


@pytest.mark.parametrize("scheme", PASSIVE)
def test_passive_copies_that_differ_are_refused(scheme):
    """`take_masked` unmasks only if every party sent the same y + m."""
    x, w = _outside_values()
    with pytest.raises(ProtocolError, match="party 0 and party 1 sent different masked "
                                            "results: refusing the result"):
        run_external(scheme, x, w, _product_and_sum,
                     {DEVIANT: alter_sent(_endpoint(scheme, "client"), 0)})


@pytest.mark.parametrize("scheme", PASSIVE)
def test_a_shifted_piece_changes_the_passive_result_undetected(monkeypatch, scheme):
    """The stated limitation (privacy only): party 1 adds d to its piece of the weights
    before inputting it, and the client gets x (w + d e_0) + x without any error."""
    x, w = _outside_values()
    delta = np.uint64(12345)
    cls = registry.get(scheme).protocol
    original = cls.input

    def deviating(self, value, owner, shape):
        if self.party_id == DEVIANT and value is not None and value.shape == w.shape:
            value = value.copy()
            value[0] += delta
        return original(self, value, owner, shape)

    monkeypatch.setattr(cls, "input", deviating)
    shifted = w.copy()
    shifted[0] += delta
    result = run_external(scheme, x, w, _product_and_sum)
    assert np.array_equal(result, _expected(x, shifted))
    assert not np.array_equal(result, _expected(x, w))


# -- the helpers of protocols/external.py on their own ------------------------------------------
def _each(roles: list[Callable[[Runtime], Any]], config: RunConfig) -> list[Any]:
    """Every endpoint's result, or the framework error it raised (so that each endpoint's
    outcome can be checked, not only the first failure's)."""
    def catching(role):
        def body(runtime: Runtime) -> Any:
            try:
                return role(runtime)
            except SottovoceError as exc:
                return exc
        return body

    return run_threads([catching(role) for role in roles], config)


def test_split_gives_n_pieces_that_add_up_to_the_value():
    """n - 1 pieces from the PRG, in order, and one that balances; the value is kept."""
    value = PRG(bytes(16)).ring_elements((2, 3))
    kept = value.copy()
    for n in (2, 3, 4):
        pieces = external.split(value, n, PRG(bytes([n]) * 16))
        stream = PRG(bytes([n]) * 16)
        assert len(pieces) == n and all(p.shape == value.shape for p in pieces)
        assert all(np.array_equal(p, stream.ring_elements(value.shape)) for p in pieces[:-1])
        assert np.array_equal(sum(pieces), value)
        assert np.array_equal(value, kept)


def _confirm(data: list[np.ndarray]) -> list[Any]:
    n = len(data)

    def role(runtime: Runtime) -> int:
        external.confirm_same(runtime.channel, tuple(range(n)), data[runtime.party_id],
                              "masked input from the client")
        return runtime.channel.traffic.rounds

    return _each([role] * n, RunConfig(n_parties=n, timeout=10.0))


def test_confirm_same_passes_equal_values_in_one_round():
    value = PRG(bytes(16)).ring_elements(5)
    assert _confirm([value.copy() for _ in range(3)]) == [1, 1, 1]


def test_confirm_same_stops_every_party_when_one_received_another_value():
    """Party 2 holds another value: both others name it; it names the first it compared."""
    value = PRG(bytes(16)).ring_elements(5)
    other = value.copy()
    other[3] ^= np.uint64(1 << 40)
    outcomes = _confirm([value, value.copy(), other])
    assert all(isinstance(o, CheatingDetected) for o in outcomes)
    for party in (0, 1):
        assert str(outcomes[party]) == (f"party {party}: party 2 received a different masked "
                                        "input from the client than this party")
    assert str(outcomes[2]).startswith("party 2: party 0 received a different masked input")


def test_agreed_returns_the_common_value_or_names_two_parties_that_differ():
    names = types.SimpleNamespace(who=lambda p: f"party {p}")
    value = np.arange(4, dtype=np.uint64)
    assert np.array_equal(external.agreed({0: value, 1: value.copy(), 2: value.copy()},
                                          names, "results"), value)
    assert np.array_equal(external.agreed({2: value}, names, "results"), value)
    with pytest.raises(ProtocolError, match="^party 0 and party 2 sent different results: "
                                            "refusing the result$"):
        external.agreed({0: value, 1: value.copy(), 2: value + np.uint64(1)}, names, "results")
    with pytest.raises(ProtocolError, match="^party 1 and party 0 sent different"):
        external.agreed({1: value + np.uint64(1), 0: value, 2: value.copy()}, names, "results")


# A toy replicated layout for the endpoints' sides: 3 parties, 3 components, party p holds
# components p and p + 1 (in that order), as in replicated_mac.
TOY = Endpoints(3)
SOURCE = 3


def _toy_copies(got: dict[int, np.ndarray], j: int) -> dict[int, np.ndarray]:
    return {j: got[j][0], (j - 1) % 3: got[(j - 1) % 3][1]}


def _toy_run(source: Callable[[Runtime], Any], party: Callable[[Runtime], Any]) -> list[Any]:
    return _each([party] * 3 + [source], RunConfig(n_parties=3, timeout=10.0, external=1))


SEEDS = [PRG(bytes([j + 1]) * 16).random_bytes(16) for j in range(3)]


def _give(deviant_seed: int | None = None) -> tuple[np.ndarray, list[Any]]:
    """The source enters a value by `give_by_seeds`; each party sends the seeds of its two
    components (party 1 its second one altered if `deviant_seed`) and returns the c it got."""
    value = PRG(bytes(16)).ring_elements((2, 5))

    def party(runtime: Runtime) -> np.ndarray:
        p = runtime.party_id
        rows = [np.frombuffer(SEEDS[(p + c) % 3], dtype=np.uint64).copy() for c in range(2)]
        if p == DEVIANT and deviant_seed is not None:
            rows[1][deviant_seed] ^= np.uint64(1)
        runtime.channel.send(SOURCE, np.concatenate(rows))
        return runtime.channel.recv(SOURCE)

    def source(runtime: Runtime) -> None:
        external.give_by_seeds(runtime.channel, TOY, value, 3, 2, SEED_WORDS, _toy_copies)

    return value, _toy_run(source, party)


def test_give_by_seeds_sends_the_value_less_the_seeds_expansions():
    value, outcomes = _give()
    assert outcomes[SOURCE] is None
    r = sum(PRG(seed).ring_elements(value.size) for seed in SEEDS).reshape(value.shape)
    for c in outcomes[:3]:
        assert c.shape == value.shape
        assert np.array_equal(c + r, value)
        assert not np.array_equal(c, value)


@pytest.mark.parametrize("word", [0, 1])
def test_give_by_seeds_refuses_disagreeing_seeds_before_sending_anything(word):
    """Party 1's copy of component 2's seed differs from party 2's: the source names both
    and sends no c, so every party only sees the source close its link."""
    _, outcomes = _give(deviant_seed=word)
    assert isinstance(outcomes[SOURCE], ProtocolError)
    assert str(outcomes[SOURCE]) == ("party 2 and party 1 sent different seeds of mask "
                                     "component 2: refusing the result")
    assert all(isinstance(o, PeerLost) for o in outcomes[:3])


def _take(deviant_position: int | None = None) -> tuple[np.ndarray, Any]:
    """Each party sends the target its copies of its two components of a value (party 1
    its first one altered at `deviant_position`); the target's outcome."""
    shape = (3, 2)
    components = [PRG(bytes([j + 7]) * 16).ring_elements(6) for j in range(3)]

    def party(runtime: Runtime) -> None:
        p = runtime.party_id
        rows = np.stack([components[(p + c) % 3] for c in range(2)])
        if p == DEVIANT and deviant_position is not None:
            rows[0, deviant_position] += np.uint64(1)
        runtime.channel.send(SOURCE, rows)

    def target(runtime: Runtime) -> np.ndarray:
        return external.take_components(runtime.channel, TOY, shape, 2, 3, _toy_copies)

    return sum(components).reshape(shape), _toy_run(target, party)[SOURCE]


def test_take_components_adds_the_agreed_components():
    value, outcome = _take()
    assert np.array_equal(outcome, value)


@pytest.mark.parametrize("position", [0, 5])
def test_take_components_refuses_a_copy_that_differs(position):
    """Party 1's copy of component 1 differs from party 0's: refused, naming both."""
    _, outcome = _take(deviant_position=position)
    assert isinstance(outcome, ProtocolError)
    assert str(outcome) == ("party 1 and party 0 sent different copies of component 1 of the "
                            "result: refusing the result")
