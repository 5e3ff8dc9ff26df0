"""Model identity: an alias plus the sha256 of its weights, and what a request accepts.

A model alias ("smollm2-135m") is a local name: two nodes can give it to different
weights. What a commit or reveal claims is therefore the pair (alias, weights hash),
the hash written ``sha256:<64 lowercase hex>`` (computed once at load by the engine).
A request's ``accepted_models`` lists aliases, each either bare (any weights under
that alias) or pinned (``alias@sha256:<hex>``: only those weights). One alias may be
pinned to several hashes; mixing a bare and a pinned entry for one alias is refused as
ambiguous, and so is a repeated entry. This module is the one place these strings are
parsed: ``node.wire`` validates with it and the quorum machine enforces it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MODEL_HASH_PATTERN",
    "AcceptedModels",
    "ModelRef",
    "check_model_hash",
    "parse_model_ref",
]

MODEL_HASH_PATTERN = r"^sha256:[0-9a-f]{64}$"
_HASH = re.compile(MODEL_HASH_PATTERN)
# Why a commit or reveal is refused for its model (also used as rejection reasons).
MODEL_NOT_ACCEPTED = "model_not_accepted"
MODEL_HASH_NOT_ACCEPTED = "model_hash_not_accepted"


def check_model_hash(value: str) -> str:
    """Return ``value`` when it is ``sha256:<64 lowercase hex>``, else raise ValueError."""
    if not isinstance(value, str) or not _HASH.match(value):
        raise ValueError(f"model hash must be 'sha256:' and 64 lowercase hex characters, got {value!r:.90}")
    return value


def check_alias(value: str) -> str:
    """An alias is non-empty, has no '@' (the pin separator) and no surrounding space."""
    if not isinstance(value, str) or not value or "@" in value or value != value.strip():
        raise ValueError(
            f"model alias must be non-empty, without '@' or surrounding spaces, got {value!r:.90}"
        )
    return value


@dataclass(frozen=True, slots=True, order=True)
class ModelRef:
    """One ``accepted_models`` entry: an alias, pinned to ``weights_hash`` or not (None)."""

    alias: str
    weights_hash: str | None = None

    def __str__(self) -> str:
        return self.alias if self.weights_hash is None else f"{self.alias}@{self.weights_hash}"


def parse_model_ref(text: str) -> ModelRef:
    """``"alias"`` or ``"alias@sha256:<hex>"`` -> ModelRef; ValueError naming the problem."""
    if not isinstance(text, str):
        raise ValueError(f"model reference must be a string, got {type(text).__name__}")
    alias, sep, pin = text.partition("@")
    check_alias(alias)
    if not sep:
        return ModelRef(alias)
    return ModelRef(alias, check_model_hash(pin))


@dataclass(frozen=True, slots=True)
class AcceptedModels:
    """The parsed ``accepted_models`` of one request: alias -> pinned hashes (empty = any)."""

    pins: dict[str, frozenset[str]]

    @classmethod
    def parse(cls, refs: Iterable[str]) -> AcceptedModels:
        """Parse and check a whole list (raises ValueError on the first bad entry)."""
        pins: dict[str, set[str]] = {}
        bare: set[str] = set()
        seen: set[str] = set()
        items = list(refs)
        if not items:
            raise ValueError("accepted_models must name at least one model")
        for text in items:
            ref = parse_model_ref(text)
            if text in seen:
                raise ValueError(f"accepted_models lists {text!r} twice")
            seen.add(text)
            if ref.weights_hash is None:
                bare.add(ref.alias)
            else:
                pins.setdefault(ref.alias, set()).add(ref.weights_hash)
        both = sorted(bare & set(pins))
        if both:
            raise ValueError(f"accepted_models lists {both[0]!r} both bare and pinned (ambiguous)")
        out = {a: frozenset() for a in bare}
        out.update({a: frozenset(h) for a, h in pins.items()})
        return cls(out)

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(sorted(self.pins))

    def refusal(self, model: str, weights_hash: str) -> tuple[str, str] | None:
        """None when (model, weights_hash) is accepted, else (reason code, detail)."""
        if model not in self.pins:
            return MODEL_NOT_ACCEPTED, f"model {model!r:.80} is not among {list(self.aliases)}"
        try:
            check_model_hash(weights_hash)
        except ValueError as exc:
            return MODEL_HASH_NOT_ACCEPTED, str(exc)
        allowed = self.pins[model]
        if allowed and weights_hash not in allowed:
            return MODEL_HASH_NOT_ACCEPTED, f"{model} weights {weights_hash[:19]}... are not the pinned ones"
        return None

    def accepts(self, model: str, weights_hash: str) -> bool:
        return self.refusal(model, weights_hash) is None
