"""Multi-host deployment: one role per process, on any host named in a cluster file.

Endpoints, by id: compute parties 0..n-1, then the dealer (schemes with one), then the
client (Alice) and the model owner (Bob). Every role connects to every other over mutual
TLS before anything else (the preflight: an unreachable peer or a wrong certificate is
named with its host and port, and the role exits non-zero).

The model owner publishes the architecture and feature settings, then enters the weights;
the client enters its features and takes the labels. How those values cross between the
compute parties and the two outside endpoints is the scheme's: `Protocol.input_external`
and `Protocol.reveal_external` (see `protocols.external` and SECURITY.md, "Deployment").
Each role is a function of a `Runtime` (`compute_party_role`, `client_role`, ...), run as
a process from a cluster file by `compute_party`, `client`, ..., or as threads in tests.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpc.cluster import Cluster, load_cluster, start_party
from mpc.errors import ConfigError, ProtocolError
from mpc.launch import run_threads
from mpc.limits import (
    MAX_ACTIVATION,
    MAX_BATCH,
    MAX_PARAMETERS,
    checked_batch,
    external_value_bytes,
)
from mpc.net.channel import Channel
from mpc.runtime import RunConfig, Runtime
from nn import graph
from nn.describe import describe, from_description
from nn.model import SecureModel
from protocols import registry
from protocols.base import Protocol
from protocols.external import Endpoints
from protocols.functions import argmax
from protocols.registry import Scheme
from protocols.run import dealer_role, party_role, plan_of
from protocols.tensor import SecretTensor


@dataclass(frozen=True)
class Roles:
    """Which endpoint plays which role in a cluster."""

    scheme: Scheme
    compute: int
    dealer: int | None
    client: int
    model_owner: int

    @classmethod
    def of(cls, cluster: Cluster) -> Roles:
        if cluster.scheme not in registry.SCHEMES:
            raise ConfigError(f"{cluster.path}: [cluster] scheme must be one of "
                              f"{sorted(registry.SCHEMES)}, got {cluster.scheme!r}")
        scheme = registry.SCHEMES[cluster.scheme]
        n = cluster.compute_parties
        if n is None:
            raise ConfigError(f"{cluster.path}: [cluster] lacks compute_parties")
        roles = cls.for_scheme(scheme, n)
        dealer = roles.dealer
        if cluster.n_endpoints != roles.n_endpoints:
            raise ConfigError(f"{cluster.path}: scheme {scheme.name} with {n} compute "
                              f"parties needs {roles.model_owner + 1} endpoints (compute, "
                              f"{'dealer, ' if dealer is not None else ''}client, model owner);"
                              f" the file lists {cluster.n_endpoints}")
        return roles

    @classmethod
    def for_scheme(cls, scheme: Scheme, n_parties: int | None = None) -> Roles:
        """The endpoint ids a deployment of `scheme` uses (compute, dealer, client, owner)."""
        n = scheme.party_count(n_parties)
        client = scheme.endpoints(n)
        return cls(scheme, n, n if scheme.dealer else None, client, client + 1)

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(self.compute, self.dealer)

    @property
    def n_endpoints(self) -> int:
        return self.model_owner + 1

    def run_config(self, timeout: float) -> RunConfig:
        return RunConfig(n_parties=self.compute, timeout=timeout,
                         dealer=self.dealer is not None, external=2)

    def config(self, cluster: Cluster) -> RunConfig:
        return self.run_config(cluster.timeout)


def send_document(channel: Channel, peers: list[int], document: dict) -> None:
    data = np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)
    channel.exchange(dict.fromkeys(peers, data), ())


#: Largest control document a peer may send (a model description is a few kB).
MAX_DOCUMENT_BYTES = 1 << 20


def receive_document(channel: Channel, peer: int, keys: tuple[str, ...] = ()) -> dict:
    """A JSON object from `peer` holding `keys`, or a `ProtocolError` naming the peer."""
    raw = channel.recv_bytes(peer)
    where = f"{channel.who(peer)} sent a malformed document at step '{channel.step}'"
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise ProtocolError(f"{where}: {len(raw)} bytes, at most {MAX_DOCUMENT_BYTES}")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: e.g. a 5000-digit number
        raise ProtocolError(f"{where}: {exc}") from None
    if keys and (not isinstance(document, dict) or any(k not in document for k in keys)):
        raise ProtocolError(f"{where}: expected an object with {', '.join(keys)}")
    return document


# -- what each peer may send (Channel.limit): the most the next steps let it ---------------
_ANY_MODEL_WEIGHTS = external_value_bytes(MAX_PARAMETERS)
_ANY_BATCH_FEATURES = external_value_bytes(MAX_BATCH * MAX_ACTIVATION)


def _input_elements(model: SecureModel, batch: int) -> int:
    return batch * int(np.prod(model.input_shape, dtype=np.int64))


def _limit(channel: Channel, peers: list[int] | tuple[int, ...], max_bytes: int) -> None:
    for peer in peers:
        channel.limit(peer, max_bytes)


# -- the compute parties' program --------------------------------------------------------
def parameter_count(model: SecureModel) -> int:
    return sum(int(np.prod(shape, dtype=np.int64)) for _, _, shape in model.parameter_slots())


def layer_parameters(model: SecureModel, flat: SecretTensor) -> list[dict[str, SecretTensor]]:
    """Every layer's parameters as slices of `flat` (shares of `flat_weights`): what
    `Layer.call` takes, by layer index."""
    params: list[dict[str, SecretTensor]] = [{} for _ in model.layers]
    offset = 0
    for k, key, shape in model.parameter_slots():
        size = int(np.prod(shape, dtype=np.int64))
        params[k][key] = flat[offset:offset + size].reshape(*shape)
        offset += size
    return params


def flat_weights(model: SecureModel) -> np.ndarray:
    """Every weight and bias of the model owner's model, encoded, in the order of
    `SecureModel.parameter_slots`."""
    values = [getattr(model.layers[k], key).reshape(-1) for k, key, _ in model.parameter_slots()]
    return np.concatenate(values) if values else np.zeros(0, dtype=np.uint64)


@dataclass
class ExternalInference:
    """What each compute party runs when the weights come from the model owner and the
    features from the client, and the labels go back to the client. How values cross
    between the compute parties and those two is the scheme's (`Protocol.input_external`,
    `Protocol.reveal_external`): under the active schemes no deviating compute party can
    change them undetected."""

    model: SecureModel
    batch: int
    roles: Roles
    _params: list = field(default_factory=list, repr=False)

    def setup(self, protocol: Protocol) -> None:
        flat = SecretTensor.input_external(protocol, self.roles.model_owner,
                                           (parameter_count(self.model),))
        self._params = layer_parameters(self.model, flat)

    def __call__(self, protocol: Protocol) -> None:
        f = self.model.fixed.frac_bits
        x = SecretTensor.input_external(protocol, self.roles.client,
                                        (self.batch, *self.model.input_shape))
        x = graph.evaluate(self.model.layers, x,
                           lambda k, layer, xs: layer.call(xs, self._params[k], f))
        argmax(x.reshape(self.batch, -1)).reveal_external(self.roles.client)


# -- the roles, on a runtime (threads in tests, or a process started from a cluster file) --
def compute_party_role(runtime: Runtime, roles: Roles) -> None:
    """Learn the model and the batch, plan, preprocess, compute, send the labels out."""
    channel = runtime.channel
    # until the description and the request are read, the most any model or batch allows
    channel.limit(roles.model_owner, MAX_DOCUMENT_BYTES + _ANY_MODEL_WEIGHTS)
    channel.limit(roles.client, MAX_DOCUMENT_BYTES + _ANY_BATCH_FEATURES)
    with channel.stage("model description"):
        document = receive_document(channel, roles.model_owner, ("model",))
    model = from_description(document["model"])
    channel.limit(roles.model_owner, external_value_bytes(parameter_count(model)))
    with channel.stage("client request"):
        batch = checked_batch(receive_document(channel, roles.client), channel.who(roles.client))
    channel.limit(roles.client, external_value_bytes(_input_elements(model, batch)))
    program = ExternalInference(model, batch, roles)
    plan = plan_of(ExternalInference(model, batch, roles), roles.compute, roles.scheme)
    party_role(runtime, roles.scheme, program, plan)


def dealer_role_of(runtime: Runtime, roles: Roles) -> None:
    """Learn the shapes, plan, and serve the preprocessing."""
    channel = runtime.channel
    _limit(channel, (roles.model_owner, roles.client), MAX_DOCUMENT_BYTES)
    model = from_description(receive_document(channel, roles.model_owner, ("model",))["model"])
    batch = checked_batch(receive_document(channel, roles.client), channel.who(roles.client))
    plan = plan_of(ExternalInference(model, batch, roles), roles.compute, roles.scheme)
    dealer_role(runtime, roles.scheme, plan)


def model_owner_role(runtime: Runtime, roles: Roles, model: SecureModel,
                     feature_config: dict) -> None:
    """Bob: publish the architecture and feature settings, then enter the weights."""
    channel = runtime.channel
    servers = [p for p in channel.peers if p != roles.client]
    _limit(channel, servers, external_value_bytes(parameter_count(model)))
    channel.limit(roles.client, 0)
    send_document(channel, list(channel.peers), {"model": describe(model),
                                              "features": feature_config})
    with channel.stage("weights"):
        roles.scheme.protocol.give_external(channel, roles.endpoints, flat_weights(model))


def client_role(runtime: Runtime, roles: Roles, clips: list[str | os.PathLike]) -> list[str]:
    """Alice: compute features locally, enter them, take the labels."""
    import audio

    channel = runtime.channel
    servers = list(roles.endpoints.parties) + ([roles.dealer] if roles.dealer is not None
                                               else [])
    _limit(channel, servers, _ANY_BATCH_FEATURES)
    channel.limit(roles.model_owner, MAX_DOCUMENT_BYTES)
    with channel.stage("model description"):
        document = receive_document(channel, roles.model_owner, ("model", "features"))
    model = from_description(document["model"])
    config = audio.FeatureConfig.from_dict(document["features"])
    features = np.stack([audio.features(audio.load(c, sample_rate=config.sample_rate),
                                        config) for c in clips])
    if features.shape[1:] != model.input_shape:
        raise ConfigError(f"features of shape {features.shape[1:]}, the model takes "
                          f"{model.input_shape}")
    batch = len(clips)
    _limit(channel, servers, external_value_bytes(_input_elements(model, batch)))
    send_document(channel, servers, {"batch": batch})
    scheme = roles.scheme.protocol
    with channel.stage("features"):
        scheme.give_external(channel, roles.endpoints, model.fixed.encode(features))
    with channel.stage("labels"):
        indices = scheme.take_external(channel, roles.endpoints, (batch,))
    if np.any(indices >= max(1, model.num_classes)):
        raise ProtocolError("the label is out of range: refusing the result")
    labels = model.labels or tuple(str(i) for i in range(model.num_classes))
    return [labels[int(i)] for i in indices]


# -- the roles as processes, from a cluster file -----------------------------------------------
def _started(cluster_path: str | Path, endpoint: str, party_id: int | None = None
             ) -> tuple[Roles, Runtime]:
    cluster = load_cluster(cluster_path)
    roles = Roles.of(cluster)
    ids = {"client": roles.client, "model owner": roles.model_owner, "dealer": roles.dealer}
    if endpoint == "compute party":
        if party_id is None or not 0 <= party_id < roles.compute:
            raise ConfigError(f"{cluster.path}: party {party_id} is not a compute party "
                              f"(0..{roles.compute - 1})")
        me = party_id
    elif ids[endpoint] is None:
        raise ConfigError(f"{cluster.path}: scheme {roles.scheme.name} has no {endpoint}")
    else:
        me = ids[endpoint]
    return roles, start_party(cluster, me, roles.config(cluster))


def compute_party(cluster_path: str | Path, party_id: int) -> None:
    """Run compute party `party_id` of a cluster file."""
    roles, runtime = _started(cluster_path, "compute party", party_id)
    with runtime.channel:
        compute_party_role(runtime, roles)


def dealer(cluster_path: str | Path) -> None:
    """Run the dealer of a cluster file."""
    roles, runtime = _started(cluster_path, "dealer")
    with runtime.channel:
        dealer_role_of(runtime, roles)


def model_owner(cluster_path: str | Path, model: SecureModel, feature_config: dict) -> None:
    """Run Bob, the model owner of a cluster file."""
    roles, runtime = _started(cluster_path, "model owner")
    with runtime.channel:
        model_owner_role(runtime, roles, model, feature_config)


def client(cluster_path: str | Path, clips: list[str | os.PathLike]) -> list[str]:
    """Run Alice, the client of a cluster file; the labels of `clips`."""
    roles, runtime = _started(cluster_path, "client")
    with runtime.channel:
        return client_role(runtime, roles, clips)


# -- a whole deployment in one process ----------------------------------------------------------
Hook = Callable[[Runtime], None]


def run_deployment(scheme: str | Scheme, model: SecureModel, feature_config: dict,
                   clips: list[str | os.PathLike], n_parties: int | None = None,
                   timeout: float = 60.0, hooks: dict[int, Hook] | None = None) -> list[str]:
    """Every role of a deployment as a thread of this process (in-process channels); the
    client's labels. `hooks[endpoint]` is called with that endpoint's runtime before its
    role starts (tests make one compute party deviate this way)."""
    roles = Roles.for_scheme(registry.get(scheme), n_parties)
    jobs: list[Callable[[Runtime], Any]] = [
        functools.partial(compute_party_role, roles=roles) for _ in range(roles.compute)]
    if roles.dealer is not None:
        jobs.append(functools.partial(dealer_role_of, roles=roles))
    jobs.append(functools.partial(client_role, roles=roles, clips=clips))
    jobs.append(functools.partial(model_owner_role, roles=roles, model=model,
                                  feature_config=feature_config))

    def hooked(endpoint: int, job: Callable[[Runtime], Any], runtime: Runtime) -> Any:
        if hooks and endpoint in hooks:
            hooks[endpoint](runtime)
        return job(runtime)

    results = run_threads([functools.partial(hooked, k, job) for k, job in enumerate(jobs)],
                          roles.run_config(timeout))
    return results[roles.client]
