"""A torch module as a list of operations, by torch.fx: what the importer converts.

`symbolic_trace` records every call in `forward` (modules, functions such as `F.relu` or
`torch.cat`, methods such as `x.view`), so a custom `forward`, a residual `x + f(x)` or a
branch is seen as written, never replaced by the module's children in order. Each op keeps
its torch output shape (from one run on a sample input), which is how `view`, `reshape`
and `flatten` are read whatever arguments they were given. Ops that make no tensor
(`x.size(0)`, `x.shape[1]`) only feed such shape arguments and are left out.

`outputs` runs the traced graph on inputs and keeps every op's value, for the importer's
per-layer comparison with the secure emulator.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from nn.errors import ModelImportError

MODEL_INPUT = -1
SAMPLE_BATCH = 2  # a batch of 2 tells an op that keeps the batch axis from one that mixes it


@dataclass
class Op:
    """One tensor-valued call of the traced forward pass."""

    index: int
    where: str  # for errors: what it is, its name, and its source line
    target: Any  # the leaf module, the function, or the method's name
    kind: str  # "module", "function" or "method"
    inputs: tuple[int, ...]  # indices of the ops whose tensors it reads (-1: model input)
    args: tuple = ()  # the call's arguments, tensors replaced by None
    kwargs: dict = field(default_factory=dict)
    shape: tuple[int, ...] = ()  # torch output shape, batch axis included
    node: str = ""  # the fx node's name, to find its value when the graph runs

    @property
    def name(self) -> str:
        """The function's or method's name, or the module's class name."""
        if self.kind == "module":
            return type(self.target).__name__
        return self.target if isinstance(self.target, str) else getattr(
            self.target, "__name__", str(self.target))


@dataclass
class Traced:
    """The traced graph and its ops; `output` is the op whose value the model returns."""

    graph_module: Any
    ops: list[Op]
    output: int
    readers: dict[int, int]  # op index (or -1) -> how many ops read its tensor
    input_shape: tuple[int, ...] = ()  # of the sample the shapes come from, batch first
    batch: int = SAMPLE_BATCH


_SHAPE_QUERIES = {"size", "dim", "getitem", "getattr", "numel", "mul", "floordiv"}


def _name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _user_line(stack: str | None) -> str:
    """`file:line` of the innermost frame outside torch in an fx stack trace."""
    if not stack:
        return ""
    lines = [ln.strip() for ln in stack.splitlines() if ln.strip().startswith("File ")]
    for line in reversed(lines):
        if "site-packages/torch" not in line and "/torch/" not in line:
            parts = line.split('"')
            where = Path(parts[1]).name if len(parts) > 2 else "?"
            number = line.split("line ")[-1].split(",")[0]
            return f" ({where}:{number})"
    return ""


def _failure_line(exc: BaseException) -> str:
    """`file:line` of the innermost frame outside torch and this project in a traceback."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        name = frame.filename
        if "/torch/" not in name and "/nn/tracing.py" not in name:
            return f" at {Path(name).name}:{frame.lineno} ({(frame.line or '').strip()})"
    return ""


def trace(module: Any, input_shape: tuple[int, ...]) -> Traced:
    """Trace `module` for inputs of `input_shape` per example; a `ModelImportError` names
    the module and the line when torch.fx cannot follow `forward`."""
    import torch
    from torch import fx

    label = type(module).__name__
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(module)
    except Exception as exc:  # torch.fx raises TraceError, TypeError, ... for what it cannot follow
        raise ModelImportError(
            f"{label}: torch.fx cannot trace its forward{_failure_line(exc)}: {exc}. "
            "Make forward a fixed sequence of tensor operations: no `if` or loop on tensor "
            "values, no tensor shape used as a Python number except in view/reshape "
            "arguments, no data-dependent indexing") from None
    graph_module = fx.GraphModule(module, graph)
    sample = torch.zeros((SAMPLE_BATCH, *input_shape))
    _propagate_shapes(graph_module, sample, label, tuple(input_shape))
    ops: list[Op] = []
    index_of: dict[Any, int] = {}
    output = MODEL_INPUT
    for node in graph.nodes:
        if node.op == "placeholder":
            if index_of:
                raise ModelImportError(f"{label}: forward takes more than one input "
                                       f"({node.name}); the model's input is one tensor")
            index_of[node] = MODEL_INPUT
            continue
        if node.op == "output":
            result = node.args[0]
            if result not in index_of:
                raise ModelImportError(f"{label}: forward must return one tensor, got "
                                       f"{type(result).__name__}")
            output = index_of[result]
            continue
        meta = node.meta.get("tensor_meta")
        if node.op == "get_attr":
            raise ModelImportError(f"{label}: forward reads the tensor {node.target!r} "
                                   f"directly{_user_line(node.stack_trace)}; use it through "
                                   "a module (nn.Conv2d, nn.Linear, ...)")
        if meta is None or not hasattr(meta, "shape"):
            if node.op == "call_module" or _name(node.target) not in _SHAPE_QUERIES:
                what = type(graph_module.get_submodule(node.target)).__name__ \
                    if node.op == "call_module" else _name(node.target)
                position = f" at position {node.target}" if node.op == "call_module" else ""
                raise ModelImportError(f"unsupported operation {what}{position}"
                                       f"{_user_line(node.stack_trace)}: it does not return "
                                       "one tensor")
            continue  # a size, a shape element: feeds shape arguments only
        inputs = tuple(index_of[a] for a in _tensor_args(node) if a in index_of)
        target = graph_module.get_submodule(node.target) if node.op == "call_module" \
            else node.target
        op = Op(len(ops), "", target, node.op.replace("call_", ""), inputs,
                _constant(node.args), _constant(node.kwargs),
                tuple(int(d) for d in meta.shape), node.name)
        named = f" at position {node.target}" if node.op == "call_module" else ""
        op.where = f"{op.name}{named}{_user_line(node.stack_trace)}"
        index_of[node] = op.index
        ops.append(op)
    readers: dict[int, int] = {}
    for op in ops:
        for i in set(op.inputs):
            readers[i] = readers.get(i, 0) + 1
    readers[output] = readers.get(output, 0) + 1  # the model's output is read by the caller
    return Traced(graph_module, ops, output, readers, tuple(sample.shape))


def _propagate_shapes(graph_module: Any, sample: Any, label: str,
                      input_shape: tuple[int, ...]) -> None:
    """Run the graph once on `sample`, recording each tensor's shape in `node.meta`; the op
    that fails is named with the shapes it was given."""
    import torch
    from torch import fx

    failure: list[str] = []  # fx rewrites the text of what escapes run(): say it outside

    class Shapes(fx.Interpreter):
        def run_node(self, node):
            try:
                result = super().run_node(node)
            except Exception as exc:  # torch raises many types for mismatched shapes
                given = [a.meta["tensor_meta"].shape[1:] for a in _tensor_args(node)
                         if isinstance(a.meta.get("tensor_meta"), SimpleNamespace)]
                what = (f"{type(graph_module.get_submodule(node.target)).__name__} at position "
                        f"{node.target}" if node.op == "call_module" else _name(node.target))
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else \
                    type(exc).__name__
                failure.append(
                    f"{label}: with inputs of shape {input_shape} per example, {what}"
                    f"{_user_line(node.stack_trace)} receives {', '.join(map(str, given))} "
                    f"and fails: {reason}")
                raise
            if isinstance(result, torch.Tensor):
                node.meta["tensor_meta"] = SimpleNamespace(shape=tuple(result.shape))
            return result

    try:
        with torch.no_grad():
            Shapes(graph_module).run(sample)
    except Exception:
        if failure:
            raise ModelImportError(failure[0]) from None
        raise


def _tensor_args(node: Any) -> list[Any]:
    """The nodes among a call's arguments (lists such as torch.cat's included), in order."""
    found: list[Any] = []

    def visit(value: Any) -> None:
        if hasattr(value, "op") and hasattr(value, "meta"):
            found.append(value)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    visit(node.args)
    visit(node.kwargs)
    return found


def _constant(value: Any) -> Any:
    """A call's arguments with every node (a tensor or a traced number) as None: shapes are
    read from the traced shapes instead."""
    if hasattr(value, "op") and hasattr(value, "meta"):
        return None
    if isinstance(value, dict):
        return {k: _constant(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_constant(v) for v in value)
    return value


def outputs(traced: Traced, inputs: np.ndarray) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Every op's torch value (float64, by op index) and the model's output on `inputs`."""
    import torch
    from torch import fx

    values: dict[int, np.ndarray] = {}
    by_name = {op.node: op.index for op in traced.ops}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            if node.name in by_name and isinstance(result, torch.Tensor):
                values[by_name[node.name]] = result.detach().double().numpy()
            return result

    with torch.no_grad():
        out = Recorder(traced.graph_module).run(torch.as_tensor(inputs, dtype=torch.float32))
    return values, out.detach().double().numpy()
