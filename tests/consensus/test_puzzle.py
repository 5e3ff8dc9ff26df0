"""Identity puzzle: solve, verify, rejection of wrong nonces, keys and difficulties."""

from __future__ import annotations

import hashlib

import pytest

from consensus import puzzle

KEY = hashlib.sha256(b"puzzle key").digest()


@pytest.mark.parametrize("difficulty", [0, 1, 8, 12])
def test_solve_then_verify(difficulty: int) -> None:
    nonce = puzzle.solve(KEY, difficulty)
    assert puzzle.verify(KEY, nonce, difficulty)
    assert all(not puzzle.verify(KEY, n, difficulty) for n in range(nonce)) or difficulty == 0


def test_wrong_nonce_other_key_and_higher_difficulty_are_rejected() -> None:
    nonce = puzzle.solve(KEY, 12)
    other = hashlib.sha256(b"other key").digest()
    bad = [n for n in range(nonce + 1, nonce + 2000) if not puzzle.verify(KEY, n, 12)]
    assert bad and not puzzle.verify(KEY, bad[0], 12)
    assert puzzle.verify(other, nonce, 12) is False or puzzle.solve(other, 12) == nonce
    assert not puzzle.verify(KEY, -1, 12) and not puzzle.verify(KEY, 1 << 64, 12)
    assert not puzzle.verify(KEY, True, 12)  # type: ignore[arg-type]
    harder = puzzle.solve(KEY, 16)
    assert puzzle.verify(KEY, harder, 12)  # more zero bits also satisfy fewer


def test_progress_is_reported_and_start_splits_work() -> None:
    calls: list[tuple[int, int]] = []
    nonce = puzzle.solve(KEY, 18, progress=lambda tried, exp: calls.append((tried, exp)))
    assert len(calls) == nonce // (1 << 16)
    assert all(exp == 1 << 18 for _, exp in calls)
    assert puzzle.solve(KEY, 18, start=nonce) == nonce
    assert puzzle.solve(KEY, 18, start=nonce + 1) > nonce


def test_bad_arguments_raise_a_clear_error() -> None:
    with pytest.raises(puzzle.PuzzleError):
        puzzle.solve(b"short", 4)
    with pytest.raises(puzzle.PuzzleError):
        puzzle.verify(KEY, 0, 65)
    with pytest.raises(puzzle.PuzzleError):
        puzzle.solve(KEY, -1)
