"""Reveal verification: does a reveal prove what its commit promised?

Two checks, both needed. The hash check proves the node committed to this exact
binary embedding ``b`` before the reveal phase. The Hamming check proves ``b`` really
is the embedding of the revealed *output*: the verifier embeds the output itself and
compares sign bits, so a node cannot commit to one thing and reveal another text.
A small tolerance absorbs float differences between devices (a coordinate close to 0
can flip sign between CPU and GPU kernels); a different text flips far more bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from consensus.commitments import binary_embedding, hamming, inference_id_for, opens

__all__ = ["DEFAULT_HAMMING_TOLERANCE", "RejectReason", "Rejection", "check_opening", "verify_reveal"]

# Measured: honest greedy outputs re-embedded on the same CPU differ by 0 bits; the
# closest distinct honest text (temperature 0.7) differs by dozens of bits out of 384.
# 8 bits (~2 %) leaves room for device float noise and none for a different text.
DEFAULT_HAMMING_TOLERANCE = 8


class RejectReason(StrEnum):
    """Why a reveal was rejected; the value goes on the wire as the reason code."""

    wrong_inference_id = "wrong_inference_id"
    bad_binary_embedding = "bad_binary_embedding"
    commit_mismatch = "commit_mismatch"
    embedding_mismatch = "embedding_mismatch"
    not_named = "not_named"
    late = "late"
    duplicate = "duplicate"
    # protocol 2: model identity and proof of inference
    model_mismatch = "model_mismatch"  # reveal's (model, weights hash) is not its commit's
    model_not_accepted = "model_not_accepted"  # alias not in the request's accepted_models
    model_hash_not_accepted = "model_hash_not_accepted"  # alias pinned to other weights
    failed_recheck = "failed_recheck"  # the output did not come from the claimed model


@dataclass(frozen=True, slots=True)
class Rejection:
    """A failed reveal: the reason code plus a human-readable detail."""

    inference_id: str
    reason: RejectReason
    detail: str
    hamming: int | None = None


def check_opening(
    *,
    request_id: str,
    node_pubkey: bytes,
    inference_id: str,
    commit: bytes,
    revealed_b: bytes,
    embedding_bytes: int | None = None,
) -> Rejection | None:
    """The cheap checks that need no embedding: id derivation, size of ``b``, hash opening."""
    if inference_id != inference_id_for(request_id, node_pubkey):
        return Rejection(inference_id, RejectReason.wrong_inference_id, "id not derived from node key")
    if not isinstance(revealed_b, bytes | bytearray) or not revealed_b:
        return Rejection(inference_id, RejectReason.bad_binary_embedding, "empty or not bytes")
    if embedding_bytes is not None and len(revealed_b) != embedding_bytes:
        return Rejection(
            inference_id,
            RejectReason.bad_binary_embedding,
            f"{len(revealed_b)} bytes, expected {embedding_bytes}",
        )
    if not opens(commit, revealed_b, node_pubkey, inference_id):
        return Rejection(inference_id, RejectReason.commit_mismatch, "hash does not open the commit")
    return None


def verify_reveal(
    *,
    request_id: str,
    node_pubkey: bytes,
    inference_id: str,
    commit: bytes,
    revealed_b: bytes,
    own_embedding: np.ndarray,
    hamming_tolerance: int = DEFAULT_HAMMING_TOLERANCE,
) -> Rejection | None:
    """Full check of one reveal against the verifier's own embedding of its output.

    ``own_embedding`` is the verifier's float embedding of the revealed output text.
    Returns None when the reveal is valid, else the first failing check.
    """
    if hamming_tolerance < 0:
        raise ValueError(f"hamming_tolerance must be >= 0, got {hamming_tolerance}")
    own_b = binary_embedding(own_embedding)
    rejection = check_opening(
        request_id=request_id,
        node_pubkey=node_pubkey,
        inference_id=inference_id,
        commit=commit,
        revealed_b=revealed_b,
        embedding_bytes=len(own_b),
    )
    if rejection is not None:
        return rejection
    distance = hamming(bytes(revealed_b), own_b)
    if distance > hamming_tolerance:
        return Rejection(
            inference_id,
            RejectReason.embedding_mismatch,
            f"{distance} bits differ from own embedding (tolerance {hamming_tolerance})",
            distance,
        )
    return None
