"""The package dependency order of ARCHITECTURE.md, checked on the imports in every file.

`mpc` and `audio` at the bottom (audio may use `mpc.errors` only), then `protocols` (which
uses only `mpc`), then `nn`, then `experiments`. Imports anywhere in a file count, including
those inside functions. Packages that do not exist yet are skipped.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("mpc", "audio", "protocols", "nn", "experiments")

# package -> (forbidden top-level packages, modules of ours it may import despite that)
RULES: dict[str, tuple[set[str], set[str]]] = {
    "mpc": ({"audio", "protocols", "nn", "experiments"}, set()),
    "audio": ({"mpc", "protocols", "nn", "experiments"}, {"mpc.errors"}),
    "protocols": ({"audio", "nn", "experiments"}, set()),
    "nn": ({"audio", "experiments"}, set()),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from mpc import net` imports mpc.net: count the names as submodules too
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names
                      if alias.name != "*"]
    return found


def _files(package: str) -> list[Path]:
    folder = ROOT / package
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _allowed(name: str, allowed: set[str]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in allowed)


def _violations(package: str) -> list[str]:
    forbidden, allowed = RULES[package]
    problems = []
    for path in _files(package):
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top not in forbidden or _allowed(name, allowed):
                continue
            # `from mpc import errors` yields both "mpc" and "mpc.errors": judge the
            # package entry by its submodules, which are listed separately
            if name == top and allowed and any(a.startswith(top + ".") for a in allowed):
                continue
            problems.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return problems


@pytest.mark.parametrize("package", sorted(RULES))
def test_dependency_order(package):
    if not (ROOT / package).is_dir():
        pytest.skip(f"package {package} does not exist yet")
    problems = _violations(package)
    assert not problems, f"{package} breaks the dependency order:\n" + "\n".join(problems)


def test_every_file_parses_and_mpc_is_scanned():
    assert _files("mpc"), "the mpc package was not found"
    for package in OURS:
        if (ROOT / package).is_dir():
            for path in _files(package):
                _imports(path)


def test_checker_catches_violations(tmp_path, monkeypatch):
    """The scanner itself: relative, nested and aliased imports are all seen."""
    fake = tmp_path / "mpc" / "sub"
    fake.mkdir(parents=True)
    (tmp_path / "mpc" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("from .. import prg\nimport nn.layers\n")
    (fake / "mod.py").write_text("import numpy\n"
                                 "def f():\n    import protocols.schemes.additive as p\n"
                                 "from ..net import tcp\n")
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "ok.py").write_text("from mpc.errors import AudioError\n"
                                              "from mpc import errors\n")
    (tmp_path / "audio" / "bad.py").write_text("from mpc import prg\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    mpc_problems = _violations("mpc")
    assert any("imports protocols.schemes.additive" in p for p in mpc_problems)
    assert any("__init__.py:2 imports nn.layers" in p for p in mpc_problems)
    assert not any("numpy" in p or "mpc." in p for p in mpc_problems)
    assert _imports(fake / "__init__.py")[:2] == [(1, "mpc"), (1, "mpc.prg")]
    assert (4, "mpc.net") in _imports(fake / "mod.py")
    audio_problems = _violations("audio")
    assert audio_problems == ["audio/bad.py:1 imports mpc.prg"]
