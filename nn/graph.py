"""A model's layers as a graph: which outputs each layer reads, and one way to walk them.

Every evaluator (the parties' program, the deployment's, the float reference, the shape
walk) goes through `evaluate`, so a residual connection or a branch means the same thing
everywhere. Values no later layer reads are dropped as soon as they are used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from nn.layers import Layer

T = TypeVar("T")
MODEL_INPUT = -1


def inputs_of(layers: Sequence[Layer]) -> list[tuple[int, ...]]:
    """Each layer's inputs, with the default (the previous layer) made explicit."""
    return [layer.inputs or (k - 1,) for k, layer in enumerate(layers)]


def is_chain(layers: Sequence[Layer]) -> bool:
    """True if every layer reads only the previous one's output."""
    return all(ins == (k - 1,) for k, ins in enumerate(inputs_of(layers)))


def evaluate(layers: Sequence[Layer], x: T, apply: Callable[[int, Layer, list[T]], T]) -> T:
    """Run `apply(k, layer, its input values)` for every layer in order, from the model's
    input `x`; the last layer's value."""
    sources = inputs_of(layers)
    last_read: dict[int, int] = {}
    for k, ins in enumerate(sources):
        for i in ins:
            last_read[i] = k
    values: dict[int, T] = {MODEL_INPUT: x}
    for k, layer in enumerate(layers):
        values[k] = apply(k, layer, [values[i] for i in sources[k]])
        for i in set(sources[k]):
            if last_read[i] == k:
                del values[i]
    return values[len(layers) - 1]


def shapes(layers: Sequence[Layer], input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every layer's per-example output shape."""
    out: list[tuple[int, ...]] = []

    def record(k: int, layer: Layer, ins: list[tuple[int, ...]]) -> tuple[int, ...]:
        out.append(tuple(layer.out_shape_of(ins)))
        return out[-1]

    evaluate(layers, tuple(input_shape), record)
    return out
