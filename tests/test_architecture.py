# Copyright 2026 The tstitch authors. Licensed under the Apache License, Version 2.0.
"""The package's import structure, read from the source (no module is imported): no import circle between
files and no upward import between the layers the README's architecture section names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"

#: Lowest first: a module imports only from its own layer or the layers below it.
LAYERS = (
    ("tstitch.utils", "tstitch.outputs", "tstitch.names", "tstitch.plan", "tstitch.planfile", "tstitch.compat",
     "tstitch.conditioning", "tstitch.stepcount", "tstitch.adapters", "tstitch.adaptive", "tstitch.switching",
     "tstitch.models.presets"),
    ("tstitch.denoiser", "tstitch.stitcher", "tstitch.stitchfile", "tstitch.regions"),
    ("tstitch.sampling",),
    ("tstitch.caching", "tstitch.metrics", "tstitch.zoo"),
    ("tstitch.models",),
    ("tstitch.experiments", "tstitch.tune", "tstitch.bench"),
    ("tstitch.serve", "tstitch.commands", "tstitch.cli"),
)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SOURCE / "tstitch").rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer_of(module: str) -> int | None:
    best = None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (level, len(prefix))
    return None if best is None else best[0]


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The tstitch modules ``name`` imports at run time (``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
               for node in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate.startswith("tstitch") and candidate != name:
                found.add(candidate)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {name: imports_of(name, path, known) for name, path in known.items()}
    # A package's __init__ re-exporting its submodules is not a dependency of those submodules on it.
    for name in edges:
        edges[name] = {t for t in edges[name] if not name.startswith(t + ".")}
    return edges


def test_every_module_has_a_layer():
    assert [name for name in modules() if name != "tstitch" and layer_of(name) is None] == []


def test_no_upward_import():
    upward = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
              for name, targets in graph().items() if name != "tstitch"
              for target in sorted(targets) if layer_of(target) is not None and layer_of(target) > layer_of(name)]
    assert upward == []


def test_no_import_circle():
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    assert circles == []


@pytest.mark.parametrize("core", ["tstitch.stitcher", "tstitch.plan", "tstitch.stepcount"])
def test_the_core_imports_nothing_above_it(core):
    assert {t for t in graph()[core] if layer_of(t) is not None and layer_of(t) > 1} == set()


def test_the_readme_architecture_names_every_package_and_top_level_module():
    """The README's tree stays true: each subpackage and each module directly under ``tstitch/`` has its line."""
    readme = (SOURCE.parent / "README.md").read_text(encoding="utf-8")
    tree = readme[readme.index("## Architecture"):]
    tree = tree[:tree.index("```", tree.index("```") + 3)]
    package = SOURCE / "tstitch"
    names = [f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()]
    names += [p.name for p in package.glob("*.py") if p.name != "__init__.py"]
    listed = {line.split()[0] for line in tree.splitlines() if line.startswith("  ") and line[2] != " "}
    missing = sorted(set(names) - listed)
    assert missing == []
