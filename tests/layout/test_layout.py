"""The shape of node/: no import cycles, no oversized module without a stated reason,
no import of a module path that the layout work removed.

These are read from the source (``ast``), not by importing it, so a cycle that Python
happens to tolerate at run time (a late import inside a function) still fails here.
Imports under ``if TYPE_CHECKING:`` are annotations only and are not counted.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "node"
MAX_LINES = 500
# A module over MAX_LINES says why at its top, in its docstring, with this phrase.
SIZE_REASON = "Why this module is long:"
OLD_MODULES = (
    "node.domain",
    "node.server",
    "node.facade",
    "node.api_errors",
    "node.api_openai",
    "node.sse",
    "node.gossip",
    "node.peers",
    "node.ratelimit",
    "node.libp2p_compat",
    "node.cli_node",
    "node.cli_client",
    "node.cli_testnet",
    "node.progress",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of ``known`` that the file imports (anywhere but TYPE_CHECKING blocks)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            for alias in node.names:
                out.add(f"{module}.{alias.name}")  # `from node.api import app` names a module
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in out if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph = {name: _imported(path, name, known) for name, path in mods.items()}
    # Importing a.b.c runs a/__init__ and a/b/__init__ too, but a package's face that only
    # documents itself adds no edge; an __init__ that imports its children is counted above.
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_no_import_cycles_inside_node() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles inside node/: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_cycle_detector_finds_a_planted_cycle() -> None:
    graph = {"node.a": {"node.b"}, "node.b": {"node.c"}, "node.c": {"node.a"}, "node.d": {"node.a"}}
    assert _cycles(graph) == [["node.a", "node.b", "node.c"]]


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def test_modules_over_the_size_limit_say_why() -> None:
    unexplained = []
    for name, path in _modules().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and SIZE_REASON not in _docstring(path):
            unexplained.append(f"{name} ({lines} lines)")
    assert not unexplained, (
        f"modules over {MAX_LINES} lines without '{SIZE_REASON}' in their docstring: {unexplained}"
    )


def test_every_subpackage_init_is_its_map() -> None:
    """Each subpackage's __init__ documents what its modules do (hivemind's package map)."""
    for init in sorted((ROOT / PACKAGE).rglob("__init__.py")):
        doc = _docstring(init)
        package_dir = init.parent
        for module in sorted(package_dir.glob("*.py")):
            if module.name == "__init__.py":
                continue
            assert module.stem in doc, f"{_module_name(init)} does not map its module {module.name}"


@pytest.mark.parametrize("old", OLD_MODULES)
def test_no_import_of_a_removed_module_path(old: str) -> None:
    escaped = old.replace(".", r"\.")
    pattern = rf"(from|import) {escaped}\b"
    res = subprocess.run(
        ["git", "grep", "-nE", pattern, "--", "*.py", "*.sh", "*.toml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 1, f"{old} is still imported:\n{res.stdout}"
