"""Documented resource limits, in one place (see SECURITY.md, "Limits").

Each limit is enforced where the input enters and checked by a test:

* `MAX_BATCH` clips per `nn.inference.classify` call (tests/e2e/test_security_claims.py::
  test_a_batch_above_the_maximum_is_refused). Memory grows about linearly with the batch:
  measured peak resident memory of the reference CNN with all parties as threads of one
  process was 0.46 GB at batch 1 and 0.83 GB at batch 8 (replicated; additive alike), so
  about 55 MB per clip for three parties plus a fixed ~0.4 GB, about 3.9 GB at `MAX_BATCH`.
  replicated_mac holds 128-bit values and MACs and a log of AND gates: 1.28 GB at batch 1 and
  2.61 GB at batch 8, about 190 MB per clip plus ~1.1 GB, so ~13 GB at `MAX_BATCH`; its
  gate log is verified every `protocols.blocks.binary_rep3.VERIFY_EVERY` words, which bounds that
  part.
* `MAX_FRAME_PAYLOAD` bytes in one message on the wire (`mpc.net.framing`): a header that
  declares more is refused before anything is allocated (tests/mpc/test_framing.py::
  test_declared_payload_above_limit_is_refused_before_allocation, tests/e2e/test_faults.py::
  test_garbage_on_the_wire_is_a_protocol_error).
* clip length and sample rate: `audio.DEFAULT_MAX_DURATION` (60 s), `audio.MIN_SAMPLE_RATE`
  and `audio.MAX_SAMPLE_RATE` (4 kHz..384 kHz), checked from the file header before decoding
  (tests/audio/test_audio.py::test_too_long_and_too_short, tests/e2e/test_fuzz_inputs.py::
  test_a_two_hour_clip_is_refused_from_its_header, test_sample_rates_outside_the_supported_
  range_are_refused). They live in `audio` because `mpc` and `audio` do not import each other.
"""

from __future__ import annotations

from mpc.net.framing import DEFAULT_MAX_PAYLOAD

MAX_BATCH = 64
MAX_FRAME_PAYLOAD = DEFAULT_MAX_PAYLOAD
