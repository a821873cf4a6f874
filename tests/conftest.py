"""Shared fixtures and helpers for every test package (tests/mpc, tests/protocols, ...).

pytest puts tests/ on sys.path for this root conftest, so test modules import what they
share as ``from conftest import ...``; no test module imports another.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

# the feature front end's cache (audio.spectral) in a folder of this run, not the user's
# home; processes the tests start inherit it
os.environ["SOTTOVOCE_CACHE"] = tempfile.mkdtemp(prefix="sottovoce-cache-")

from mpc.launch import run_threads
from mpc.net import tcp
from mpc.net.certs import TlsFiles, make_certificates
from mpc.net.channel import Channel
from mpc.runtime import RunConfig, Runtime
from nn import layers as L
from nn.emulator import emulate
from nn.inference import classify
from nn.model import SecureModel
from protocols import registry
from protocols.base import MaskedPrimitives, Protocol
from protocols.clear import Clear
from protocols.external import Endpoints
from protocols.run import PartyReport, dealer_role, party_role, plan_of, run
from protocols.schemes.rep4 import Rep4
from protocols.schemes.replicated_mac import ReplicatedMac
from protocols.tensor import SecretTensor

if TYPE_CHECKING:
    import torch

# -- channels: parties in threads, loopback listeners, connected TCP parties -----------------
LOOPBACK = "127.0.0.1"


def in_threads(fns: Mapping[int, Callable[[], object]], join_timeout: float = 30.0
               ) -> tuple[dict, dict]:
    """Run fns[i]() in one thread each; return (results, errors) by key."""
    results: dict = {}
    errors: dict = {}

    def body(key, fn):
        try:
            results[key] = fn()
        except BaseException as exc:  # collected for the test to inspect
            errors[key] = exc

    threads = [threading.Thread(target=body, args=(k, f), daemon=True) for k, f in fns.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(join_timeout)
        assert not thread.is_alive(), "a party thread hung"
    return results, errors


def loopback_listeners(n: int) -> tuple[dict[int, socket.socket], dict[int, tuple[str, int]]]:
    """Listening sockets for endpoints 0..n-1 on ports the system chooses, and their addresses."""
    listeners = {p: tcp.listen((LOOPBACK, 0)) for p in range(n)}
    return listeners, {p: (LOOPBACK, s.getsockname()[1]) for p, s in listeners.items()}


def try_connect_all(tls: Mapping[int, TlsFiles], timeout: float = 10.0,
                    connect_timeout: float = 10.0, names: Mapping[int, str] | None = None
                    ) -> tuple[dict, dict]:
    """Connect party p with tls[p], each in a thread: (open channels, errors) by party."""
    listeners, addresses = loopback_listeners(len(tls))
    try:
        return in_threads({
            p: functools.partial(tcp.connect, p, addresses, tls[p], listener=listeners[p],
                                 timeout=timeout, connect_timeout=connect_timeout, names=names)
            for p in tls})
    finally:
        for sock in listeners.values():
            sock.close()


def connect_all(tls: Mapping[int, TlsFiles], timeout: float = 10.0,
                connect_timeout: float = 10.0, names: Mapping[int, str] | None = None
                ) -> dict[int, tcp.TcpChannel]:
    """Connected TCP channels by party; the first connection error is raised."""
    channels, errors = try_connect_all(tls, timeout, connect_timeout, names)
    if errors:
        close_all(channels)
        raise next(iter(errors.values()))
    return channels


@contextlib.contextmanager
def connected(tls: Mapping[int, TlsFiles], timeout: float = 10.0,
              names: Mapping[int, str] | None = None) -> Iterator[dict[int, tcp.TcpChannel]]:
    """`connect_all` for the body of a `with`; every channel is closed after it."""
    channels = connect_all(tls, timeout, names=names)
    try:
        yield channels
    finally:
        close_all(channels)


def close_all(channels: Mapping[int, Channel]) -> None:
    for channel in channels.values():
        channel.close()


def deliver(channels: Mapping[int, Channel], sender: int, receiver: int, array: np.ndarray,
            **receive: object) -> np.ndarray:
    """`sender` sends `array` to `receiver`, which receives it with `receive` (expect=...)."""
    channels[sender].send(receiver, array)
    return channels[receiver].recv(sender, **receive)


@pytest.fixture(scope="session")
def certs3(tmp_path_factory) -> dict[int, TlsFiles]:
    """Certificates of one project CA for endpoints 0, 1 and 2."""
    return make_certificates(tmp_path_factory.mktemp("certs3"), 3)


# -- the schemes the shared bodies run on ----------------------------------------------------
#: Party counts the shared bodies run a scheme on besides its default (the registry's).
EXTRA_PARTIES = {"additive": (3, 4)}


def _with_extra_parties() -> list[tuple[str, int]]:
    pairs = []
    for scheme in registry.SCHEMES.values():
        pairs.append((scheme.name, scheme.parties))
        for n in EXTRA_PARTIES.get(scheme.name, ()):
            scheme.protocol.check_party_count(n)
            pairs.append((scheme.name, n))
    return pairs


#: Every registered scheme at its default party count, and additive at 3 and 4 parties too.
SCHEME_PARTIES = _with_extra_parties()
#: Every registered scheme once, at its default party count.
DEFAULT_SCHEME_PARTIES = [(s.name, s.parties) for s in registry.SCHEMES.values()]
#: The (scheme, parties) of SCHEME_PARTIES whose comparison and truncation are the masked
#: sub-protocols of `protocols.blocks.masked`.
MASKED_SCHEME_PARTIES = [(s, n) for s, n in SCHEME_PARTIES
                         if issubclass(registry.SCHEMES[s].protocol, MaskedPrimitives)]
#: The schemes secure against a deviating party (`Scheme.active` in the registry).
ACTIVE_SCHEMES = tuple(name for name, s in registry.SCHEMES.items() if s.active)
#: The passive schemes (the fastest): `check_against_torch` runs every layer type on them.
PASSIVE_SCHEMES = tuple(name for name, s in registry.SCHEMES.items() if not s.active)


def over_schemes(pairs: list[tuple[str, int]]) -> pytest.MarkDecorator:
    """Parametrize a body's (scheme, n_parties) over `pairs`, with ids like "additive-3"."""
    return pytest.mark.parametrize(("scheme", "n_parties"), pairs,
                                   ids=[f"{s}-{n}" for s, n in pairs])


#: Parametrize one test body over every scheme and party count.
every_scheme = over_schemes(SCHEME_PARTIES)
#: Parametrize one test body over every scheme at its default party count only (bodies
#: that cost many runs, or depend on the party count only through the scheme).
every_scheme_once = over_schemes(DEFAULT_SCHEME_PARTIES)


# -- ring values, inputs and runs ------------------------------------------------------------
#: Largest magnitude the protocols promise for truncation and the masked sub-protocols.
VALUE_MAX = (1 << 62) - 1
#: 0, one unit either side, the ends of the promised range, and the ends of the ring
EDGES = [0, 1, -1, 2, -2, VALUE_MAX, -VALUE_MAX, VALUE_MAX - 1, -VALUE_MAX + 1,
         1 << 61, -(1 << 61), (1 << 63) - 1, -(1 << 63), (1 << 62), -(1 << 62)]

#: Hypothesis settings of the shared bodies: each example is one `run` (threads), so
#: examples are few and batch many values each.
EXAMPLES = settings(max_examples=12, deadline=None)
ring_values = st.integers(0, (1 << 64) - 1)
small_dims = st.integers(1, 4)


def ring_arrays(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """Arrays of uniformly drawn ring elements."""
    return hnp.arrays(np.uint64, shape, elements=ring_values)


def u64(values: Any) -> np.ndarray:
    """Signed integers (Python ints or int64 arrays) as ring elements."""
    array = np.asarray(values)
    if array.dtype == np.uint64:
        return array
    if array.dtype == object:
        return np.array([int(v) % (1 << 64) for v in array.reshape(-1)],
                        dtype=np.uint64).reshape(array.shape)
    return array.astype(np.int64).astype(np.uint64)


def i64(values: np.ndarray) -> np.ndarray:
    """Ring elements read as two's complement signed integers."""
    return np.asarray(values, dtype=np.uint64).view(np.int64)


def secret(protocol: Protocol, value: np.ndarray, owner: int) -> SecretTensor:
    """Input `value` owned by `owner`; other parties pass only the shape. The clear emulator
    (and the planner) stand in for every party, so they always get the value."""
    value = u64(value)
    gives = isinstance(protocol, Clear) or protocol.party_id == owner
    return SecretTensor.input(protocol, value if gives else None, owner % protocol.n_parties,
                              value.shape)


def reveal_all(x: SecretTensor) -> np.ndarray:
    """Open to every party (each party's report then carries the value)."""
    return x.reveal(range(x.protocol.n_parties))


def run_secure(scheme: str, n_parties: int, program: Callable[[Protocol], Any]
               ) -> list[PartyReport]:
    """`program` under a scheme over the in-process transport: compute parties' reports."""
    return run(scheme, program, n_parties=n_parties, transport="threads")[:n_parties]


def run_clear(program: Callable[[Protocol], Any], n_parties: int) -> Any:
    """The same program on the plaintext emulator (exact, floor truncation)."""
    return program(Clear(n_parties))


def assert_all_parties_agree(reports: list[PartyReport], n_outputs: int | None = None
                             ) -> list[np.ndarray]:
    """Results revealed to everyone are identical at every party; return party 0's."""
    first = reports[0].result
    if n_outputs is not None:
        assert len(first) == n_outputs
    for report in reports[1:]:
        for mine, theirs in zip(first, report.result, strict=True):
            assert np.array_equal(mine, theirs)
    return first


# -- round counts ----------------------------------------------------------------------------
#: Online rounds of each sub-protocol for the busiest compute party, at every size (measured
#: by `op_rounds` over a program that only inputs x and y; "input" over a program that does
#: nothing, "reveal again" over one that already revealed once). A reveal under an active
#: scheme includes its checks: rep4 vouches with hashes, replicated_mac checks the MACs (4
#: rounds, plus 3 when binary gates await verification), spdz2k commits to seeds and checks
#: twice (11 rounds the first time, 10 later). Comparisons: the masked ones open once, run
#: log2(64) levels of ANDs and convert (7 for additive, 8 for replicated); rep4 9;
#: replicated_mac 8 + 3 (trunc 2 + 3; relu the same as ltz, the selection rides in the last
#: conversion round); spdz2k with 2 parties 1 (DCF keys; 2 for relu).
#: Each scheme's pinned online rounds per primitive, as the registry states them.
ROUNDS = {name: dict(s.rounds) for name, s in registry.SCHEMES.items()}


def busiest_rounds(reports: list[PartyReport]) -> int:
    """Online rounds of the compute party that spent the most."""
    return max(r.online.rounds for r in reports)


def op_rounds(scheme: str, n_parties: int, body: Callable[[SecretTensor, SecretTensor], Any],
              size: int = 6, before: Callable[[SecretTensor, SecretTensor], Any] | None = None
              ) -> int:
    """The busiest party's online rounds of `body(x, y)`, for x and y of `size` elements input
    by parties 0 and n - 1 (after `before(x, y)`, whose rounds are not counted)."""
    values = np.arange(size, dtype=np.int64) - size // 2

    def base(p):
        x, y = secret(p, values, 0), secret(p, values, p.n_parties - 1)
        if before is not None:
            before(x, y)
        return x, y

    def with_body(p):
        body(*base(p))

    return (busiest_rounds(run_secure(scheme, n_parties, with_body))
            - busiest_rounds(run_secure(scheme, n_parties, base)))


# -- what a party sees: transcripts and their statistics -------------------------------------
RUNS = 200
P_FLOOR = 1e-6  # a genuine leak gives p far below this; a correct protocol almost never does


def transcripts(monkeypatch: pytest.MonkeyPatch, scheme: str, n_parties: int, observer: int,
                value: Any, runs: int = RUNS, ring_words_only: bool = False,
                bits: int = 63) -> np.ndarray:
    """Everything `observer` receives during one `ltz` of `value` (over `bits`), once per run:
    (runs, words) uint64, each row the run's messages concatenated in order.
    `ring_words_only` leaves out messages that are not uint64 (hash digests, commitments)."""
    log: list[np.ndarray] = []
    original = Channel.exchange

    def recording(self, outgoing, *args, **kwargs):
        received = original(self, outgoing, *args, **kwargs)
        if self.party_id == observer and self.step == "online":
            for peer in sorted(received):
                if ring_words_only and received[peer].dtype != np.uint64:
                    continue
                log.append(np.asarray(received[peer], dtype=np.uint64).reshape(-1).copy())
        return received

    monkeypatch.setattr(Channel, "exchange", recording)
    value_array = u64(np.array([value]))

    def program(p):
        secret(p, value_array, 0).ltz(bits)

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


# -- the program the tamper tests alter message by message -----------------------------------
# input, product, truncation, ReLU, reveal to party 0; its inputs; and the output log that
# shows nobody got a value.
TAMPER_FRAC = 16
TAMPER_X = np.array([3 << TAMPER_FRAC, -(5 << TAMPER_FRAC), 1 << 10, -7, 0], dtype=np.int64)
TAMPER_Y = np.array([-(2 << TAMPER_FRAC), 3 << TAMPER_FRAC, 1 << TAMPER_FRAC, 9 << TAMPER_FRAC,
                     4], dtype=np.int64)


class RecordsOutputs:
    """A program that logs which parties got an output; the planner's dry run (a deep copy)
    shares the log."""

    def __init__(self) -> None:
        self.outputs: list[int] = []

    def __deepcopy__(self, memo: dict) -> RecordsOutputs:
        return self


class TamperProgram(RecordsOutputs):
    """input, mul, trunc, relu (over `bits`: the ReLU's inputs are below 2^20), reveal to
    party 0; records which parties got an output."""

    def __init__(self, bits: int = 63) -> None:
        super().__init__()
        self.bits = bits

    def __call__(self, p: Protocol) -> np.ndarray | None:
        x = secret(p, TAMPER_X, 0)
        y = secret(p, TAMPER_Y, 1)
        z = (x * y).trunc(TAMPER_FRAC).relu(self.bits)
        out = z.reveal(0)
        if out is not None and not isinstance(p, Clear):
            self.outputs.append(p.party_id)
        return out


def tamper_expected() -> np.ndarray:
    """What `TamperProgram` reveals, up to truncation's one unit."""
    return np.maximum((TAMPER_X * TAMPER_Y) >> TAMPER_FRAC, 0)


# -- neural networks: tiny random models, float64 torch references, error bounds -------------
# Error model (frac_bits f = 16, one unit in the last place ``ULP = 2^-16``). Let ``e`` bound
# the absolute error of the current secure value against the exact real value, in the units
# the secure model uses (an average pool is a sum, its 1/k folded into the next weights), and
# ``m`` bound the magnitude of the exact value (taken from the emulator's layer outputs + e):
#
# * encoding the input:                       e = ULP / 2 (round to nearest);
# * conv / linear with encoded weights W^, fan-in F and A = max_out sum |W^| (a row's l1 norm):
#   e' = A e + (ULP / 2) F (m + e) + ULP + 2^-(2f+1)
#   -- the propagated error, the weights' rounding (each within ULP / 2, folding batch-norm
#   and 1/k is done in float64 before that single rounding), one truncation (the emulator
#   floors, the secure truncation is floor or floor + 1: either way within one ULP), and the
#   bias's rounding at scale 2^2f;
# * sum pooling over k cells:                  e' = k e;
# * the final rescale by a public factor c^:   e' = |c^| e + (ULP / 2)(m + e) + ULP;
# * ReLU, max pooling, flatten, reshape:      e' = e (1-Lipschitz, exact on shares).
#
# The logits' error is the last e. It bounds both |emulator - torch| and |secure - torch| for
# every example, torch being evaluated in float64 on the same float32 weights (so the only
# differences are fixed point's); truncation's failure probability (2^-(64 - value bits)) is
# neglected. For the tiny models of these tests (weights ~ N(0, 1/fan_in), inputs ~ N(0, 1))
# the bound is between 2e-5 and 1e-2 (worst cases are wide fan-ins); the measured errors are
# far smaller: at most 2.6e-4 over 533 random models of `test_nn_layers` (a one-off run with 40
# hypothesis examples per test), so the tests also hold every tiny model to ``TINY_LIMIT`` =
# 1e-3.
#
# Audit mode compares every layer's secure output with the emulator's, which shares the
# encodings, so only truncations differ: per layer e' = A e + ULP (conv, linear),
# k e (sum pool), |c^| e + ULP (rescale), e otherwise, starting from e = 0.
#
# torch is imported inside the helpers that need it, so the tiers without models (tests/mpc,
# tests/protocols) do not pay for importing it.
FRAC_BITS = 16
ULP = 2.0**-FRAC_BITS
TINY_LIMIT = 1e-3  # empirical cap on |logits - torch| for the tiny test models (see above)


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded weights: conv / linear ~ N(0, 1/fan_in), biases ~ N(0, 0.25); batch-norm with
    random running statistics and affine parameters. Returns `module` in eval mode."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(normal(m.weight.shape, fan_in**-0.5))
                if m.bias is not None:
                    m.bias.copy_(normal(m.bias.shape, 0.5))
            elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(normal((n,), 0.5))
                m.running_var.copy_(0.5 + 1.5 * torch.rand((n,), generator=gen))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand((n,), generator=gen))
                    m.bias.copy_(normal((n,), 0.5))
    return module.eval()


def torch_logits(module: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    """(batch, classes) logits of `module` evaluated in float64 (on a copy)."""
    import torch

    double = copy.deepcopy(module).double().eval()
    with torch.no_grad():
        out = double(torch.as_tensor(np.asarray(features, dtype=np.float64)))
    return out.numpy().reshape(len(features), -1)


def top2_margin(logits: np.ndarray) -> np.ndarray:
    """Per example, the gap between the largest and the second largest logit."""
    if logits.shape[1] < 2:
        return np.full(len(logits), np.inf)
    top = np.sort(logits, axis=1)
    return top[:, -1] - top[:, -2]


def tiny_cnn(batch: int) -> tuple[torch.nn.Module, SecureModel, np.ndarray]:
    """The tiny CNN of the inference, security-claim and fault tests (conv, ReLU, average pool,
    linear on (1, 6, 6) inputs, seeded weights), imported, and `batch` seeded inputs."""
    from torch import nn

    from nn.importer import from_torch

    module = randomize(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2),
                                     nn.Flatten(), nn.Linear(2 * 2 * 2, 3)), 4)
    model, _ = from_torch(module, (1, 6, 6))
    features = np.random.default_rng(3).normal(size=(batch, 1, 6, 6))
    return module, model, features


def _affine_norms(layer: L.Layer, model: SecureModel) -> tuple[float, int]:
    """(A, F): the largest l1 norm of an output's weights, and the fan-in."""
    w = np.abs(model.fixed.decode(layer.weight))
    if isinstance(layer, L.Conv2d):  # (Cout, Cin, kh, kw)
        return float(w.sum(axis=(1, 2, 3)).max()), int(np.prod(w.shape[1:]))
    return float(w.sum(axis=0).max()), int(w.shape[0])  # Linear: (in, out)


def _encoded_factor(layer: L.Scale) -> float:
    return round(layer.factor * 2**FRAC_BITS) / 2**FRAC_BITS


def error_bound(model: SecureModel, features: np.ndarray) -> float:
    """A bound on |logits - torch's| for `features`, emulated or secure (error model above)."""
    features = np.asarray(features, dtype=np.float64)
    _, outputs = emulate(model, features)
    e = ULP / 2
    m = float(np.abs(features).max())
    for layer, out in zip(model.layers, outputs, strict=True):
        if isinstance(layer, L.Conv2d | L.Linear):
            a, fan_in = _affine_norms(layer, model)
            e = a * e + ULP / 2 * fan_in * (m + e) + ULP + 2.0 ** (-2 * FRAC_BITS - 1)
        elif isinstance(layer, L.Pool2d) and layer.mode == "sum":
            e = layer.kernel[0] * layer.kernel[1] * e
        elif isinstance(layer, L.Scale):
            e = abs(_encoded_factor(layer)) * e + ULP / 2 * (m + e) + ULP
        m = float(np.abs(out).max()) + e
    return e


def audit_bounds(model: SecureModel) -> list[float]:
    """Per layer, a bound on |secure - emulator| (error model above: one ULP per truncation,
    propagated through the later layers)."""
    bounds, e = [], 0.0
    for layer in model.layers:
        if isinstance(layer, L.Conv2d | L.Linear):
            e = _affine_norms(layer, model)[0] * e + ULP
        elif isinstance(layer, L.Pool2d) and layer.mode == "sum":
            e = layer.kernel[0] * layer.kernel[1] * e
        elif isinstance(layer, L.Scale):
            e = abs(_encoded_factor(layer)) * e + ULP
        bounds.append(e)
    return bounds


def check_against_torch(module: torch.nn.Module, input_shape: tuple[int, ...], *,
                        batch: int = 3, seed: int = 0,
                        schemes: tuple[str, ...] = PASSIVE_SCHEMES) -> dict[str, float]:
    """Import `module` (from_torch checks emulator against torch on its probes), then assert
    that emulated and secure logits (every scheme in `schemes`) are within `error_bound` of
    torch's float64 logits, and that the secure labels are torch's wherever torch's top-2
    margin exceeds twice the bound (closer calls may legitimately flip).

    Returns the measured maximum errors and the bound, for the record."""
    from nn.importer import from_torch

    module = module.eval()
    model, report = from_torch(module, input_shape)
    assert report is not None and report.agreement == 1.0
    features = np.random.default_rng(seed).normal(size=(batch, *input_shape))
    ref = torch_logits(module, features)
    bound = error_bound(model, features)
    emulated, _ = emulate(model, features)
    assert emulated.shape == ref.shape
    measured = {"bound": bound, "emulator": float(np.abs(emulated - ref).max())}
    assert measured["emulator"] <= min(bound, TINY_LIMIT), measured
    decisive = top2_margin(ref) > 2 * bound
    for scheme in schemes:
        result = classify(model, features, scheme=scheme, reveal_logits=True)
        assert result.logits.shape == ref.shape
        measured[scheme] = float(np.abs(result.logits - ref).max())
        assert measured[scheme] <= min(bound, TINY_LIMIT), (scheme, measured)
        assert result.labels.shape == (batch,)
        np.testing.assert_array_equal(result.labels[decisive], ref.argmax(axis=1)[decisive])
    MEASURED.append(measured)
    return measured


#: Every check's measured errors (inspected when choosing and documenting the bounds).
MEASURED: list[dict[str, float]] = []


# -- audio: synthetic test signals (generated with numpy, no files needed) -------------------
def sine(freq: float, seconds: float, rate: int, channels: int = 1,
         amp: float = 0.5) -> np.ndarray:
    """A float32 tone, (n,) or (n, channels) with every channel equal: a known frequency."""
    t = np.arange(int(seconds * rate)) / rate
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def dominant_freq(x: np.ndarray, rate: int) -> float:
    """The strongest frequency (Hz) of a mono signal, to check resampling kept the pitch."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)]


def speechlike(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Two harmonics and a little noise under a Hann envelope: loud middle, quiet edges."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    env = np.hanning(n)
    x = env * (np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 660 * t)
               + 0.05 * rng.standard_normal(n))
    return (0.3 * x).astype(np.float32)


# -- values from and to endpoints outside the computation (issue 17) -------------------------
# `run_external` runs the compute parties of a scheme (and its dealer, if it has one) with a
# client and a model owner as threads: a small program on a value from each, its result back
# to the client, so the four `Protocol` methods are tested in a second, not the time of a
# whole deployment. `deploy` runs a real deployment of the bundled model. The deviations are
# those of one compute party: `shift_input` (its share of an outside value after
# `input_external`), `alter_sent` (one array it sends an endpoint), `lie_about_masked_inputs`
# (it claims to have received another masked input than it did).
_LOADED: list = []


# The deployment stack (audio, models, roles) is imported when a test uses it, so that the
# protocol tests do not depend on it.
def bundled_clips(count: int | None = 2) -> list:
    """The first `count` bundled clips (all of them for None), in name order."""
    from experiments.modelfile import BUNDLED_CLIPS

    return sorted(BUNDLED_CLIPS.glob("*.wav"))[:count]


def loaded():
    """The bundled model, loaded once per test session."""
    if not _LOADED:
        from experiments.modelfile import BUNDLED_MODEL, load_model

        _LOADED.append(load_model(BUNDLED_MODEL))
    return _LOADED[0]


def plaintext_labels(clips) -> list[str]:
    import audio
    from experiments.modelfile import plaintext_logits

    model = loaded()
    config = model.feature_config
    features = np.stack([audio.features(audio.load(c, sample_rate=config.sample_rate), config)
                         for c in clips])
    return [model.labels[i] for i in plaintext_logits(model, features).argmax(axis=1)]


def deploy(scheme: str, clips, hooks=None) -> list[str]:
    from experiments.deploy import run_deployment

    model = loaded()
    return run_deployment(scheme, model.secure, model.feature_config.to_dict(), list(clips),
                          timeout=60.0, hooks=hooks)


def outside_ids(scheme: str | registry.Scheme, n_parties: int | None = None
                ) -> tuple[Endpoints, int, int]:
    """The endpoints of `run_external`, in a deployment's order (compute parties, the dealer
    if the scheme has one, client, model owner): (Endpoints, client id, model owner id)."""
    spec = registry.get(scheme)
    n = spec.party_count(n_parties)
    client = spec.endpoints(n)
    return Endpoints(n, n if spec.dealer else None), client, client + 1


class _OutsideProgram:
    """The compute parties' program of `run_external` (also dry-run by the planner)."""

    def __init__(self, client: int, owner: int, x_shape: tuple[int, ...],
                 w_shape: tuple[int, ...], body: Callable[[Protocol, Any, Any], Any]) -> None:
        self.client, self.owner, self.body = client, owner, body
        self.x_shape, self.w_shape = tuple(x_shape), tuple(w_shape)

    def __call__(self, protocol: Protocol) -> None:
        w = protocol.input_external(self.owner, self.w_shape)
        x = protocol.input_external(self.client, self.x_shape)
        protocol.reveal_external(self.body(protocol, w, x), self.client)


def run_external(scheme: str, features: np.ndarray, weights: np.ndarray,
                 program: Callable[[Protocol, Any, Any], Any],
                 hooks: dict[int, Callable[[Runtime], None]] | None = None,
                 n_parties: int | None = None) -> np.ndarray:
    """The compute parties enter `weights` from the owner and `features` from the client,
    compute `program(protocol, [w], [x])` and send it to the client; the client's result.
    `hooks[endpoint]` is called with that endpoint's runtime before its role starts."""
    spec = registry.get(scheme)
    cls = spec.protocol
    ends, client, owner = outside_ids(spec, n_parties)
    outside = _OutsideProgram(client, owner, features.shape, weights.shape, program)
    plan = plan_of(outside, ends.compute, spec)

    def party(runtime: Runtime) -> None:
        party_role(runtime, spec, outside, plan)

    def dealer(runtime: Runtime) -> None:
        dealer_role(runtime, spec, plan)

    def client_role(runtime: Runtime) -> np.ndarray:
        cls.give_external(runtime.channel, ends, features)
        return cls.take_external(runtime.channel, ends, features.shape)

    def owner_role(runtime: Runtime) -> None:
        cls.give_external(runtime.channel, ends, weights)

    def hooked(k: int, role: Callable[[Runtime], Any]) -> Callable[[Runtime], Any]:
        def body(runtime: Runtime) -> Any:
            if hooks and k in hooks:
                hooks[k](runtime)
            with np.errstate(over="ignore"):
                return role(runtime)
        return body

    roles = ([party] * ends.compute + ([dealer] if ends.dealer is not None else [])
             + [client_role, owner_role])
    config = RunConfig(n_parties=ends.compute, timeout=20.0, dealer=ends.dealer is not None,
                       external=2)
    results = run_threads([hooked(k, role) for k, role in enumerate(roles)], config)
    return results[client]


def shift_input(monkeypatch, scheme: str, party: int, source: int, delta: int,
                position: int = 0) -> None:
    """`party` adds `delta` to word `position` of the first component of its share of the
    value from `source`, right after `input_external`."""
    cls = registry.get(scheme).protocol
    original = cls.input_external

    def deviating(self, src: int, shape: tuple[int, ...]) -> np.ndarray:
        share = original(self, src, shape)
        if self.party_id == party and src == source:
            share = share.copy()
            share[0].reshape(-1)[position] += np.uint64(delta % (1 << 64))
        return share

    monkeypatch.setattr(cls, "input_external", deviating)


def alter_sent(to: int, index: int, delta: int = 1, position: int = 0
               ) -> Callable[[Runtime], None]:
    """A hook: the endpoint it is installed in adds `delta` (mod 2^64, then cast to the
    array's dtype) to word `position` of the index-th array it sends endpoint `to` (an
    empty array is counted but left as it is)."""
    def hook(runtime: Runtime) -> None:
        channel = runtime.channel
        send = channel._send
        count = [0]

        def altered(peer: int, array: np.ndarray) -> None:
            if peer == to:
                if count[0] == index and array.size:
                    array = np.array(array, copy=True)
                    step = np.array(delta % (1 << 64), dtype=np.uint64).astype(array.dtype)
                    array.reshape(-1)[position] += step
                count[0] += 1
            send(peer, array)

        channel._send = altered
    return hook


def _lie_in_rep4_vouches(monkeypatch, party: int) -> None:
    original = Rep4._vouch

    def lying(self, peer, value, step):
        if self.party_id == party and step.startswith("input from"):
            value = np.asarray(value) ^ np.uint64(1)
        original(self, peer, value, step)

    monkeypatch.setattr(Rep4, "_vouch", lying)


def _lie_in_replicated_mac_vouches(monkeypatch, party: int) -> None:
    original = ReplicatedMac._vouch_received

    def lying(self, data):
        if self.party_id == party:
            data = data ^ np.uint64(1)
        original(self, data)

    monkeypatch.setattr(ReplicatedMac, "_vouch_received", lying)


def _lie_in_confirmation_hashes(monkeypatch, party: int) -> None:
    original = Channel.exchange

    def lying(self, outgoing, receive_from=None, **kwargs):
        if self.party_id == party and kwargs.get("what", "").startswith("as its hash of"):
            outgoing = {p: a ^ np.uint64(1) for p, a in outgoing.items()}
        return original(self, outgoing, receive_from, **kwargs)

    monkeypatch.setattr(Channel, "exchange", lying)


#: How each active scheme's compute parties confirm to each other the masked input c they
#: received from outside, and a compute party lying in it: rep4 vouches for c xor 1
#: (`Rep4._vouch`, the steps "input from ..."), replicated_mac puts the digest of c xor 1 in
#: its vouch digests (`ReplicatedMac._vouch_received`), spdz2k sends a flipped hash in every
#: `protocols.external.confirm_same`.
MASKED_INPUT_LIES = {"rep4": _lie_in_rep4_vouches,
                     "replicated_mac": _lie_in_replicated_mac_vouches,
                     "spdz2k": _lie_in_confirmation_hashes}
#: What the `CheatingDetected` that stops the parties says about such a lie (a regex): rep4
#: lists the vouched steps that differ, replicated_mac's MAC check the vouch digests,
#: spdz2k's hash comparison the masked input.
MASKED_INPUT_LIE_CAUGHT = {"rep4": "input from the model owner",
                           "replicated_mac": "vouched for a different transcript",
                           "spdz2k": "received a different masked input from the model owner"}


def lie_about_masked_inputs(monkeypatch, scheme: str, party: int) -> None:
    """Compute party `party` uses every masked input as received but tells the other compute
    parties it received another (`MASKED_INPUT_LIES`)."""
    MASKED_INPUT_LIES[scheme](monkeypatch, party)


#: How an outside endpoint's refusal names the compute party `p` whose copies it altered (a
#: regex, `.format(p=...)`): rep4 puts first a copy that another copy confirms, so the party
#: named second is the one whose copy differs; the others name two parties that disagree.
REFUSAL_NAMES = {"rep4": "and party {p} sent different",
                 "replicated_mac": "party {p} .*sent different",
                 "spdz2k": "party {p} .*sent different"}


class TruncatingClear(Clear):
    """The plaintext emulator with the truncation of the secure schemes: floor, floor + 1,
    or either at random (seeded), recording the largest magnitude a truncation sees."""

    MODES = ("floor", "floor+1", "random")

    def __init__(self, mode: str, seed: int = 7) -> None:
        super().__init__(3)
        self.mode = mode
        self.rng = np.random.default_rng(seed)
        self.peak = 0

    def trunc(self, x: np.ndarray, frac_bits: int) -> np.ndarray:
        if x.size:
            self.peak = max(self.peak, int(np.abs(x.view(np.int64)).max()))
        floor = super().trunc(x, frac_bits)
        if self.mode == "floor":
            return floor
        if self.mode == "floor+1":
            return floor + np.uint64(1)
        return floor + self.rng.integers(0, 2, size=floor.shape, dtype=np.uint64)
