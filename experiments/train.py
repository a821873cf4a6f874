"""Train the reference CNN on the Hedgewars voice packs (or RAVDESS) and save it for Bob.

    python -m experiments.train --corpus hedgewars --data data/hedgewars \\
        --out experiments/assets/model.pt [--results results/train/] [--export-clips DIR]

Split by speaker: ``--heldout`` voice groups (default British and Surfer for Hedgewars)
are never seen in training; their accuracy is reported per group next to chance level
(1 / number of classes, and the majority-class rate of the held-out set). No early stopping
or model selection looks at the held-out groups: the epoch count is fixed.
``--cv`` instead runs leave-one-speaker-group-out cross-validation (a fresh model per group,
accuracy over every clip; no model saved) for a less noisy estimate than two voices give.
By default it runs over the training groups only, so that settings chosen by it never look
at the held-out groups; ``--cv-groups all`` includes them (as results/train/cv.json did).

Features (``FeatureConfig`` saved with the model): by default the trimmed clip is centred
and padded to 3.5 s, as log-mel dB. ``--time-normalize`` stretches each trimmed utterance
over the 350 frames instead, and ``--normalize band`` normalises each mel band to mean 0,
variance 1 over the utterance; both were tried for the bundled model and did not make it
generalise (results/train/EXPERIMENTS.md).

Augmentation (precomputed, so training itself is fast on 2 cores): each training clip gives
``--augment`` feature maps: the clean one, then random combinations of pitch shift (+-2
semitones), tempo change (0.85-1.15), a time shift within the 3.5 s window (with time
normalisation instead: up to 5 % of the utterance cut or added at each end), and additive
white noise (SNR 15-40 dB). During training, SpecAugment-style time and frequency masks are
applied on the fly.

Loss: cross-entropy weighted by inverse class frequency (``--no-class-weight`` to drop the
weights), optionally with label smoothing (``--label-smoothing``) and, for Hedgewars, a
second linear head on the 64 hidden units predicting the phrase (31 classes, weight
``--aux-phrase``; 0 by default). That head exists only during training: the saved model is
the reference CNN.

The model file (``torch.load(path, weights_only=True)``) holds ``state_dict``,
``num_classes``, ``labels``, ``feature_config`` (``FeatureConfig.to_dict()``),
``architecture`` ("reference_cnn") and ``heldout`` (accuracy figures and the split).
Weights are float32; the input normaliser is ``state_dict["0.*"]`` (BatchNorm2d(1)).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

import audio
from audio import FeatureConfig
from audio.datasets import (
    HEDGEWARS_LABELS,
    HEDGEWARS_PHRASES,
    RAVDESS_EMOTIONS,
    Clip,
    check_no_shared_audio,
    dedupe,
    hedgewars_clips,
    ravdess_clips,
    split_by_group,
)

DEFAULT_HELDOUT = {"hedgewars": "British,Surfer", "ravdess": "Actor_23,Actor_24"}
#: Auxiliary (training-only) targets: the Hedgewars phrase, 31 classes in this order.
PHRASES = tuple(sorted(p.lower() for ps in HEDGEWARS_PHRASES.values() for p in ps))


def phrase_targets(clips: list[Clip]) -> np.ndarray | None:
    """Index into :data:`PHRASES` of each clip's phrase (None unless every clip has one)."""
    if not all("phrase" in c.meta for c in clips):
        return None
    return np.array([PHRASES.index(c.meta["phrase"].lower()) for c in clips])


def _fit_options(args) -> dict:
    return {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "seed": args.seed, "aux_weight": args.aux_phrase,
            "class_weight": args.class_weight, "label_smoothing": args.label_smoothing}


# ---------------------------------------------------------------------------------------------
# Features and augmentation (plain numpy/librosa; run in worker processes)
# ---------------------------------------------------------------------------------------------

def _augment_signal(signal: np.ndarray, sr: int, rng) -> np.ndarray:
    """Random pitch shift (+-2 semitones) and tempo change (0.85-1.15), each with
    probability 1/2, then peak normalisation (as in ``audio.prepare``)."""
    import librosa

    y = signal
    if rng.random() < 0.5:
        y = librosa.effects.pitch_shift(y, sr=sr, n_steps=float(rng.uniform(-2, 2)))
    if rng.random() < 0.5:
        y = librosa.effects.time_stretch(y, rate=float(rng.uniform(0.85, 1.15)))
    y = np.asarray(y, dtype=np.float32)
    peak = float(np.max(np.abs(y)))
    return y / peak if peak > 0 else y


def _add_noise(y: np.ndarray, rng) -> np.ndarray:
    """White noise at 15-40 dB SNR (relative to ``y``'s RMS) with probability 1/2."""
    if rng.random() < 0.5:
        snr_db = rng.uniform(15, 40)
        rms = float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))
        y = y + rng.normal(0, rms / 10 ** (snr_db / 20), y.size).astype(np.float32)
    return y


def _clip_features(args) -> np.ndarray:
    """Feature maps of one clip: index 0 clean, the rest augmented. Returns (k, 1, M, T)."""
    path, config_dict, n_aug, seed = args
    config = FeatureConfig.from_dict(config_dict)
    rng = np.random.default_rng(seed)
    signal = audio.prepare(audio.load(path, sample_rate=config.sample_rate), config)
    sr, n = config.sample_rate, config.num_samples
    if config.time_normalize:
        # the whole trimmed utterance is stretched over the map: augment the utterance's
        # ends (cut or add up to 5 % of its length at each end) instead of its position
        maps = [audio.stretched_log_mel(signal, config)]
        for _ in range(n_aug - 1):
            y = _augment_signal(signal, sr, rng)
            m = y.size
            a, b = (int(rng.uniform(-0.05, 0.05) * m) for _ in range(2))
            y = np.concatenate([np.zeros(max(a, 0), np.float32), y[max(-a, 0):m - max(-b, 0)],
                                np.zeros(max(b, 0), np.float32)])
            maps.append(audio.stretched_log_mel(_add_noise(y, rng), config))
        return np.stack([audio.normalize_bands(m, config) for m in maps])
    maps = [audio.log_mel(audio.fit_length(signal, n), config)]
    for _ in range(n_aug - 1):
        y = _augment_signal(signal, sr, rng)
        slack = max(0, (n - y.size) // 2)
        max_shift = min(slack, int(0.5 * sr))
        offset = int(rng.integers(-max_shift, max_shift + 1)) if max_shift else 0
        fixed = audio.fit_length(y, n, offset)
        if rng.random() < 0.5:
            snr_db = rng.uniform(15, 40)
            rms = float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))
            fixed = fixed + rng.normal(0, rms / 10 ** (snr_db / 20), n).astype(np.float32)
        maps.append(audio.log_mel(fixed, config))
    return np.stack([audio.normalize_bands(m, config) for m in maps])


def compute_features(clips: list[Clip], config: FeatureConfig, n_aug: int, seed: int,
                     workers: int) -> np.ndarray:
    """(len(clips), n_aug, 1, M, T) feature maps, deterministic for a given seed."""
    jobs = [(str(c.path), config.to_dict(), n_aug, seed * 1_000_003 + i)
            for i, c in enumerate(clips)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            out = list(pool.map(_clip_features, jobs, chunksize=4))
    else:
        out = [_clip_features(j) for j in jobs]
    return np.stack(out)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

def _spec_augment(x, gen, fill: float):
    """Random time mask (<= 40 frames) and frequency mask (<= 6 bands) per example."""
    import torch

    n, _, m, t = x.shape
    x = x.clone()
    tw = torch.randint(0, 41, (n,), generator=gen)
    t0 = (torch.rand(n, generator=gen) * (t - tw)).long()
    fw = torch.randint(0, 7, (n,), generator=gen)
    f0 = (torch.rand(n, generator=gen) * (m - fw)).long()
    for i in range(n):
        x[i, :, :, t0[i]:t0[i] + tw[i]] = fill
        x[i, :, f0[i]:f0[i] + fw[i], :] = fill
    return x


def train_model(x_train: np.ndarray, y_train: np.ndarray, num_classes: int, *, epochs: int,
                batch_size: int, lr: float, seed: int, log=print,
                aux_targets: np.ndarray | None = None, aux_weight: float = 0.0,
                class_weight: bool = True, label_smoothing: float = 0.0):
    """Train a fresh reference CNN on (n, 1, M, T) maps; returns the model in eval mode.

    ``aux_targets`` (n,) with ``aux_weight > 0``: multi-task training with a second linear
    head on the 64 hidden units predicting these classes (the Hedgewars phrase), loss
    ``CE(label) + aux_weight * CE(aux)``. The head is used only during training; the
    returned model is the reference CNN alone. ``class_weight``: weight the label loss by
    inverse class frequency (favours balanced accuracy over plain accuracy).
    """
    import torch

    from experiments.models import reference_cnn, set_input_normalisation, train_mode

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = reference_cnn(num_classes)
    mean, std = float(x_train.mean()), float(x_train.std())
    set_input_normalisation(model, mean, std)
    weight = None
    if class_weight:
        counts = np.bincount(y_train, minlength=num_classes).astype(np.float64)
        weight = torch.tensor(counts.sum() / (num_classes * np.maximum(counts, 1)),
                              dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    params = [p for p in model.parameters() if p.requires_grad]
    use_aux = aux_targets is not None and aux_weight > 0
    if use_aux:
        aux_head = torch.nn.Linear(model[-1].in_features, int(aux_targets.max()) + 1)
        aux_loss = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        params += list(aux_head.parameters())
        at = torch.from_numpy(aux_targets.astype(np.int64))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-3)
    steps = epochs * ((len(x_train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train.astype(np.int64))
    body = model[:-1]  # everything up to the hidden ReLU
    for epoch in range(epochs):
        train_mode(model)
        perm = torch.randperm(len(xt), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for start in range(0, len(xt), batch_size):
            idx = perm[start:start + batch_size]
            xb = _spec_augment(xt[idx], gen, mean)
            yb = yt[idx]
            opt.zero_grad()
            hidden = body(xb)
            logits = model[-1](hidden)
            loss = loss_fn(logits, yb)
            if use_aux:
                loss = loss + aux_weight * aux_loss(aux_head(hidden), at[idx])
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(idx)
        log(f"epoch {epoch + 1:3d}/{epochs}: loss {loss_sum / total:.3f}, "
            f"train acc (augmented) {correct / total:.3f}")
    model.eval()
    return model


def evaluate(model, x: np.ndarray) -> np.ndarray:
    """Predicted class indices for (n, 1, M, T) maps."""
    from experiments.models import predict_logits

    out = []
    for start in range(0, len(x), 64):
        out.append(predict_logits(model, x[start:start + 64]).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def confusion(y_true, y_pred, k: int) -> np.ndarray:
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def plot_confusion(matrix: np.ndarray, labels, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("phrase-derived label")
    ax.set_title(title, fontsize=9)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Bundled demo clips
# ---------------------------------------------------------------------------------------------

CLIP_LICENSE = """# Demo clips

Source: Debian package `hedgewars-data` (1.0.2-6, Debian bookworm), directory
`usr/share/games/hedgewars/Data/Sounds/voices/<Pack>/<Phrase>.ogg`.
Copyright 2004, 2005, 2006 Andrey Korotaev <unC0Rr@gmail.com>; licensed under the
GNU Free Documentation License 1.3 (GFDL-1.3), as stated in
`/usr/share/doc/hedgewars-data/copyright` (`Files: share/hedgewars/Data/Sounds/*`).
Full licence text: https://www.gnu.org/licenses/fdl-1.3.html

Modifications: decoded from Ogg Vorbis, mixed to mono, resampled to 48 kHz where the source
is at 44.1 kHz (some British files are already 48 kHz) and written as 16-bit PCM WAV
(`python -m experiments.train ... --export-clips`, or `--export-only` to reuse a trained
model). No other edits.

The clips come from voice packs held out from training ({heldout}). The label in
`labels.json` follows the phrase (our grouping of phrases into emotions,
`audio.datasets.HEDGEWARS_PHRASES`), not a measured emotion. `predicted` is the bundled
model's plaintext prediction on the WAV file as stored here (through `audio.load` and
`audio.features`); it is wrong for some clips, and is recorded as it is. Clips were chosen
one per label in turn (alternating the held-out voices, one clip per phrase, fixed seed),
skipping clips whose top two logits differ by less than 0.5 so that the recorded prediction
is stable across platforms; whether the prediction was right played no part in the
choice.

| file | voice pack | phrase | label (from phrase) | model prediction |
|---|---|---|---|---|
{rows}
"""


def export_clips(model, labels, config: FeatureConfig, test_clips: list[Clip], out_dir: Path,
                 heldout: list[str], n_clips: int = 8, seed: int = 0) -> dict:
    """Write ``n_clips`` held-out clips as 48 kHz 16-bit mono WAV plus labels.json and
    LICENSE.md; return the labels.json content."""
    import soundfile as sf

    from experiments.models import predict_logits

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.wav"):
        old.unlink()
    by_label = {lab: [c for c in test_clips if c.label == lab] for lab in labels}
    for lab in by_label:
        order = rng.permutation(len(by_label[lab]))
        by_label[lab] = [by_label[lab][i] for i in order]
    chosen, used_phrases = [], set()
    rounds = 0
    while len(chosen) < n_clips and rounds < 10:
        rounds += 1
        for lab in labels:
            if len(chosen) >= n_clips:
                break
            # alternate the held-out voices from one clip to the next
            want = heldout[len(chosen) % len(heldout)]
            candidates = sorted(by_label[lab], key=lambda c, want=want: c.group != want)
            for c in candidates:
                if c.meta["phrase"] in used_phrases:
                    continue
                by_label[lab].remove(c)
                name = f"{c.meta['pack'].lower()}_{c.meta['phrase'].lower()}.wav"
                y = audio.load(c.path, sample_rate=48000)
                path = out_dir / name
                sf.write(str(path), y, 48000, subtype="PCM_16")
                feats = audio.features(audio.load(path, sample_rate=config.sample_rate), config)
                logits = predict_logits(model, feats)[0].numpy()
                top2 = np.sort(logits)[-2:]
                if top2[1] - top2[0] < 0.5:
                    path.unlink()
                    continue
                used_phrases.add(c.meta["phrase"])
                chosen.append((name, c, labels[int(np.argmax(logits))],
                               float(top2[1] - top2[0])))
                break
    table = {
        name: {"label": c.label, "predicted": pred, "pack": c.meta["pack"],
               "phrase": c.meta["phrase"], "margin": round(margin, 3)}
        for name, c, pred, margin in chosen
    }
    (out_dir / "labels.json").write_text(json.dumps(table, indent=2) + "\n")
    rows = "\n".join(f"| `{n}` | {v['pack']} | {v['phrase']} | {v['label']} | {v['predicted']} |"
                     for n, v in table.items())
    (out_dir / "LICENSE.md").write_text(CLIP_LICENSE.format(heldout=", ".join(heldout),
                                                            rows=rows))
    return table


def cross_validate(clips: list[Clip], labels: list[str], config: FeatureConfig, args) -> dict:
    """Leave-one-speaker-group-out: train a fresh model per group on the others, test on
    that group.

    ``main`` passes the training side of the split only (``--cv-groups train``: the held-out
    groups take no part in any choice of settings) or every clip (``--cv-groups all``).
    Gives an accuracy estimate over every clip passed instead of two held-out voices.
    Features are computed once; no model is saved.
    """
    label_index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([label_index[c.label] for c in clips])
    aux = phrase_targets(clips)
    groups = sorted({c.group for c in clips})
    t0 = time.time()
    feats = compute_features(clips, config, args.augment, args.seed, args.workers)
    print(f"cv features {feats.shape} in {time.time() - t0:.1f} s")
    pred = np.full(len(clips), -1)
    per_group = {}
    for g in groups:
        split_by_group(clips, [g])  # raises if identical audio is on both sides
        tr = np.array([c.group != g for c in clips])
        model = train_model(feats[tr].reshape(-1, *config.shape), np.repeat(y[tr], args.augment),
                            len(labels), log=lambda s: None,
                            aux_targets=None if aux is None else np.repeat(aux[tr], args.augment),
                            **_fit_options(args))
        pred[~tr] = evaluate(model, feats[~tr, 0])
        acc = float(np.mean(pred[~tr] == y[~tr]))
        per_group[g] = {"accuracy": acc, "clips": int((~tr).sum())}
        print(f"  fold {g}: {acc:.3f} on {(~tr).sum()} clips ({time.time() - t0:.0f} s)")
    matrix = confusion(y, pred, len(labels))
    recall = [matrix[i, i] / matrix[i].sum() for i in range(len(labels)) if matrix[i].sum()]
    counts = np.bincount(y, minlength=len(labels))
    return {
        "accuracy": float(np.mean(pred == y)), "balanced_accuracy": float(np.mean(recall)),
        "chance_uniform": 1.0 / len(labels), "chance_majority": float(counts.max() / len(y)),
        "per_group": per_group, "confusion": matrix.tolist(), "labels": labels,
        "clips": len(clips), "groups": groups, "feature_config": config.to_dict(),
        "training": {k: v for k, v in vars(args).items()
                     if k in ("epochs", "augment", "seed", "batch_size", "lr", "aux_phrase",
                              "class_weight", "label_smoothing")},
        "seconds": round(time.time() - t0, 1),
    }


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the reference CNN (split by speaker).")
    parser.add_argument("--corpus", choices=("hedgewars", "ravdess"), default="hedgewars")
    parser.add_argument("--data", default="data/hedgewars",
                        help="voices directory (hedgewars) or RAVDESS root")
    parser.add_argument("--out", default="experiments/assets/model.pt")
    parser.add_argument("--results", default="results/train/")
    parser.add_argument("--heldout", default=None,
                        help="comma-separated speaker groups held out for testing "
                             "(default: British,Surfer / Actor_23,Actor_24)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--augment", type=int, default=10,
                        help="feature maps per training clip (1 clean + augment-1 perturbed)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--time-normalize", action=argparse.BooleanOptionalAction,
                        default=False,
                        help="features stretch each trimmed utterance over the 350 frames "
                             "(FeatureConfig.time_normalize) instead of centring and padding")
    parser.add_argument("--normalize", choices=("none", "band"), default="none",
                        help="per-utterance band normalisation of the features "
                             "(FeatureConfig.normalize)")
    parser.add_argument("--aux-phrase", type=float, default=0.0,
                        help="weight of the training-only phrase head (hedgewars; 0: none)")
    parser.add_argument("--class-weight", action=argparse.BooleanOptionalAction,
                        default=True, help="weight the loss by inverse class frequency")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--export-clips", default=None,
                        help="write held-out demo clips (48 kHz WAV) + labels.json here")
    parser.add_argument("--n-clips", type=int, default=8)
    parser.add_argument("--export-only", action="store_true",
                        help="no training: load the model from --out and only export clips")
    parser.add_argument("--cv", action="store_true",
                        help="leave-one-speaker-group-out cross-validation only (no model "
                             "saved); writes <results>/cv.json")
    parser.add_argument("--cv-groups", choices=("train", "all"), default="train",
                        help="cross-validate over the training groups only (default: the "
                             "held-out groups take no part) or over every group")
    args = parser.parse_args(argv)

    import torch

    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress visible when redirected
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    t_start = time.time()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    config = FeatureConfig(time_normalize=args.time_normalize, normalize=args.normalize)

    if args.corpus == "hedgewars":
        clips = hedgewars_clips(args.data)
        labels = list(HEDGEWARS_LABELS)
    else:
        clips = ravdess_clips(args.data)
        labels = [RAVDESS_EMOTIONS[k] for k in sorted(RAVDESS_EMOTIONS)]
    heldout = (args.heldout or DEFAULT_HELDOUT[args.corpus]).split(",")
    n_all = len(clips)
    clips = dedupe(clips)  # identical files within the corpus count once
    if args.cv:
        if args.cv_groups == "train":
            clips, _ = split_by_group(clips, heldout)  # the held-out groups take no part
        cv = cross_validate(clips, labels, config, args)
        (results / "cv.json").write_text(json.dumps(cv, indent=2) + "\n")
        print(f"leave-one-group-out accuracy {cv['accuracy']:.3f} on {cv['clips']} clips, "
              f"balanced {cv['balanced_accuracy']:.3f} (chance {cv['chance_uniform']:.3f} "
              f"uniform, {cv['chance_majority']:.3f} majority); {cv['seconds']:.0f} s")
        return 0
    train, test = split_by_group(clips, heldout)
    check_no_shared_audio(train, test, kind="samples")
    label_index = {lab: i for i, lab in enumerate(labels)}
    y_train = np.array([label_index[c.label] for c in train])
    y_test = np.array([label_index[c.label] for c in test])
    print(f"{n_all} labelled clips, {len(clips)} after removing identical files; "
          f"train {len(train)} clips from {len({c.group for c in train})} groups, "
          f"held out {len(test)} clips from {heldout}")

    if args.export_only:
        from experiments.models import load_model

        if not args.export_clips:
            parser.error("--export-only needs --export-clips")
        model, saved = load_model(args.out)
        config = FeatureConfig.from_dict(saved["feature_config"])
        table = export_clips(model, saved["labels"], config, test, Path(args.export_clips),
                             heldout, args.n_clips, args.seed)
        for name, v in table.items():
            print(f"  {name}: label {v['label']}, predicted {v['predicted']}")
        return 0

    t0 = time.time()
    f_train = compute_features(train, config, args.augment, args.seed, args.workers)
    f_test = compute_features(test, config, 1, args.seed + 1, args.workers)[:, 0]
    t_features = time.time() - t0
    print(f"features: {f_train.shape} train, {f_test.shape} test in {t_features:.1f} s")

    x_train = f_train.reshape(-1, *config.shape)
    y_aug = np.repeat(y_train, args.augment)
    t0 = time.time()
    aux = phrase_targets(train)
    model = train_model(x_train, y_aug, len(labels),
                        aux_targets=None if aux is None else np.repeat(aux, args.augment),
                        **_fit_options(args))
    t_train = time.time() - t0

    pred_test = evaluate(model, f_test)
    pred_train = evaluate(model, f_train[:, 0])
    acc = float(np.mean(pred_test == y_test))
    per_group = {}
    for g in heldout:
        mask = np.array([c.group == g for c in test])
        per_group[g] = {"accuracy": float(np.mean(pred_test[mask] == y_test[mask])),
                        "clips": int(mask.sum())}
    counts = np.bincount(y_test, minlength=len(labels))
    matrix = confusion(y_test, pred_test, len(labels))
    per_class_recall = {lab: (float(matrix[i, i] / matrix[i].sum()) if matrix[i].sum() else None)
                        for i, lab in enumerate(labels)}
    heldout_info = {
        "accuracy": acc,
        "balanced_accuracy": float(np.mean([v for v in per_class_recall.values()
                                            if v is not None])),
        "per_group": per_group,
        "per_class_recall": per_class_recall,
        "chance_uniform": 1.0 / len(labels),
        "chance_majority": float(counts.max() / counts.sum()),
        "clips": len(test),
        "train_accuracy_clean": float(np.mean(pred_train == y_train)),
        "confusion": matrix.tolist(),
        "split": {"corpus": args.corpus, "by": "speaker group",
                  "heldout_groups": heldout,
                  "train_groups": sorted({c.group for c in train}),
                  "train_clips": len(train), "augmented_train_maps": int(len(x_train))},
        "label_note": ("labels follow the phrase spoken, not a measured emotion"
                       if args.corpus == "hedgewars" else "RAVDESS acted emotion"),
        "training": {"epochs": args.epochs, "augment": args.augment, "seed": args.seed,
                     "batch_size": args.batch_size, "lr": args.lr,
                     "aux_phrase": args.aux_phrase, "class_weight": args.class_weight,
                     "label_smoothing": args.label_smoothing,
                     "feature_seconds": round(t_features, 1),
                     "train_seconds": round(t_train, 1)},
    }
    print(f"held-out accuracy {acc:.3f} on {len(test)} clips "
          f"(chance {1 / len(labels):.3f} uniform, {heldout_info['chance_majority']:.3f} "
          f"majority); per group: "
          + ", ".join(f"{g} {v['accuracy']:.3f} ({v['clips']})" for g, v in per_group.items()))
    print(f"balanced accuracy {heldout_info['balanced_accuracy']:.3f}; "
          f"train accuracy (clean) {heldout_info['train_accuracy_clean']:.3f}")
    print("confusion (rows: label, cols: predicted; order " + ", ".join(labels) + ")")
    print(matrix)

    title = (f"{args.corpus}, held out {', '.join(heldout)}: acc {acc:.2f} "
             f"(chance {1 / len(labels):.2f})")
    plot_confusion(matrix, labels, title, results / "confusion.png")

    state = {k: (v.detach().clone().float() if v.is_floating_point() else v.detach().clone())
             for k, v in model.state_dict().items()}
    saved = {
        "state_dict": state,
        "num_classes": len(labels),
        "labels": labels,
        "feature_config": config.to_dict(),
        "architecture": "reference_cnn",
        "heldout": heldout_info,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, out)
    torch.load(out, weights_only=True)  # must load under the safe unpickler
    (results / "metrics.json").write_text(json.dumps(heldout_info, indent=2) + "\n")
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB); results in {results}")
    from experiments.modelfile import import_checkpoint, save_model

    model_file = save_model(out.with_suffix(".npz"), import_checkpoint(out).loaded)
    print(f"model file for classification {model_file} (= sottovoce import --checkpoint)")

    if args.export_clips:
        if args.corpus != "hedgewars":
            print("--export-clips only supports the hedgewars corpus", file=sys.stderr)
            return 2
        table = export_clips(model, labels, config, test, Path(args.export_clips), heldout,
                             args.n_clips, args.seed)
        for name, v in table.items():
            print(f"  {name}: label {v['label']}, predicted {v['predicted']}")
    print(f"total time {time.time() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
