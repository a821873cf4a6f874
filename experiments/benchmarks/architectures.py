"""The reference audio architectures (issue 18) under replicated and rep4: res8, DS-CNN, M5
next to the reference CNN, seeded weights, batch 1, every party a process over TCP+TLS."""

from __future__ import annotations

import statistics

import numpy as np

from experiments.benchmarks._timing import table

SCHEMES = ("replicated", "rep4")


def _models() -> list[tuple[str, object, tuple[int, ...]]]:
    import torch

    from experiments import models

    torch.manual_seed(0)
    return [("reference CNN (8 classes)", models.reference_cnn(8), models.INPUT_SHAPE),
            ("res8 (12 classes)", models.res8(12), models.RES8_INPUT_SHAPE),
            ("DS-CNN (12 classes)", models.ds_cnn(12), models.DS_CNN_INPUT_SHAPE),
            ("M5 (10 classes)", models.m5(10), models.M5_INPUT_SHAPE)]


def run(quick: bool) -> str:
    from nn.describe import checked, describe
    from nn.importer import from_torch
    from nn.inference import classify

    repeats = 2 if quick else 3
    rows = []
    for name, module, shape in _models():
        model, report = from_torch(module.eval(), shape)
        footprint = checked(describe(model))[1]
        x = np.random.default_rng(0).normal(size=(1, *shape))
        for scheme in SCHEMES:
            online, result = [], None
            for _ in range(repeats):
                result = classify(model, x, scheme=scheme, transport="tcp", timeout=600)
                online.append(result.online_seconds)
            sent = result.bytes_sent("online")
            rows.append([name, str(shape), scheme, f"{statistics.median(online):.3f}",
                         f"{min(online):.3f}", result.online_rounds,
                         f"{np.mean(sent) / 1e6:.2f} / {max(sent) / 1e6:.2f}",
                         f"{footprint.parameters:,}", f"{footprint.multiply_adds:,}",
                         f"{footprint.comparisons:,}", model.fixed.frac_bits,
                         f"{report.logit_error:.1e}"])
    header = ["model", "input", "scheme", "online s/clip (median)", "min", "rounds",
              "online MB sent per party (mean / max)", "parameters", "multiply-adds",
              "comparisons", "frac bits", "import logit error"]
    return ("## Reference audio architectures\n\nSeeded (untrained) weights, batch 1, every "
            f"party its own process over TCP+TLS; median and min over {repeats} runs. "
            "Parameters, multiply-adds and comparisons per example as the secure model has "
            "them (grouped convolutions run dense; folded batch-norms). Import logit error: "
            "the fixed-point emulator against torch on the importer's probes.\n\n"
            + table(header, rows))
