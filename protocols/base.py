"""The `Protocol` interface: the few primitives each scheme implements.

A party's share of a tensor is a uint64 array of shape (components, *shape): one component
for additive sharing, two for 3-party replicated sharing. Everything structural (reshape,
indexing, sums) and everything linear with public values works on each component alike, so
`SecretTensor` does it once for every scheme; only the primitives below differ.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from mpc.errors import ConfigError
from mpc.net.channel import Channel
from mpc.runtime import Runtime
from protocols import external
from protocols.ops import Conv2d, MatMul, Mul
from protocols.preprocessing import store
from protocols.preprocessing.correlations import FULL_BITS, Request

if TYPE_CHECKING:  # the planner builds on this module
    from protocols.clear import Planner

BilinearOp = Mul | MatMul | Conv2d


def as_ring(value: object) -> np.ndarray:
    """A public value as ring elements: ints wrap mod 2^64, uint64/int64 arrays are viewed."""
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint64:
            return value
        if value.dtype.kind in "iub":
            return value.astype(np.int64).astype(np.uint64)
        raise TypeError(f"public operand of dtype {value.dtype}: encode floats with "
                        "FixedPoint first")
    if isinstance(value, int | np.integer):
        return np.array(int(value) % (1 << 64), dtype=np.uint64)
    raise TypeError(f"cannot use {type(value).__name__} as a public ring value")


class Protocol(ABC):
    """One party's side of a secret-sharing scheme.

    The contract: a scheme declares its name, share components, party counts and whether a
    dealer serves it as class attributes; `__init__` takes the party's `Runtime` and sets
    the fields every scheme uses; `planner` and `serve_dealer` say how its preprocessing is
    planned and dealt; the primitives below compute on shares. Code outside a scheme reads
    only these names (through `protocols.registry`) and never probes for others.
    """

    name: ClassVar[str] = "abstract"
    components: ClassVar[int] = 1
    needs_dealer: ClassVar[bool] = False
    default_parties: ClassVar[int] = 2
    min_parties: ClassVar[int] = 2
    max_parties: ClassVar[int | None] = None  # None: any number from min_parties

    runtime: Runtime | None = None
    channel: Channel | None = None  # None only for the protocols without peers (clear)
    material: store.MaterialStore | None = None  # preprocessing held for the online phase
    party_id: int
    n_parties: int
    others: tuple[int, ...]

    def __init__(self, runtime: Runtime) -> None:
        self.check_party_count(runtime.n_parties)
        self.runtime = runtime
        self.party_id = runtime.party_id
        self.n_parties = runtime.n_parties
        self.channel = runtime.channel
        self.others = tuple(p for p in range(self.n_parties) if p != self.party_id)
        self.material = store.MaterialStore()

    @classmethod
    def check_party_count(cls, n: int) -> None:
        """Refuse a party count the scheme cannot run on, before any party starts."""
        low, high = cls.min_parties, cls.max_parties
        if low <= n and (high is None or n <= high):
            return
        if low == high:
            raise ConfigError(f"{cls.name} runs on exactly {low} parties, not {n}")
        if high is None:
            raise ConfigError(f"{cls.name} needs at least {low} parties, not {n}")
        raise ConfigError(f"{cls.name} runs on {low} to {high} parties, not {n}")

    # -- preprocessing -------------------------------------------------------------------
    @classmethod
    def planner(cls, n_parties: int) -> Planner:
        """The stand-in that dry-runs a program on shapes and lists the preprocessing this
        scheme will take (schemes whose requests depend on more than shapes override it)."""
        from protocols.clear import Planner

        return Planner(n_parties)

    @classmethod
    def serve_dealer(cls, runtime: Runtime, plan: list[Request]) -> None:
        """The dealer's offline phase for this scheme: deal `plan` to the compute parties
        (seed-compressed, `protocols.preprocessing.store`). Only for `needs_dealer`."""
        if not cls.needs_dealer:
            raise ConfigError(f"{cls.name} has no dealer")
        n = runtime.n_parties
        prgs = [runtime.pair_prg(p, "dealer") for p in range(n)]
        store.serve(plan, prgs, runtime.channel, last_party=n - 1)

    def preprocess(self, plan: list[Request]) -> None:  # noqa: B027 - optional hook
        """Offline phase: obtain the material `plan` lists (default: none needed)."""

    # -- local linear arithmetic on shares (mod 2^64 here; 128-bit schemes override) --------
    def add(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x + y

    def sub(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x - y

    def neg(self, x: np.ndarray) -> np.ndarray:
        return np.negative(x)

    def mul_public(self, x: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Shares of x * value for public ring elements `value` (broadcast over x)."""
        return x * value

    def public_bilinear(self, x: np.ndarray, value: np.ndarray, op: BilinearOp,
                        public_left: bool) -> np.ndarray:
        """Shares of op(value, x) or op(x, value) for a public `value`: local, per component."""
        if public_left:
            return np.stack([op(value, c) for c in x])
        return np.stack([op(c, value) for c in x])

    def sum(self, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        """Shares of the sum over value axes `axes` (0-based, excluding the component axis)."""
        return x.sum(axis=tuple(a + 1 for a in axes), keepdims=keepdims, dtype=np.uint64)

    def fix_operand(self, x: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Declare `x` (e.g. model weights) an operand reused by many products: schemes that
        can mask it once for all of them (Beaver with a fixed mask) do so here."""

    # -- primitives ----------------------------------------------------------------------
    @abstractmethod
    def input(self, value: np.ndarray | None, owner: int, shape: tuple[int, ...]) -> np.ndarray:
        """Share `value` (ring elements, known to `owner` only) among the parties."""

    @abstractmethod
    def reveal(self, x: np.ndarray, to: Iterable[int]) -> np.ndarray | None:
        """Open `x` to the parties in `to` only; the others get None."""

    @abstractmethod
    def add_public(self, x: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Shares of x + value for a public `value`."""

    @abstractmethod
    def bilinear(self, x: np.ndarray, y: np.ndarray, op: BilinearOp) -> np.ndarray:
        """Shares of op(x, y) for secret x and y (one round)."""

    @abstractmethod
    def trunc(self, x: np.ndarray, frac_bits: int) -> np.ndarray:
        """Shares of x / 2^frac_bits, floor or one more (|x| < 2^62)."""

    def bilinear_trunc(self, x: np.ndarray, y: np.ndarray, op: BilinearOp,
                       bias: np.ndarray | None, frac_bits: int) -> np.ndarray:
        """Shares of (op(x, y) + bias) / 2^frac_bits: a linear layer with its one truncation.
        Schemes that can fuse the product's round with the truncation's override this."""
        z = self.bilinear(x, y, op)
        return self.trunc(z if bias is None else self.add(z, bias), frac_bits)

    @abstractmethod
    def ltz(self, x: np.ndarray, bits: int = FULL_BITS) -> np.ndarray:
        """Shares of the bit [x < 0] as a ring element, for x in [-2^bits, 2^bits): a scheme
        may compare only that many bits (the masked schemes do; the others compare all)."""

    @abstractmethod
    def relu(self, x: np.ndarray, bits: int = FULL_BITS) -> np.ndarray:
        """Shares of max(x, 0), for x in [-2^bits, 2^bits) (see `ltz`)."""

    # -- values from and to endpoints outside the computation (client, model owner) -------
    # The defaults are the passive method of `protocols.external` (privacy only); the active
    # schemes override all four so that no deviating compute party changes what goes in or
    # comes out undetected.
    def input_external(self, source: int, shape: tuple[int, ...]) -> np.ndarray:
        """Shares of a value held by endpoint `source`, which is not a compute party."""
        return external.input_pieces(self, source, tuple(shape))

    def reveal_external(self, x: np.ndarray, target: int) -> None:
        """Open `x` to endpoint `target`, which is not a compute party; nobody else learns it."""
        external.reveal_masked(self, x, target)

    @classmethod
    def give_external(cls, channel: Channel, ends: external.Endpoints,
                      value: np.ndarray) -> None:
        """The source's side of `input_external` (run by the client or the model owner)."""
        external.give_pieces(channel, ends, value)

    @classmethod
    def take_external(cls, channel: Channel, ends: external.Endpoints,
                      shape: tuple[int, ...]) -> np.ndarray:
        """The target's side of `reveal_external`: the value, or an error naming the party
        that sent something else (never a value a deviating party chose)."""
        return external.take_masked(channel, ends, tuple(shape))

    # -- helpers -------------------------------------------------------------------------
    def plays(self, party: int) -> bool:
        """Whether this process holds `party`'s private inputs (the emulator plays all)."""
        return self.party_id == party

    def check_reveal_targets(self, to: Iterable[int]) -> tuple[int, ...]:
        targets = tuple(sorted(set(to)))
        if not targets:
            raise ValueError("reveal to nobody: name the parties that may learn the value")
        bad = [t for t in targets if not 0 <= t < self.n_parties]
        if bad:
            raise ValueError(f"cannot reveal to party {bad[0]}: "
                             f"parties are 0..{self.n_parties - 1}")
        return targets

    def check_owner(self, owner: int, value: np.ndarray | None, shape: tuple) -> np.ndarray | None:
        if not 0 <= owner < self.n_parties:
            raise ValueError(f"input owner {owner} is not a party (0..{self.n_parties - 1})")
        if self.party_id == owner:
            if value is None:
                raise ValueError(f"party {owner} owns this input but passed no value")
            value = as_ring(np.asarray(value))
            if value.shape != tuple(shape):
                raise ValueError(f"input of shape {value.shape}, declared {tuple(shape)}")
            return value
        return None


class MaskedPrimitives:
    """trunc, ltz and relu for schemes that run them as masked sub-protocols
    (`protocols.blocks.masked`): the scheme supplies `_masked(kind, x, **params)`."""

    def _masked(self, kind: str, x: np.ndarray, **params: int) -> np.ndarray:
        raise NotImplementedError

    def trunc(self, x: np.ndarray, frac_bits: int) -> np.ndarray:
        return self._masked("trunc", x, frac_bits=frac_bits)

    def ltz(self, x: np.ndarray, bits: int = FULL_BITS) -> np.ndarray:
        return self._masked("ltz", x, bits=bits)

    def relu(self, x: np.ndarray, bits: int = FULL_BITS) -> np.ndarray:
        return self._masked("relu", x, bits=bits)
