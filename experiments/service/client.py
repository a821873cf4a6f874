"""The outside endpoints of a service: a client classifying clips, a model owner publishing a
model, an operator asking for status. Each dials every role (compute parties, then the
dealer) at its service port over mutual TLS, proved by the key the cluster file lists for it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import random
import secrets
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from experiments.service import messages
from experiments.service.config import ClientKey, ServiceConfig, load_service
from mpc.errors import CheatingDetected, ConfigError, PeerAborted, ProtocolError, SottovoceError
from mpc.net import tcp
from mpc.net.certs import TlsFiles
from mpc.net.handshake import Credentials, dial
from nn.describe import describe, from_description
from nn.model import SecureModel
from protocols.external import Endpoints


class ServiceError(SottovoceError):
    """The service refused or failed a request; the text says which role and why."""


def client_files(config: ServiceConfig, key: ClientKey) -> TlsFiles:
    """A client's own certificate and key: named in its [[client]] entry, else
    `client-<name>.pem/.key` in the key folder."""
    if key.tls is not None:
        return key.tls
    folder = config.cluster.keys or config.cluster.path.parent / "keys"
    cert, private = (folder / f"client-{key.name}{ext}" for ext in (".pem", ".key"))
    if not (cert.is_file() and private.is_file()):
        raise ConfigError(f"{config.cluster.path}: no key of client {key.name} on this host: "
                          f"{private} and {cert} are needed (`sottovoce clients add` makes "
                          "them)")
    return TlsFiles(cert=cert, key=private)


def _choose(config: ServiceConfig, name: str | None, publish: bool) -> ClientKey:
    if name is not None:
        return config.client(name)
    for key in sorted(config.clients, key=lambda k: k.publish != publish):
        try:
            client_files(config, key)
        except ConfigError:
            continue
        return key
    raise ConfigError(f"{config.cluster.path}: no [[client]] of this file has its key on "
                      "this host; name one with --client")


def connect(config: ServiceConfig, key: ClientKey) -> dict[int, ssl.SSLSocket]:
    """A TLS link to every role, each proved by the key pinned for it (in parallel)."""
    own = client_files(config, key)
    pins = {key.endpoint: key.fingerprint,
            **{p: config.cluster.parties[p].fingerprint for p in config.servers}}
    names = {key.endpoint: f"client {key.name}",
             **{p: config.name_of(p) for p in config.servers}}
    creds = Credentials.load(key.endpoint, TlsFiles(own.cert, own.key, pins), sorted(pins),
                             names)
    context = creds.context()
    deadline = time.monotonic() + config.cluster.connect_timeout
    with concurrent.futures.ThreadPoolExecutor(len(config.servers)) as pool:
        futures = {p: pool.submit(dial, creds, p, config.address(p), context, deadline)
                   for p in config.servers}
        links, error = {}, None
        for p, future in futures.items():
            try:
                links[p] = future.result()
            except SottovoceError as exc:
                error = error or exc
    if error is not None:
        for sock in links.values():
            sock.close()
        raise error
    for sock in links.values():
        sock.settimeout(config.cluster.timeout)
    return links


def _answers(config: ServiceConfig, links: dict[int, ssl.SSLSocket], hello: dict
             ) -> dict[int, dict]:
    for sock in links.values():
        messages.send(sock, hello, 0)
    answers = {p: _answer(config, p, sock) for p, sock in links.items()}
    return answers


def _answer(config: ServiceConfig, role: int, sock: ssl.SSLSocket) -> dict:
    try:
        return messages.receive(sock, 0, config.name_of(role))
    except PeerAborted as exc:
        raise ServiceError(exc.reason) from None


def _same(answers: dict[int, dict], what: str) -> dict:
    first, *rest = answers.values()
    if any(other != first for other in rest):
        raise ProtocolError(f"the roles of the service describe different {what}: refusing")
    return first


def _channel(config: ServiceConfig, key: ClientKey, links: dict[int, ssl.SSLSocket],
             received: int, sent: int) -> tcp.TcpChannel:
    names = {key.endpoint: f"client {key.name}",
             **{p: config.name_of(p) for p in config.servers}}
    return tcp.over_sockets(key.endpoint, links, names, config.cluster.timeout, received, sent)


@contextlib.contextmanager
def _in_batch(config: ServiceConfig, key: ClientKey, links: dict[int, ssl.SSLSocket],
              received: int, sent: int) -> Iterator[tcp.TcpChannel]:
    """The channel over `links` for the batch's messages; a role's abort becomes the
    error it stands for; the links close at the end."""
    channel = _channel(config, key, links, received, sent)
    try:
        yield channel
    except PeerAborted as exc:
        raise _failed(exc) from None
    finally:
        channel.close()
        for sock in links.values():
            sock.close()


def _failed(exc: PeerAborted) -> SottovoceError:
    reason = exc.reason
    if "CheatingDetected" in reason:
        return CheatingDetected(f"the service detected a deviation: {reason}")
    return ServiceError(reason)


def classify(cluster_path: str | os.PathLike, clips: list[str | os.PathLike],
             client: str | None = None, lane: int | None = None) -> list[str]:
    """The labels of `clips` from a running service (from `lane`, by default one picked at
    random); only this client learns them."""
    import audio

    config = load_service(cluster_path)
    config = config.for_lane(random.randrange(config.lane_count) if lane is None else lane)
    key = _choose(config, client, publish=False)
    if not 1 <= len(clips) <= config.max_batch:
        raise ConfigError(f"this service takes 1..{config.max_batch} clips a request, "
                          f"got {len(clips)}")
    links = connect(config, key)
    try:
        hello = {"kind": "classify", "rid": secrets.token_hex(8)}
        described = _same(_answers(config, links, hello), "models")
        model = from_description(described["model"])
        features_config = audio.FeatureConfig.from_dict(described["features"])
        features = np.stack([audio.features(audio.load(c, sample_rate=features_config
                                                       .sample_rate), features_config)
                             for c in clips])
        if features.shape[1:] != model.input_shape:
            raise ConfigError(f"features of shape {features.shape[1:]}, the model takes "
                              f"{model.input_shape}")
        for sock in links.values():
            messages.send(sock, {"clips": len(clips), "version": described["version"]}, 1)
    except BaseException:
        for sock in links.values():
            sock.close()
        raise
    ends, scheme = Endpoints(config.compute, config.dealer), config.scheme.protocol
    with _in_batch(config, key, links, received=1, sent=2) as channel:
        with channel.stage("features"):
            scheme.give_external(channel, ends, model.fixed.encode(features))
        with channel.stage("labels"):
            indices = scheme.take_external(channel, ends, (len(clips),))
    if np.any(indices >= max(1, model.num_classes)):
        raise ProtocolError("the label is out of range: refusing the result")
    labels = model.labels or tuple(str(i) for i in range(model.num_classes))
    return [labels[int(i)] for i in indices]


def publish(cluster_path: str | os.PathLike, model: SecureModel, feature_config: dict,
            version: str, client: str | None = None) -> None:
    """Share `model` with a running service as `version`; returns once every compute party
    has checked and stored its shares (the service then serves it)."""
    from experiments.deploy import flat_weights

    config = load_service(cluster_path)
    key = _choose(config, client, publish=True)
    links = connect(config, key)
    hello = {"kind": "publish", "rid": secrets.token_hex(8), "version": version,
             "model": describe(model), "features": feature_config}
    ends, scheme = Endpoints(config.compute, config.dealer), config.scheme.protocol
    try:
        for sock in links.values():
            messages.send(sock, hello, 0)
    except BaseException:
        for sock in links.values():
            sock.close()
        raise
    with _in_batch(config, key, links, received=0, sent=1) as channel:
        with channel.stage("weights"):
            scheme.give_external(channel, ends, flat_weights(model))
        with channel.stage("confirmation"):
            zero = scheme.take_external(channel, ends, (1,))
        if zero[0] != 0:
            raise ProtocolError("the service confirmed the weights with a non-zero check "
                                "value: they did not arrive intact")
        with channel.stage("stored"):
            for role in config.servers:  # every role has saved its shares
                stored = channel.recv_bytes(role, what="as its confirmation")
                if f'"{version}"' not in stored.decode("utf-8", "replace"):
                    raise ProtocolError(f"{config.name_of(role)} did not confirm that it "
                                        f"stored version {version}")


def status(cluster_path: str | os.PathLike, client: str | None = None) -> dict[str, dict]:
    """Every role's status, in every lane (or {"up": False, "error": ...} for one that cannot
    be reached)."""
    service = load_service(cluster_path)
    key = _choose(service, client, publish=False)
    own = client_files(service, key)
    result: dict[str, dict] = {}
    for lane in range(service.lane_count):
        result.update(_status_of_lane(service.for_lane(lane), key, own))
    return result


def _status_of_lane(config: ServiceConfig, key: ClientKey, own: TlsFiles) -> dict[str, dict]:
    result: dict[str, dict] = {}
    lane = f" (lane {config.lane})" if config.lane else ""
    for p in config.servers:
        try:
            links = _connect_one(config, key, own, p)
        except SottovoceError as exc:
            result[config.name_of(p) + lane] = {"up": False, "error": str(exc)}
            continue
        try:
            messages.send(links, {"kind": "status"}, 0)
            result[config.name_of(p) + lane] = {"up": True, **_answer(config, p, links)}
        except (SottovoceError, OSError) as exc:
            result[config.name_of(p) + lane] = {"up": False, "error": str(exc)}
        finally:
            links.close()
    return result


def _connect_one(config: ServiceConfig, key: ClientKey, own: TlsFiles, role: int
                 ) -> ssl.SSLSocket:
    pins = {key.endpoint: key.fingerprint, role: config.cluster.parties[role].fingerprint}
    names = {key.endpoint: f"client {key.name}", role: config.name_of(role)}
    creds = Credentials.load(key.endpoint, TlsFiles(own.cert, own.key, pins), sorted(pins),
                             names)
    sock = dial(creds, role, config.address(role), creds.context(),
                time.monotonic() + min(5.0, config.cluster.connect_timeout))
    sock.settimeout(config.cluster.timeout)
    return sock


def make_client_key(folder: str | Path, name: str) -> str:
    """Make a client's key in `folder` (client-<name>.key, .pem, .fingerprint); its
    fingerprint, for the service's [[client]] entry."""
    from mpc.net.certs import make_identity

    return make_identity(folder, 0, name=f"client-{name}", replace=True).fingerprint
