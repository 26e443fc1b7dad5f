"""The house's import rules, read from the source (ast), not from a running interpreter:
- no import cycle between corral modules (module-level or inside a function: a lazy import is still a dependency);
- no name starting with `_` imported from another corral package (a package's private parts are its own);
- corral/engine/ never imports the tokenizer or the chat modules: the engine knows token ids only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "corral"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, list[tuple[str, str | None, int]]]:
    """module -> [(imported corral module, imported name or None, line)]."""
    mods = {_module(p): p for p in ROOT.rglob("*.py")}
    out: dict[str, list[tuple[str, str | None, int]]] = {m: [] for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out[mod] += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("corral")]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
                if not base.startswith("corral"):
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    out[mod].append((sub, None, node.lineno) if sub in mods else (base, a.name, node.lineno))
    return out


def _package(mod: str) -> str:
    """corral.engine.engine -> corral.engine; corral.cli -> corral.cli."""
    return ".".join(mod.split(".")[:2])


GRAPH = _imports()


def _cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        on.add(m)
        for t in edges[m]:
            if t not in index:
                visit(t)
                low[m] = min(low[m], low[t])
            elif t in on:
                low[m] = min(low[m], index[t])
        if low[m] == index[m]:
            comp = []
            while True:
                t = stack.pop()
                on.discard(t)
                comp.append(t)
                if t == m:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(edges):
        if m not in index:
            visit(m)
    return out


def test_no_import_cycles():
    edges = {m: sorted({t for t, _, _ in deps if t in GRAPH and t != m}) for m, deps in GRAPH.items()}
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]  # the finder finds
    found = _cycles(edges)
    assert not found, "modules that import each other (directly or through others):\n  " + "\n  ".join(
        " <-> ".join(c) for c in found)


def test_no_private_names_across_packages():
    bad = [f"{m}:{line} imports {name} from {t}" for m, deps in GRAPH.items() for t, name, line in deps
           if name and name.startswith("_") and not name.endswith("__") and _package(t) != _package(m)]
    assert not bad, "\n  ".join(["private names imported across packages:", *bad])


@pytest.mark.parametrize("forbidden", ["corral.tokenizer", "corral.chat"])
def test_the_engine_knows_token_ids_only(forbidden):
    bad = {m for m, deps in GRAPH.items() if m.startswith("corral.engine") for t, _, _ in deps
           if t == forbidden or t.startswith(forbidden + ".")}
    assert not bad, f"corral/engine modules importing {forbidden}: {sorted(bad)}"


def _forbidden(init: Path) -> set[str]:
    """The modules a package's `__init__` docstring says it must not import (parenthesised remarks left out)."""
    import re

    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
    if "Must not import:" not in doc:
        return set()
    said = re.sub(r"\([^)]*\)", "", doc.split("Must not import:", 1)[1]).split(";")[0]
    return set(re.findall(r"corral(?:\.\w+)+", said))


PACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_keeps_its_docstring_rules(package):
    """Every package's `__init__` says what it must not import, and the code keeps to it."""
    forbidden = _forbidden(ROOT / package / "__init__.py")
    assert forbidden or package == "cli", f"corral/{package}/__init__.py says nothing of what it must not import"
    bad = sorted(f"{m}:{line} imports {t}" for m, deps in GRAPH.items() if _package(m) == f"corral.{package}"
                 for t, _, line in deps for f in forbidden if t == f or t.startswith(f + "."))
    assert not bad, "\n  ".join([f"corral/{package} breaks its own rule:", *bad])


def test_nothing_imports_the_cli():
    bad = sorted(m for m, deps in GRAPH.items() if _package(m) not in ("corral.cli", "corral.__main__")
                 for t, _, _ in deps if _package(t) == "corral.cli")
    assert not bad, f"modules importing corral.cli: {bad}"


def test_the_graph_is_read():
    """The rules above would pass on an empty graph: make sure the reader sees the imports it must."""
    assert _forbidden(ROOT / "engine" / "__init__.py") == {"corral.tokenizer", "corral.chat", "corral.serve",
                                                           "corral.train", "corral.cli"}
    assert ("corral.model.llama", None) in {(t, n) for t, n, _ in GRAPH["corral.engine.engine"]} or any(
        t == "corral.model.llama" for t, _, _ in GRAPH["corral.engine.engine"])
    assert len(GRAPH) > 60 and sum(len(d) for d in GRAPH.values()) > 200
