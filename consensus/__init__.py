"""rakis consensus: commit/reveal, verification, re-check verdicts, clustering, quorum,
the answer rule, certificates and reputation.

Pure logic, no I/O, no clock reads: time, embeddings and re-check verdicts arrive as
arguments; signatures, embeddings and re-checks for certificates are injected
functions. Never imports ``node`` or ``engine``.

Map (lower modules first; each imports only those above it):
- ``windows``: the commit window of a security frame (``commit_window_ms``).
- ``models``: model identity, ``alias@sha256:<hex>`` references, ``AcceptedModels``.
- ``commitments``: binary embeddings, commit hashes, derived inference ids.
- ``verification``: the reveal opening and sign-bit checks, ``RejectReason`` codes.
- ``recheck``: ``RecheckVerdict`` (passed / failed / unavailable) keyed by ``recheck_key``.
- ``clustering``: which outputs agree (``find_consensus``), ``joint_hash``.
- ``answer``: which member output is returned (``choose_answer``).
- ``reputation``: ``PeerStanding``, ``Reputation``, ``RecheckPolicy`` / ``RecheckFailures``.
- ``quorum``: ``QuorumMachine``, the per-request state machine the daemon drives.
- ``certificate``: everything to re-check a result offline.
"""

from consensus.answer import ANSWER_RULES, MAX_LOG_LIKELIHOOD, MEDOID, AnswerChoice, Candidate, choose_answer
from consensus.certificate import (
    Certificate,
    CertificateError,
    CertificateParams,
    CertificateReport,
    CertificateResult,
    verify_certificate,
)
from consensus.clustering import (
    DEFAULT_SEC_DISTANCE,
    ConsensusOutcome,
    find_consensus,
    joint_hash,
    needed_members,
)
from consensus.commitments import binary_embedding, hamming, inference_id_for, make_commit, opens
from consensus.models import AcceptedModels, ModelRef, check_model_hash, parse_model_ref
from consensus.quorum import (
    CommitRef,
    CommitRefused,
    Finished,
    PublishCommit,
    PublishRejection,
    PublishResult,
    PublishReveal,
    PublishRevealRequest,
    QuorumConfig,
    QuorumMachine,
    RequestEmbedding,
    RequestRecheck,
    SecurityParams,
)
from consensus.recheck import RecheckVerdict, output_hash, recheck_key, recheck_summary
from consensus.reputation import PeerStanding, RecheckFailures, RecheckPolicy, Reputation
from consensus.verification import DEFAULT_HAMMING_TOLERANCE, Rejection, RejectReason, verify_reveal
from consensus.windows import commit_window_ms

__all__ = [
    "ANSWER_RULES",
    "DEFAULT_HAMMING_TOLERANCE",
    "DEFAULT_SEC_DISTANCE",
    "MAX_LOG_LIKELIHOOD",
    "MEDOID",
    "AcceptedModels",
    "AnswerChoice",
    "Candidate",
    "Certificate",
    "CertificateError",
    "CertificateParams",
    "CertificateReport",
    "CertificateResult",
    "CommitRef",
    "CommitRefused",
    "ConsensusOutcome",
    "Finished",
    "ModelRef",
    "PeerStanding",
    "PublishCommit",
    "PublishRejection",
    "PublishResult",
    "PublishReveal",
    "PublishRevealRequest",
    "QuorumConfig",
    "QuorumMachine",
    "RecheckFailures",
    "RecheckPolicy",
    "RecheckVerdict",
    "RejectReason",
    "Rejection",
    "RequestEmbedding",
    "RequestRecheck",
    "Reputation",
    "SecurityParams",
    "binary_embedding",
    "check_model_hash",
    "choose_answer",
    "commit_window_ms",
    "find_consensus",
    "hamming",
    "inference_id_for",
    "joint_hash",
    "make_commit",
    "needed_members",
    "opens",
    "output_hash",
    "parse_model_ref",
    "recheck_key",
    "recheck_summary",
    "verify_certificate",
    "verify_reveal",
]
