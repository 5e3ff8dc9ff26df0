"""rakis's top-level packages must not shadow any other installed distribution.

`pip install -e .` puts `node`, `consensus` and `engine` on sys.path next to every other
package. When one of those names is also a real distribution, whichever comes first on
sys.path wins and the other party breaks at import. That happened: transformers 5.25
began to depend on Hugging Face's `kernels` distribution, our top-level `kernels` package
shadowed it, and `import transformers.models.llama` failed in CI. The kernels now live
in `engine.kernels`; this test catches the next such clash on whatever CI installs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _our_top_level_packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return [pattern.rstrip("*") for pattern in patterns]


def test_the_package_list_is_what_is_in_the_tree():
    names = _our_top_level_packages()
    assert names, "pyproject.toml lists no packages"
    for name in names:
        assert (ROOT / name / "__init__.py").is_file(), f"pyproject.toml lists {name!r}, which is not a package here"


def test_no_top_level_package_of_ours_is_another_distribution():
    provided_by = importlib.metadata.packages_distributions()
    clashes = {
        name: sorted(set(provided_by.get(name, [])) - {"rakis"})
        for name in _our_top_level_packages()
        if set(provided_by.get(name, [])) - {"rakis"}
    }
    assert not clashes, f"top-level packages also shipped by other installed distributions: {clashes}"


def test_transformers_imports_beside_our_packages():
    """The exact import that broke in CI (transformers' hub-kernels integration)."""
    import transformers.integrations.hub_kernels  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401

    for name in _our_top_level_packages():
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        assert Path(spec.origin).resolve().is_relative_to(ROOT), f"{name} resolves outside the repository"
