"""Node identity: one ed25519 key in ``<data_dir>/node.key``, readable by the owner only.

The node id is the lowercase hex of the 32-byte public key, so anyone can check a
packet's sender against a node id without a directory service. The key file holds the
32-byte seed as 64 hex characters plus a newline: readable by a human, easy to back up,
and the same seed the gossip layer turns into the libp2p key.

Beside the key, ``node.puzzle`` holds the identity puzzle's solution (``consensus.puzzle``:
a proof of work over the public key, so identities cost something). It is public, JSON
``{"difficulty": d, "nonce": n}``, computed by ``rakis init`` or at the first start
(``ensure_puzzle``), and carried in the ``pz`` header of every packet the node signs.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nacl.signing

from consensus import puzzle

KEY_FILENAME = "node.key"
PUZZLE_FILENAME = "node.puzzle"
SEED_BYTES = 32


class IdentityError(Exception):
    """The key file is missing, unreadable, corrupt or too widely readable."""


@dataclass(frozen=True)
class Identity:
    signing_key: nacl.signing.SigningKey = field(repr=False)

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def node_id(self) -> str:
        return self.public_key.hex()

    @property
    def seed(self) -> bytes:
        """The 32-byte private seed (secret: never log it)."""
        return bytes(self.signing_key)

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        if len(seed) != SEED_BYTES:
            raise IdentityError(f"an ed25519 seed is {SEED_BYTES} bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(bytes(seed)))

    def __repr__(self) -> str:
        return f"Identity(node_id={self.node_id})"


def key_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / KEY_FILENAME


def load(data_dir: str | os.PathLike[str]) -> Identity:
    """Load the node key; refuse a file that group or others can read (it is a secret)."""
    path = key_path(data_dir)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise IdentityError(f"no node key at {path}; run `rakis init` to create one") from None
    except OSError as exc:
        raise IdentityError(f"cannot read node key {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise IdentityError(f"node key {path} is not a regular file")
    if os.name == "posix" and st.st_mode & 0o077:
        raise IdentityError(
            f"node key {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be readable by "
            f"its owner only. Fix with: chmod 600 {path}"
        )
    try:
        text = path.read_text(encoding="ascii").strip()
        seed = bytes.fromhex(text)
    except (UnicodeDecodeError, ValueError):
        raise IdentityError(
            f"node key {path} is corrupt (expected {SEED_BYTES * 2} hex characters); "
            "restore it from a backup or re-create it with `rakis init --force` (new node id)"
        ) from None
    except OSError as exc:
        raise IdentityError(f"cannot read node key {path}: {exc.strerror}") from None
    if len(seed) != SEED_BYTES:
        raise IdentityError(
            f"node key {path} is corrupt: {len(seed)} bytes instead of {SEED_BYTES}; "
            "restore it from a backup or re-create it with `rakis init --force` (new node id)"
        )
    return Identity.from_seed(seed)


def save(identity: Identity, data_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write the key with mode 0600 from the start (no window where it is world-readable)."""
    path = key_path(data_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise IdentityError(f"cannot create data directory {path.parent}: {exc.strerror}") from None
    tmp = path.with_name(f".{KEY_FILENAME}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    if not overwrite and path.exists():
        raise IdentityError(f"node key {path} already exists; use --force to replace it (new node id)")
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise IdentityError(f"cannot write node key {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(identity.seed.hex() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if the key appeared meanwhile, so a race never clobbers a key.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise IdentityError(f"node key {path} already exists; use --force to replace it") from None
            except OSError as exc:
                raise IdentityError(f"cannot write node key {path}: {exc.strerror}") from None
            finally:
                os.unlink(tmp)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path


def load_or_create(data_dir: str | os.PathLike[str]) -> Identity:
    """Load the node key, creating a fresh one when none exists yet."""
    if key_path(data_dir).exists():
        return load(data_dir)
    identity = Identity.generate()
    try:
        save(identity, data_dir)
    except IdentityError:
        if key_path(data_dir).exists():
            return load(data_dir)  # another process created it first: use theirs
        raise
    return identity


def puzzle_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / PUZZLE_FILENAME


def load_puzzle(data_dir: str | os.PathLike[str], public_key: bytes, difficulty: int) -> int | None:
    """The stored nonce if it solves this key's puzzle at ``difficulty`` (a nonce solved
    at a higher difficulty also does), else ``None`` (missing, corrupt, other key, too easy)."""
    try:
        data = json.loads(puzzle_path(data_dir).read_text(encoding="utf-8"))
        nonce = data["nonce"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(nonce, int) or isinstance(nonce, bool):
        return None
    return nonce if puzzle.verify(public_key, nonce, difficulty) else None


def save_puzzle(data_dir: str | os.PathLike[str], nonce: int, difficulty: int) -> Path:
    path = puzzle_path(data_dir)
    tmp = path.with_name(f".{PUZZLE_FILENAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"difficulty": difficulty, "nonce": nonce}) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class PuzzleSolution:
    nonce: int
    difficulty: int
    seconds: float  # time spent solving now (0 when it was loaded)
    solved: bool  # True when computed now, False when loaded from node.puzzle


def ensure_puzzle(
    identity: Identity,
    data_dir: str | os.PathLike[str],
    difficulty: int,
    progress: Callable[[int, int], None] | None = None,
) -> PuzzleSolution:
    """Load the identity's puzzle solution, or solve and store it (about
    ``2**difficulty`` SHA-256 hashes; ``progress(tried, expected)`` for a progress bar)."""
    nonce = load_puzzle(data_dir, identity.public_key, difficulty)
    if nonce is not None:
        return PuzzleSolution(nonce, difficulty, 0.0, False)
    t0 = time.perf_counter()
    nonce = puzzle.solve(identity.public_key, difficulty, progress)
    seconds = time.perf_counter() - t0
    save_puzzle(data_dir, nonce, difficulty)
    return PuzzleSolution(nonce, difficulty, seconds, True)


__all__ = [
    "KEY_FILENAME",
    "PUZZLE_FILENAME",
    "Identity",
    "IdentityError",
    "PuzzleSolution",
    "ensure_puzzle",
    "key_path",
    "load",
    "load_or_create",
    "load_puzzle",
    "puzzle_path",
    "save",
    "save_puzzle",
]
