"""A deployment's compute parties and dealer refuse a client's batch outside the limit, before
planning anything from it."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from experiments import deploy
from experiments.deploy import Roles
from experiments.modelfile import BUNDLED_MODEL, load_model
from mpc.errors import ProtocolError
from mpc.limits import MAX_BATCH
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
    return describe(load_model(BUNDLED_MODEL, check=False).secure)


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
        deploy._recv_json(_Raw(roles, raw), roles.client, ("batch",))


def test_a_document_without_the_expected_fields_is_refused():
    roles = Roles.for_scheme(registry.get("replicated"))
    with pytest.raises(ProtocolError, match="expected an object with model"):
        deploy._recv_json(_Raw(roles, b'{"features": {}}'), roles.model_owner, ("model",))
