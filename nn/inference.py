"""`classify`: private inference of a `SecureModel` on the client's features.

The client (party 0) inputs the features, the model owner (party 1) the weights; every
other party sees only the architecture. Only the label is revealed, and only to the client;
logits are opt-in because they tell the client far more about the model than a label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpc import forking
from mpc.limits import MAX_BATCH
from nn.emulator import emulate
from nn.layers import MODEL_OWNER
from nn.model import CLIENT, LayerStats, PrivateInference, SecureModel
from protocols import registry
from protocols.registry import Scheme
from protocols.run import PartyReport, run

forking.preload("nn.inference")  # the inference roles, imported before parties fork


@dataclass
class LayerReport:
    """One layer's cost over all parties and, in audit mode, its error against the emulator."""

    name: str
    seconds: float  # the slowest party's
    rounds: int
    bytes_sent: tuple[int, ...]  # per party
    items: int
    max_error: float | None  # vs the emulator (audit mode only)
    wait_seconds: tuple[float, ...] = ()  # per party: time blocked on the network
    party_seconds: tuple[float, ...] = ()  # per party: wall time in the layer


@dataclass
class Classification:
    """Labels for the batch (known to the client) and what the run cost."""

    labels: np.ndarray
    logits: np.ndarray | None
    layers: list[LayerReport]
    parties: list[PartyReport]
    scheme: str
    output: str = "logits"  # what the model's own output is made of the logits

    @property
    def probabilities(self) -> np.ndarray | None:
        """The original model's output when it ended with a softmax (or log-softmax) the
        importer dropped: computed by the client from the revealed logits in the clear,
        which tells it nothing the logits did not; None without revealed logits."""
        if self.logits is None:
            return None
        if self.output == "logits":
            return self.logits
        shifted = self.logits - self.logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return shifted - log_norm if self.output == "log_softmax" else np.exp(shifted - log_norm)

    @property
    def online_seconds(self) -> float:
        """Online time of the slowest party: the run is as fast as it."""
        return max(p.online_seconds for p in self.parties)

    @property
    def offline_seconds(self) -> float:
        """Preprocessing time of the slowest party."""
        return max(p.offline_seconds for p in self.parties)

    @property
    def setup_seconds(self) -> float:
        """Time to share the weights, paid once per model, of the slowest party."""
        return max(p.setup_seconds for p in self.parties)

    @property
    def online_rounds(self) -> int:
        """Online communication rounds, the most any party took: what latency multiplies."""
        return max(p.online.rounds for p in self.parties)

    def bytes_sent(self, phase: str = "online") -> list[int]:
        """Bytes each party sent in `phase` ("online", "offline" or "setup"), by party."""
        return [getattr(p, phase).bytes_sent for p in self.parties]

    def table(self) -> str:
        """The per-layer report as text."""
        head = f"{'layer':<12}{'time ms':>9}{'rounds':>8}{'kB sent/party':>16}{'items':>7}" \
               f"{'max err':>10}"
        compute = len(self.layers[0].bytes_sent) if self.layers else len(self.parties)
        dealer = " and a dealer" if len(self.parties) > compute else ""
        lines = [f"scheme {self.scheme}, {compute} parties{dealer}", head]
        for r in self.layers:
            err = "" if r.max_error is None else f"{r.max_error:.2e}"
            lines.append(f"{r.name:<12}{1e3 * r.seconds:>9.1f}{r.rounds:>8}"
                         f"{max(r.bytes_sent) / 1e3:>16.1f}{r.items:>7}{err:>10}")
        lines.append(f"online {self.online_seconds * 1e3:.1f} ms, {self.online_rounds} rounds; "
                     f"offline {self.offline_seconds * 1e3:.1f} ms; model sharing (setup, once "
                     f"per model) {self.setup_seconds * 1e3:.1f} ms")
        lines.append(f"bytes sent per party: online {self.bytes_sent('online')}, offline "
                     f"{self.bytes_sent('offline')}, setup {self.bytes_sent('setup')}")
        return "\n".join(lines)


def classify(model: SecureModel, features: np.ndarray, scheme: str | Scheme = registry.DEFAULT,
             n_parties: int | None = None, transport: str = "threads",
             reveal_logits: bool = False, audit: bool = False,
             timeout: float = 60.0, route=None) -> Classification:
    """Labels of `features` (float, (batch, *input_shape) or one example) under `scheme`.

    Each party's program gets only what that party owns: the client the encoded features,
    the model owner the weights, the others the public architecture.
    """
    chosen = registry.get(scheme)
    features = np.asarray(features, dtype=np.float64)
    if features.shape == model.input_shape:
        features = features[None]
    if features.shape[1:] != model.input_shape:
        raise ValueError(f"features of shape {features.shape[1:]}, the model takes "
                         f"{model.input_shape}")
    batch = features.shape[0]
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"a batch of {batch} examples; classify takes 1..{MAX_BATCH} "
                         "(mpc.limits.MAX_BATCH: memory grows with the batch)")
    encoded = model.fixed.encode(features)
    n = chosen.party_count(n_parties)
    public = model.public()
    programs = []
    for party in range(n):
        programs.append(PrivateInference(
            model=model if party == MODEL_OWNER else public,
            features=encoded if party == CLIENT else None, batch=batch,
            reveal_logits=reveal_logits, audit=audit))
    reports = run(chosen, programs, n_parties=n, transport=transport, timeout=timeout,
                  route=route)
    compute = reports[:n]
    outputs = [r.result for r in compute]
    errors: list[float | None] = [None] * len(outputs[CLIENT].layers)
    if audit:
        _, emulated = emulate(model, features)
        decode = model.fixed.decode
        for k, value in enumerate(outputs[CLIENT].intermediate):
            errors[k + 2] = float(np.abs(decode(value) - emulated[k]).max())  # after setup+input
    layers = []
    for k, stat in enumerate(outputs[CLIENT].layers):
        per_party: list[LayerStats] = [o.layers[k] for o in outputs]
        layers.append(LayerReport(stat.name, max(s.seconds for s in per_party),
                                  max(s.rounds for s in per_party),
                                  tuple(s.bytes_sent for s in per_party),
                                  max(s.items for s in per_party), errors[k],
                                  tuple(s.wait_seconds for s in per_party),
                                  tuple(s.seconds for s in per_party)))
    logits = outputs[CLIENT].logits
    return Classification(
        labels=outputs[CLIENT].labels.astype(np.int64),
        logits=model.fixed.decode(logits) if logits is not None else None,
        layers=layers, parties=reports, scheme=chosen.name, output=model.output)
