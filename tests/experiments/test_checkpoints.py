"""The bundled model file, and model files made from training checkpoints."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from experiments.modelfile import (
    BUNDLED_CHECKPOINT,
    BUNDLED_MODEL,
    import_checkpoint,
    load_model,
    plaintext_logits,
    save_model,
    torch_logits,
)
from nn.describe import describe


def test_the_bundled_model_file_is_its_checkpoint_imported() -> None:
    """The committed model file holds exactly what importing the committed checkpoint
    gives at the model file's precision: the conversion is reproducible."""
    bundled = load_model(BUNDLED_MODEL)
    fresh = import_checkpoint(BUNDLED_CHECKPOINT, check=False,
                              frac_bits=bundled.secure.fixed.frac_bits).loaded
    assert describe(bundled.secure) == describe(fresh.secure)
    for mine, theirs in zip(bundled.secure.layers, fresh.secure.layers, strict=True):
        for key in ("weight", "bias"):
            if getattr(mine, key, None) is not None:
                assert np.array_equal(getattr(mine, key), getattr(theirs, key)), mine.name
    assert bundled.feature_config == fresh.feature_config
    assert bundled.metadata["heldout"] == fresh.metadata["heldout"]


def test_the_float_reference_of_a_model_file_follows_torch() -> None:
    checkpoint = import_checkpoint(BUNDLED_CHECKPOINT, check=False)
    bundled = load_model(BUNDLED_MODEL)
    features = np.random.default_rng(1).normal(size=(4, *bundled.secure.input_shape))
    ours, torch_out = plaintext_logits(bundled, features), torch_logits(
        checkpoint.torch_module, features)
    assert np.array_equal(ours.argmax(axis=1), torch_out.argmax(axis=1))
    # the weights' rounding to the model file's fractional bits, and float32 in torch
    assert np.abs(ours - torch_out).max() < 2 ** -bundled.secure.fixed.frac_bits * 200


def test_the_bundled_model_loads_and_classifies_without_torch() -> None:
    program = (
        "import sys, numpy as np\n"
        "from experiments.modelfile import BUNDLED_MODEL, load_model, plaintext_logits\n"
        "import nn\n"
        "loaded = load_model(BUNDLED_MODEL)\n"
        "x = np.zeros((1, *loaded.secure.input_shape))\n"
        "result = nn.classify(loaded.secure, x, scheme='replicated')\n"
        "assert result.labels[0] == plaintext_logits(loaded, x).argmax()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_saved_model_file_loads_back_equal(tmp_path) -> None:
    bundled = load_model(BUNDLED_MODEL)
    path = save_model(tmp_path / "copy.npz", bundled)
    again = load_model(path)
    assert describe(again.secure) == describe(bundled.secure)
    assert again.metadata == bundled.metadata and again.labels == bundled.labels
    assert not list(tmp_path.glob("*.partial"))
