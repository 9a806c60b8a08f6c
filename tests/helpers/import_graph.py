"""The import graph between the package's layers, from the source (every import, lazy ones included).

``python -m tests.helpers.import_graph [PACKAGE_DIR]`` prints each layer's arrows, the upward ones and
any circles; ``tests/test_layers.py`` fails on an upward arrow that is not in its allow-list.
``python -m tests.helpers.import_graph --update-docs`` redraws the diagram in ``docs/layout.md`` (a test
keeps it in sync with the code).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "topa_plugin"

# Lowest first. A layer may import only layers below it (and itself). The floor (utils) imports no
# stage; the pipeline's data stages (text, then features) come before the model core that reads
# features; training and evaluation use the model; ``ask`` answers one question as the lmms-eval model
# does (its reader, prompt parsing and scorer), so it sits above lmms; ``pages`` show what the layers
# below produce (an answer, a run, a TextVid file); the release importer converts into the model; the
# demo, the web demo (``serve``), the commands, the CLI and the public API sit on top.
LAYERS = ("utils", "textvid", "features", "core", "training", "lmms", "ask", "pages", "release", "demo", "serve",
          "commands", "cli", "api")
TOP_LEVEL_LAYERS = ("ask", "cli")  # top-level modules that are not the model core


def layer_of(module: str, package: Path = PACKAGE) -> str:
    """``topa_plugin.features.memory`` -> ``features``; a top-level module is the model ``core``,
    except those in ``TOP_LEVEL_LAYERS``; the package itself is the public ``api``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    if (package / parts[1]).is_dir():
        return parts[1]
    return parts[1] if parts[1] in TOP_LEVEL_LAYERS else "core"


def _module_name(path: Path, package: Path) -> str:
    parts = (package.name, *path.relative_to(package).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, package: Path) -> list[str]:
    root = package.name
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == root]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == root:
        if node.module == root:  # `from topa_plugin import configuration` imports the module
            return [f"{root}.{a.name}" if (package / f"{a.name}.py").exists() or (package / a.name).is_dir() else root
                    for a in node.names]
        return [node.module]
    return []


def module_imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source."""
    graph = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[_module_name(path, package)] = {name for node in ast.walk(tree) for name in _imported(node, package)}
    return graph


def layer_arrows(package: Path = PACKAGE) -> dict[tuple[str, str], set[str]]:
    """(from layer, to layer) -> the importing modules, for arrows between different layers."""
    arrows: dict[tuple[str, str], set[str]] = defaultdict(set)
    for module, imported in module_imports(package).items():
        for target in imported:
            a, b = layer_of(module, package), layer_of(target, package)
            if a != b:
                arrows[(a, b)].add(f"{module} -> {target}")
    return dict(arrows)


def upward(arrows: dict[tuple[str, str], set[str]]) -> dict[tuple[str, str], set[str]]:
    return {edge: why for edge, why in arrows.items() if LAYERS.index(edge[0]) < LAYERS.index(edge[1])}


def circles(arrows: dict[tuple[str, str], set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one layer (Tarjan)."""
    succ = defaultdict(set)
    for a, b in arrows:
        succ[a].add(b)
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group, key=LAYERS.index))

    for v in sorted({x for edge in arrows for x in edge}, key=LAYERS.index):
        if v not in index:
            visit(v)
    return found


FLOOR = ("utils", "pages")
LABELS = {"core": "model core", "api": "topa_plugin (public API)", "cli": "cli.py", "release": "release (import)"}
LAYOUT = PACKAGE.parent / "docs" / "layout.md"
START, END = "<!-- layer-diagram:start -->", "<!-- layer-diagram:end -->"


def mermaid(package: Path = PACKAGE) -> str:
    """A mermaid flowchart of the arrows between layers, arrows into the floor left out (every layer may use it)."""
    arrows = sorted((e for e in layer_arrows(package) if e[1] not in FLOOR),
                    key=lambda e: (LAYERS.index(e[0]), LAYERS.index(e[1])))
    used = sorted({x for edge in arrows for x in edge}, key=LAYERS.index, reverse=True)
    lines = ["```mermaid", "flowchart TD"]
    lines += [f'    {name}["{LABELS.get(name, name + "/")}"]' for name in used]
    lines += [f"    {a} --> {b}" for a, b in arrows]
    return "\n".join([*lines, "```"])


def updated_layout(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{mermaid()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--update-docs"]:
        LAYOUT.write_text(updated_layout(LAYOUT.read_text(encoding="utf-8")), encoding="utf-8")
        return 0
    package = Path(argv[0]).resolve() if argv else PACKAGE
    arrows = layer_arrows(package)
    for layer in LAYERS:
        targets = sorted({b for a, b in arrows if a == layer}, key=LAYERS.index)
        if targets:
            print(f"{layer} -> {', '.join(targets)}")
    print("upward:")
    for (a, b), why in sorted(upward(arrows).items()):
        print(f"  {a} -> {b}: " + "; ".join(sorted(why)))
    print("circles:", circles(arrows) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
