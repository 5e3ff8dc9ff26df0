"""The orchestrator package's shape: one job per module, no helper importing the
orchestrator back, a map naming every module, and one copy of the stage names.
(Import cycles and module sizes across node/ are checked by tests/layout.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import node.orchestrator as pkg

PKG_DIR = Path(pkg.__file__).parent
MODULES = sorted(p.stem for p in PKG_DIR.glob("*.py") if p.stem != "__init__")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_helper_imports_the_orchestrator_back():
    for name in MODULES:
        if name == "orchestrator":
            continue
        assert "node.orchestrator.orchestrator" not in _imports(PKG_DIR / f"{name}.py"), name


def test_the_package_docstring_is_a_map_of_every_module_and_imports_nothing():
    source = (PKG_DIR / "__init__.py").read_text()
    tree = ast.parse(source)
    assert not any(isinstance(n, ast.Import | ast.ImportFrom) for n in tree.body)
    doc = ast.get_docstring(tree) or ""
    for name in MODULES:
        assert f"``{name}``" in doc, f"the package map does not name {name}.py"
    for name in MODULES:
        module_doc = ast.get_docstring(ast.parse((PKG_DIR / f"{name}.py").read_text()))
        assert module_doc, f"{name}.py has no docstring saying why it exists"


def test_the_cli_reads_the_one_copy_of_the_stage_names_without_heavy_imports():
    from node.cli import progress
    from node.orchestrator import stages, views

    assert progress.STAGES is stages.STAGES is views.STAGES
    code = (
        "import sys; import node.orchestrator.stages; "
        "heavy = [m for m in ('trio', 'numpy', 'consensus.quorum') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
