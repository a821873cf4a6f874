"""A party's runtime (who it is, its channel, its keys) and launchers that run parties.

No module-level state: a `Runtime` is made by a launcher and handed to the code a party
runs. Parties agree on pairwise PRG keys over their authenticated channels at start-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from mpc.net.channel import Channel
from mpc.prg import KEY_BYTES, PRG, shared_key

#: The roles of the external endpoints, in endpoint order (see experiments/deploy.py).
EXTERNAL_ROLES = ("client", "model owner")


@dataclass(frozen=True)
class RunConfig:
    """Settings every party of one computation must agree on."""

    n_parties: int
    timeout: float = 60.0
    dealer: bool = False  # an extra endpoint with id n_parties supplies preprocessing
    threads: int = 1  # numba threads per party process (parties share this machine's cores)
    external: int = 0  # endpoints after the dealer that only give inputs or get outputs

    def endpoint_names(self) -> dict[int, str]:
        """Every endpoint's role, as errors name it: "party i" for the compute parties,
        "dealer" for endpoint n (with a dealer), then "client" and "model owner" (the
        external endpoints of a deployment)."""
        names = {p: f"party {p}" for p in range(self.n_parties)}
        if self.dealer:
            names[self.n_parties] = "dealer"
        first = self.n_parties + (1 if self.dealer else 0)
        for k in range(self.external):
            names[first + k] = (EXTERNAL_ROLES[k] if k < len(EXTERNAL_ROLES)
                                else f"party {first + k}")
        return names


@dataclass
class Runtime:
    """Everything one party needs: its id, its channel, its keys, the shared configuration.

    `party_id` runs over 0..n_parties-1 for compute parties; the dealer, when present, is
    endpoint `n_parties`.
    """

    party_id: int
    config: RunConfig
    channel: Channel
    pair_keys: dict[int, bytes]
    private_prg: PRG = field(default_factory=PRG.fresh)
    #: Keys of the MAC key, when values authenticated under it outlive this runtime (a
    #: service's published weights): by peer, those shared with each peer; under this
    #: endpoint's own id, its private one. None: the MAC key comes from this run's keys.
    mac_keys: dict[int, bytes] | None = None

    @property
    def n_parties(self) -> int:
        return self.config.n_parties

    @property
    def is_dealer(self) -> bool:
        return self.config.dealer and self.party_id == self.config.n_parties

    @property
    def dealer_id(self) -> int:
        if not self.config.dealer:
            raise ValueError("this computation has no dealer")
        return self.config.n_parties

    def mac_prg(self, peer: int, purpose: str) -> PRG:
        """The PRG a MAC key is drawn from: from `mac_keys` if set, else as `pair_prg`
        (`peer` = this endpoint's own id: its private PRG)."""
        if self.mac_keys is not None:
            return PRG(self.mac_keys[peer]).derive(purpose)
        return self.private_prg if peer == self.party_id else self.pair_prg(peer, purpose)

    def pair_prg(self, peer: int, purpose: str) -> PRG:
        """A PRG this party shares with `peer`, independent for each `purpose`."""
        return PRG(self.pair_keys[peer]).derive(purpose)


def agree_pair_keys(channel: Channel) -> dict[int, bytes]:
    """One fresh key per peer: each side contributes random bytes over the channel.

    The channel is authenticated and encrypted (TLS) or in-process, so the contributions
    stay between the two parties; each pair's key mixes both sides' randomness.
    """
    mine = {peer: os.urandom(KEY_BYTES) for peer in channel.peers}
    with channel.stage("key agreement"):
        theirs = channel.exchange({p: np.frombuffer(b, dtype=np.uint8) for p, b in mine.items()})
    return {peer: shared_key(mine[peer], theirs[peer].tobytes(), channel.party_id, peer)
            for peer in channel.peers}


def make_runtime(channel: Channel, config: RunConfig) -> Runtime:
    """Name the endpoints' roles on `channel`, agree keys over it, build the party's runtime."""
    channel.names = config.endpoint_names()
    keys = agree_pair_keys(channel)
    channel.traffic.__init__()  # start-up traffic is not the computation's
    return Runtime(party_id=channel.party_id, config=config, channel=channel, pair_keys=keys)
