"""AES-128 in counter mode as the one source of secret-dependent randomness.

Every random value that touches a secret (shares, masks, preprocessing) comes from a `PRG`.
Two parties holding the same key draw the same stream, which is how correlated randomness
(zero-sharings, seed-compressed preprocessing) costs no communication. numpy's generators are
for tests and plaintext training only.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_BYTES = 16
_CHUNK = 1 << 20  # keystream bytes per OpenSSL call


class PRG:
    """A stream of pseudorandom bytes: AES-128-CTR keystream under `key`, counter from 0.

    The stream is consumed in order, so two holders of the key stay in step only if they
    draw the same sizes in the same order; `derive` gives independent streams per purpose.
    """

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            raise ValueError(f"PRG key must be {KEY_BYTES} bytes, got {len(key)!r}")
        self._key = bytes(key)
        cipher = Cipher(algorithms.AES(self._key), modes.CTR(b"\x00" * 16))
        self._encryptor = cipher.encryptor()
        self.bytes_drawn = 0
        self._zero = bytes(_CHUNK)

    @classmethod
    def fresh(cls) -> PRG:
        """A PRG under a key from the operating system's randomness."""
        return cls(os.urandom(KEY_BYTES))

    def derive(self, label: str | bytes) -> PRG:
        """An independent PRG for `label`, computed from this key without touching its stream."""
        tag = label.encode() if isinstance(label, str) else label
        return PRG(hashlib.sha256(b"sottovoce-prg-derive" + self._key + tag).digest()[:KEY_BYTES])

    def _keystream_array(self, n: int) -> np.ndarray:
        """The next `n` keystream bytes as a uint8 array, written in place by OpenSSL.

        update_into needs one block of slack past what it writes, so the buffer carries 16
        spare bytes; chunks keep the zero input small and warm in cache.
        """
        self.bytes_drawn += n
        buffer = np.empty(n + 16, dtype=np.uint8)
        view = memoryview(buffer)
        for start in range(0, n, _CHUNK):
            size = min(_CHUNK, n - start)
            zero = memoryview(self._zero)[:size]  # a slice, not a fresh zero buffer per call
            self._encryptor.update_into(zero, view[start:start + size + 16])
        return buffer[:n]

    def random_bytes(self, n: int) -> bytes:
        """The next `n` bytes of the keystream."""
        if n < 0:
            raise ValueError("cannot draw a negative number of bytes")
        self.bytes_drawn += n
        return self._encryptor.update(bytes(n))

    def ring_elements(self, shape: int | tuple[int, ...]) -> np.ndarray:
        """Uniform elements of Z_2^64 as a uint64 array of `shape`."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = int(np.prod(shape, dtype=np.int64))
        return self._keystream_array(8 * count).view(np.uint64).reshape(shape)

    def bits(self, n: int) -> np.ndarray:
        """`n` uniform bits as a uint8 array of zeros and ones."""
        data = self._keystream_array((n + 7) // 8)
        return np.unpackbits(data, bitorder="little")[:n]

    def below(self, bound: int, shape: int | tuple[int, ...]) -> np.ndarray:
        """Uniform integers in [0, bound) for a power-of-two `bound` <= 2^64, as uint64."""
        if bound <= 0 or bound & (bound - 1) or bound > 1 << 64:
            raise ValueError("bound must be a power of two no larger than 2^64")
        values = self.ring_elements(shape)
        if bound == 1 << 64:
            return values
        return values & np.uint64(bound - 1)


def shared_key(my_contribution: bytes, peer_contribution: bytes, my_id: int, peer_id: int) -> bytes:
    """The key two parties agree on from one random contribution each, in id order."""
    low, high = (my_contribution, peer_contribution) if my_id < peer_id else (
        peer_contribution, my_contribution)
    return hashlib.sha256(b"sottovoce-pair-key" + low + high).digest()[:KEY_BYTES]
