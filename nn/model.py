"""A model ready for secure inference: public architecture plus the owner's encoded weights."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from mpc.fixedpoint import FixedPoint
from nn.layers import MODEL_OWNER, Layer
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

    @property
    def num_classes(self) -> int:
        shape = self.input_shape
        for layer in self.layers:
            shape = layer.out_shape(shape)
        return int(np.prod(shape))

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


@dataclass
class InferenceOutput:
    labels: np.ndarray | None
    logits: np.ndarray | None
    layers: list[LayerStats]
    intermediate: list[np.ndarray] | None = None  # audit mode only


def secure_forward(protocol: Protocol, model: SecureModel, features: np.ndarray | None,
                   batch: int, reveal_logits: bool = False, audit: bool = False
                   ) -> InferenceOutput:
    """The program every party runs: share inputs, evaluate layers, reveal the label to
    the client only. `features` are ring-encoded, present at the client only; weights are
    present in `model` at the model owner only.

    `audit` opens every layer's output to the client to measure drift from the emulator:
    it reveals intermediate activations, so it is for development on one's own data only.
    """
    f = model.fixed.frac_bits
    channel = getattr(protocol, "channel", None)
    material = getattr(protocol, "material", None)
    stats: list[LayerStats] = []
    intermediate: list[np.ndarray] | None = [] if audit else None

    def measure(name, fn):
        t0 = time.perf_counter()
        before = channel.traffic.copy() if channel else None
        used = material.used if material is not None else 0
        out = fn()
        after = channel.traffic - before if channel else None
        stats.append(LayerStats(name, time.perf_counter() - t0,
                                after.rounds if after else 0, after.bytes_sent if after else 0,
                                (material.used if material is not None else 0) - used))
        return out

    shape = (batch, *model.input_shape)
    x = measure("input", lambda: SecretTensor.input(protocol, features, CLIENT, shape))
    params = measure("weights", lambda: [layer.share_params(protocol, MODEL_OWNER)
                                         for layer in model.layers])
    for layer, p in zip(model.layers, params, strict=True):
        x = measure(layer.name, lambda layer=layer, p=p, x=x: layer.forward(x, p, f))
        if audit:
            intermediate.append(x.reveal(CLIENT))
    logits = x.reshape(batch, -1)
    label = measure("argmax", lambda: argmax(logits))
    labels = measure("reveal", lambda: label.reveal(CLIENT))
    revealed_logits = logits.reveal(CLIENT) if reveal_logits else None
    return InferenceOutput(labels, revealed_logits, stats, intermediate)
