"""Multi-host deployment: one role per process, on any host named in a cluster file.

Endpoints, by id: compute parties 0..n-1, then the dealer (schemes with one), then the
client (Alice) and the model owner (Bob). Every role connects to every other over mutual
TLS before anything else (the preflight: an unreachable peer or a wrong certificate is
named with its host and port, and the role exits non-zero).

Inputs from outside the compute parties work the same for every scheme: the client splits
its encoded features into n additive pieces and sends piece i to compute party i, which
inputs it as its own private value; the parties add the n sharings. The label goes back
masked: the client also inputs a random mask m the same way, the parties open y + m among
themselves (uniform, so it reveals nothing) and each sends it to the client, which checks
that all copies agree and subtracts m. Bob's weights enter by the same splitting.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mpc.cluster import Cluster, load_cluster, start_party
from mpc.errors import ConfigError, ProtocolError, SottovoceError
from mpc.net.channel import Channel
from mpc.prg import PRG
from mpc.runtime import RunConfig
from nn.describe import describe, from_description
from nn.model import SecureModel
from protocols.base import Protocol
from protocols.clear import Planner
from protocols.functions import argmax
from protocols.run import SCHEMES, dealer_role, party_role, plan_of
from protocols.tensor import SecretTensor


@dataclass(frozen=True)
class Roles:
    """Which endpoint plays which role in a cluster."""

    scheme: str
    compute: int
    dealer: int | None
    client: int
    model_owner: int

    @classmethod
    def of(cls, cluster: Cluster) -> Roles:
        if cluster.scheme not in SCHEMES:
            raise ConfigError(f"{cluster.path}: [cluster] scheme must be one of "
                              f"{sorted(SCHEMES)}, got {cluster.scheme!r}")
        n = cluster.compute_parties
        if n is None:
            raise ConfigError(f"{cluster.path}: [cluster] lacks compute_parties")
        dealer = n if SCHEMES[cluster.scheme].needs_dealer else None
        client = n + (1 if dealer is not None else 0)
        roles = cls(cluster.scheme, n, dealer, client, client + 1)
        if cluster.n_endpoints != roles.model_owner + 1:
            raise ConfigError(f"{cluster.path}: scheme {cluster.scheme} with {n} compute "
                              f"parties needs {roles.model_owner + 1} endpoints (compute, "
                              f"{'dealer, ' if dealer is not None else ''}client, model owner);"
                              f" the file lists {cluster.n_endpoints}")
        return roles

    def config(self, cluster: Cluster) -> RunConfig:
        return RunConfig(n_parties=self.compute, timeout=cluster.timeout,
                         dealer=self.dealer is not None, external=2)


def split(value: np.ndarray, n: int, prg: PRG) -> list[np.ndarray]:
    """n additive pieces of `value` (ring elements): n-1 from the PRG, one balancing."""
    pieces = [prg.ring_elements(value.shape) for _ in range(n - 1)]
    last = value.copy()
    for piece in pieces:
        last -= piece
    return [*pieces, last]


def _send_json(channel: Channel, peers: list[int], document: dict) -> None:
    data = np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)
    channel.exchange(dict.fromkeys(peers, data), ())


def _recv_json(channel: Channel, peer: int) -> dict:
    raw = channel.recv_bytes(peer)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"party {peer} sent a malformed document: {exc}") from None


def _expect(array: np.ndarray, shape: tuple[int, ...], who: str) -> np.ndarray:
    if array.dtype != np.uint64 or array.shape != tuple(shape):
        raise ProtocolError(f"{who} sent {array.dtype}{array.shape}, expected uint64{shape}")
    return array


# -- the compute parties' program --------------------------------------------------------
def _sum_of_pieces(protocol: Protocol, piece: np.ndarray | None, shape: tuple[int, ...]
                   ) -> SecretTensor:
    """Every compute party inputs its piece; the sum is a sharing of the whole value."""
    total = None
    for owner in range(protocol.n_parties):
        value = piece if protocol.plays(owner) else None
        term = SecretTensor.input(protocol, value, owner, shape)
        total = term if total is None else total + term
    return total


@dataclass
class ExternalInference:
    """What each compute party runs when inputs come from the client and the model owner."""

    model: SecureModel
    batch: int
    weight_pieces: list[np.ndarray] | None = None
    feature_piece: np.ndarray | None = None
    mask_piece: np.ndarray | None = None
    _params: list = field(default_factory=list, repr=False)

    def setup(self, protocol: Protocol) -> None:
        pieces = iter(self.weight_pieces or [])
        self._params = []
        for layer in self.model.layers:
            params = {}
            for key, shape in (("weight", getattr(layer, "weight_shape", None)),
                               ("bias", getattr(layer, "bias_shape", None))):
                if shape:
                    params[key] = _sum_of_pieces(protocol, next(pieces, None), tuple(shape))
            self._params.append(params)

    def __call__(self, protocol: Protocol) -> np.ndarray | None:
        f = self.model.fixed.frac_bits
        x = _sum_of_pieces(protocol, self.feature_piece, (self.batch, *self.model.input_shape))
        for layer, params in zip(self.model.layers, self._params, strict=True):
            x = layer.forward(x, params, f)
        label = argmax(x.reshape(self.batch, -1))
        mask = _sum_of_pieces(protocol, self.mask_piece, (self.batch,))
        return (label + mask).reveal(range(protocol.n_parties))


def _param_shapes(model: SecureModel) -> list[tuple[int, ...]]:
    shapes = []
    for layer in model.layers:
        for shape in (getattr(layer, "weight_shape", None), getattr(layer, "bias_shape", None)):
            if shape:
                shapes.append(tuple(shape))
    return shapes


def compute_party(cluster_path: str | Path, party_id: int) -> None:
    """Run compute party `party_id`: receive the model description, preprocess, take the
    weight and feature pieces, compute, and send the masked label to the client."""
    cluster = load_cluster(cluster_path)
    roles = Roles.of(cluster)
    if not 0 <= party_id < roles.compute:
        raise ConfigError(f"{cluster.path}: party {party_id} is not a compute party "
                          f"(0..{roles.compute - 1})")
    runtime = start_party(cluster, party_id, roles.config(cluster))
    channel = runtime.channel
    try:
        with channel.stage("model description"):
            document = _recv_json(channel, roles.model_owner)
        model = from_description(document["model"])
        with channel.stage("client request"):
            batch = int(_recv_json(channel, roles.client)["batch"])
        with channel.stage("weights"):
            weights = [_expect(channel.recv(roles.model_owner), s, "the model owner")
                       for s in _param_shapes(model)]
        with channel.stage("features"):
            features = _expect(channel.recv(roles.client), (batch, *model.input_shape),
                               "the client")
            mask = _expect(channel.recv(roles.client), (batch,), "the client")
        program = ExternalInference(model, batch, weights, features, mask)
        plan = plan_of(ExternalInference(model, batch), roles.compute,
                       getattr(SCHEMES[roles.scheme], "planner", Planner))
        report = party_role(runtime, roles.scheme, program, plan)
        with channel.stage("label to client"):
            channel.send(roles.client, report.result)
    finally:
        channel.close()


def dealer(cluster_path: str | Path) -> None:
    """Run the dealer: learn the shapes, plan, and serve the preprocessing."""
    cluster = load_cluster(cluster_path)
    roles = Roles.of(cluster)
    if roles.dealer is None:
        raise ConfigError(f"{cluster.path}: scheme {roles.scheme} has no dealer")
    runtime = start_party(cluster, roles.dealer, roles.config(cluster))
    try:
        model = from_description(_recv_json(runtime.channel, roles.model_owner)["model"])
        batch = int(_recv_json(runtime.channel, roles.client)["batch"])
        plan = plan_of(ExternalInference(model, batch), roles.compute,
                       getattr(SCHEMES[roles.scheme], "planner", Planner))
        dealer_role(runtime, plan, scheme=roles.scheme)
    finally:
        runtime.channel.close()


def model_owner(cluster_path: str | Path, model: SecureModel, feature_config: dict) -> None:
    """Run Bob: publish the architecture and feature settings, send weight pieces."""
    cluster = load_cluster(cluster_path)
    roles = Roles.of(cluster)
    runtime = start_party(cluster, roles.model_owner, roles.config(cluster))
    channel = runtime.channel
    try:
        others = [p for p in channel.peers]
        _send_json(channel, others, {"model": describe(model), "features": feature_config})
        prg = PRG.fresh()
        pieces_by_party: list[list[np.ndarray]] = [[] for _ in range(roles.compute)]
        for layer in model.layers:
            for value in (getattr(layer, "weight", None), getattr(layer, "bias", None)):
                if value is not None:
                    for party, piece in enumerate(split(value, roles.compute, prg)):
                        pieces_by_party[party].append(piece)
        for party, pieces in enumerate(pieces_by_party):
            for piece in pieces:
                channel.send(party, piece)
    finally:
        channel.close()


def client(cluster_path: str | Path, clips: list[str | os.PathLike]) -> list[str]:
    """Run Alice: compute features locally, send pieces, receive and unmask the labels."""
    import audio

    cluster = load_cluster(cluster_path)
    roles = Roles.of(cluster)
    runtime = start_party(cluster, roles.client, roles.config(cluster))
    channel = runtime.channel
    try:
        with channel.stage("model description"):
            document = _recv_json(channel, roles.model_owner)
        model = from_description(document["model"])
        config = audio.FeatureConfig.from_dict(document["features"])
        features = np.stack([audio.features(audio.load(c, sample_rate=config.sample_rate),
                                            config) for c in clips])
        if features.shape[1:] != model.input_shape:
            raise ConfigError(f"features of shape {features.shape[1:]}, the model takes "
                              f"{model.input_shape}")
        batch = len(clips)
        servers = list(range(roles.compute)) + ([roles.dealer] if roles.dealer is not None
                                                else [])
        _send_json(channel, servers, {"batch": batch})
        prg = PRG.fresh()
        encoded = model.fixed.encode(features)
        mask = prg.ring_elements((batch,))
        for party, (piece, mask_piece) in enumerate(zip(
                split(encoded, roles.compute, prg), split(mask, roles.compute, prg),
                strict=True)):
            channel.send(party, piece)
            channel.send(party, mask_piece)
        with channel.stage("labels"):
            copies = [_expect(channel.recv(p), (batch,), f"compute party {p}")
                      for p in range(roles.compute)]
        if any(not np.array_equal(copies[0], c) for c in copies[1:]):
            raise SottovoceError("compute parties sent different masked labels: refusing "
                                 "the result")
        indices = copies[0] - mask
        if np.any(indices >= max(1, model.num_classes)):
            raise ProtocolError("the unmasked label is out of range: refusing the result")
        labels = model.labels or tuple(str(i) for i in range(model.num_classes))
        return [labels[int(i)] for i in indices]
    finally:
        channel.close()
