"""Start-up failures as one line with the fix: checked early where possible, mapped in one place.

A node that cannot start should say why in one line a newcomer can act on, not in a
traceback from three layers down (the engine registry, hypercorn's bind, libp2p's
multiaddr parser). Two halves:

- ``preflight(settings)`` runs before anything slow (no model is loaded, no socket is
  kept): the models to load are known and of a supported architecture, the listen and
  bootstrap addresses parse, and the HTTP and libp2p ports are free. It raises
  ``StartupError``. It is fast because a wrong model name should not cost a libp2p
  start and an engine load to find out.
- ``explain(exc)`` turns what can still fail later (a model whose files are missing, a
  port taken between the check and the bind, a bad data directory) into the same kind
  of line. ``rakis node start`` prints ``error: <line>`` and exits 1.

Only the daemon's start-up path calls these (``node.daemon.run.serve`` and
``node.cli.node_group``); the checks read files and bind sockets briefly, nothing else.
"""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path
from typing import Any

__all__ = ["StartupError", "explain", "preflight"]

_IN_USE = (errno.EADDRINUSE,)
_NOT_HERE = (errno.EADDRNOTAVAIL,)
_MODEL_FIX = (
    "pick a model with --model NAME (see the list above), or serve your own with "
    '[model_paths] NAME = "/path/to/model" in config.toml'
)
_BOOTSTRAP_FIX = (
    "a bootstrap address names the peer as well: /ip4/HOST/tcp/PORT/p2p/<peer id>; "
    "copy a `listen:` line that the other node prints when it starts"
)


class StartupError(Exception):
    """A start-up failure whose message is one line that says what is wrong and how to fix it."""


def one_line(text: str) -> str:
    """Messages from libraries may span lines; the CLI prints exactly one."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


# ---- checks before anything is loaded ------------------------------------------------------


def preflight(settings: Any, *, check_ports: bool = True) -> None:
    """Fail fast, before a model loads or a socket is held, on what can be checked up front.

    Order follows cost and how often newcomers hit each: model names and architectures,
    then addresses, then ports. Raises ``StartupError``.
    """
    check_models(settings)
    check_addresses(settings)
    check_api_keys(settings)
    if check_ports:
        check_ports_free(settings)


def is_loopback_host(host: str) -> bool:
    """True for a bind address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_api_keys(settings: Any) -> None:
    """The verified OpenAI path spends the network's compute under this node's client key:
    beyond loopback, callers must prove who they are."""
    verified = getattr(settings, "verified", None)
    if verified is None or not verified.enabled or getattr(settings, "api_keys", None):
        return
    if not is_loopback_host(settings.api_host):
        raise StartupError(
            f"the API binds {settings.api_host}, beyond loopback, and /verified/v1 would then be open "
            "to anyone: set api_keys (RAKIS_API_KEYS='[\"<key of 16+ chars>\"]') or disable it "
            "with RAKIS_VERIFIED__ENABLED=false"
        )


def check_models(settings: Any) -> None:
    """Every model the node will load is registered, of the right kind, and runnable here."""
    from engine.registry import ModelKind, ModelRegistry, UnknownModelError

    try:
        registry = ModelRegistry({k: str(v) for k, v in settings.model_paths.items()})
    except (OSError, ValueError) as exc:
        raise StartupError(
            f"model_paths: {one_line(str(exc))}; fix the path in config.toml or RAKIS_MODEL_PATHS"
        ) from None
    for name, workers in settings.llm_models.items():
        if workers <= 0:
            continue
        try:
            entry = registry.entry(name, ModelKind.LLM)
        except UnknownModelError as exc:
            raise StartupError(f"{exc}; {_MODEL_FIX}") from None
        if not entry.builtin and isinstance(entry.source, Path):
            check_architecture(name, entry.source)
    try:
        registry.entry(settings.embedding_model, ModelKind.EMBEDDING)
    except UnknownModelError as exc:
        raise StartupError(
            f"embedding model: {exc}; set --embedding-model to one of those "
            "(every node of a network must use the same one)"
        ) from None


def check_architecture(name: str, path: Path) -> None:
    """A model directory whose ``config.json`` names an architecture the engine cannot run
    is refused by name, before transformers loads gigabytes of weights to find out."""
    from engine.model import RUNNABLE_MODEL_TYPES

    if path.is_file():  # a .gguf file: converted on first load, its architecture read then
        return
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StartupError(f"model {name!r}: cannot read {config_file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise StartupError(f"model {name!r}: {config_file} is not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise StartupError(f"model {name!r}: {config_file} does not hold a JSON object")
    model_type = config.get("model_type")
    listed = ", ".join(str(a) for a in config.get("architectures") or [])
    arch = f" ({listed})" if listed else ""
    supported = ", ".join(RUNNABLE_MODEL_TYPES)
    if model_type not in RUNNABLE_MODEL_TYPES:
        raise StartupError(
            f"model {name!r} at {path} is model_type {model_type!r}{arch}, which this engine "
            f"cannot run; it runs {supported}: serve one of those instead"
        )
    if model_type == "mistral" and config.get("sliding_window") and config.get("use_sliding_window", True):
        raise StartupError(
            f"model {name!r} at {path} uses sliding-window attention, which this engine cannot run; "
            "serve a checkpoint without it (sliding_window null in config.json)"
        )


def check_addresses(settings: Any) -> None:
    """Listen and bootstrap multiaddrs parse the way libp2p will parse them."""
    from node.p2p.libp2p_compat import AddressError, parse_listen_addr, parse_peer_addr

    for addr in settings.listen_addrs:
        try:
            parse_listen_addr(addr)
        except AddressError as exc:
            raise StartupError(f"{exc}; use e.g. --listen /ip4/0.0.0.0/tcp/4001") from None
    for addr in settings.bootstrap:
        try:
            parse_peer_addr(addr)
        except AddressError:
            raise StartupError(f"bad bootstrap address {addr!r}: {_BOOTSTRAP_FIX}") from None


def tcp_listen_port(addr: str) -> tuple[str, int] | None:
    """``(host, port)`` of an ``/ip4|ip6/HOST/tcp/PORT[...]`` multiaddr, else None."""
    parts = addr.strip("/").split("/")
    if len(parts) >= 4 and parts[0] in ("ip4", "ip6") and parts[2] == "tcp" and parts[3].isdigit():
        return parts[1], int(parts[3])
    return None


def check_ports_free(settings: Any) -> None:
    """The HTTP API port and every fixed libp2p TCP port can be bound right now.

    libp2p binds with SO_REUSEPORT and, when the bind fails, starts anyway with no
    listener at all (peers cannot reach it and nothing says so), so the check happens
    here, with a plain socket that another SO_REUSEPORT listener does not let in either.
    """
    if settings.api_port:
        _check_bind(
            settings.api_host, settings.api_port, "HTTP API", "--api HOST:PORT (port 0 picks a free one)"
        )
    for addr in settings.listen_addrs:
        hp = tcp_listen_port(addr)
        if hp is not None and hp[1]:
            _check_bind(
                hp[0], hp[1], "libp2p", f"--listen {addr.split('/tcp/')[0]}/tcp/PORT (0 picks a free one)"
            )


def _check_bind(host: str, port: int, what: str, flag: str) -> None:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(
            f"{what} address {host}:{port}: cannot resolve {host!r} ({exc.strerror})"
        ) from None
    family, socktype, proto, _, sockaddr = infos[0]
    with socket.socket(family, socktype, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is fine
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            raise port_error(what, f"{host}:{port}", exc, flag) from None


def port_error(what: str, where: str, exc: OSError, flag: str) -> StartupError:
    """The one line for a failed bind of ``where`` (HOST:PORT or a multiaddr)."""
    if exc.errno in _IN_USE:
        return StartupError(
            f"{what} address {where} is already in use (another rakis node?); "
            f"stop that process or choose another port with {flag}"
        )
    if exc.errno in _NOT_HERE:
        return StartupError(
            f"{what} address {where} is not an address of this machine; choose another with {flag}"
        )
    if exc.errno == errno.EACCES:
        return StartupError(
            f"{what} address {where}: permission denied (ports below 1024 need root); use {flag}"
        )
    return StartupError(f"{what} address {where}: {exc.strerror or exc}; choose another with {flag}")


# ---- what can still fail later ---------------------------------------------------------------


def explain(exc: BaseException) -> str | None:
    """One line with the fix for a known start-up failure; None for anything else (a bug)."""
    from engine.registry import UnknownModelError
    from node.config import ConfigError
    from node.identity import IdentityError
    from node.p2p.libp2p_compat import AddressError
    from node.store import StoreError

    if isinstance(exc, StartupError | ConfigError | IdentityError | StoreError):
        return one_line(str(exc))
    if isinstance(exc, UnknownModelError):
        if "files are missing" in str(exc):
            return one_line(str(exc))
        return f"{one_line(str(exc))}; {_MODEL_FIX}"
    if isinstance(exc, AddressError):
        return (
            f"{one_line(str(exc))}; {_BOOTSTRAP_FIX}" if "peer multiaddr" in str(exc) else one_line(str(exc))
        )
    if isinstance(exc, RuntimeError) and str(exc).startswith("could not load"):
        return f"{one_line(str(exc))}; check the model's files, or serve another with --model NAME"
    if isinstance(exc, OSError):
        if exc.errno in _IN_USE:
            return f"address already in use: {one_line(str(exc))}; choose other ports with --api and --listen"
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{one_line(exc.strerror or str(exc))}{where}"
    return None
