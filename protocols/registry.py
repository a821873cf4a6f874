"""The scheme registry: every fact about a scheme that code outside the scheme needs.

A `Scheme` names a `Protocol` class and says, in one place, what the command line, the
deployment roles, the paper reproduction and the benchmarks need to know of it: how many
parties it runs on by default and which counts it allows, whether a dealer serves it, the
setting and threat model in words, and how it is batched. Facts that the protocol itself
relies on (party counts, the dealer) are read from the class, so they exist once.

Adding a scheme: write `protocols/schemes/<name>.py` (a `Protocol` subclass) and add one
`Scheme("protocols.schemes.<name>:<Class>", ...)` line to `SCHEMES` below; everything else
reads this table.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mpc.errors import ConfigError

if TYPE_CHECKING:  # the schemes' modules load when first used (`Scheme.protocol`)
    from protocols.base import Protocol

#: The primitives whose online rounds every scheme states (measured by tests/protocols).
ROUNDED = ("input", "reveal", "reveal again", "mul", "matmul", "conv", "trunc", "ltz", "relu")


@dataclass(frozen=True)
class Scheme:
    """One secret-sharing scheme as the rest of the framework sees it."""

    #: the `Protocol` class, or where it is ("protocols.schemes.<name>:<Class>"), imported
    #: when first used: a process that runs one scheme loads no other (a client starts in
    #: about a second less without the 128-bit kernels it does not need)
    where: type[Protocol] | str
    setting: str  # e.g. "3PC passive": parties and adversary, in the paper's terms
    threat: str  # who may deviate or collude, and what stays protected
    cost: str  # one line for the command line's help: what a clip costs
    active: bool = False  # secure against a deviating party (with abort), or passive only
    batchable: bool = True  # whether a batch of clips fits memory and time for reproduction
    max_bench_batch: int | None = None  # largest batch the benchmarks run (None: all)
    comparison: str = ""  # the comparison path at the default party count, if notable
    #: online rounds of each primitive at the default party count, by `ROUNDED` name
    #: ("reveal again": a reveal after one already checked everything before it)
    rounds: Mapping[str, int] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if set(self.rounds) != set(ROUNDED):
            raise ValueError(f"scheme {self.name}: state the rounds of exactly {ROUNDED}")

    @property
    def protocol(self) -> type[Protocol]:
        return self.where if isinstance(self.where, type) else _load(self.where)

    @property
    def module(self) -> str:
        """The module that defines the scheme's `Protocol` class."""
        if isinstance(self.where, type):
            return self.where.__module__
        return self.where.partition(":")[0]

    @property
    def name(self) -> str:
        if isinstance(self.where, type):
            return self.where.name
        return self.where.partition(":")[0].rsplit(".", 1)[-1]

    @property
    def parties(self) -> int:
        """The default number of compute parties."""
        return self.protocol.default_parties

    @property
    def dealer(self) -> bool:
        """Whether a dealer endpoint (id = number of compute parties) serves preprocessing."""
        return self.protocol.needs_dealer

    def party_count(self, requested: int | None) -> int:
        """`requested` compute parties (default if None), refused if the scheme cannot."""
        n = self.parties if requested is None else requested
        self.protocol.check_party_count(n)
        return n

    def endpoints(self, n_parties: int) -> int:
        """Compute parties plus the dealer, if any."""
        return n_parties + (1 if self.dealer else 0)


@functools.cache
def _load(where: str) -> type[Protocol]:
    module, _, name = where.partition(":")
    return getattr(importlib.import_module(module), name)


def _rounds(*, input: int, reveal: int, again: int, product: int, trunc: int, ltz: int,
            relu: int) -> dict[str, int]:
    """A scheme's round counts; every bilinear product (mul, matmul, conv) costs the same."""
    return {"input": input, "reveal": reveal, "reveal again": again, "mul": product,
            "matmul": product, "conv": product, "trunc": trunc, "ltz": ltz, "relu": relu}


#: Every scheme, in the order tables list them: by party count, passive before active.
SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("protocols.schemes.additive:Additive", "2PC passive (dealer)",
           "semi-honest; any n-1 of the compute parties may collude; the dealer colludes "
           "with nobody", "2PC passive with a dealer",
           rounds=_rounds(input=0, reveal=1, again=1, product=1, trunc=1, ltz=7, relu=7)),
    Scheme("protocols.schemes.spdz2k:Spdz2k", "2PC active (dealer)",
           "all but one compute party may deviate (abort on cheating); the dealer is trusted",
           "2PC active with a dealer (about 0.4 s online and 2-3 s of dealing per clip)",
           active=True, batchable=False, max_bench_batch=1, comparison="DCF comparisons",
           rounds=_rounds(input=1, reveal=11, again=10, product=1, trunc=1, ltz=1, relu=2)),
    Scheme("protocols.schemes.replicated:Replicated", "3PC passive",
           "semi-honest, honest majority: any one party learns nothing",
           "3PC passive, the fastest",
           rounds=_rounds(input=1, reveal=1, again=1, product=1, trunc=2, ltz=8, relu=8)),
    Scheme("protocols.schemes.replicated_mac:ReplicatedMac", "3PC active",
           "one party may deviate arbitrarily (abort on cheating), honest majority",
           "3PC active (about 1.5 s per clip)", active=True, batchable=False, max_bench_batch=1,
           rounds=_rounds(input=2, reveal=4, again=1, product=1, trunc=5, ltz=11, relu=11)),
    Scheme("protocols.schemes.rep4:Rep4", "4PC active",
           "one party may deviate arbitrarily (abort on cheating), honest majority",
           "4PC active", active=True,
           rounds=_rounds(input=1, reveal=2, again=1, product=1, trunc=2, ltz=9, relu=9)),
)}

#: The scheme commands and library calls use when none is named.
DEFAULT = "replicated"


def get(scheme: str | Scheme) -> Scheme:
    """The registered scheme of that name (a `Scheme` is returned as it is)."""
    if isinstance(scheme, Scheme):
        return scheme
    try:
        return SCHEMES[scheme]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown scheme {scheme!r}; choose from {sorted(SCHEMES)}") from None
