"""Identity puzzle: a proof of work over a node's public key (S/Kademlia's dynamic puzzle).

Why: an ed25519 key costs nothing, so without a price one operator can bring as many
identities as it likes and fill committees. A valid identity carries a ``nonce`` with

    SHA-256("rakis-puzzle-v1" || public key || nonce as 8 bytes big-endian)

starting with ``difficulty`` zero bits. Solving takes about ``2**difficulty`` hashes;
checking takes one, so peers can refuse a packet from an identity without a valid
puzzle before doing any work for it. The key is inside the hash, so a solution cannot
be moved to another key, and the work is done once per identity (not per packet).

Trade-offs (see docs/scale.md)
- SHA-256 is cheap to verify but GPU/ASIC friendly: an attacker with such hardware
  pays 10^3-10^4 times less per identity than a node solving in Python. The puzzle
  prices identities, it does not make them scarce; standing (``consensus.standing``)
  is the second half of the defence.
- The solve time is geometric: 2**difficulty hashes is the mean, not a bound.

``DEFAULT_DIFFICULTY`` was picked by measurement (``scripts/bench_puzzle.py``, in
docs/scale.md): about a minute of one core of the machine it was measured on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

__all__ = [
    "DEFAULT_DIFFICULTY",
    "MAX_DIFFICULTY",
    "PUZZLE_DOMAIN",
    "PuzzleError",
    "expected_hashes",
    "solve",
    "verify",
]

PUZZLE_DOMAIN = b"rakis-puzzle-v1"
DEFAULT_DIFFICULTY = 26
MAX_DIFFICULTY = 64
_NONCE_BYTES = 8
_PROGRESS_EVERY = 1 << 16


class PuzzleError(ValueError):
    """Bad puzzle arguments (key length, difficulty or nonce range)."""


def _check(public_key: bytes, difficulty: int) -> None:
    if not isinstance(public_key, bytes | bytearray) or len(public_key) != 32:
        raise PuzzleError("public_key must be 32 raw bytes")
    if (
        isinstance(difficulty, bool)
        or not isinstance(difficulty, int)
        or not 0 <= difficulty <= MAX_DIFFICULTY
    ):
        raise PuzzleError(f"difficulty must be an integer in [0, {MAX_DIFFICULTY}], got {difficulty!r}")


def expected_hashes(difficulty: int) -> int:
    """Mean number of hashes a solve needs (``2**difficulty``)."""
    return 1 << difficulty


def verify(public_key: bytes, nonce: int, difficulty: int) -> bool:
    """One hash: does ``nonce`` solve the puzzle for this key at this difficulty?"""
    _check(public_key, difficulty)
    if isinstance(nonce, bool) or not isinstance(nonce, int) or not 0 <= nonce < 1 << (8 * _NONCE_BYTES):
        return False
    h = hashlib.sha256(PUZZLE_DOMAIN + bytes(public_key) + nonce.to_bytes(_NONCE_BYTES, "big")).digest()
    return int.from_bytes(h[:8], "big") >> (64 - difficulty) == 0 if difficulty else True


def solve(
    public_key: bytes,
    difficulty: int,
    progress: Callable[[int, int], None] | None = None,
    *,
    start: int = 0,
) -> int:
    """Search nonces from ``start`` upwards; return the first that solves the puzzle.

    ``progress(tried, expected)`` is called every 65,536 hashes (for a progress bar;
    ``expected`` is the mean). Running several solvers with disjoint ``start`` values
    splits the work over cores.
    """
    _check(public_key, difficulty)
    if difficulty == 0:
        return start
    base = hashlib.sha256(PUZZLE_DOMAIN + bytes(public_key))
    shift = 64 - difficulty
    expected = expected_hashes(difficulty)
    limit = 1 << (8 * _NONCE_BYTES)
    nonce = start
    tried = 0
    while nonce < limit:
        h = base.copy()
        h.update(nonce.to_bytes(_NONCE_BYTES, "big"))
        if int.from_bytes(h.digest()[:8], "big") >> shift == 0:
            return nonce
        nonce += 1
        tried += 1
        if progress is not None and tried % _PROGRESS_EVERY == 0:
            progress(tried, expected)
    raise PuzzleError("nonce space exhausted")  # pragma: no cover - 2**64 hashes
