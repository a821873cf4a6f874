"""Corrupt one party's outgoing messages, to test that active schemes abort.

A `Tamper` is a `protocols.run` hook: installed in the chosen party's runtime, it wraps that
party's channel so that the k-th message it sends (counting every message after the runtime
is made: the scheme's key set-up, the offline phase, the online phase; optionally only the
messages to one peer) is altered before framing, by adding a nonzero value to one word (or
flipping one bit). The scheme's code runs unchanged otherwise, so this models a corrupt party
that deviates in exactly one message. Works with any scheme and both transports.

`honest_message_counts` tells how many messages each party sends in an honest run, so a
test can enumerate every message index; `tampered_run` runs a program with one tamper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mpc.net.channel import Channel
from mpc.runtime import Runtime
from protocols.run import PartyReport, Program, run


@dataclass
class Tamper:
    """Alter message `message_index` (0-based) that `party` sends (to `peer` only, if given).

    mode "add": add `delta` (nonzero, mod 2^64 for uint64 payloads, mod 256 for bytes) to
    word `position` (mod the message size); mode "flip": flip bit `bit` of byte `position`.
    `fired` records (peer, index) when the tamper happened (threads transport only: with
    processes the record stays in the child).
    """

    party: int
    message_index: int
    peer: int | None = None
    mode: str = "add"
    delta: int = 1
    position: int = 0
    bit: int = 0
    fired: list = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in ("add", "flip"):
            raise ValueError(f"tamper mode {self.mode!r}: 'add' or 'flip'")
        if self.mode == "add" and self.delta % 256 == 0:
            raise ValueError("delta must change the value (nonzero mod 256)")
        if self.message_index < 0:
            raise ValueError("message_index counts from 0")

    def __call__(self, runtime: Runtime) -> None:
        """The `protocols.run` hook: install in the corrupt party only."""
        if runtime.party_id == self.party:
            install(runtime.channel, self)

    def corrupt(self, array: np.ndarray) -> np.ndarray:
        """A changed copy of `array` (same dtype and shape)."""
        out = np.array(array, copy=True, order="C")
        if out.size == 0:
            raise ValueError("cannot tamper with an empty message")
        if self.mode == "add" and out.dtype == np.uint64:
            flat = out.reshape(-1)
            flat[self.position % flat.size] += np.uint64(self.delta % (1 << 64))
            return out
        raw = out.reshape(-1).view(np.uint8)
        k = self.position % raw.size
        if self.mode == "add":
            raw[k] = np.uint8((int(raw[k]) + self.delta) % 256)
        else:
            raw[k] ^= np.uint8(1 << (self.bit % 8))
        return out


def install(channel: Channel, tamper: Tamper) -> None:
    """Wrap `channel`'s sending so that `tamper` alters the chosen message."""
    original = channel._send
    counter = {"sent": 0}

    def send(peer: int, array: np.ndarray) -> None:
        if tamper.peer is None or peer == tamper.peer:
            index = counter["sent"]
            counter["sent"] += 1
            if index == tamper.message_index:
                array = tamper.corrupt(np.asarray(array))
                tamper.fired.append((peer, index))
        original(peer, array)

    channel._send = send  # instance attribute: only this party's channel changes


def honest_message_counts(reports: Sequence[PartyReport]) -> list[int]:
    """Messages each compute party sent in an honest run (offline, setup and online)."""
    return [sum(t.messages_sent for t in (r.offline, getattr(r, "setup", None), r.online)
                if t is not None) for r in reports]


def tampered_run(scheme: str, program: Program | Sequence[Program], n_parties: int | None = None,
                 corrupt_party: int = 0, message_index: int = 0, peer: int | None = None,
                 mode: str = "add", transport: str = "threads", timeout: float = 30.0,
                 **tamper_options: Any) -> list[PartyReport]:
    """`protocols.run.run` with `corrupt_party`'s message `message_index` altered. An active
    scheme must raise (CheatingDetected from the detecting party) instead of returning."""
    tamper = Tamper(corrupt_party, message_index, peer=peer, mode=mode, **tamper_options)
    return run(scheme, program, n_parties=n_parties, transport=transport, timeout=timeout,
               hook=tamper)
