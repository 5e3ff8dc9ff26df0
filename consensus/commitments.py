"""Commitments: binary embeddings, commit hashes and their opening check.

A node commits to the *binary* embedding of its output before it sees anyone else's,
so it cannot copy a peer's answer after the fact. The binary form (sign bits) is
what is hashed because float embeddings differ in their last bits between devices,
while the sign pattern is (almost) stable; the verifier compares bits with a small
Hamming tolerance (see ``verification``). Formats follow ``docs/CONTRACTS.md``.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np

__all__ = [
    "COMMIT_LEN",
    "PUBKEY_LEN",
    "binary_embedding",
    "hamming",
    "inference_id_for",
    "make_commit",
    "opens",
]

PUBKEY_LEN = 32
COMMIT_LEN = 32
INFERENCE_ID_HEX_LEN = 32


def binary_embedding(e: np.ndarray) -> bytes:
    """Pack the sign bits of a 1-D float embedding: ``packbits(e > 0)``."""
    arr = np.asarray(e)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"embedding must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"embedding must be numeric, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("embedding contains NaN or infinite values")
    return np.packbits(arr > 0).tobytes()


def _check_pubkey(node_pubkey: bytes) -> None:
    if not isinstance(node_pubkey, bytes | bytearray) or len(node_pubkey) != PUBKEY_LEN:
        raise ValueError(f"node_pubkey must be {PUBKEY_LEN} raw bytes")


def _check_inference_id(inference_id: str) -> None:
    if not isinstance(inference_id, str) or not inference_id.isascii() or not inference_id:
        raise ValueError("inference_id must be a non-empty ASCII string")


def make_commit(b: bytes, node_pubkey: bytes, inference_id: str) -> bytes:
    """``sha256(b || node_pubkey || inference_id ascii)``; 32 raw bytes.

    Binding the node key and inference id into the hash stops a node from replaying
    another node's commit (and later its reveal) as its own.
    """
    if not isinstance(b, bytes | bytearray) or not b:
        raise ValueError("b must be non-empty bytes")
    _check_pubkey(node_pubkey)
    _check_inference_id(inference_id)
    return hashlib.sha256(bytes(b) + bytes(node_pubkey) + inference_id.encode("ascii")).digest()


def opens(commit: bytes, b: bytes, node_pubkey: bytes, inference_id: str) -> bool:
    """Whether ``commit`` is the commitment to ``b`` by this node for this inference.

    Malformed input opens nothing (returns False) instead of raising: a peer's bad
    reveal is a rejection, not an error of ours.
    """
    try:
        expected = make_commit(b, node_pubkey, inference_id)
    except ValueError:
        return False
    if not isinstance(commit, bytes | bytearray):
        return False
    return hmac.compare_digest(expected, bytes(commit))


def hamming(b1: bytes, b2: bytes) -> int:
    """Number of differing bits between two equally long byte strings."""
    if len(b1) != len(b2):
        raise ValueError(f"length mismatch: {len(b1)} != {len(b2)} bytes")
    x = np.frombuffer(bytes(b1), dtype=np.uint8) ^ np.frombuffer(bytes(b2), dtype=np.uint8)
    return int(np.unpackbits(x).sum())


def inference_id_for(request_id: str, node_pubkey: bytes) -> str:
    """``sha256(request_id ascii || pubkey)`` hex, first 32 chars.

    Derived, not chosen: one inference id per node per request, so a node cannot
    commit twice under two ids.
    """
    _check_inference_id(request_id)
    _check_pubkey(node_pubkey)
    digest = hashlib.sha256(request_id.encode("ascii") + bytes(node_pubkey)).hexdigest()
    return digest[:INFERENCE_ID_HEX_LEN]
