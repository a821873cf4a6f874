"""The package dependency order of docs/architecture.md, checked on the imports in every file.

`mpc` at the bottom, then `audio` and `protocols` side by side (both may use `mpc`, neither
the other), then `nn` (which uses `mpc` and `protocols`, not `audio`: features are computed
before inference), then `experiments`. Each package keeps its errors in its own `errors`
module, so no package reaches up a layer for an error type. Imports anywhere in a file
count, including those inside functions. Packages that do not exist yet are skipped.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("mpc", "audio", "protocols", "nn", "experiments")

# package -> top-level packages of ours it must not import
RULES: dict[str, set[str]] = {
    "mpc": {"audio", "protocols", "nn", "experiments"},
    "audio": {"protocols", "nn", "experiments"},
    "protocols": {"audio", "nn", "experiments"},
    "nn": {"audio", "experiments"},
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


def _violations(package: str) -> list[str]:
    forbidden = RULES[package]
    problems = []
    for path in _files(package):
        found = [(line, name) for line, name in _imports(path)
                 if name.split(".")[0] in forbidden]
        for line, name in found:
            # `from nn import layers` yields both "nn" and "nn.layers": name the submodule
            if any(other_line == line and other.startswith(name + ".")
                   for other_line, other in found):
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
    (tmp_path / "audio" / "ok.py").write_text("from mpc.errors import SottovoceError\n"
                                              "from mpc import prg\n"
                                              "from .errors import AudioError\n")
    (tmp_path / "audio" / "bad.py").write_text("from protocols import run\n"
                                               "def f():\n    import nn.layers\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    mpc_problems = _violations("mpc")
    assert any("imports protocols.schemes.additive" in p for p in mpc_problems)
    assert any("__init__.py:2 imports nn.layers" in p for p in mpc_problems)
    assert not any("numpy" in p or "mpc." in p for p in mpc_problems)
    assert _imports(fake / "__init__.py")[:2] == [(1, "mpc"), (1, "mpc.prg")]
    assert (4, "mpc.net") in _imports(fake / "mod.py")
    audio_problems = _violations("audio")
    assert audio_problems == ["audio/bad.py:1 imports protocols.run",
                              "audio/bad.py:3 imports nn.layers"]


#: Modules that reach the network or the process table: only the transport may use them.
TRANSPORT_ONLY = ("socket", "ssl", "select", "selectors", "multiprocessing", "mpc.net.tcp",
                  "mpc.net.inprocess", "mpc.launch", "mpc.cluster")


#: The one module of protocols/ that starts parties (threads or processes) for a run.
LAUNCHER = Path("protocols/run.py")


def _transport_uses(package: str) -> list[str]:
    return sorted(f"{path.relative_to(ROOT)}:{line} imports {name}"
                  for path in _files(package) if path.relative_to(ROOT) != LAUNCHER
                  for line, name in _imports(path)
                  if any(name == m or name.startswith(m + ".") for m in TRANSPORT_ONLY))


def test_protocol_code_never_touches_sockets():
    """Schemes, blocks and layers talk only through the `Channel` they are given; sockets,
    TLS and process launchers stay in mpc (and the deployment in experiments). The runner
    `protocols/run.py` starts the parties through `mpc.launch` and is the one exception."""
    problems = _transport_uses("protocols") + _transport_uses("nn")
    assert not problems, "protocol code reaches the transport:\n" + "\n".join(problems)


def test_the_socket_check_catches_a_scheme_with_a_socket(tmp_path, monkeypatch):
    (tmp_path / "protocols" / "schemes").mkdir(parents=True)
    (tmp_path / "protocols" / "schemes" / "leaky.py").write_text(
        "def f():\n    import socket\nfrom mpc.net import tcp\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert _transport_uses("protocols") == ["protocols/schemes/leaky.py:2 imports socket",
                                            "protocols/schemes/leaky.py:3 imports mpc.net.tcp"]
