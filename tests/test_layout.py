"""The package's shape: no import cycles inside brainseg, and the library never imports the scripts."""
import ast
from pathlib import Path

from conftest import ROOT

PKG = ROOT / "brainseg"
SCRIPTS = {"app", "train", "push_to_hub", "webapp_main"}


def imports_of(path: Path) -> set:
    """brainseg modules and top-level scripts that ``path`` imports, at module level or inside functions."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                deps.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif node.module and node.module.split(".")[0] == "brainseg" and "." in node.module:
                deps.add(node.module.split(".")[1])
            elif node.module in SCRIPTS:
                deps.add(node.module)
        elif isinstance(node, ast.Import):
            deps.update(a.name.split(".")[1] if a.name.startswith("brainseg.") else a.name
                        for a in node.names if a.name.startswith("brainseg.") or a.name in SCRIPTS)
    return deps


def graph() -> dict:
    mods = {p.stem for p in PKG.glob("*.py")} - {"__init__"}  # __init__ only re-exports, lazily
    return {m: {d for d in imports_of(PKG / f"{m}.py") if d != m and (d in mods or d in SCRIPTS)} for m in mods}


def find_cycle(g: dict):
    """One import cycle as a list of modules, or None (depth-first search, colouring visited nodes)."""
    state, path = {}, []

    def visit(n):
        state[n] = "open"
        path.append(n)
        for d in sorted(g.get(n, ())):
            if state.get(d) == "open":
                return path[path.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        state[n] = "done"
        path.pop()
        return None

    for n in sorted(g):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_brainseg_has_no_import_cycles():
    assert find_cycle(graph()) is None


def test_the_library_never_imports_the_scripts():
    offenders = {m: sorted(d & SCRIPTS) for m, d in graph().items() if d & SCRIPTS}
    assert not offenders


def test_the_layout_page_names_every_module_and_no_removed_one():
    """docs/layout.md is where a newcomer looks: each module of the package is listed, nothing that is gone."""
    import re

    text = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^  (\w+)\.py", text, flags=re.M))
    mods = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    assert mods - listed == set(), "not in docs/layout.md"
    assert listed - mods == set(), "in docs/layout.md but gone"
