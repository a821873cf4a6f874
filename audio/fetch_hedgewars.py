"""Fetch the Hedgewars voice packs (Debian package ``hedgewars-data``) into a folder.

Usage::

    python -m audio.fetch_hedgewars data/hedgewars

The script runs ``apt-get download hedgewars-data`` in a temporary directory (running
``apt-get update`` first if the download fails, e.g. because the package lists are missing),
unpacks the ``.deb`` (with ``dpkg-deb -x`` when available, otherwise in pure Python: a ``.deb``
is an ``ar`` archive holding ``data.tar.*``) and copies only
``usr/share/games/hedgewars/Data/Sounds/voices/`` into the target folder, giving
``<target>/<Pack>/<Phrase>.ogg``.

Where apt is not available (not Debian/Ubuntu), the script says so: install or unpack
``hedgewars-data`` by other means and point the reader at the ``voices`` directory, e.g.
``audio.datasets.hedgewars_clips("/usr/share/games/hedgewars/Data/Sounds/voices")`` or
``python -m experiments.train --data /usr/share/games/hedgewars/Data/Sounds/voices``.

The sounds are licensed GFDL-1.3 (see ``/usr/share/doc/hedgewars-data/copyright``).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from audio.errors import FetchError

PACKAGE = "hedgewars-data"
VOICES_SUBDIR = "usr/share/games/hedgewars/Data/Sounds/voices"
INSTALLED_VOICES = Path("/") / VOICES_SUBDIR


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def download_deb(workdir: Path) -> Path:
    """Download the ``.deb`` into ``workdir`` with apt-get and return its path."""
    if shutil.which("apt-get") is None:
        raise FetchError(
            "apt-get is not available on this machine. Install or unpack the Debian package "
            f"'{PACKAGE}' by other means and point the reader at its voices directory "
            f"(.../{VOICES_SUBDIR}), e.g. python -m experiments.train --data <that dir>."
        )
    result = _run(["apt-get", "download", PACKAGE], workdir)
    if result.returncode != 0:
        print(f"apt-get download failed ({result.stderr.strip()}); running apt-get update",
              file=sys.stderr)
        upd = _run(["apt-get", "update"], workdir)
        if upd.returncode != 0:
            raise FetchError(f"apt-get update failed: {upd.stderr.strip()}")
        result = _run(["apt-get", "download", PACKAGE], workdir)
        if result.returncode != 0:
            raise FetchError(f"apt-get download {PACKAGE} failed: {result.stderr.strip()}")
    debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise FetchError(f"apt-get download succeeded but no {PACKAGE}_*.deb was found")
    return debs[-1]


def _ar_members(data: bytes) -> dict[str, bytes]:
    """Parse a (System V / GNU) ``ar`` archive; return member name -> bytes."""
    if not data.startswith(b"!<arch>\n"):
        raise FetchError("not an ar archive (bad magic)")
    pos = 8
    members: dict[str, bytes] = {}
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        pos += 60
        members[name] = data[pos:pos + size]
        pos += size + (size % 2)
    return members


def extract_deb(deb: Path, dest: Path) -> None:
    """Unpack the file system tree of ``deb`` into ``dest``."""
    if shutil.which("dpkg-deb"):
        result = _run(["dpkg-deb", "-x", str(deb), str(dest)], dest)
        if result.returncode == 0:
            return
        print(f"dpkg-deb failed ({result.stderr.strip()}); unpacking in Python", file=sys.stderr)
    members = _ar_members(deb.read_bytes())
    names = [n for n in members if n.startswith("data.tar")]
    if not names:
        raise FetchError(f"{deb.name}: no data.tar member")
    payload = members[names[0]]
    if names[0].endswith(".zst"):
        raise FetchError(f"{deb.name}: data.tar.zst needs dpkg-deb (or the zstd tool)")
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as tar:
        tar.extractall(dest, filter="data")


def fetch(target: str | os.PathLike) -> Path:
    """Download, unpack and copy the voice packs into ``target``; return ``target``."""
    target = Path(target)
    with tempfile.TemporaryDirectory(prefix="hedgewars-") as tmp:
        tmp = Path(tmp)
        deb = download_deb(tmp)
        root = tmp / "root"
        root.mkdir()
        extract_deb(deb, root)
        voices = root / VOICES_SUBDIR
        if not voices.is_dir():
            raise FetchError(f"{deb.name} does not contain {VOICES_SUBDIR}")
        target.mkdir(parents=True, exist_ok=True)
        # Resolve symlinks (some packages link duplicate files) so the copy is self-contained.
        shutil.copytree(voices, target, dirs_exist_ok=True, symlinks=False)
    return target


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: the exit status, 1 with a hint when the fetch fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default="data/hedgewars",
                        help="folder to receive <Pack>/<Phrase>.ogg (default data/hedgewars)")
    args = parser.parse_args(argv)
    try:
        out = fetch(args.target)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if INSTALLED_VOICES.is_dir():
            print(f"note: an installed copy exists at {INSTALLED_VOICES}; pass it as --data",
                  file=sys.stderr)
        return 1
    packs = sorted(p.name for p in out.iterdir() if p.is_dir())
    n = sum(1 for _ in out.rglob("*.ogg"))
    print(f"{n} Ogg files in {len(packs)} voice packs under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
