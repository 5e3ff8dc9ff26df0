"""rakis consensus: commit/reveal, verification, clustering, quorum, certificates.

Pure logic, no I/O: embeddings arrive as numpy arrays, signatures and embeddings for
certificates are injected functions. Never imports ``node`` or ``engine``.
"""

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
    pick_representative,
)
from consensus.commitments import binary_embedding, hamming, inference_id_for, make_commit, opens
from consensus.quorum import (
    CommitRef,
    Finished,
    PublishCommit,
    PublishRejection,
    PublishResult,
    PublishReveal,
    PublishRevealRequest,
    QuorumConfig,
    QuorumMachine,
    RequestEmbedding,
    SecurityParams,
)
from consensus.reputation import PeerRecord, Reputation
from consensus.verification import DEFAULT_HAMMING_TOLERANCE, Rejection, RejectReason, verify_reveal

__all__ = [
    "DEFAULT_HAMMING_TOLERANCE",
    "DEFAULT_SEC_DISTANCE",
    "Certificate",
    "CertificateError",
    "CertificateParams",
    "CertificateReport",
    "CertificateResult",
    "CommitRef",
    "ConsensusOutcome",
    "Finished",
    "PeerRecord",
    "PublishCommit",
    "PublishRejection",
    "PublishResult",
    "PublishReveal",
    "PublishRevealRequest",
    "QuorumConfig",
    "QuorumMachine",
    "RejectReason",
    "Rejection",
    "RequestEmbedding",
    "Reputation",
    "SecurityParams",
    "binary_embedding",
    "find_consensus",
    "hamming",
    "inference_id_for",
    "joint_hash",
    "make_commit",
    "needed_members",
    "opens",
    "pick_representative",
    "verify_certificate",
    "verify_reveal",
]
