"""Dataset readers: RAVDESS (the paper's corpus) and the Hedgewars voice packs.

Both readers return :class:`Clip` records; every split is by speaker (RAVDESS actor,
Hedgewars voice group), never by clip, and :func:`split_by_group` refuses a split in which
identical audio lands on both sides.

RAVDESS
    ``03-01-EE-II-SS-RR-AA.wav``: modality (01 audio-video, 02 video-only, 03 audio-only),
    vocal channel (01 speech, 02 song), emotion (01 neutral, 02 calm, 03 happy, 04 sad,
    05 angry, 06 fearful, 07 disgust, 08 surprised), intensity (01 normal, 02 strong),
    statement (01 "Kids are talking by the door", 02 "Dogs are sitting by the door"),
    repetition (01, 02), actor (01-24; odd male, even female).

Hedgewars (Debian ``hedgewars-data``, sounds under GFDL-1.3)
    ``<voices>/<Pack>/<Phrase>.ogg``. **The label follows the phrase, not a measured or
    annotated emotion**: a pack's actor reads each phrase in character, and we group the
    phrases into emotions by what they say (:data:`HEDGEWARS_PHRASES`). Phrases not in the
    mapping (Jump1, Ow1, Kamikaze, Melon, ...) are not used. File names are matched
    case-insensitively.

    Checked against hedgewars-data 1.0.2-6 (Debian bookworm): all 31 mapped phrase names
    exist with exactly these spellings; not every pack records every phrase (the Default_es,
    Default_pl, Default_ru, Russian_pl and HillBilly packs have fewer). The names of
    Default_es, Default_pl, Default_ru and Russian_pl suggest localised recordings (Spanish,
    Polish, Russian; not verified by listening); their label is that of the phrase the file
    stands for. Sample rates and channels differ (44.1 kHz, some British files 48 kHz;
    mono or stereo); :func:`audio.load` handles that.

    Speakers: the packs Classic and Default share 20 byte-identical files and Default_uk
    shares 9 with them, so the three are one voice group, ``Default``
    (:data:`HEDGEWARS_GROUPS`). Other identical files in 1.0.2-6 are all outside the mapped
    phrases (Default/HillBilly PoisonMoan, Default_pl/Russian_pl PoisonCough and PoisonMoan,
    Firepunch/Melon/Watchthis within a pack) and so never reach a split; the duplicate check
    in :func:`split_by_group` would catch them if they did.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from audio.errors import AudioError, SplitLeakError

__all__ = [
    "Clip",
    "HEDGEWARS_GROUPS",
    "HEDGEWARS_LABELS",
    "HEDGEWARS_PHRASES",
    "RAVDESS_EMOTIONS",
    "audio_fingerprint",
    "check_no_shared_audio",
    "dedupe",
    "hedgewars_clips",
    "hedgewars_group",
    "label_counts",
    "parse_ravdess_name",
    "ravdess_clips",
    "split_by_group",
]


@dataclass(frozen=True)
class Clip:
    """One labelled recording. ``group`` is the unit a split keeps together (a speaker)."""

    path: Path
    label: str
    speaker: str
    group: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


# ---------------------------------------------------------------------------------------------
# RAVDESS
# ---------------------------------------------------------------------------------------------

RAVDESS_EMOTIONS = {
    1: "neutral", 2: "calm", 3: "happy", 4: "sad",
    5: "angry", 6: "fearful", 7: "disgust", 8: "surprised",
}
_RAVDESS_MODALITY = {1: "audio-video", 2: "video-only", 3: "audio-only"}
_RAVDESS_CHANNEL = {1: "speech", 2: "song"}
_RAVDESS_INTENSITY = {1: "normal", 2: "strong"}
_RAVDESS_STATEMENT = {1: "Kids are talking by the door", 2: "Dogs are sitting by the door"}
_RAVDESS_RE = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.wav$", re.I)


def parse_ravdess_name(name: str) -> dict:
    """Parse a RAVDESS file name ``MM-VV-EE-II-SS-RR-AA.wav`` into its fields.

    Returns a dict with ``modality, vocal_channel, emotion, intensity, statement,
    repetition, actor`` (ints) and ``emotion_label, modality_label, vocal_channel_label,
    intensity_label, statement_text, sex``. Raises ``ValueError`` for other names or
    out-of-range codes.
    """
    m = _RAVDESS_RE.match(os.path.basename(name))
    if not m:
        raise ValueError(f"{name}: not a RAVDESS file name (MM-VV-EE-II-SS-RR-AA.wav)")
    mod, ch, emo, inten, stmt, rep, actor = (int(g) for g in m.groups())
    tables = [(mod, _RAVDESS_MODALITY, "modality"), (ch, _RAVDESS_CHANNEL, "vocal channel"),
              (emo, RAVDESS_EMOTIONS, "emotion"), (inten, _RAVDESS_INTENSITY, "intensity"),
              (stmt, _RAVDESS_STATEMENT, "statement")]
    for value, table, what in tables:
        if value not in table:
            raise ValueError(f"{name}: unknown {what} code {value:02d}")
    if rep not in (1, 2):
        raise ValueError(f"{name}: unknown repetition code {rep:02d}")
    if not 1 <= actor <= 24:
        raise ValueError(f"{name}: actor {actor:02d} outside 01-24")
    return {
        "modality": mod, "modality_label": _RAVDESS_MODALITY[mod],
        "vocal_channel": ch, "vocal_channel_label": _RAVDESS_CHANNEL[ch],
        "emotion": emo, "emotion_label": RAVDESS_EMOTIONS[emo],
        "intensity": inten, "intensity_label": _RAVDESS_INTENSITY[inten],
        "statement": stmt, "statement_text": _RAVDESS_STATEMENT[stmt],
        "repetition": rep, "actor": actor, "sex": "male" if actor % 2 else "female",
    }


def ravdess_clips(root: str | os.PathLike, *, speech_only: bool = True,
                  audio_only: bool = True) -> list[Clip]:
    """Walk ``root`` recursively for RAVDESS WAV files and return one :class:`Clip` each.

    ``label`` is the emotion name, ``speaker`` and ``group`` are ``"Actor_AA"``. Files whose
    names do not follow the scheme are skipped; song (vocal channel 02) and non-audio
    modalities are skipped unless ``speech_only``/``audio_only`` are False.
    """
    root = Path(root)
    if not root.is_dir():
        raise AudioError(f"{root}: RAVDESS directory not found")
    clips = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or not _RAVDESS_RE.match(path.name):
            continue
        meta = parse_ravdess_name(path.name)
        if speech_only and meta["vocal_channel"] != 1:
            continue
        if audio_only and meta["modality"] != 3:
            continue
        actor = f"Actor_{meta['actor']:02d}"
        clips.append(Clip(path, meta["emotion_label"], actor, actor, meta))
    return clips


# ---------------------------------------------------------------------------------------------
# Hedgewars
# ---------------------------------------------------------------------------------------------

#: Phrase -> emotion label. The label follows the phrase, not a measured emotion.
HEDGEWARS_PHRASES: dict[str, tuple[str, ...]] = {
    "happy": ("Laugh", "Victory", "Flawless", "Amazing", "Brilliant", "Excellent"),
    "angry": ("Traitor", "Illgetyou", "Youllregretthat", "Coward", "Stupid", "Cutitout",
              "Leavemealone", "Comeonthen"),
    "fearful": ("Incoming", "Takecover", "Uh-oh", "Hurry", "Runaway"),
    "sad": ("Nooo", "Byebye", "Ohdear", "Solong", "Drat"),
    "surprised": ("Oops", "Whatthe"),
    "neutral": ("Hello", "Yessir", "Reinforcements", "Sameteam", "Enemydown"),
}
#: Class order used by the trained model.
HEDGEWARS_LABELS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "fearful", "surprised")
_PHRASE_TO_LABEL = {p.lower(): lab for lab, ps in HEDGEWARS_PHRASES.items() for p in ps}

#: Voice packs that share recordings and are therefore one speaker group.
HEDGEWARS_GROUPS: dict[str, str] = {"classic": "Default", "default": "Default",
                                    "default_uk": "Default"}

_AUDIO_EXTS = {".ogg", ".wav", ".flac"}


def hedgewars_group(pack: str) -> str:
    """The voice group of a pack (Classic, Default, Default_uk -> ``Default``)."""
    return HEDGEWARS_GROUPS.get(pack.lower(), pack)


def hedgewars_clips(root: str | os.PathLike) -> list[Clip]:
    """Read ``<root>/<Pack>/<Phrase>.ogg`` (root is the ``.../Sounds/voices`` directory, or
    the folder ``python -m audio.fetch_hedgewars`` filled) and return the clips whose phrase
    is in :data:`HEDGEWARS_PHRASES`.

    ``label`` is the phrase-derived emotion (not a measured emotion), ``speaker`` the pack,
    ``group`` the voice group (:func:`hedgewars_group`); ``meta`` holds pack and phrase.
    """
    root = Path(root)
    if not root.is_dir():
        raise AudioError(
            f"{root}: Hedgewars voices directory not found; run "
            f"'python -m audio.fetch_hedgewars {root}' (or 'make data'), or point at "
            "/usr/share/games/hedgewars/Data/Sounds/voices")
    clips = []
    for pack_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(pack_dir.iterdir()):
            if not path.is_file() or path.suffix.lower() not in _AUDIO_EXTS:
                continue
            label = _PHRASE_TO_LABEL.get(path.stem.lower())
            if label is None:
                continue
            clips.append(Clip(path, label, pack_dir.name, hedgewars_group(pack_dir.name),
                              {"pack": pack_dir.name, "phrase": path.stem}))
    return clips


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------

def audio_fingerprint(path: str | os.PathLike, kind: str = "bytes") -> str:
    """SHA-256 of the file bytes (``kind="bytes"``) or of the decoded samples
    (``kind="samples"``: float32 at the file's own rate, all channels)."""
    if kind == "bytes":
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if kind == "samples":
        import soundfile as sf

        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioError(f"{path}: cannot decode for fingerprint ({exc})") from exc
        h = hashlib.sha256(str((rate, data.shape)).encode())
        h.update(data.tobytes())
        return h.hexdigest()
    raise ValueError(f"unknown fingerprint kind {kind!r}")


def check_no_shared_audio(train: Iterable[Clip], test: Iterable[Clip],
                          kind: str = "bytes") -> None:
    """Raise :class:`SplitLeakError` if any recording in ``test`` is identical to one in
    ``train`` (by :func:`audio_fingerprint`)."""
    seen = {audio_fingerprint(c.path, kind): c for c in train}
    leaks = []
    for c in test:
        other = seen.get(audio_fingerprint(c.path, kind))
        if other is not None:
            leaks.append(f"{other.path} (train) == {c.path} (test)")
    if leaks:
        raise SplitLeakError(f"identical audio on both sides of the split: {len(leaks)} "
                             f"file(s), e.g. {'; '.join(leaks[:3])}")


def split_by_group(clips: Sequence[Clip], test_groups: Iterable[str],
                   kind: str = "bytes") -> tuple[list[Clip], list[Clip]]:
    """Split by speaker group: clips whose ``group`` is in ``test_groups`` go to the test side.

    Raises ``ValueError`` for a test group with no clips and :class:`SplitLeakError` if
    identical audio ends up on both sides (e.g. two packs sharing files under different
    groups).
    """
    test_groups = set(test_groups)
    present = {c.group for c in clips}
    missing = test_groups - present
    if missing:
        raise ValueError(f"test groups without clips: {sorted(missing)}; "
                         f"groups present: {sorted(present)}")
    train = [c for c in clips if c.group not in test_groups]
    test = [c for c in clips if c.group in test_groups]
    check_no_shared_audio(train, test, kind)
    return train, test


def dedupe(clips: Sequence[Clip], kind: str = "bytes") -> list[Clip]:
    """Drop clips whose audio is identical to an earlier clip (first occurrence wins)."""
    seen: set[str] = set()
    out = []
    for c in clips:
        fp = audio_fingerprint(c.path, kind)
        if fp not in seen:
            seen.add(fp)
            out.append(c)
    return out


def label_counts(clips: Iterable[Clip]) -> dict[str, int]:
    """Number of clips per label."""
    return dict(Counter(c.label for c in clips))
