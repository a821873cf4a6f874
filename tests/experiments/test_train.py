"""The reference CNN and the training helpers (tiny synthetic data, seconds)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from experiments.models import (  # noqa: E402
    FLAT_FEATURES,
    predict_logits,
    reference_cnn,
    set_input_normalisation,
    train_mode,
)
from experiments.train import confusion, train_model  # noqa: E402


def test_reference_cnn_shapes_and_types():
    model = reference_cnn(6)
    assert [type(m).__name__ for m in model] == [
        "BatchNorm2d", "Conv2d", "ReLU", "AvgPool2d", "Conv2d", "ReLU", "AvgPool2d",
        "Flatten", "Dropout", "Linear", "ReLU", "Linear"]
    assert FLAT_FEATURES == 9408 and model[9].in_features == 9408
    assert model[1].padding == (0, 0) and model[1].kernel_size == (5, 5)
    model.eval()
    assert model(torch.zeros(2, 1, 40, 350)).shape == (2, 6)
    with pytest.raises(ValueError):
        reference_cnn(1)


def test_input_normaliser_is_frozen():
    model = reference_cnn(3)
    set_input_normalisation(model, -40.0, 20.0)
    train_mode(model)
    assert model.training and not model[0].training
    x = torch.randn(4, 1, 40, 350) * 20 - 40
    before = model[0].running_mean.clone()
    y = model[0](x)
    torch.testing.assert_close(y, (x + 40.0) / 20.0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[0].running_mean, before)
    assert not model[0].weight.requires_grad and not model[0].bias.requires_grad


def test_train_model_learns_separable_data():
    rng = np.random.default_rng(0)
    n = 48
    y = np.arange(n) % 2
    x = rng.normal(-50, 5, (n, 1, 40, 350)).astype(np.float32)
    x[y == 1, :, :20, :] += 30.0  # class 1 is loud in the low bands
    model = train_model(x, y, 2, epochs=3, batch_size=16, lr=2e-3, seed=0, log=lambda s: None)
    assert not model.training
    pred = predict_logits(model, x).argmax(1).numpy()
    assert (pred == y).mean() > 0.9
    bn = model[0]
    assert abs(float(bn.running_mean) - x.mean()) < 1e-3
    assert abs(float(bn.running_var + bn.eps) ** 0.5 - x.std()) < 1e-2


def test_train_model_phrase_head_is_training_only():
    rng = np.random.default_rng(1)
    n = 48
    phrase = np.arange(n) % 4  # 4 "phrases", two per label
    y = phrase // 2
    x = rng.normal(0, 1, (n, 1, 40, 350)).astype(np.float32)
    for p in range(4):
        x[phrase == p, :, 10 * p:10 * p + 10, :] += 3.0
    model = train_model(x, y, 2, epochs=3, batch_size=16, lr=2e-3, seed=0, log=lambda s: None,
                        aux_targets=phrase, aux_weight=1.0, class_weight=False,
                        label_smoothing=0.1)
    fresh = reference_cnn(2)
    assert [type(m).__name__ for m in model] == [type(m).__name__ for m in fresh]
    assert model.state_dict().keys() == fresh.state_dict().keys()
    assert (predict_logits(model, x).argmax(1).numpy() == y).mean() > 0.9


def test_confusion():
    m = confusion([0, 1, 1, 2], [0, 2, 1, 2], 3)
    assert m.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
