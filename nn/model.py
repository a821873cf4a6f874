"""A model ready for secure inference: public architecture plus the owner's encoded weights."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from mpc.fixedpoint import FixedPoint
from nn import graph
from nn.layers import MODEL_OWNER, Layer, comparison_bits
from protocols.base import Protocol
from protocols.functions import argmax
from protocols.tensor import SecretTensor

CLIENT = 0


@dataclass
class SecureModel:
    """Layers in order, the per-example input shape, and the fixed-point format.

    `torch_index[i]` names the torch module whose output layer i reproduces, and
    `scale[i]` the factor by which it is larger (pooling sums whose 1/k is folded forward).
    """

    layers: list[Layer]
    input_shape: tuple[int, ...]
    fixed: FixedPoint = field(default_factory=FixedPoint)
    labels: tuple[str, ...] = ()
    torch_index: list[int] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    #: What the original model ended with, after the logits: "logits" (nothing), or a
    #: "softmax" / "log_softmax" the importer dropped (it keeps the argmax); the client
    #: applies it to revealed logits in the clear (`Classification.probabilities`).
    output: str = "logits"

    @property
    def num_classes(self) -> int:
        """Logits per example, from the layers' shapes alone (no weights needed)."""
        return int(np.prod(graph.shapes(self.layers, self.input_shape)[-1]))

    def parameter_slots(self) -> list[tuple[int, str, tuple[int, ...]]]:
        """(layer index, "weight" or "bias", shape) of every private parameter, in the order
        the model owner enters them and a model file stores them: layer by layer, weight
        before bias."""
        return [(k, key, tuple(shape)) for k, layer in enumerate(self.layers)
                for key in ("weight", "bias") if (shape := getattr(layer, f"{key}_shape", None))]

    def public(self) -> SecureModel:
        """The architecture without the weights: what every party other than Bob holds."""
        return replace(self, layers=[layer.public() for layer in self.layers])


@dataclass
class LayerStats:
    """What one layer cost this party."""

    name: str
    seconds: float
    rounds: int
    bytes_sent: int
    items: int  # preprocessing items consumed
    wait_seconds: float = 0.0  # of `seconds`, spent blocked on receiving from peers


@dataclass
class InferenceOutput:
    """What one party's program returns: labels and logits where opened to it (else None),
    its per-layer costs, and in audit mode every layer's opened output."""

    labels: np.ndarray | None
    logits: np.ndarray | None
    layers: list[LayerStats]
    intermediate: list[np.ndarray] | None = None  # audit mode only


class _Meter:
    """Per-layer cost seen by this party: time, rounds, bytes, preprocessing items."""

    def __init__(self, protocol: Protocol) -> None:
        self.channel = protocol.channel  # None on the emulator: no traffic to count
        self.material = protocol.material
        self.stats: list[LayerStats] = []

    def _used(self) -> int:
        return self.material.used if self.material is not None else 0

    def __call__(self, name: str, fn):
        t0 = time.perf_counter()
        before = self.channel.traffic.copy() if self.channel else None
        used = self._used()
        out = fn()
        after = self.channel.traffic - before if self.channel else None
        self.stats.append(LayerStats(name, time.perf_counter() - t0,
                                     after.rounds if after else 0,
                                     after.bytes_sent if after else 0, self._used() - used,
                                     after.wait_seconds if after else 0.0))
        return out


@dataclass
class PrivateInference:
    """The program every party runs, in two phases.

    `setup` shares the model owner's weights: it does not depend on the client's clip, so it
    runs once per model, before the client's features exist (reported apart as "setup").
    Calling the program then shares the features, evaluates the layers and reveals the
    label to the client only. `features` (ring-encoded) are present at the client only;
    weights are present in `model` at the model owner only.

    `audit` opens every layer's output to the client to measure drift from the emulator:
    it reveals intermediate activations, so it is for development on one's own data only.
    """

    model: SecureModel
    features: np.ndarray | None
    batch: int
    reveal_logits: bool = False
    audit: bool = False
    _params: list | None = field(default=None, repr=False)
    _setup_stats: list[LayerStats] = field(default_factory=list, repr=False)

    def setup(self, protocol: Protocol) -> None:
        """Share the model owner's weights; once per model, before the features exist."""
        meter = _Meter(protocol)
        self._params = meter("weights", lambda: [
            layer.share_params(protocol, MODEL_OWNER) for layer in self.model.layers])
        self._setup_stats = meter.stats

    def __call__(self, protocol: Protocol) -> InferenceOutput:
        """The online phase: share the features, run the layers, open the label to the client."""
        if self._params is None:
            raise RuntimeError("PrivateInference.setup must run before the online phase")
        model, batch = self.model, self.batch
        f = model.fixed.frac_bits
        meter = _Meter(protocol)
        intermediate: list[np.ndarray] | None = [] if self.audit else None
        shape = (batch, *model.input_shape)
        x = meter("input", lambda: SecretTensor.input(protocol, self.features, CLIENT, shape))

        def step(k: int, layer: Layer, xs: list[SecretTensor]) -> SecretTensor:
            out = meter(layer.name, lambda: layer.call(xs, self._params[k], f))
            if self.audit:
                intermediate.append(out.reveal(CLIENT))
            return out

        logits = graph.evaluate(model.layers, x, step).reshape(batch, -1)
        label = meter("argmax", lambda: argmax(logits, comparison_bits(f)))
        labels = meter("reveal", lambda: label.reveal(CLIENT))
        revealed_logits = logits.reveal(CLIENT) if self.reveal_logits else None
        return InferenceOutput(labels, revealed_logits, self._setup_stats + meter.stats,
                               intermediate)


def secure_forward(protocol: Protocol, model: SecureModel, features: np.ndarray | None,
                   batch: int, reveal_logits: bool = False, audit: bool = False
                   ) -> InferenceOutput:
    """Both phases of `PrivateInference` in one call (the emulator's path)."""
    program = PrivateInference(model, features, batch, reveal_logits, audit)
    program.setup(protocol)
    return program(protocol)
