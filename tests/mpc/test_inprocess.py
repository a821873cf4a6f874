"""In-process transport: a silent peer times out, a failed role's peers lose their link."""

from __future__ import annotations

import time

import pytest

from mpc.errors import PeerLost, PeerTimeout, SottovoceError
from mpc.launch import run_threads
from mpc.runtime import RunConfig


def test_silent_peer_times_out_in_process():
    def silent(rt):
        time.sleep(1.5)

    def waiting(rt):
        start = time.monotonic()
        try:
            rt.channel.recv(1)
        except PeerTimeout as exc:
            return time.monotonic() - start, str(exc)
        return None

    out = run_threads([waiting, silent], RunConfig(n_parties=2, timeout=0.5))
    elapsed, message = out[0]
    assert elapsed < 1.5 and "party 1" in message


def test_inprocess_peer_lost_when_a_role_fails():
    def failing(rt):
        raise RuntimeError("boom")

    def waiting(rt):
        try:
            rt.channel.recv(0)
        except PeerLost as exc:
            return str(exc)

    with pytest.raises(SottovoceError, match="party 0 failed: boom"):
        run_threads([failing, waiting], RunConfig(n_parties=2, timeout=5))
