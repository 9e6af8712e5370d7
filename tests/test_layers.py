"""The imports run one way: each module imports only modules of lower layers (docs/ARCHITECTURE.md's
layer table), there is no cycle, and no module imports ours inside a function except the modules
that exist for an optional heavy dependency.

    python tests/test_layers.py     # every violation, one a line
"""
from __future__ import annotations

import ast
import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mnist_diffusion"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
# modules that exist for an optional heavy dependency: matplotlib, Gradio, the Inception network
LAZY = {"visualize", "demo", "inception"}


def read_layers(text: str) -> dict[str, int]:
    """module -> layer, from the `| layer | modules | ... |` table under '## Layers'."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            for name in m.group(2).replace("\\_", "_").split(","):
                if name.strip():
                    layers[name.strip()] = int(m.group(1))
    return layers


def module_of(path: Path, package: Path) -> str:
    rel = path.relative_to(package)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem  # models/x.py is the module `models`


def imports(path: Path, package: Path) -> list[tuple[str, int, bool]]:
    """(module of ours imported, line, inside a function) for every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_of(path, package)
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    depth = len(path.relative_to(package).parts)  # 1 for the package's own files, 2 inside models/
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level == depth and node.module:  # from .x import y (or ..x inside models/)
                names = [node.module.split(".")[0]]
            elif node.level == depth:  # from . import x
                names = [a.name for a in node.names]
            elif node.level < depth:  # from .layers import ... inside models/: its own package
                names = [here]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mnist_diffusion"):
            names = [(node.module.split(".") + [a.name for a in node.names])[1]]
        for name in names:
            if name != here:
                out.append((name, node.lineno, id(node) in inner))
    return out


def violations(package: Path = PACKAGE, layers: dict[str, int] | None = None) -> list[str]:
    layers = read_layers(ARCHITECTURE.read_text(encoding="utf-8")) if layers is None else layers
    files = sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    found, graph = [], {}
    for path in files:
        here = module_of(path, package)
        where = path.relative_to(package)
        if here not in layers:
            found.append(f"{where}: module {here!r} has no layer in docs/ARCHITECTURE.md")
            continue
        for name, line, inside in imports(path, package):
            graph.setdefault(here, set()).add(name)
            if name not in layers:
                found.append(f"{where}:{line}: imports {name!r}, which has no layer")
            elif inside and name not in LAZY:
                found.append(f"{where}:{line}: imports {name} inside a function (only {', '.join(sorted(LAZY))} "
                             "may be imported lazily)")
            elif not inside and layers[name] >= layers[here]:
                found.append(f"{where}:{line}: {here} (layer {layers[here]}) imports {name} (layer {layers[name]}), "
                             "not a lower layer")
    found += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle reachable in the graph, each once (depth-first search, back edges)."""
    out, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                if sorted(cycle[:-1]) not in [sorted(c[:-1]) for c in out]:
                    out.append(cycle)
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return out


def test_the_package_follows_its_layers():
    found = violations()
    assert not found, "\n".join(found)


def test_every_module_of_the_table_exists():
    layers = read_layers(ARCHITECTURE.read_text(encoding="utf-8"))
    modules = {module_of(p, PACKAGE) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert set(layers) == modules, (set(layers) - modules, modules - set(layers))


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "pkg"
    pkg.mkdir(parents=True)
    for name, text in files.items():
        (pkg / name).write_text(text)
    return pkg


def test_the_checker_catches_upward_imports_cycles_and_lazy_imports(tmp_path):
    """Not vacuous: a fake package with each kind of violation is flagged, a clean one is not."""
    layers = {"low": 0, "mid": 1, "high": 2, "visualize": 2}
    clean = _package(tmp_path / "a", {"low.py": "", "mid.py": "from .low import x\n",
                                      "high.py": "from . import mid\ndef f():\n    from .visualize import g\n",
                                      "visualize.py": "from .mid import y\n"})
    assert violations(clean, layers) == []
    bad = _package(tmp_path / "b", {"low.py": "from .mid import x\n", "mid.py": "from .low import y\n",
                                    "high.py": "def f():\n    from .low import z\n", "visualize.py": "",
                                    "stray.py": ""})
    found = violations(bad, layers)
    assert any("low (layer 0) imports mid (layer 1)" in v for v in found)
    assert any(v.startswith("import cycle: low -> mid -> low") for v in found)
    assert any("imports low inside a function" in v for v in found)
    assert any("'stray' has no layer" in v for v in found)


if __name__ == "__main__":
    print("\n".join(violations()) or "no violations")
