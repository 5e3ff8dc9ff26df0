"""Model names -> local files.

Requests and gossip speak of models by name (`accepted_models`, `embedding_model`);
workers need a directory on disk. The built-in names point into PyPI packages so a
node works offline out of the box (two LLM families: SmolLM2 and Gemma 3, so a request's
`accepted_models` choice can be between real architectures); users add their own models by local path in
the config. Built-in paths are resolved lazily because the default LLM is a GGUF
that is converted once (~20 s) into a cached safetensors directory, and a node that
never runs it should not pay for that.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from engine import model_files

DEFAULT_LLM = "smollm2-135m-instruct"
GEMMA3_270M = "gemma3-270m"  # second built-in LLM family (Gemma 3 base model; see engine.model_files)
DEFAULT_EMBEDDING = "all-minilm-l6-v2"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$")


class ModelKind(StrEnum):
    LLM = "llm"
    EMBEDDING = "embedding"


class UnknownModelError(LookupError):
    """A model name that the registry does not know, or whose files are missing.

    The message names the model and lists what is available, because the name
    usually comes from a remote request or a config typo.
    """

    def __init__(self, name: str, available: Iterable[str], *, detail: str = "") -> None:
        self.name = name
        self.available = sorted(available)
        listed = ", ".join(self.available) or "none"
        extra = f" ({detail})" if detail else ""
        super().__init__(f"unknown model {name!r}{extra}; available: {listed}")

    def __str__(self) -> str:  # LookupError would repr() the message
        return self.args[0]


@dataclass(frozen=True)
class ModelEntry:
    """One registered model. `source` is a path, or a resolver for built-ins."""

    name: str
    kind: ModelKind
    source: Path | Callable[[], Path]
    builtin: bool = False


def _builtin_entries() -> list[ModelEntry]:
    return [
        ModelEntry(DEFAULT_LLM, ModelKind.LLM, model_files.default_llm_dir, builtin=True),
        ModelEntry(GEMMA3_270M, ModelKind.LLM, model_files.gemma3_270m_dir, builtin=True),
        ModelEntry(DEFAULT_EMBEDDING, ModelKind.EMBEDDING, model_files.minilm_dir, builtin=True),
    ]


def detect_kind(path: Path) -> ModelKind:
    """Guess a model's kind from its files: sentence-transformers dirs have modules.json."""
    if path.is_file():
        if path.suffix == ".gguf":
            return ModelKind.LLM
        raise ValueError(f"model path {path} is a file but not a .gguf file")
    if (path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file():
        return ModelKind.EMBEDDING
    if (path / "config.json").is_file():
        return ModelKind.LLM
    raise ValueError(
        f"model path {path} has neither config.json (LLM) nor modules.json (sentence-transformers)"
    )


class ModelRegistry:
    """Thread-safe map of model names to entries; built-ins are always present."""

    def __init__(self, models: Mapping[str, str | Path] | None = None) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, ModelEntry] = {e.name: e for e in _builtin_entries()}
        self._resolved: dict[str, Path] = {}
        self._hashes: dict[str, str] = {}
        for name, path in (models or {}).items():
            self.add(name, path)

    def add(
        self, name: str, path: str | Path, *, kind: ModelKind | str | None = None, replace: bool = False
    ) -> ModelEntry:
        """Register `name` for a local model directory (or .gguf file).

        Checks everything before changing anything: the name's form, that the path
        exists, its kind, and that a built-in is not shadowed unless `replace`.
        """
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(
                f"invalid model name {name!r}: use 1-128 characters from letters, digits and ._:/+-"
            )
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"model {name!r}: path {p} does not exist")
        resolved_kind = ModelKind(kind) if kind is not None else detect_kind(p)
        entry = ModelEntry(name, resolved_kind, p.resolve())
        with self._lock:
            old = self._entries.get(name)
            if old is not None and not replace:
                raise ValueError(f"model {name!r} is already registered (pass replace=True to change it)")
            self._entries[name] = entry
            self._resolved.pop(name, None)
            self._hashes.pop(name, None)
        return entry

    def names(self, kind: ModelKind | str | None = None) -> list[str]:
        """Registered names, optionally of one kind, sorted."""
        with self._lock:
            entries = list(self._entries.values())
        if kind is not None:
            kind = ModelKind(kind)
            entries = [e for e in entries if e.kind == kind]
        return sorted(e.name for e in entries)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def entry(self, name: str, kind: ModelKind | str | None = None) -> ModelEntry:
        """The entry for `name`, checking its kind; raises UnknownModelError."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise UnknownModelError(name, self.names(kind))
        if kind is not None and entry.kind != ModelKind(kind):
            raise UnknownModelError(
                name,
                self.names(kind),
                detail=f"it is a {entry.kind.value} model, not {ModelKind(kind).value}",
            )
        return entry

    def resolve(self, name: str, kind: ModelKind | str | None = None) -> Path:
        """Local directory for `name`, converting a GGUF once if needed.

        Missing files are reported as UnknownModelError naming the model, since
        to the caller a model without files is not available.
        """
        entry = self.entry(name, kind)
        with self._lock:
            cached = self._resolved.get(name)
        if cached is not None:
            return cached
        try:
            path = entry.source() if callable(entry.source) else entry.source
            if not Path(path).exists():
                raise FileNotFoundError(f"{path} does not exist")
            if Path(path).is_file() and Path(path).suffix == ".gguf":
                path = model_files.ensure_converted(path)
        except FileNotFoundError as exc:
            raise UnknownModelError(name, self.names(kind), detail=f"its files are missing: {exc}") from exc
        path = Path(path)
        with self._lock:
            self._resolved[name] = path
        return path

    def weights_hash(self, name: str, kind: ModelKind | str | None = None) -> str:
        """The model's content identity, "sha256:<hex>" (model_files.weights_hash).

        Hashes what the name points at (the GGUF file, or a directory's weight
        files; a converted GGUF reports its source file's hash) once per registry,
        and once per file version on disk thanks to model_files' hash cache.
        Raises UnknownModelError like `resolve`.
        """
        entry = self.entry(name, kind)
        with self._lock:
            cached = self._hashes.get(name)
        if cached is not None:
            return cached
        path = entry.source() if callable(entry.source) else entry.source
        try:
            digest = model_files.weights_hash(path)
        except FileNotFoundError as exc:
            raise UnknownModelError(name, self.names(kind), detail=f"its files are missing: {exc}") from exc
        with self._lock:
            self._hashes[name] = digest
        return digest
