"""Values that enter from, or leave to, endpoints outside the computation.

In a deployment the client (Alice) and the model owner (Bob) are endpoints of every compute
party's channel but take no part in the computation. A scheme brings their values in with
`Protocol.input_external` and sends results out with `Protocol.reveal_external` (the compute
parties' side); `Protocol.give_external` and `Protocol.take_external` are the outside
endpoint's side of the same exchanges. The active schemes override all four so that a
deviating compute party cannot change what goes in or comes out (docs/protocols.md,
"Values from outside"); this module holds what the schemes share:

* `Endpoints`: who the compute parties and the dealer are;
* `confirm_same`: the compute parties check that they all received the same broadcast;
* the passive method (`input_pieces` and friends): the source splits its value into one
  additive piece per compute party, each party inputs its piece as its own value and the
  parties add the sharings; a result goes back masked by a value the target input the
  same way. It protects privacy only: a deviating party can shift any piece.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mpc.errors import CheatingDetected, ProtocolError
from mpc.net.channel import Channel
from mpc.net.expect import Expect
from mpc.prg import PRG

if TYPE_CHECKING:
    from protocols.base import Protocol


@dataclass(frozen=True)
class Endpoints:
    """The compute parties (ids 0..compute-1) and the dealer's id, if the scheme has one."""

    compute: int
    dealer: int | None = None

    @property
    def parties(self) -> tuple[int, ...]:
        return tuple(range(self.compute))


def split(value: np.ndarray, n: int, prg: PRG) -> list[np.ndarray]:
    """n additive pieces of `value` (ring elements): n-1 from the PRG, one balancing."""
    pieces = [prg.ring_elements(value.shape) for _ in range(n - 1)]
    last = value.copy()
    for piece in pieces:
        last -= piece
    return [*pieces, last]


def digest(data: np.ndarray | bytes) -> np.ndarray:
    """SHA-256 of bytes or of an array's bytes, as 4 ring words (what parties compare)."""
    raw = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
    return np.frombuffer(hashlib.sha256(raw).digest(), dtype=np.uint64).copy()


def confirm_same(channel: Channel, parties: tuple[int, ...], data: np.ndarray,
                 what: str) -> None:
    """Every compute party sends every other one the hash of `data` (one round) and
    compares: a source that sent different values to different parties, or a party that
    claims to have received something else, stops every honest party."""
    mine = digest(data)
    others = [p for p in parties if p != channel.party_id]
    got = channel.exchange(dict.fromkeys(others, mine), expect=Expect.like(mine),
                           what=f"as its hash of {what}")
    for peer, theirs in got.items():
        if not np.array_equal(theirs, mine):
            raise CheatingDetected(f"party {channel.party_id}: {channel.who(peer)} received "
                                   f"a different {what} than this party")


def agreed(copies: dict[int, np.ndarray], channel: Channel, what: str) -> np.ndarray:
    """The one value every copy holds, or an error naming who sent something else."""
    first, *rest = copies
    for peer in rest:
        if not np.array_equal(copies[peer], copies[first]):
            raise ProtocolError(f"{channel.who(first)} and {channel.who(peer)} sent different "
                                f"{what}: refusing the result")
    return copies[first]


# -- the passive method: additive pieces ------------------------------------------------------
def input_pieces(protocol: Protocol, source: int, shape: tuple[int, ...]) -> np.ndarray:
    """Each party receives its piece from `source` and inputs it; the sum is the value."""
    channel = protocol.channel
    piece = channel.receive_external(source, shape, "as its piece of an input",
                                     tuple(range(protocol.n_parties)), same=False)
    total = None
    for owner in range(protocol.n_parties):
        term = protocol.input(piece if owner == protocol.party_id else None, owner, shape)
        total = term if total is None else protocol.add(total, term)
    return total


def give_pieces(channel: Channel, ends: Endpoints, value: np.ndarray) -> None:
    """The source's side: one piece to each compute party."""
    for party, piece in enumerate(split(value, ends.compute, PRG.fresh())):
        channel.send(party, piece)


def reveal_masked(protocol: Protocol, x: np.ndarray, target: int) -> None:
    """`target` inputs a mask m as pieces; the parties open x + m among themselves (uniform,
    so it shows them nothing) and each sends it to `target`."""
    mask = input_pieces(protocol, target, x.shape[1:])
    opened = protocol.reveal(protocol.add(x, mask), range(protocol.n_parties))
    protocol.channel.send(target, opened)


def take_masked(channel: Channel, ends: Endpoints, shape: tuple[int, ...]) -> np.ndarray:
    """The target's side: send the mask's pieces, take every party's copy of x + m, check
    that they agree, unmask."""
    mask = PRG.fresh().ring_elements(shape)
    give_pieces(channel, ends, mask)
    copies = {p: channel.recv(p, expect=Expect.uint64(shape)) for p in ends.parties}
    return agreed(copies, channel, "masked results") - mask


# -- the replicated schemes' method: seeds and components from several holders ----------------
#: Picks, from every party's message, the copies of component j: {party: copy}.
CopiesOf = Callable[[dict[int, np.ndarray], int], dict[int, np.ndarray]]


def give_by_seeds(channel: Channel, ends: Endpoints, value: np.ndarray, components: int,
                  seeds_per_party: int, seed_words: int, copies_of: CopiesOf) -> None:
    """The source's side of a replicated scheme's input: every party sends the seeds of the
    mask components it holds; each component's copies must agree (one deviating party
    cannot change r without a refusal); r is their expansion's sum; c = x - r goes to every
    party."""
    got = channel.exchange({}, ends.parties,
                           expect=Expect.uint64(seeds_per_party * seed_words),
                           what="as its seeds of the input mask")
    rows = {p: g.reshape(seeds_per_party, seed_words) for p, g in got.items()}
    r = np.zeros(value.size, dtype=np.uint64)
    for j in range(components):
        seed = agreed(copies_of(rows, j), channel, f"seeds of mask component {j}")
        r += PRG(seed.tobytes()).ring_elements(value.size)
    masked = (value.reshape(-1) - r).reshape(value.shape)
    channel.exchange(dict.fromkeys(ends.parties, masked), ())


def take_components(channel: Channel, ends: Endpoints, shape: tuple[int, ...],
                    per_party: int, components: int, copies_of: CopiesOf) -> np.ndarray:
    """The target's side of a replicated scheme's output: every party sends the components
    it holds; each component's copies must agree; the value is their sum."""
    size = int(np.prod(shape, dtype=np.int64))
    got = channel.exchange({}, ends.parties, expect=Expect.uint64((per_party, size)),
                           what="as its components of the result")
    total = np.zeros(size, dtype=np.uint64)
    for j in range(components):
        total += agreed(copies_of(got, j), channel, f"copies of component {j} of the result")
    return total.reshape(shape)
