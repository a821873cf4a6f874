"""Deferred MAC checking for SPDZ2k: the log of partial openings and the batched check.

A partial opening reveals a value only mod 2^k (k = 64): every party sends the low limb of
its value share. The party keeps its full shares (value and MAC, mod 2^(k+s)) and the
opened value in the log. The batched check (Cramer, Damgard, Escudero, Scholl, Xing,
"SPDZ2k", CRYPTO 2018, the MAC check of partially opened values):

  1. public coefficients chi_j in Z_2^s, from a seed every party contributes to by
     commit-then-open (SHA-256 over contribution || 32-byte nonce), drawn after the openings;
     the commitment to the next check's contribution rides on the last message of this
     one, so only the first check pays a separate commitment round;
  2. y = sum chi_j y_j over the opened values; [y~] = sum chi_j [x_j] + 2^k [r] with [r] a
     fresh authenticated random value from the dealer, so the upper s bits of y~ are masked;
  3. y~ is opened in full (mod 2^(k+s)); every party checks y~ = y mod 2^k;
  4. each party commits to sigma_i = [alpha y~]_i - alpha_i y~ together with a hash of its
     transcript (every opened value and every broadcast input), then opens sigma_i;
  5. accept iff every commitment opens, every transcript hash equals one's own, and
     sum sigma_i = 0 mod 2^(k+s). Otherwise `CheatingDetected`, in every honest party.

A party that cheats in an opening by e (mod 2^k) passes step 5 only if alpha * e' = 0 for
the error e' it induces in y~, which for e' != 0 mod 2^k needs s more bits of alpha: it
succeeds with probability about 2^-s (plus 2^-s for the random combination).
"""

from __future__ import annotations

import hashlib

import numpy as np

from mpc import ring128 as r128
from mpc.errors import CheatingDetected
from mpc.net.channel import Channel
from mpc.net.expect import Expect
from mpc.prg import PRG

NONCE = 32
DIGEST = 32


def commit(data: bytes, nonce: bytes) -> bytes:
    """SHA-256 commitment to `data` with a 32-byte random `nonce`."""
    return hashlib.sha256(data + nonce).digest()


class MacChecker:
    """The log of partial openings of one party and the batched check over it."""

    def __init__(self, channel: Channel, party: int, n_parties: int, alpha: np.ndarray,
                 private: PRG) -> None:
        self.channel = channel
        self.party = party
        self.n = n_parties
        self.peers = tuple(p for p in range(n_parties) if p != party)
        self.alpha = alpha  # (2,) this party's share of the MAC key
        self.private = private
        self._values: list[np.ndarray] = []  # (2, m) value shares, flat
        self._macs: list[np.ndarray] = []
        self._opened: list[np.ndarray] = []  # (m,) uint64
        self._transcript = hashlib.sha256(b"sottovoce-spdz2k-transcript")
        self._next_seed: tuple[bytes, bytes] | None = None
        self._peer_commits: dict[int, bytes] | None = None
        self.checks = 0

    @property
    def pending(self) -> int:
        return sum(o.size for o in self._opened)

    # -- recording -------------------------------------------------------------------------
    def record(self, shares: np.ndarray, opened: np.ndarray) -> None:
        """Log an opened authenticated value: shares (4, *shape), opened (*shape)."""
        flat = shares.reshape(4, -1)
        self._values.append(flat[0:2])
        self._macs.append(flat[2:4])
        self._opened.append(np.ascontiguousarray(opened, dtype=np.uint64).reshape(-1))
        self._transcript.update(self._opened[-1].tobytes())

    def broadcast_seen(self, value: np.ndarray) -> None:
        """Log a broadcast public value (an input's masked value) for the consistency hash."""
        self._transcript.update(b"B" + np.ascontiguousarray(value, dtype=np.uint64).tobytes())

    # -- messaging helpers -----------------------------------------------------------------
    def _exchange(self, data: bytes, size: int) -> dict[int, bytes]:
        message = np.frombuffer(data, dtype=np.uint8)
        received = self.channel.exchange(dict.fromkeys(self.peers, message),
                                         expect=Expect.uint8(size), what="in the MAC check")
        return {peer: array.tobytes() for peer, array in received.items()}

    def _fresh_seed(self) -> tuple[bytes, bytes]:
        return self.private.random_bytes(32), self.private.random_bytes(NONCE)

    # -- the check -------------------------------------------------------------------------
    def check(self, mask: np.ndarray, step: str) -> None:
        """Check every opening logged since the last check; `mask` is this party's share
        (4,) of a fresh authenticated random value. Raises CheatingDetected on failure."""
        self.checks += 1
        fail = f"MAC check failed after {step}"
        # 1. commitments to the coefficient seed (sent ahead by the previous check)
        if self._next_seed is None:
            self._next_seed = self._fresh_seed()
            seed, nonce = self._next_seed
            self._peer_commits = self._exchange(commit(seed, nonce), DIGEST)
        seed, nonce = self._next_seed
        commits = self._peer_commits
        self._next_seed = self._peer_commits = None
        # 2. open the contributions
        opened = self._exchange(seed + nonce, 32 + NONCE)
        contributions = [b""] * self.n
        contributions[self.party] = seed
        for peer, data in opened.items():
            if commit(data[:32], data[32:]) != commits[peer]:
                raise CheatingDetected(f"{fail}: party {peer} opened a seed other than the one "
                                       "it committed to")
            contributions[peer] = data[:32]
        chi_key = hashlib.sha256(b"".join(contributions)).digest()[:16]
        # 3. combine and open y~ in full
        # chunk by chunk, so the log is never copied whole
        chi_prg = PRG(chi_key)
        y = np.zeros(2, dtype=np.uint64)
        y_share = np.zeros(2, dtype=np.uint64)
        m_share = np.zeros(2, dtype=np.uint64)
        for values, macs, ys in zip(self._values, self._macs, self._opened, strict=True):
            chi = chi_prg.ring_elements((ys.size,))
            y = r128.add(y, r128.dot_public(r128.lift(ys), chi))
            y_share = r128.add(y_share, r128.dot_public(values, chi))
            m_share = r128.add(m_share, r128.dot_public(macs, chi))
        y_share = r128.add(y_share, _shift64(mask[0:2]))
        m_share = r128.add(m_share, _shift64(mask[2:4]))
        received = self.channel.exchange(dict.fromkeys(self.peers, y_share),
                                         expect=Expect.uint64(2), what="in the MAC check")
        z = y_share
        for share in received.values():
            z = r128.add(z, share)
        if z[0] != y[0]:
            raise CheatingDetected(f"{fail}: the combined opening is inconsistent mod 2^64")
        # 4. commit to sigma with the transcript hash
        sigma = r128.sub(m_share, r128.mul(self.alpha, z)).tobytes()
        s_nonce = self.private.random_bytes(NONCE)
        self._transcript.update(z.tobytes())
        transcript = self._transcript.digest()
        got = self._exchange(commit(sigma, s_nonce) + transcript, DIGEST * 2)
        for peer, data in got.items():
            if data[DIGEST:] != transcript:
                raise CheatingDetected(f"{fail}: party {peer} saw different opened or broadcast "
                                       "values")
        # 5. open sigma (with the commitment to the next check's seed)
        self._next_seed = self._fresh_seed()
        next_commit = commit(*self._next_seed)
        final = self._exchange(sigma + s_nonce + next_commit, 16 + NONCE + DIGEST)
        total = np.frombuffer(sigma, dtype=np.uint64)
        self._peer_commits = {}
        for peer, data in final.items():
            if commit(data[:16], data[16:16 + NONCE]) != got[peer][:DIGEST]:
                raise CheatingDetected(f"{fail}: party {peer} opened a MAC share other than the "
                                       "one it committed to")
            total = r128.add(total, np.frombuffer(data[:16], dtype=np.uint64))
            self._peer_commits[peer] = data[16 + NONCE:]
        if total[0] != 0 or total[1] != 0:
            raise CheatingDetected(fail)
        self._values, self._macs, self._opened = [], [], []


def _shift64(x: np.ndarray) -> np.ndarray:
    """x * 2^64 mod 2^128 for a (2,) value: the low limb moves up."""
    return np.array([0, x[0]], dtype=np.uint64)
