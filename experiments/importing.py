"""`sottovoce import`: turn a PyTorch model into a model file (`nn.modelfile`).

Two sources:

* `--checkpoint FILE.pt`: a checkpoint of `experiments.train` (the reference CNN, its
  labels, feature settings and held-out figures);
* `--module SOURCE:NAME` with `--state-dict FILE.pt`: any module. SOURCE is a Python file
  or a dotted module path, NAME a class or function in it that builds the module with no
  arguments; the state dict is read with `torch.load(weights_only=True)`. Importing SOURCE
  runs it: it is the model owner's own code, on the model owner's machine.

The import runs the model in torch and in the fixed-point emulator on probe inputs and
prints the per-layer report; a model whose fixed-point result departs from torch's is
refused, and nothing is written.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from mpc.errors import ConfigError

# audio, torch and the model-file code load when the command runs, not with the parser


def _builder(source: str) -> Any:
    """The callable NAME of `source` = "FILE.py:NAME" or "package.module:NAME"."""
    where, sep, name = source.rpartition(":")
    if not sep or not where or not name:
        raise ConfigError(f"--module {source!r}: expected FILE.py:NAME or package.module:NAME")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"--module: {path} not found")
        spec = importlib.util.spec_from_file_location(f"_sottovoce_import_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ConfigError(f"--module: cannot import {where}: {exc}") from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise ConfigError(f"--module: {where} has no {name!r}") from None


def _state_dict(path: str) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise ConfigError(f"{path}: not a loadable weights-only state dict ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"],
                                                                         dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: expected a state dict (names -> tensors)")
    return state


def _features(path: str | None) -> Any:
    from audio import FeatureConfig

    if path is None:
        return FeatureConfig()
    try:
        return FeatureConfig.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"--features {path}: not a feature-settings JSON object ({exc})"
                          ) from None


def _shape(text: str | None, config: Any) -> tuple[int, ...]:
    if text is None:
        return tuple(config.shape)
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--input-shape {text!r}: expected integers such as 1,40,350"
                          ) from None
    if shape != tuple(config.shape):
        raise ConfigError(f"--input-shape {shape}: the feature settings make inputs of shape "
                          f"{tuple(config.shape)}; give --features settings that make "
                          f"{shape}")
    return shape


def from_module(source: str, state_dict: str, features: str | None, input_shape: str | None,
                labels: str | None, frac_bits: int | None) -> tuple[Any, Any]:
    """Build, load and import the module of `--module`; the loaded model and the report."""
    import torch

    from experiments.modelfile import LoadedModel
    from nn.importer import from_torch

    config = _features(features)
    shape = _shape(input_shape, config)
    module = _builder(source)()
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"--module {source}: built a {type(module).__name__}, not a "
                          "torch.nn.Module")
    try:
        module.load_state_dict(_state_dict(state_dict), strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{state_dict}: the weights do not fit {source}: {exc}") from None
    names = tuple(labels.split(",")) if labels else ()
    options = {} if frac_bits is None else {"frac_bits": frac_bits}
    secure, report = from_torch(module.eval(), shape, labels=names, **options)
    metadata = {"source": {"module": source, "state_dict": Path(state_dict).name}}
    loaded = LoadedModel(secure, config, secure.labels or tuple(
        str(i) for i in range(secure.num_classes)), metadata)
    return loaded, report


def run(args: Any) -> int:
    """The `import` command."""
    from experiments.modelfile import import_checkpoint, save_model
    if bool(args.checkpoint) == bool(args.module):
        raise ConfigError("give either --checkpoint FILE.pt or --module SOURCE:NAME "
                          "with --state-dict FILE.pt")
    if args.checkpoint:
        checkpoint = import_checkpoint(args.checkpoint, frac_bits=args.frac_bits)
        loaded, report = checkpoint.loaded, checkpoint.report
        loaded.metadata["source"] = {"checkpoint": Path(args.checkpoint).name}
    else:
        if not args.state_dict:
            raise ConfigError("--module needs --state-dict FILE.pt (the trained weights)")
        loaded, report = from_module(args.module, args.state_dict, args.features,
                                     args.input_shape, args.labels, args.frac_bits)
    loaded.metadata["import"] = {"logit_error": report.logit_error,
                                 "label_agreement": report.agreement, "probes": report.probes,
                                 "frac_bits": loaded.secure.fixed.frac_bits}
    print(report.table())
    path = save_model(args.out, loaded)
    print(f"wrote {path}: {len(loaded.secure.layers)} layers, input "
          f"{loaded.secure.input_shape}, {loaded.secure.fixed.frac_bits} fractional bits, "
          f"labels {', '.join(loaded.labels)}")
    return 0


def add_parser(sub: Any) -> None:
    """Register `import` on the command line's subparsers."""
    p = sub.add_parser("import", help="make a model file from a PyTorch model (needs torch)")
    p.add_argument("--checkpoint", help="a training checkpoint of experiments.train (.pt)")
    p.add_argument("--module", metavar="SOURCE:NAME",
                   help="FILE.py:NAME or package.module:NAME, a class or function that "
                   "builds the torch module with no arguments")
    p.add_argument("--state-dict", metavar="FILE.pt",
                   help="with --module: the trained weights (torch.save(model.state_dict()))")
    p.add_argument("--features", metavar="FILE.json",
                   help="with --module: the feature settings as JSON (audio.FeatureConfig "
                   "fields; default: the bundled model's log-mel settings)")
    p.add_argument("--input-shape", metavar="C,H,W",
                   help="with --module: checked against what the feature settings make")
    p.add_argument("--labels", metavar="A,B,...", help="with --module: the class names")
    p.add_argument("--frac-bits", type=int, default=None,
                   help="fractional bits of the fixed-point encoding (default: the "
                   "importer chooses from the probe ranges)")
    p.add_argument("--out", required=True, metavar="MODEL.npz", help="the model file to write")
    p.set_defaults(fn=run)
