"""A deployment's compute parties and dealer refuse a client's batch outside the limit, before
planning anything from it, and no outside endpoint may send more than its step allows."""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import bundled_clips
from conftest import deploy as deploy_all

from experiments import deploy
from experiments.deploy import Roles
from experiments.modelfile import BUNDLED_MODEL, load_model
from mpc.errors import LimitExceeded, ProtocolError
from mpc.limits import MAX_ACTIVATION, MAX_BATCH, MAX_PARAMETERS, external_value_bytes
from mpc.net.channel import subject
from nn.describe import describe
from protocols import registry

BAD_BATCHES = [MAX_BATCH + 1, 0, -1, 2.5, True, "3", None]


class _Inbox:
    """A channel holding one JSON document from each of the model owner and the client."""

    def __init__(self, roles: Roles, request: object) -> None:
        model = _description()
        self.documents = {roles.model_owner: {"model": model, "features": {}},
                          roles.client: request}
        self.names = roles.run_config(1.0).endpoint_names()
        self.step = "start-up"
        self.limits: dict[int, list[int]] = {}

    def limit(self, peer: int, max_bytes: int) -> None:
        self.limits.setdefault(peer, []).append(max_bytes)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.step = name
        yield

    def recv_bytes(self, peer: int, *, what: str = "") -> bytes:
        return json.dumps(self.documents[peer]).encode()

    def who(self, endpoint: int) -> str:
        return subject(self.names, endpoint)


@functools.cache
def _description() -> dict:
    return describe(load_model(BUNDLED_MODEL).secure)


class _Planned(Exception):
    """Raised in place of planning: the batch got through."""


@pytest.fixture
def no_planning(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    batches: list[int] = []

    def plan_of(program, *args, **kwargs):
        batches.append(program.batch)
        raise _Planned

    monkeypatch.setattr(deploy, "plan_of", plan_of)
    return batches


def _request(batch: object) -> object:
    return {} if batch is None else {"batch": batch}


@pytest.mark.parametrize("batch", BAD_BATCHES, ids=repr)
def test_a_compute_party_refuses_a_batch_outside_the_limit(no_planning, batch) -> None:
    roles = Roles.for_scheme(registry.get("replicated"))
    runtime = SimpleNamespace(channel=_Inbox(roles, _request(batch)))
    with pytest.raises(ProtocolError) as caught:
        deploy.compute_party_role(runtime, roles)
    assert "the client" in str(caught.value)
    assert repr(batch) in str(caught.value) or "without a batch" in str(caught.value)
    assert no_planning == []


@pytest.mark.parametrize("batch", BAD_BATCHES, ids=repr)
def test_the_dealer_refuses_a_batch_outside_the_limit(no_planning, batch) -> None:
    roles = Roles.for_scheme(registry.get("additive"))
    runtime = SimpleNamespace(channel=_Inbox(roles, _request(batch)))
    with pytest.raises(ProtocolError, match="the client"):
        deploy.dealer_role_of(runtime, roles)
    assert no_planning == []


@pytest.mark.parametrize("batch", [1, MAX_BATCH])
def test_a_batch_within_the_limit_is_planned(no_planning, batch: int) -> None:
    for scheme, role in (("replicated", deploy.compute_party_role),
                         ("additive", deploy.dealer_role_of)):
        roles = Roles.for_scheme(registry.get(scheme))
        with pytest.raises(_Planned):
            role(SimpleNamespace(channel=_Inbox(roles, {"batch": batch})), roles)
    assert no_planning == [batch, batch]


def test_a_request_that_is_not_an_object_is_refused(no_planning) -> None:
    roles = Roles.for_scheme(registry.get("replicated"))
    with pytest.raises(ProtocolError, match="the client sent a request without a batch"):
        deploy.compute_party_role(SimpleNamespace(channel=_Inbox(roles, [65])), roles)


class _Raw(_Inbox):
    """A channel whose client sends the given raw bytes."""

    def __init__(self, roles: Roles, raw: bytes) -> None:
        super().__init__(roles, {})
        self.raw = raw

    def recv_bytes(self, peer: int, *, what: str = "") -> bytes:
        return self.raw


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"[1, 2]", b'{"batch": ' + b"9" * 5000 + b"}",
                                 b"{" + b" " * (deploy.MAX_DOCUMENT_BYTES + 1) + b"}"])
def test_a_malformed_document_names_its_sender(raw):
    roles = Roles.for_scheme(registry.get("replicated"))
    with pytest.raises(ProtocolError, match="the client sent a malformed document"):
        deploy.receive_document(_Raw(roles, raw), roles.client, ("batch",))


def test_a_document_without_the_expected_fields_is_refused():
    roles = Roles.for_scheme(registry.get("replicated"))
    with pytest.raises(ProtocolError, match="expected an object with model"):
        deploy.receive_document(_Raw(roles, b'{"features": {}}'), roles.model_owner, ("model",))


def test_each_step_narrows_what_the_client_and_owner_may_send(no_planning) -> None:
    """Before the description and the request, the most any model and batch allow; then the
    weights of this model and the features of the declared batch."""
    roles = Roles.for_scheme(registry.get("replicated"))
    inbox = _Inbox(roles, {"batch": 2})
    with pytest.raises(_Planned):
        deploy.compute_party_role(SimpleNamespace(channel=inbox), roles)
    model = load_model(BUNDLED_MODEL).secure
    weights, features = len(deploy.flat_weights(model)), 2 * int(np.prod(model.input_shape))
    assert inbox.limits[roles.model_owner] == [
        deploy.MAX_DOCUMENT_BYTES + external_value_bytes(MAX_PARAMETERS),
        external_value_bytes(weights)]
    assert inbox.limits[roles.client] == [
        deploy.MAX_DOCUMENT_BYTES + external_value_bytes(MAX_BATCH * MAX_ACTIVATION),
        external_value_bytes(features)]


def _sends_extra_features(times: int):
    """A client hook: at the features step, every array it sends is `times` as long."""
    def hook(runtime) -> None:
        channel = runtime.channel
        send = channel._send

        def padded(peer: int, array: np.ndarray) -> None:
            if channel.step == "features" and array.size:
                array = np.concatenate([array.reshape(-1)] * times)
            send(peer, array)

        channel._send = padded
    return hook


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scheme", ["replicated", "rep4"])
def test_a_client_sending_more_than_its_batch_is_refused(scheme: str) -> None:
    roles = Roles.for_scheme(registry.get(scheme))
    with pytest.raises(LimitExceeded) as caught:
        deploy_all(scheme, bundled_clips(None)[:1], hooks={roles.client: _sends_extra_features(3)})
    assert re.fullmatch(r"party \d: the client sent a frame of \d+ bytes with \d+ more "
                        r"buffered; at most \d+ bytes may be buffered from the client at "
                        r"this step \(step [^)]+\)", str(caught.value)), caught.value
