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
  part. In a deployment the client declares its batch: compute parties and the dealer refuse
  one outside 1..`MAX_BATCH` (or not an integer) with `checked_batch`, before planning
  (tests/experiments/test_deploy_limits.py::test_a_compute_party_refuses_a_batch_outside_the_
  limit, ::test_the_dealer_refuses_a_batch_outside_the_limit).
* model descriptions, from the model owner (`nn.describe.from_description`; `nn.footprint`
  checks every field while walking the shapes, on Python integers, before any array exists):
  at most `MAX_LAYERS` layers, `MAX_PARAMETERS` weights and biases, `MAX_ACTIVATION` elements
  in the largest tensor one example makes (a layer's output, a convolution's padded or
  unfolded input, a pooling's windows), `MAX_MULTIPLY_ADDS` and `MAX_COMPARISONS` (ReLU,
  max-pooling, the final argmax) per example, and `MAX_NAME_LENGTH` characters in a layer's
  name or a label (tests/nn/test_describe.py::test_a_field_out_of_range_is_refused_naming_
  layer_and_field, ::test_totals_above_a_limit_are_refused, ::test_a_huge_description_is_
  refused_without_allocating, ::test_reference_figures_and_margins).
  Measured with `nn.describe.checked` on the reference CNN of experiments/models.py (the only
  model there; the bundled model is it with 6 classes): 10 layers, 605,990 parameters
  (605,730 at 2 classes, plus 65 a class), largest tensor 473,200 elements (the second
  convolution's unfolded input, 8x5x5 by 14x169), 10,664,896 multiply-adds, 137,573
  comparisons. The limits leave 6.4x, 13.8x, 4.4x, 12.6x and 7.6x over those. Memory follows
  the largest tensor, so it has the smallest margin: at the ~55 MB per clip measured above, a
  model at `MAX_ACTIVATION` needs ~245 MB per clip (replicated), ~16 GB at `MAX_BATCH`, the
  order of replicated_mac's reference figure; the limits multiply, so the batch limit alone
  does not bound memory for a larger model. Parameters are shared once per model (64 MiB per
  uint64 copy at `MAX_PARAMETERS`); multiply-adds are local work and comparisons the
  interactive work of every clip; layers bound the rounds.
* bytes a deployment's roles let each peer have buffered (`mpc.net.channel.Channel.limit`,
  set by `experiments.deploy` from what each step lets that peer send): a control document
  is at most `experiments.deploy.MAX_DOCUMENT_BYTES`, a value from or to the client or the
  model owner `external_value_bytes` of its elements once the model and the batch are known,
  and before that the same for the largest model and batch the limits above allow. A frame
  past it is refused from its header, before its payload is allocated
  (tests/mpc/test_tcp.py::test_a_frame_past_the_peer_limit_is_refused_from_its_header,
  tests/experiments/test_deploy_limits.py::test_a_client_sending_more_than_its_batch_is_
  refused). Compute parties and the dealer exchange what their scheme's plan makes them
  (measured on the reference CNN at batch 1: at most 25 MB in one frame between compute
  parties, replicated_mac; 423 MB from the spdz2k dealer), so between them the bound is
  `MAX_FRAME_PAYLOAD` buffered per peer, not per frame.
* `MAX_FRAME_PAYLOAD` bytes in one message on the wire (`mpc.net.framing`): a header that
  declares more is refused before anything is allocated (tests/mpc/test_framing.py::
  test_declared_payload_above_limit_is_refused_before_allocation, tests/e2e/test_faults.py::
  test_garbage_on_the_wire_is_a_protocol_error).
* clip length and sample rate: `audio.DEFAULT_MAX_DURATION` (60 s), `audio.MIN_SAMPLE_RATE`
  and `audio.MAX_SAMPLE_RATE` (4 kHz..384 kHz), checked from the file header before decoding
  (tests/audio/test_loading.py::test_too_long_and_too_short, tests/e2e/test_fuzz_inputs.py::
  test_a_two_hour_clip_is_refused_from_its_header, test_sample_rates_outside_the_supported_
  range_are_refused). They live in `audio` (`audio.loading`) because `mpc` does not import `audio`.
"""

from __future__ import annotations

from mpc.errors import ProtocolError
from mpc.net.framing import DEFAULT_MAX_PAYLOAD

MAX_BATCH = 64
MAX_FRAME_PAYLOAD = DEFAULT_MAX_PAYLOAD

MAX_LAYERS = 64
MAX_PARAMETERS = 1 << 23
MAX_ACTIVATION = 1 << 21
MAX_MULTIPLY_ADDS = 1 << 27
MAX_COMPARISONS = 1 << 20
MAX_NAME_LENGTH = 128
#: Bytes of seeds, hashes and headroom a role allows beyond two words per element while a
#: value crosses between the compute parties and an outside endpoint (`external_value_bytes`).
EXTERNAL_OVERHEAD = 1 << 12


def external_value_bytes(elements: int) -> int:
    """The payload one peer may have buffered at a role while a value of `elements` ring
    elements enters from or leaves to an outside endpoint: two 64-bit words an element (the
    128-bit schemes' values and masks), plus `EXTERNAL_OVERHEAD`."""
    return 16 * elements + EXTERNAL_OVERHEAD


def checked_batch(request: object, who: str) -> int:
    """The batch a client declared in its request, if an integer in 1..`MAX_BATCH`: a role
    that plans from it must refuse anything else before sizing a single array."""
    value = request.get("batch") if isinstance(request, dict) else None
    if value is None:
        raise ProtocolError(f"{who} sent a request without a batch: {str(request)[:60]}")
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_BATCH:
        raise ProtocolError(f"{who} asked for a batch of {value!r} clips; a batch is an "
                            f"integer in 1..{MAX_BATCH} (mpc.limits.MAX_BATCH)")
    return value
