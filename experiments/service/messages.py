"""The documents a client and a server exchange before a request joins a batch.

Each is one frame of JSON (uint8) on the client's TLS link, in order:

* client -> server, frame 0, the hello: {"kind": "classify" | "publish" | "status", "rid"}
  plus, to publish, {"version", "model", "features"};
* server -> client, frame 0: {"version", "model", "features"} (classify), or the status;
  or {"error": text} and the link closes;
* client -> server, frame 1 (classify): {"clips": n, "version": v}, once its features are
  ready, so that a batch never waits for a client's feature extraction.

From then on the link carries the scheme's own messages for that request's batch.
"""

from __future__ import annotations

import json
import ssl

import numpy as np

from mpc.errors import ProtocolError
from mpc.net.tcp import read_frame_blocking, send_frame_blocking

#: The largest document either side accepts (a model description is a few kB).
MAX_DOCUMENT_BYTES = 1 << 20


def send(sock: ssl.SSLSocket, document: dict, sequence: int) -> None:
    data = np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)
    send_frame_blocking(sock, data, sequence)


def receive(sock: ssl.SSLSocket, sequence: int, who: str) -> dict:
    """A JSON object from `who`, or a ProtocolError saying what was wrong with it."""
    frame = read_frame_blocking(sock, sequence, MAX_DOCUMENT_BYTES)
    if frame.dtype != np.uint8 or frame.ndim != 1:
        raise ProtocolError(f"{who} sent {frame.dtype}{list(frame.shape)} where a document "
                            "was expected")
    try:
        document = json.loads(frame.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{who} sent a malformed document: {exc}") from None
    if not isinstance(document, dict):
        raise ProtocolError(f"{who} sent a document that is not an object")
    return document
