"""The dealer's file mode: preprocessing written to one file per party, each used once.

`write_material` plays the dealer offline, with no network: it draws a fresh seed per party,
runs the same seed-compressed dealing as `store.serve` (every party expands its shares from
its seed; only the last party needs the dealer's corrections), and writes
`party-<i>.material` for each party. `load_material` is the party's side: it checks that
the file was made for this plan, party and party count, expands the material, and consumes
the file before returning, so the same material can never be loaded twice.

A file is an `.npz` archive of plain arrays (never pickle) holding a format tag, the party
id and count, a SHA-256 fingerprint of the plan, the party's 16-byte seed and, for the last
party only, the flat corrections. It is a secret: whoever reads party i's file knows party
i's share of every mask, so keep it with that party only. Consuming a file renames it to
`party-<i>.material.consumed` (the rename is atomic, so of two concurrent loads only one
wins) and empties it, so no secret stays on disk.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from mpc.atomic import write_npz
from mpc.errors import PreprocessingError
from mpc.prg import KEY_BYTES, PRG
from protocols.base import Protocol
from protocols.preprocessing.correlations import (
    Request,
    correction_words,
    deal,
    expand,
    split_corrections,
)
from protocols.preprocessing.store import MaterialStore

FORMAT = "sottovoce-dealer-material-v1"
SUFFIX = ".material"
CONSUMED = ".consumed"


def material_path(directory: str | os.PathLike, party_id: int) -> Path:
    """Where party `party_id`'s material lives in `directory`."""
    return Path(directory) / f"party-{party_id}{SUFFIX}"


def plan_fingerprint(plan: list[Request], n_parties: int) -> bytes:
    """SHA-256 of the plan's requests (their reprs, in order) and the party count."""
    digest = hashlib.sha256(FORMAT.encode())
    digest.update(f"|parties={n_parties}|".encode())
    for request in plan:
        digest.update(repr(request).encode())
        digest.update(b"\n")
    return digest.digest()


def write_material(plan: list[Request], n_parties: int,
                   directory: str | os.PathLike) -> list[Path]:
    """Deal `plan` for `n_parties` parties into `directory`; one file per party, in order.

    Refuses to overwrite material that is already there (used or not)."""
    if n_parties < 2:
        raise ValueError("dealer material is for at least 2 parties")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [material_path(directory, i) for i in range(n_parties)]
    for path in paths:
        for existing in (path, path.with_name(path.name + CONSUMED)):
            if existing.exists():
                raise PreprocessingError(f"{existing} already exists: deal into an empty "
                                         "directory, material is never overwritten or reused")
    seeds = [os.urandom(KEY_BYTES) for _ in range(n_parties)]
    prgs = [PRG(seed) for seed in seeds]
    masks: dict[int, np.ndarray] = {}  # fixed-operand masks, reused by later triples
    parts = [c.reshape(-1) for request in plan for c in deal(request, prgs, masks)]
    corrections = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    fingerprint = plan_fingerprint(plan, n_parties)
    for party, (path, seed) in enumerate(zip(paths, seeds, strict=True)):
        last = party == n_parties - 1
        arrays = {
            "format": np.frombuffer(FORMAT.encode(), dtype=np.uint8),
            "party": np.array([party, n_parties], dtype=np.int64),
            "fingerprint": np.frombuffer(fingerprint, dtype=np.uint8),
            "seed": np.frombuffer(seed, dtype=np.uint8),
            "corrections": corrections if last else np.zeros(0, dtype=np.uint64),
        }
        write_npz(path, arrays)
    return paths


def _read(path: Path) -> dict[str, np.ndarray]:
    consumed = path.with_name(path.name + CONSUMED)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if consumed.exists():
            raise PreprocessingError(f"preprocessing file {path} was already consumed: "
                                     "material is used once; deal again") from None
        raise PreprocessingError(f"preprocessing file {path} does not exist") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as exc:  # zip, header or pickle refusal: all mean a damaged file
        raise PreprocessingError(f"preprocessing file {path} is damaged or not dealer "
                                 f"material ({type(exc).__name__})") from None
    missing = {"format", "party", "fingerprint", "seed", "corrections"} - set(arrays)
    if missing:
        raise PreprocessingError(f"preprocessing file {path} lacks {sorted(missing)}")
    return arrays


def load_material(path: str | os.PathLike, plan: list[Request], party_id: int,
                  n_parties: int) -> MaterialStore:
    """Party `party_id`'s material from its file, checked against `plan`; the file is
    consumed (renamed and emptied) before this returns, so a second load fails."""
    path = Path(path)
    arrays = _read(path)
    if arrays["format"].tobytes() != FORMAT.encode():
        raise PreprocessingError(f"preprocessing file {path} is not in format {FORMAT}")
    party = arrays["party"]
    if party.dtype != np.int64 or party.shape != (2,):
        raise PreprocessingError(f"preprocessing file {path} has a damaged party record")
    if (int(party[0]), int(party[1])) != (party_id, n_parties):
        raise PreprocessingError(
            f"preprocessing file {path} was dealt to party {int(party[0])} of "
            f"{int(party[1])}, not to party {party_id} of {n_parties}")
    if arrays["fingerprint"].tobytes() != plan_fingerprint(plan, n_parties):
        raise PreprocessingError(f"preprocessing file {path} was dealt for a different plan "
                                 "than this computation's (fingerprint mismatch)")
    seed = arrays["seed"]
    if seed.dtype != np.uint8 or seed.shape != (KEY_BYTES,):
        raise PreprocessingError(f"preprocessing file {path} has a damaged seed")
    is_last = party_id == n_parties - 1
    flat = arrays["corrections"]
    expected = sum(correction_words(r) for r in plan) if is_last else 0
    if flat.dtype != np.uint64 or flat.ndim != 1 or flat.size != expected:
        raise PreprocessingError(f"preprocessing file {path} holds corrections "
                                 f"{flat.dtype}{flat.shape}; the plan needs {expected} "
                                 "uint64 words")
    _consume(path)
    prg = PRG(seed.tobytes())
    store = MaterialStore()
    if is_last:
        for request, fields in zip(plan, split_corrections(plan, flat), strict=True):
            supply = iter(fields)
            store.add(request, expand(request, prg, True, lambda field, s=supply: next(s)))
    else:
        for request in plan:
            store.add(request, expand(request, prg, False, _no_corrections))
    return store


def _consume(path: Path) -> None:
    """Claim the file by an atomic rename (only one loader can win), then empty it."""
    consumed = path.with_name(path.name + CONSUMED)
    try:
        os.rename(path, consumed)
    except FileNotFoundError:
        raise PreprocessingError(f"preprocessing file {path} was already consumed: "
                                 "material is used once; deal again") from None
    with open(consumed, "r+b") as handle:
        handle.truncate(0)
        handle.flush()
        os.fsync(handle.fileno())


def _no_corrections(field: object) -> np.ndarray:
    raise AssertionError("only the last party has corrections")


def use_material_file(protocol: Protocol, path: str | os.PathLike,
                      plan: list[Request]) -> None:
    """Give a dealer-based protocol (e.g. `Additive`) its material from `path`, instead of
    the networked offline phase (`protocol.preprocess`)."""
    if not protocol.needs_dealer:
        raise TypeError(f"the {protocol.name} scheme takes no dealer material")
    protocol.material = load_material(path, plan, protocol.party_id, protocol.n_parties)
