"""The answer rule (consensus.answer): max log-likelihood, deterministic ties, the
medoid fallback, and that nobody can steer it with variants."""

from __future__ import annotations

import random

import numpy as np
import pytest

from consensus import MAX_LOG_LIKELIHOOD, MEDOID, Candidate, RecheckVerdict, choose_answer, output_hash

BLIND = RecheckVerdict.unavailable()


def passed(ll: float) -> RecheckVerdict:
    return RecheckVerdict("passed", None, ll, 0)


def vec(seed: int, base: int = 0, noise: float = 0.05) -> np.ndarray:
    return np.random.default_rng(base).normal(size=32) + np.random.default_rng(seed).normal(
        scale=noise, size=32
    )


def test_highest_log_likelihood_wins_whatever_the_order() -> None:
    members = [
        Candidate("i1", "n1", "a b c", passed(-3.0), vec(1)),
        Candidate("i2", "n2", "a b", passed(-1.5), vec(2)),
        Candidate("i3", "n3", "a b c d", passed(-7.0), vec(3)),
        Candidate("i4", "n4", "a", BLIND, vec(4)),  # unchecked: never chosen while someone passed
    ]
    for _ in range(10):
        random.shuffle(members)
        assert choose_answer(members) == choose_answer(sorted(members, key=lambda c: c.node_id))
        assert choose_answer(members).inference_id == "i2"
        assert choose_answer(members).rule == MAX_LOG_LIKELIHOOD


def test_ties_go_to_the_lowest_output_hash_then_node_id() -> None:
    a, b = "first answer", "second answer"
    low, high = sorted([a, b], key=output_hash)
    members = [
        Candidate("i1", "n9", high, passed(-2.0), vec(1)),
        Candidate("i2", "n5", low, passed(-2.0), vec(2)),
        Candidate("i3", "n1", low, passed(-2.0), vec(3)),
    ]
    assert choose_answer(members).inference_id == "i3"  # lowest hash, then lowest node id


def test_failed_or_no_members_are_refused() -> None:
    with pytest.raises(ValueError):
        choose_answer([])
    with pytest.raises(ValueError, match="failed the re-check"):
        choose_answer([Candidate("i1", "n1", "x", RecheckVerdict("failed", "token_mismatch"), vec(1))])


def test_medoid_fallback_is_deterministic_and_skips_stubs() -> None:
    long = " ".join(["word"] * 50)
    members = [Candidate(f"i{k}", f"n{k}", f"{long} {k}", BLIND, vec(k)) for k in range(5)]
    choice = choose_answer(members)
    assert choice.rule == MEDOID
    assert choice == choose_answer(list(reversed(members)))
    # the medoid made a stub: it is no longer eligible
    stubbed = [
        Candidate(c.inference_id, c.node_id, "stub", BLIND, c.embedding)
        if c.inference_id == choice.inference_id
        else c
        for c in members
    ]
    assert choose_answer(stubbed).inference_id != choice.inference_id


def test_a_late_committers_variants_cannot_steer_the_answer() -> None:
    """The rule reads outputs, verdicts and embeddings, never commits: the last committer,
    who has seen every other commit, tries 50 variants of the honest answer. With the
    re-check a variant is not what the sampler picks (it fails and never reaches a cluster;
    here even a variant judged `unavailable` cannot beat a passed member). Without it, two
    identical honest outputs are always more central than any single variant."""
    honest = "The capital of France is Paris, a city on the Seine."
    e = vec(0, noise=0.0)
    for k in range(50):
        variant = Candidate("iv", "n0", f"{honest} (variant {k})", BLIND, vec(100 + k, noise=0.2))
        checked = [Candidate(f"i{j}", f"n{j + 1}", honest, passed(-12.0), e) for j in range(3)]
        assert choose_answer([*checked, variant]).inference_id == "i0"
        blind = [Candidate(f"i{j}", f"n{j + 1}", honest, BLIND, e) for j in range(2)]
        assert choose_answer([*blind, variant]).inference_id == "i0"
