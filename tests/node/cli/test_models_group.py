"""``rakis models list | add`` against real model files: the built-ins from PyPI, the
tiny random Llama as a user's own model, and refusals that change nothing."""

from __future__ import annotations

import json
import tomllib

import pytest
from typer.testing import CliRunner

from node.cli.app import app
from node.cli.models_group import set_toml_entry
from node.config import write_default_config

runner = CliRunner()
pytestmark = pytest.mark.timeout(300)


def _list(data_dir) -> dict[str, dict]:
    r = runner.invoke(app, ["models", "list", "--json", "--data-dir", str(data_dir)])
    assert r.exit_code == 0, r.output
    return {m["name"]: m for m in json.loads(r.stdout)}


def test_list_shows_the_built_ins_with_their_network_identity(tmp_path) -> None:
    from engine.registry import ModelRegistry

    models = _list(tmp_path)
    assert set(models) >= {"smollm2-135m-instruct", "gemma3-270m", "all-minilm-l6-v2"}
    smol = models["smollm2-135m-instruct"]
    assert (smol["kind"], smol["architecture"], smol["dtype"], smol["workers"]) == (
        "llm",
        "llama",
        "float32",
        1,
    )
    assert smol["weights_hash"] == ModelRegistry().weights_hash("smollm2-135m-instruct")
    assert smol["size_bytes"] > 10_000_000 and smol["loaded"] is None  # no node runs here
    assert models["gemma3-270m"]["architecture"] == "gemma3"


def test_add_registers_a_local_model_and_serves_it(tmp_path, tiny_llama_dir) -> None:
    write_default_config(tmp_path)
    r = runner.invoke(
        app, ["models", "add", "my-llama", str(tiny_llama_dir), "--workers", "1", "--data-dir", str(tmp_path)]
    )
    assert r.exit_code == 0, r.output
    assert "added my-llama (llm, llama)" in r.stdout and "weights: sha256:" in r.stdout
    config = (tmp_path / "config.toml").read_text()
    assert "# " in config  # the commented default config is kept around the new entries
    parsed = tomllib.loads(config)
    assert parsed["model_paths"]["my-llama"] == str(tiny_llama_dir.resolve())
    assert parsed["llm_models"]["my-llama"] == 1
    mine = _list(tmp_path)["my-llama"]
    assert (mine["architecture"], mine["source"], mine["workers"]) == (
        "llama",
        str(tiny_llama_dir.resolve()),
        1,
    )


def test_bad_models_are_refused_and_change_nothing(tmp_path, tiny_llama_dir) -> None:
    write_default_config(tmp_path)
    before = (tmp_path / "config.toml").read_text()
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    )
    for args, expected in [
        (["nope", str(tmp_path / "missing")], "does not exist"),
        (["bad name!", str(tiny_llama_dir)], "invalid model name"),
        (["smollm2-135m-instruct", str(tiny_llama_dir)], "already registered"),
        (["gpt", str(gpt2)], "cannot run"),
    ]:
        r = runner.invoke(app, ["models", "add", *args, "--data-dir", str(tmp_path)])
        assert r.exit_code == 1 and expected in r.output, (args, r.output)
    assert (tmp_path / "config.toml").read_text() == before


def test_set_toml_entry_replaces_adds_and_keeps_comments() -> None:
    text = '# header\n[model_paths]   # comment\n"a" = "/x"\n\n[wire]\nmax_tokens = 5\n'
    out = set_toml_entry(text, "model_paths", "a", "/y")
    assert tomllib.loads(out)["model_paths"] == {"a": "/y"} and out.startswith("# header")
    out = set_toml_entry(out, "model_paths", "b", "/z")
    assert tomllib.loads(out)["model_paths"] == {"a": "/y", "b": "/z"}
    assert tomllib.loads(out)["wire"] == {"max_tokens": 5}
    out = set_toml_entry(out, "llm_models", "b", 2)
    assert tomllib.loads(out)["llm_models"] == {"b": 2}
