"""What the compute parties run for a service: publishing a model, and one batch of requests.

Both are ordinary programs over `SecretTensor`s (planned on the scheme's planner, then run by
every party). Endpoint `base + k` is the k-th client of the batch (or the model owner).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from experiments.deploy import layer_parameters, parameter_count
from nn import graph
from nn.model import SecureModel
from protocols.base import Protocol
from protocols.functions import argmax
from protocols.tensor import SecretTensor


@dataclass
class Publish:
    """The model owner enters every weight (in parameter-slot order); the parties then open a
    zero computed from them to the owner, which makes every active scheme check the input
    before anything is stored, and tells the owner that its weights arrived intact. Returns
    this party's shares."""

    size: int
    owner: int

    def __call__(self, protocol: Protocol) -> np.ndarray:
        flat = SecretTensor.input_external(protocol, self.owner, (self.size,))
        (flat[:1] - flat[:1]).reveal_external(self.owner)
        return flat.share


@dataclass
class Batch:
    """Each client k enters its clips, the model runs on all of them at once, and client k
    gets the labels of its own clips only. `weights` are this party's stored shares (None
    on the planner, which needs only their shape)."""

    model: SecureModel
    sizes: list[int]
    base: int
    weights: np.ndarray | None = field(default=None, repr=False)
    _params: list = field(default_factory=list, repr=False)

    def setup(self, protocol: Protocol) -> None:
        share = self.weights
        if share is None or share.shape[0] != protocol.components:
            share = np.zeros((protocol.components, parameter_count(self.model)),
                             dtype=np.uint64)
        self._params = layer_parameters(self.model, SecretTensor(protocol, share))

    def __call__(self, protocol: Protocol) -> None:
        f = self.model.fixed.frac_bits
        shape = self.model.input_shape
        xs = [SecretTensor.input_external(protocol, self.base + k, (n, *shape))
              for k, n in enumerate(self.sizes)]
        x = SecretTensor.concatenate(xs) if len(xs) > 1 else xs[0]
        x = graph.evaluate(self.model.layers, x,
                           lambda k, layer, ins: layer.call(ins, self._params[k], f))
        labels = argmax(x.reshape(sum(self.sizes), -1))
        start = 0
        for k, n in enumerate(self.sizes):
            labels[start:start + n].reveal_external(self.base + k)
            start += n
