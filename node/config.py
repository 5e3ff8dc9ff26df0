"""Node settings: defaults < ``<data_dir>/config.toml`` < ``RAKIS_*`` environment < explicit overrides.

One validated object so a typo or an out-of-range value stops the node at start-up
with a message naming the field and what it accepts, instead of failing later deep
inside gossip or the engine. Nested values use ``__`` in the environment
(``RAKIS_WIRE__MAX_TOKENS=512``); dicts and lists take JSON
(``RAKIS_LLM_MODELS='{"smollm2-135m-instruct": 2}'``).
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from consensus.puzzle import DEFAULT_DIFFICULTY
from node.wire import WireLimits

CONFIG_FILENAME = "config.toml"
ENV_PREFIX = "RAKIS_"
DEFAULT_LLM_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"

_toml_path: ContextVar[Path | None] = ContextVar("rakis_config_toml", default=None)


class ConfigError(Exception):
    """Settings are invalid or the config file cannot be read; the message names the field."""


class FaultMode(StrEnum):
    """Deliberately faulty behaviour for tests and demos; ``honest`` in production."""

    HONEST = "honest"
    GARBAGE = "garbage"
    OFF_TOPIC = "off-topic"
    SILENT = "silent"


def default_data_dir() -> Path:
    """``RAKIS_DATA_DIR`` when set, else the per-user data directory for ``rakis``."""
    env = os.environ.get(f"{ENV_PREFIX}DATA_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_data_dir("rakis"))


WorkerCount = Annotated[int, Field(ge=0, le=64)]


class VerifiedSettings(BaseModel):
    """``[verified]``: the OpenAI-compatible consensus path (``/verified/v1``).

    The security frame every verified call gets unless it overrides it in its ``rakis``
    body field, and the limits on each caller (an API key, or the client address when
    the node has no keys)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="Serve /verified/v1 (needs api_keys beyond loopback).")
    quorum: int = Field(3, ge=1, le=256, description="Nodes that must agree (1-256).")
    max_time_s: float = Field(120.0, gt=0, le=3600, description="Request deadline (0-3600 s].")
    sec_distance: float = Field(0.5, ge=0, le=2, description="Cluster cosine distance (0-2).")
    sec_percentage: float = Field(1.0, gt=0, le=1, description="Share of the quorum in the cluster.")
    embedding_model: str = Field(DEFAULT_EMBEDDING_MODEL, min_length=1)
    commit_window_s: float | None = Field(
        None, gt=0, le=60, description="Commit window; unset: a quarter of max_time_s in 2-60 s."
    )
    temperature: float = Field(0.0, ge=0, le=2, description="When the caller sends none.")
    max_tokens: int = Field(256, ge=1, le=1_000_000, description="When the caller sends none.")
    rate_limit_per_min: float = Field(60.0, gt=0, le=1_000_000, description="Calls per minute per caller.")
    rate_limit_burst: int = Field(10, ge=1, le=1_000_000, description="Burst size per caller.")
    max_concurrent: int = Field(4, ge=1, le=10_000, description="Calls in flight per caller.")


LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Settings(BaseSettings):
    """Everything the daemon reads at start-up. Field docs are the config file's comments."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        frozen=True,
    )

    data_dir: Path = Field(default_factory=default_data_dir, description="Key, config, database, logs.")
    log_level: LogLevel = Field("info", description="debug | info | warning | error | critical")

    # HTTP API
    api_host: str = Field("127.0.0.1", min_length=1, description="Bind address of the HTTP API.")
    api_port: int = Field(8420, ge=1, le=65535, description="Port of the HTTP API (1-65535).")
    admin_token: str | None = Field(None, min_length=16, description="Bearer token for admin endpoints.")
    api_keys: list[Annotated[str, Field(min_length=16, max_length=256)]] = Field(
        default_factory=list,
        description="Bearer keys for /verified/v1 (required when api_host is not loopback).",
    )
    verified: VerifiedSettings = Field(default_factory=VerifiedSettings)

    # Peer-to-peer
    listen_addrs: list[str] = Field(
        default_factory=lambda: ["/ip4/0.0.0.0/tcp/4001"], description="libp2p listen multiaddrs."
    )
    bootstrap: list[str] = Field(default_factory=list, description="Multiaddrs (with /p2p/<id>) to dial.")
    announce_addrs: list[str] = Field(
        default_factory=list,
        description="Addresses peers should dial (public or NAT-mapped); default: the listen "
        "addresses, with 0.0.0.0 expanded into this machine's interface addresses.",
    )
    relay_service: bool = Field(
        False, description="Serve as a circuit relay (v2 hop) for nodes that cannot be dialed."
    )
    relays: list[str] = Field(
        default_factory=list,
        description="Relay nodes (multiaddrs with /p2p/<id>) to reserve a slot on when this node cannot "
        "be dialed (behind NAT); it then announces its /p2p-circuit addresses through them.",
    )
    mdns: bool = Field(True, description="Discover peers on the local network.")
    dht: bool = Field(True, description="Discover peers beyond the bootstrap list through the Kademlia DHT.")
    dht_interval_s: float = Field(10.0, gt=0, le=3600, description="Seconds between DHT discovery rounds.")
    sync: bool = Field(True, description="Ask peers for the history this node missed (/rakis/sync/1).")
    sync_window_s: float = Field(600.0, gt=0, le=86400, description="How far back history sync reaches.")
    rate_limit_per_peer: float = Field(50.0, gt=0, le=100_000, description="Messages/s per peer.")
    rate_limit_burst: int = Field(200, ge=1, le=1_000_000, description="Burst size per peer.")

    # Models and compute
    llm_models: dict[str, WorkerCount] = Field(
        default_factory=lambda: {DEFAULT_LLM_MODEL: 1}, description="LLM name -> worker count (0-64)."
    )
    embedding_model: str = Field(DEFAULT_EMBEDDING_MODEL, min_length=1)
    embedding_workers: int = Field(1, ge=1, le=64, description="Embedding workers (1-64).")
    model_paths: dict[str, Path] = Field(default_factory=dict, description="Model name -> local path.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto | cpu | cuda[:N]")
    dtype: Literal["auto", "float32", "float16", "bfloat16", "int8", "q4"] = Field(
        "auto",
        description="auto (= float32 for the LLMs) | float32 | float16 | bfloat16 | int8 | q4 "
        "(int8/q4: quantized projections, fp32 compute, CPU).",
    )
    torch_threads: int = Field(0, ge=0, le=1024, description="torch CPU threads; 0 = torch's default.")

    # Protocol
    wire: WireLimits = Field(default_factory=WireLimits)
    seen_cache_entries: int = Field(100_000, ge=100, le=10_000_000)
    reveal_grace_s: float = Field(1.0, ge=0, le=600, description="Wait after quorum/deadline (0-600 s).")
    reveal_window_s: float = Field(10.0, gt=0, le=3600, description="Time allowed for reveals (0-3600 s].")
    hamming_tolerance: int = Field(8, ge=0, le=4096, description="Bits a revealed b may differ (0-4096).")
    fault: FaultMode = Field(FaultMode.HONEST, description="honest | garbage | off-topic | silent")
    orphan_packet_ttl_s: float = Field(
        600.0,
        gt=0,
        le=86_400,
        description="How long a packet for a request not seen yet waits for it (0-86400 s].",
    )
    max_orphan_packets: int = Field(
        10_000, ge=1, le=10_000_000, description="Most packets kept for unseen requests at once (1-10^7)."
    )

    # Identity puzzle and committee sortition (issue 20, docs/scale.md)
    puzzle_difficulty: int = Field(
        DEFAULT_DIFFICULTY,
        ge=0,
        le=40,
        description="Leading zero bits of the identity puzzle this node solves and demands of "
        "every peer's packets (0 = none; the default is about a minute of one core).",
    )
    sortition: bool = Field(
        True,
        description="Run a request only when this node is in its committee (with few peers, everyone is).",
    )
    committee_factor: float = Field(
        1.5, ge=1.0, le=8.0, description="Expected committee size = quorum x this (1-8)."
    )

    sortition_slack: float = Field(
        1.5,
        ge=1.0,
        le=4.0,
        description="A verifier counts a commit whose ticket passes this many times the "
        "sender's probability in its own view (absorbs differing views of the network).",
    )

    @model_validator(mode="after")
    def _wire_demands_puzzle(self) -> Settings:
        # One source of truth: every consumer of ``wire`` limits (gossip validator,
        # orchestrator) then checks the puzzle at the node's difficulty.
        if self.wire.min_puzzle_difficulty != self.puzzle_difficulty:
            limits = self.wire.model_copy(update={"min_puzzle_difficulty": self.puzzle_difficulty})
            object.__setattr__(self, "wire", limits)
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("listen_addrs", "bootstrap", "announce_addrs", "relays")
    @classmethod
    def _multiaddrs(cls, v: list[str]) -> list[str]:
        for addr in v:
            if not addr.startswith("/") or len(addr) > 512:
                raise ValueError(f"{addr!r} is not a multiaddr (like /ip4/127.0.0.1/tcp/4001)")
        return v

    @field_validator("llm_models", "model_paths")
    @classmethod
    def _model_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not name or len(name) > 256:
                raise ValueError(f"model name {name!r} must be 1-256 characters")
        return v

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @property
    def config_file(self) -> Path:
        return self.data_dir / CONFIG_FILENAME

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid settings ({origin}):"]
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling)"
        value = err.get("input")
        shown = f" (got {value!r:.80})" if value is not None and not isinstance(value, dict) else ""
        lines.append(f"  {field}: {msg}{shown}")
    return "\n".join(lines)


def load_settings(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build validated settings; raise :class:`ConfigError` naming each bad field.

    ``data_dir`` (else ``RAKIS_DATA_DIR``, else the user data dir) decides where
    ``config.toml`` is read from unless ``config_file`` names another file.
    """
    base = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    path = Path(config_file).expanduser() if config_file is not None else base / CONFIG_FILENAME
    if config_file is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_file():
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        toml: Path | None = path
    else:
        toml = None
    if data_dir is not None:
        overrides["data_dir"] = base
    token = _toml_path.set(toml)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        origin = f"{path}, {ENV_PREFIX}* environment" if toml else f"{ENV_PREFIX}* environment"
        raise ConfigError(_format_errors(exc, origin)) from None
    finally:
        _toml_path.reset(token)


DEFAULT_CONFIG_TOML = """\
# rakis node configuration. Every setting can also come from the environment:
# RAKIS_<NAME> (nested with __, e.g. RAKIS_WIRE__MAX_TOKENS=512; dicts/lists as JSON).
# Precedence: command-line flags > environment > this file > built-in defaults.

log_level = "info"            # debug | info | warning | error | critical

# HTTP API (binds to localhost unless you change it)
api_host = "127.0.0.1"
api_port = 8420               # 1-65535
# admin_token = "change-me-to-a-long-random-string"   # enables worker scaling over HTTP
# api_keys = ["a-long-random-key-0123"]  # Bearer keys for /verified/v1; required off loopback

# Peer-to-peer
listen_addrs = ["/ip4/0.0.0.0/tcp/4001"]
bootstrap = []                # e.g. ["/ip4/203.0.113.5/tcp/4001/p2p/12D3KooW..."]
announce_addrs = []           # what peers should dial, e.g. ["/ip4/203.0.113.7/tcp/4001"] behind NAT
relay_service = false         # serve as a circuit relay for nodes that cannot be dialed
relays = []                   # behind NAT with no port mapping: relay nodes to be reached through,
                              # e.g. ["/ip4/203.0.113.5/tcp/4001/p2p/12D3KooW..."]
mdns = true                   # discover peers on the local network
dht = true                    # find peers beyond the bootstrap list through the Kademlia DHT
dht_interval_s = 10.0         # seconds between DHT discovery rounds
sync = true                   # ask peers for requests missed while down (/rakis/sync/1)
sync_window_s = 600.0         # how far back history sync reaches
rate_limit_per_peer = 50.0    # messages per second per peer
rate_limit_burst = 200

# Models and compute
embedding_model = "all-minilm-l6-v2"
embedding_workers = 1         # 1-64
device = "auto"               # auto | cpu | cuda | cuda:N
dtype = "auto"                # auto (= float32 for the LLMs: consensus re-checks need one numeric class) | float32 | float16 | bfloat16 | int8 | q4
torch_threads = 0             # 0 = torch's default

# Protocol
reveal_grace_s = 1.0          # wait after quorum or deadline before asking for reveals
reveal_window_s = 10.0        # time allowed for reveals
hamming_tolerance = 8         # bits a revealed binary embedding may differ from ours
fault = "honest"              # honest | garbage | off-topic | silent (testing only)
# puzzle_difficulty = 26      # identity puzzle bits (about a minute of one core); peers must match
sortition = true              # only a committee of ~quorum x committee_factor nodes runs each request
committee_factor = 1.5        # 1-8
orphan_packet_ttl_s = 600.0   # how long a packet for a request not seen yet waits for it
max_orphan_packets = 10000    # most such packets kept at once; more are dropped

[llm_models]                  # model name -> number of workers (0-64)
"smollm2-135m-instruct" = 1

[verified]                    # the OpenAI-compatible consensus path, /verified/v1
quorum = 3                    # nodes that must agree
max_time_s = 120.0
sec_distance = 0.5            # cosine distance within the agreeing cluster
sec_percentage = 1.0
embedding_model = "all-minilm-l6-v2"
# commit_window_s = 10.0      # unset: a quarter of max_time_s within 2-60 s
rate_limit_per_min = 60.0     # per caller (API key, or address without keys)
rate_limit_burst = 10
max_concurrent = 4            # calls in flight per caller

[model_paths]                 # model name -> local directory or GGUF file
# "my-llama" = "/models/llama-3.2-1b"

[wire]                        # limits on packets this node accepts
max_frame_bytes = 262144
max_prompt_chars = 32000
max_output_chars = 32000
max_tokens = 4096
max_time_ms = 600000
max_clock_skew_ms = 60000
"""


def write_default_config(data_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write the commented default config; keep an existing one unless ``overwrite``."""
    path = Path(data_dir) / CONFIG_FILENAME
    if path.exists() and not overwrite:
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{CONFIG_FILENAME}.{os.getpid()}.tmp")
    tmp.write_text(DEFAULT_CONFIG_TOML, encoding="utf-8")
    os.replace(tmp, path)
    return path


__all__ = [
    "CONFIG_FILENAME",
    "ConfigError",
    "DEFAULT_CONFIG_TOML",
    "FaultMode",
    "Settings",
    "VerifiedSettings",
    "default_data_dir",
    "load_settings",
    "write_default_config",
]
