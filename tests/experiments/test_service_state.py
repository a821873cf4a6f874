"""A service's cluster file ([service], [[client]], [[lane]]) and what a role keeps on disk."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import loaded

from experiments.service.config import load_service
from experiments.service.local import write_local_service
from experiments.service.state import Published, Store, checked_version
from mpc.errors import ConfigError
from nn.describe import describe


@pytest.fixture(scope="module")
def service_file(tmp_path_factory):
    return write_local_service(tmp_path_factory.mktemp("svc"), "replicated",
                               clients=("alice",), lanes=2)


def _edited(path, tmp_path, old: str, new: str):
    text = path.read_text()
    assert old in text
    edited = tmp_path / "cluster.toml"
    edited.write_text(text.replace(old, new, 1))
    return edited


def test_a_service_file_is_read_with_its_lanes_and_clients(service_file):
    config = load_service(service_file)
    assert config.lane_count == 2 and [k.name for k in config.clients] == ["alice", "bob"]
    assert [k.publish for k in config.clients] == [False, True]
    lane = config.for_lane(1)
    assert lane.address(0) != config.address(0)
    assert lane.cluster.parties[0].fingerprint == config.cluster.parties[0].fingerprint


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("lane = 1", "lane = 2", "lane 1 has no [[lane]] entry for party 0"),
    ('name = "alice"', 'name = "bob"', "appears more than once"),
    ("window_ms", "window", "unknown [service] keys"),
    ("max_batch = 16", "max_batch = 0", "max_batch must be a number in 1"),
])
def test_a_bad_service_file_is_refused_with_the_reason(service_file, tmp_path, old, new,
                                                       problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_service(_edited(service_file, tmp_path, old, new))


def test_a_role_keeps_its_shares_owner_only_and_reads_them_back(tmp_path):
    model = loaded()
    description = {"model": describe(model.secure), "features": model.feature_config.to_dict()}
    shares = np.arange(12, dtype=np.uint64).reshape(2, 6)
    store = Store(tmp_path / "party-0")
    assert store.load_current() is None
    store.save(Published("v1", description, shares, {1: b"k" * 32, 2: b"j" * 32}))
    again = store.load_current()
    assert again.version == "v1" and np.array_equal(again.shares, shares)
    assert again.mac_keys == {1: b"k" * 32, 2: b"j" * 32}
    assert (tmp_path / "party-0").stat().st_mode & 0o077 == 0
    assert (tmp_path / "party-0" / "model-v1.npz").stat().st_mode & 0o077 == 0
    assert not list((tmp_path / "party-0").glob("*.partial"))


@pytest.mark.parametrize("version", ["", "../up", "a/b", "x" * 65, 3])
def test_a_version_that_is_no_safe_file_name_is_refused(version):
    with pytest.raises(ConfigError, match="version"):
        checked_version(version)
