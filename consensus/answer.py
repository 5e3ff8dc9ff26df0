"""The answer rule: which member output of the winning cluster the network returns.

The old rule (``joint_hash mod n`` over the members' commits) could be steered: the
last node to commit sees every other commit and can try output variants until its own
is the one picked. The rule here depends only on what the outputs *are*, never on the
commits, so seeing the others' commits gives a member nothing to aim at.

Rule ``max_log_likelihood`` (used whenever at least one member passed the re-check):
among the members whose re-check ``passed``, the one with the highest model
log-likelihood; ties go to the lowest ``sha256(output)``, then the lowest node id.
A passing output is (within the engine's small float-tolerance budget) the one the
verifiable sampler produces for the request's seed, so a member cannot write a
better-scoring variant: a variant does not pass. What a member can still do is pick,
at the few positions inside the tolerance budget, between tokens the sampler nearly
chose; that changes the answer only among outputs the model itself nearly produced.

Rule ``medoid`` (the fallback when no member could be re-checked, ``recheck:
unavailable``): the member whose own-embedding total cosine distance to all members is
the smallest (rounded to 1e-6 so float noise between machines rarely matters); members
shorter than half the members' median word count are not eligible (a truncated stub
keeps the meaning of the full answer and cannot be told apart by distance, see
docs/consensus.md); ties go to the lowest ``sha256(output)``, then the lowest node id.
What it guarantees, honestly: the choice does not depend on commits, so it cannot be
ground against them, and with two or more identical honest outputs (T=0) no single
different output can be the medoid. What it does not guarantee: that the text came from
the model; a member able to predict what honest answers look like can write a central
paraphrase. Only the re-check proves provenance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from consensus.clustering import cosine_distances
from consensus.recheck import FAILED, PASSED, RecheckVerdict, output_hash

__all__ = ["ANSWER_RULES", "MAX_LOG_LIKELIHOOD", "MEDOID", "AnswerChoice", "Candidate", "choose_answer"]

MAX_LOG_LIKELIHOOD = "max_log_likelihood"
MEDOID = "medoid"
ANSWER_RULES = (MAX_LOG_LIKELIHOOD, MEDOID)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One member of the winning cluster, as the verifier sees it."""

    inference_id: str
    node_id: str
    output: str
    verdict: RecheckVerdict
    embedding: np.ndarray  # the verifier's own embedding of ``output``


@dataclass(frozen=True, slots=True)
class AnswerChoice:
    inference_id: str
    rule: str


def _words(text: str) -> int:
    return len(text.split())


def choose_answer(members: Sequence[Candidate]) -> AnswerChoice:
    """Apply the rule in the module docstring; the same on every verifier given the
    same members, verdicts and (for the fallback) embeddings. Raises ValueError on an
    empty list or a member whose re-check failed (those never reach a cluster)."""
    if not members:
        raise ValueError("choose_answer needs at least one member")
    bad = [c.inference_id for c in members if c.verdict.status == FAILED]
    if bad:
        raise ValueError(f"members {bad} failed the re-check and cannot be members")
    passed = [c for c in members if c.verdict.status == PASSED]
    if passed:
        best = min(
            passed,
            key=lambda c: (-float(c.verdict.log_likelihood or 0.0), output_hash(c.output), c.node_id),
        )
        return AnswerChoice(best.inference_id, MAX_LOG_LIKELIHOOD)
    ordered = sorted(members, key=lambda c: c.inference_id)
    mat = np.stack([np.asarray(c.embedding, dtype=np.float64) for c in ordered])
    totals = np.round(cosine_distances(mat).sum(axis=1), 6)
    median = float(np.median([_words(c.output) for c in ordered]))
    eligible = [k for k, c in enumerate(ordered) if _words(c.output) * 2 >= median] or list(
        range(len(ordered))
    )
    best_k = min(
        eligible, key=lambda k: (float(totals[k]), output_hash(ordered[k].output), ordered[k].node_id)
    )
    return AnswerChoice(ordered[best_k].inference_id, MEDOID)
