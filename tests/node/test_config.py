"""Settings: defaults, TOML file, RAKIS_* environment, and errors that name the field and range."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from node.config import (
    DEFAULT_CONFIG_TOML,
    ConfigError,
    FaultMode,
    Settings,
    load_settings,
    write_default_config,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("RAKIS_"):
            monkeypatch.delenv(name)


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(tmp_path)
    assert s.data_dir == tmp_path
    assert s.api_host == "127.0.0.1"
    assert s.listen_addrs == ["/ip4/0.0.0.0/tcp/4001"]
    assert s.llm_models == {"smollm2-135m-instruct": 1}
    assert s.fault is FaultMode.HONEST
    assert s.wire.max_frame_bytes == 256 * 1024
    assert s.config_file == tmp_path / "config.toml"


def test_default_config_file_is_valid_and_matches_defaults(tmp_path: Path) -> None:
    path = write_default_config(tmp_path)
    assert tomllib.loads(path.read_text()) is not None
    assert load_settings(tmp_path).model_dump() == Settings(data_dir=tmp_path).model_dump()
    path.write_text("api_port = 1\n")
    write_default_config(tmp_path)  # keeps the user's file
    assert path.read_text() == "api_port = 1\n"
    write_default_config(tmp_path, overwrite=True)
    assert path.read_text() == DEFAULT_CONFIG_TOML


def test_file_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.toml").write_text(
        'api_port = 9000\nlog_level = "DEBUG"\n[wire]\nmax_tokens = 100\n[llm_models]\n"tiny" = 2\n'
    )
    s = load_settings(tmp_path)
    assert (s.api_port, s.log_level, s.wire.max_tokens) == (9000, "debug", 100)
    assert s.llm_models == {"tiny": 2}
    monkeypatch.setenv("RAKIS_API_PORT", "9001")
    monkeypatch.setenv("RAKIS_WIRE__MAX_TOKENS", "50")
    monkeypatch.setenv("RAKIS_BOOTSTRAP", '["/ip4/127.0.0.1/tcp/4002/p2p/QmX"]')
    s = load_settings(tmp_path)
    assert (s.api_port, s.wire.max_tokens) == (9001, 50)
    assert s.bootstrap == ["/ip4/127.0.0.1/tcp/4002/p2p/QmX"]
    assert load_settings(tmp_path, api_port=9002).api_port == 9002


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAKIS_DATA_DIR", str(tmp_path))
    (tmp_path / "config.toml").write_text("api_port = 9100\n")
    s = load_settings()
    assert s.data_dir == tmp_path and s.api_port == 9100


@pytest.mark.parametrize(
    ("toml", "field", "words"),
    [
        ("api_port = 70000", "api_port", "less than or equal to 65535"),
        ("api_port = 0", "api_port", "greater than or equal to 1"),
        ('device = "tpu"', "device", "auto|cpu|cuda"),
        ('fault = "evil"', "fault", "'honest', 'garbage', 'off-topic' or 'silent'"),
        ('log_level = "loud"', "log_level", "'debug'"),
        ("embedding_workers = 0", "embedding_workers", "greater than or equal to 1"),
        ('[llm_models]\n"m" = 100', "llm_models.m", "less than or equal to 64"),
        ("[wire]\nmax_frame_bytes = 10", "wire.max_frame_bytes", "greater than or equal to 1024"),
        ('listen_addrs = ["localhost:4001"]', "listen_addrs", "not a multiaddr"),
        ("reveal_window_s = 0", "reveal_window_s", "greater than 0"),
        ("typo_setting = 1", "typo_setting", "unknown setting"),
    ],
)
def test_invalid_values_name_field_and_range(tmp_path: Path, toml: str, field: str, words: str) -> None:
    (tmp_path / "config.toml").write_text(toml + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    message = str(info.value)
    assert f"{field}:" in message and words in message
    assert str(tmp_path / "config.toml") in message


def test_invalid_environment_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAKIS_API_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="api_port"):
        load_settings(tmp_path)


def test_broken_toml_and_missing_explicit_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("api_port = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path, config_file=tmp_path / "nope.toml")
