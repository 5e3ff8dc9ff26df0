"""Re-check verdicts: what the node's engine says about one revealed output.

Embedding clustering alone cannot tell a wrong answer on the right topic from an
honest one, so every node that holds the request's model re-scores each distinct
revealed output with one teacher-forced pass (engine side) and feeds the machine a
``RecheckVerdict``:

- ``passed``: every token is the one the verifiable sampler picks for the request's
  seed (within the engine's float tolerance), and the output stops where the sampler
  stops; ``log_likelihood`` is the output's total model log-likelihood (nats), used by
  the answer rule (``consensus.answer``).
- ``failed``: the output did not come from the claimed model under the request's
  sampling parameters; ``reason`` says why (e.g. ``token_mismatch at 12``).
- ``unavailable``: this node cannot check it (it does not hold those weights, or the
  check did not finish by the deadline); consensus then falls back to clustering alone.

Verdicts are keyed by ``recheck_key(model_hash, output, output_tokens)``: identical
outputs (same text and token ids) claimed under the same weights need one check, however
many nodes revealed them. The token ids come with the reveal because text alone does not
say which tokens the sampler drew (a byte-level BPE can split one text several ways, and
a token may end inside a multi-byte character). The pair, not
the text alone, is the key, because the same text can pass under one accepted model and
fail under another.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CHECKED",
    "FAILED",
    "PARTIAL",
    "PASSED",
    "RECHECK_STATUSES",
    "UNAVAILABLE",
    "RecheckVerdict",
    "output_hash",
    "recheck_key",
    "recheck_summary",
]

PASSED = "passed"
FAILED = "failed"
UNAVAILABLE = "unavailable"
RECHECK_STATUSES = (PASSED, FAILED, UNAVAILABLE)
RecheckStatus = Literal["passed", "failed", "unavailable"]
MAX_REASON_CHARS = 500


def output_hash(output: str) -> str:
    """Hex sha256 of the output's UTF-8 bytes (the answer rule's tie-break)."""
    return hashlib.sha256(output.encode("utf-8", "surrogatepass")).hexdigest()


def recheck_key(model_hash: str, output: str, output_tokens: Sequence[int] | None = None) -> str:
    """Hex ``sha256(model_hash ascii || 0x00 || output utf-8 [|| 0x01 || tokens])``: one
    verdict per (weights, text, token ids). The token ids are part of the key because the
    verdict is on them: the same text revealed with other ids is judged on its own, so
    nobody can get an honest text excluded by revealing it with bad ids."""
    h = hashlib.sha256(model_hash.encode("ascii", "replace"))
    h.update(b"\x00")
    h.update(output.encode("utf-8", "surrogatepass"))
    if output_tokens is not None:
        h.update(b"\x01")
        h.update(b"".join(int(t).to_bytes(4, "big") for t in output_tokens))
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class RecheckVerdict:
    """One output's re-check result (see module docstring); validated on creation."""

    status: RecheckStatus
    reason: str | None = None
    log_likelihood: float | None = None
    suspect_positions: int = 0

    def __post_init__(self) -> None:
        if self.status not in RECHECK_STATUSES:
            raise ValueError(f"status must be one of {RECHECK_STATUSES}, got {self.status!r}")
        if self.reason is not None and (
            not isinstance(self.reason, str) or len(self.reason) > MAX_REASON_CHARS
        ):
            raise ValueError(f"reason must be a string of at most {MAX_REASON_CHARS} characters")
        if self.status == FAILED and not self.reason:
            raise ValueError("a failed verdict needs a reason")
        ll = self.log_likelihood
        if self.status == PASSED:
            # The answer rule ranks passed outputs by it: a passed verdict without one
            # would leave the rule undefined.
            if isinstance(ll, bool) or not isinstance(ll, int | float) or not math.isfinite(ll):
                raise ValueError(f"a passed verdict needs a finite log_likelihood, got {ll!r}")
        elif ll is not None and (
            isinstance(ll, bool) or not isinstance(ll, int | float) or not math.isfinite(ll)
        ):
            raise ValueError(f"log_likelihood must be finite or None, got {ll!r}")
        sp = self.suspect_positions
        if isinstance(sp, bool) or not isinstance(sp, int) or sp < 0:
            raise ValueError(f"suspect_positions must be an integer >= 0, got {sp!r}")

    @classmethod
    def unavailable(cls, reason: str = "model not held") -> RecheckVerdict:
        """What a node without the claimed weights feeds the machine."""
        return cls(UNAVAILABLE, reason)

    @property
    def excludes(self) -> bool:
        """Whether this verdict removes the output before clustering."""
        return self.status == FAILED

    def to_dict(self) -> dict[str, Any]:
        ll = None if self.log_likelihood is None else float(self.log_likelihood)
        return {
            "status": self.status,
            "reason": self.reason,
            "log_likelihood": ll,
            "suspect_positions": self.suspect_positions,
        }

    @classmethod
    def from_dict(cls, d: Any) -> RecheckVerdict:
        """Inverse of ``to_dict``; raises ValueError on anything malformed."""
        if not isinstance(d, dict):
            raise ValueError(f"verdict must be a mapping, got {type(d).__name__}")
        extra = set(d) - {"status", "reason", "log_likelihood", "suspect_positions"}
        if extra:
            raise ValueError(f"verdict has unknown fields {sorted(extra)}")
        ll = d.get("log_likelihood")
        return cls(
            d.get("status"),  # type: ignore[arg-type]
            d.get("reason"),
            float(ll) if isinstance(ll, int) and not isinstance(ll, bool) else ll,
            d.get("suspect_positions", 0),
        )


CHECKED = "checked"
PARTIAL = "partial"


def recheck_summary(verdicts: list[RecheckVerdict] | tuple[RecheckVerdict, ...]) -> str:
    """``checked`` (every output passed or failed), ``unavailable`` (none could be
    checked, or no outputs) or ``partial``: what views and certificates show."""
    statuses = {v.status for v in verdicts}
    if not statuses or statuses == {UNAVAILABLE}:
        return UNAVAILABLE
    if UNAVAILABLE in statuses:
        return PARTIAL
    return CHECKED
