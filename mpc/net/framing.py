"""Wire format of one message: a fixed header that says what the payload is, then the bytes.

Header (little-endian): magic b"SV", version, dtype code, ndim, 3 reserved zero bytes,
sequence number (u64), payload length (u64), then ndim u64 dimensions. The receiver checks
every field before it allocates anything, so a hostile or corrupt frame is a ProtocolError,
never an unrelated crash or a huge allocation.

A keep-alive is a bare header with dtype code 0 and every other field zero: it says "this
endpoint is alive" and nothing else. The TCP transport consumes it (it never reaches protocol
code, takes no sequence number and is not counted as a message or round).

An abort is a header with dtype code 255, ndim and sequence zero, and at most
`MAX_ABORT_BYTES` of UTF-8 text: the last frame an endpoint sends on a link when it stops
with an error, saying why (`mpc.net.channel.Channel.abort`).
"""

from __future__ import annotations

import struct

import numpy as np

from mpc.errors import ProtocolError

MAGIC = b"SV"
VERSION = 1
MAX_NDIM = 8
DEFAULT_MAX_PAYLOAD = 1 << 32  # 4 GiB: far above any layer of the reference CNN

_MAX_EXTENT = 1 << 62

_HEADER = struct.Struct("<2sBBB3xQQ")
HEADER_SIZE = _HEADER.size

DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.uint64),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int64),
    4: np.dtype(np.float64),
    5: np.dtype(np.float32),
    6: np.dtype(np.uint32),
    7: np.dtype(np.int32),
}
_CODES = {dtype: code for code, dtype in DTYPES.items()}
KEEPALIVE_CODE = 0
ABORT_CODE = 255
MAX_ABORT_BYTES = 2048


def encode_header(array: np.ndarray, sequence: int) -> bytes:
    """The header bytes for `array` sent as message number `sequence` on its link."""
    code = _CODES.get(array.dtype)
    if code is None:
        raise ProtocolError(f"dtype {array.dtype} cannot be sent; allowed: "
                            f"{sorted(str(d) for d in _CODES)}")
    if array.ndim > MAX_NDIM:
        raise ProtocolError(f"array of {array.ndim} dimensions; at most {MAX_NDIM} can be sent")
    head = _HEADER.pack(MAGIC, VERSION, code, array.ndim, sequence, array.nbytes)
    return head + struct.pack(f"<{array.ndim}Q", *array.shape)


def keepalive() -> bytes:
    """The keep-alive frame (a header alone)."""
    return _HEADER.pack(MAGIC, VERSION, KEEPALIVE_CODE, 0, 0, 0)


def is_keepalive(head: bytes) -> bool:
    """True if `head` is a keep-alive header; a ProtocolError if it has the keep-alive code
    but other fields set (anything else is left to `decode_header`)."""
    if len(head) != HEADER_SIZE:
        return False
    magic, version, code, ndim, sequence, length = _HEADER.unpack(head)
    if code != KEEPALIVE_CODE or magic != MAGIC or version != VERSION:
        return False
    if ndim or sequence or length:
        raise ProtocolError(f"malformed keep-alive frame (ndim {ndim}, sequence {sequence}, "
                            f"length {length}; all must be 0)")
    return True


def abort(reason: str) -> bytes:
    """The abort frame carrying `reason` (cut to `MAX_ABORT_BYTES` of UTF-8)."""
    text = reason.encode("utf-8")[:MAX_ABORT_BYTES].decode("utf-8", "ignore").encode()
    return _HEADER.pack(MAGIC, VERSION, ABORT_CODE, 0, 0, len(text)) + text


def abort_length(head: bytes) -> int | None:
    """The text length if `head` is an abort header, else None; a ProtocolError if it has
    the abort code but breaks its rules."""
    if len(head) != HEADER_SIZE:
        return None
    magic, version, code, ndim, sequence, length = _HEADER.unpack(head)
    if code != ABORT_CODE or magic != MAGIC or version != VERSION:
        return None
    if ndim or sequence or length > MAX_ABORT_BYTES:
        raise ProtocolError(f"malformed abort frame (ndim {ndim}, sequence {sequence}, "
                            f"length {length}; at most {MAX_ABORT_BYTES} bytes of text)")
    return length


def abort_reason(raw: bytes) -> str:
    """The text of an abort frame, made printable (a peer's bytes)."""
    text = raw.decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)


def encode(array: np.ndarray, sequence: int) -> bytes:
    """One whole frame (header, shape, payload) as bytes."""
    array = np.asarray(array, order="C")  # keeps 0-d arrays 0-d
    return encode_header(array, sequence) + array.tobytes()


def decode_header(head: bytes, expected_sequence: int,
                  max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple[np.dtype, int, int]:
    """Check a fixed header; return (dtype, ndim, payload length)."""
    if len(head) != HEADER_SIZE:
        raise ProtocolError(f"frame header of {len(head)} bytes, expected {HEADER_SIZE}")
    magic, version, code, ndim, sequence, length = _HEADER.unpack(head)
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {magic!r}; the peer is not speaking sottovoce")
    if version != VERSION:
        raise ProtocolError(f"frame version {version}, this party speaks version {VERSION}")
    if code not in DTYPES:
        raise ProtocolError(f"unknown dtype code {code} in frame header")
    if ndim > MAX_NDIM:
        raise ProtocolError(f"frame declares {ndim} dimensions; at most {MAX_NDIM}")
    if sequence != expected_sequence:
        raise ProtocolError(f"frame sequence {sequence}, expected {expected_sequence}: "
                            "messages were lost, repeated or reordered")
    if length > max_payload:
        raise ProtocolError(f"frame declares {length} payload bytes; the limit is {max_payload}")
    return DTYPES[code], ndim, length


def decode_shape(raw: bytes, ndim: int, dtype: np.dtype, length: int) -> tuple[int, ...]:
    """Check the shape block against the declared payload length."""
    if len(raw) != 8 * ndim:
        raise ProtocolError(f"frame shape block of {len(raw)} bytes, expected {8 * ndim}")
    shape = struct.unpack(f"<{ndim}Q", raw)
    count = 1
    extent = 1  # the size with zero dimensions counted as 1: numpy refuses shapes past 2^63
    for dim in shape:
        count *= dim
        extent *= max(dim, 1)
    if extent * dtype.itemsize > _MAX_EXTENT:
        raise ProtocolError(f"frame shape {shape} is too large to be an array")
    if count * dtype.itemsize != length:
        raise ProtocolError(f"frame shape {shape} of {dtype} needs {count * dtype.itemsize} "
                            f"bytes but the header declares {length}")
    return tuple(int(d) for d in shape)


def decode(frame: bytes, expected_sequence: int,
           max_payload: int = DEFAULT_MAX_PAYLOAD) -> np.ndarray:
    """Parse one whole frame produced by `encode`."""
    dtype, ndim, length = decode_header(frame[:HEADER_SIZE], expected_sequence, max_payload)
    shape_end = HEADER_SIZE + 8 * ndim
    shape = decode_shape(frame[HEADER_SIZE:shape_end], ndim, dtype, length)
    payload = frame[shape_end:]
    if len(payload) != length:
        raise ProtocolError(f"frame payload of {len(payload)} bytes, header declares {length}")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)
