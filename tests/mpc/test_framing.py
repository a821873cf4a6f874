"""Frame format: round trips for every dtype and shape; every corruption is a ProtocolError."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpc.errors import ProtocolError
from mpc.net import framing

HEADER = struct.Struct("<2sBBB3xQQ")
CODES = {dtype: code for code, dtype in framing.DTYPES.items()}

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(list(framing.DTYPES.values())))
    return draw(hnp.arrays(dtype, shapes))


@given(array=arrays(), sequence=st.integers(0, 2**64 - 1))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip(array, sequence):
    frame = framing.encode(array, sequence)
    assert len(frame) == framing.HEADER_SIZE + 8 * array.ndim + array.nbytes
    out = framing.decode(frame, sequence)
    assert out.dtype == array.dtype and out.shape == array.shape
    assert out.tobytes() == array.tobytes()  # bitwise, so NaNs compare too


def test_round_trip_non_contiguous_and_zero_size():
    base = np.arange(24, dtype=np.uint64).reshape(4, 6)
    view = base[:, ::2]
    assert np.array_equal(framing.decode(framing.encode(view, 0), 0), view)
    for shape in [(0,), (3, 0), (0, 5, 2), (1, 1, 0, 7)]:
        empty = np.zeros(shape, dtype=np.int32)
        assert framing.decode(framing.encode(empty, 9), 9).shape == shape


@pytest.mark.parametrize("dtype", [np.bool_, np.int16, np.complex128, np.dtype(">u8"), object])
def test_unsupported_dtype_refused_at_encode(dtype):
    with pytest.raises(ProtocolError, match="cannot be sent"):
        framing.encode(np.zeros(3, dtype=dtype), 0)


def test_too_many_dims_refused_at_encode():
    with pytest.raises(ProtocolError, match="dimensions"):
        framing.encode(np.zeros((1,) * (framing.MAX_NDIM + 1), dtype=np.uint8), 0)


def _frame(magic=framing.MAGIC, version=framing.VERSION, code=1, ndim=2, sequence=0,
           length=48, shape=(2, 3), payload=None):
    head = HEADER.pack(magic, version, code, ndim, sequence, length)
    block = struct.pack(f"<{len(shape)}Q", *shape)
    if payload is None:
        payload = bytes(length)
    return head + block + payload


def test_valid_reference_frame():
    assert framing.decode(_frame(), 0).shape == (2, 3)


@pytest.mark.parametrize("frame, message", [
    (_frame(magic=b"XX"), "magic"),
    (_frame(version=0), "version"),
    (_frame(version=2), "version"),
    (_frame(code=0), "dtype code"),
    (_frame(code=99), "dtype code"),
    (_frame(ndim=framing.MAX_NDIM + 1, shape=(1,) * (framing.MAX_NDIM + 1)), "dimensions"),
    (_frame(ndim=255, shape=()), "dimensions"),
    (_frame(sequence=1), "sequence"),
    (_frame(sequence=2**64 - 1), "sequence"),
    (_frame(length=40, payload=bytes(48)), "needs 48 bytes"),
    (_frame(shape=(2, 4)), "needs 64 bytes"),
    (_frame(ndim=3, shape=(2, 3)), "needs 0 bytes"),
    (_frame(payload=bytes(47)), "payload of 47"),
    (_frame(payload=bytes(49)), "payload of 49"),
    (_frame(length=2**40, shape=(2**37, 1), payload=b""), "limit"),
    (_frame(length=0, shape=(2**63, 0)), "too large"),
    (_frame(length=0, shape=(2**31, 2**31, 0)), "too large"),
    (_frame(length=0, ndim=3, shape=(0, 2**62, 2**62)), "too large"),
    (_frame(length=2**64 - 8, shape=(2**61 - 1, 1), payload=b""), "limit"),
    (b"", "header"),
    (_frame()[:framing.HEADER_SIZE - 1], "header"),
    (_frame()[:framing.HEADER_SIZE + 4], "shape block"),
])
def test_corrupt_header_fields(frame, message):
    with pytest.raises(ProtocolError, match=message):
        framing.decode(frame, 0)


def test_declared_payload_above_limit_is_refused_before_allocation():
    head = HEADER.pack(framing.MAGIC, framing.VERSION, 2, 1, 0, 10**6)
    with pytest.raises(ProtocolError, match="limit"):
        framing.decode_header(head, 0, max_payload=1000)


def _valid_frames():
    return arrays().flatmap(lambda a: st.tuples(st.just(framing.encode(a, 3)), st.just(a)))


@given(data=st.data(), frame_and_array=_valid_frames())
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_random_corruption_is_protocol_error_or_decodes(data, frame_and_array):
    frame, _ = frame_and_array
    frame = bytearray(frame)
    n_edits = data.draw(st.integers(1, 6))
    for _ in range(n_edits):
        kind = data.draw(st.sampled_from(["flip", "set", "truncate", "extend", "header"]))
        if kind == "truncate" and frame:
            del frame[data.draw(st.integers(0, len(frame) - 1)):]
        elif kind == "extend":
            frame += data.draw(st.binary(min_size=1, max_size=16))
        elif kind == "header":
            # overwrite one header or shape field with a random value of the same width
            offset = data.draw(st.sampled_from([0, 2, 3, 4, 8, 16, 24, 32, 40]))
            width = {0: 2, 2: 1, 3: 1, 4: 1}.get(offset, 8)
            value = data.draw(st.binary(min_size=width, max_size=width))
            frame[offset:offset + width] = value
        elif frame:
            index = data.draw(st.integers(0, len(frame) - 1))
            if kind == "flip":
                frame[index] ^= 1 << data.draw(st.integers(0, 7))
            else:
                frame[index] = data.draw(st.integers(0, 255))
    try:
        out = framing.decode(bytes(frame), 3)
    except ProtocolError:
        return
    assert isinstance(out, np.ndarray)
    assert out.dtype in framing.DTYPES.values()
    assert out.nbytes == len(frame) - framing.HEADER_SIZE - 8 * out.ndim


@given(blob=st.binary(max_size=200), sequence=st.integers(0, 3))
@settings(max_examples=300)
def test_arbitrary_bytes_never_crash(blob, sequence):
    try:
        framing.decode(blob, sequence)
    except ProtocolError:
        pass


@given(dims=st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=framing.MAX_NDIM),
       code=st.sampled_from(sorted(framing.DTYPES)), length=st.integers(0, 2**64 - 1))
@settings(max_examples=300)
def test_arbitrary_shapes_never_crash(dims, code, length):
    head = HEADER.pack(framing.MAGIC, framing.VERSION, code, len(dims), 0, length)
    frame = head + struct.pack(f"<{len(dims)}Q", *dims)
    if length <= 1 << 16:
        frame += bytes(length)
    try:
        out = framing.decode(frame, 0)
    except ProtocolError:
        return
    assert out.shape == tuple(dims)
