"""Re-check verdicts (consensus.recheck) and the policy for peers that fail them
(consensus.reputation.RecheckPolicy / RecheckFailures)."""

from __future__ import annotations

import json
import math

import pytest

from consensus import RecheckFailures, RecheckPolicy, RecheckVerdict, recheck_key, recheck_summary

H1 = "sha256:" + "1" * 64
H2 = "sha256:" + "2" * 64


def test_verdicts_validate_and_round_trip() -> None:
    ok = RecheckVerdict("passed", None, -12.5, 2)
    bad = RecheckVerdict("failed", "token_mismatch at 4", -80.0, 0)
    na = RecheckVerdict.unavailable()
    for v in (ok, bad, na):
        assert RecheckVerdict.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    assert bad.excludes and not ok.excludes and not na.excludes
    for args in (
        ("maybe",),
        ("passed", None, None),  # the answer rule needs a likelihood
        ("passed", None, math.nan),
        ("failed", None),  # a failure needs a reason
        ("passed", None, -1.0, -1),
        ("unavailable", "x" * 501),
    ):
        with pytest.raises(ValueError):
            RecheckVerdict(*args)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RecheckVerdict.from_dict({"status": "passed", "log_likelihood": -1.0, "extra": 1})


def test_keys_and_summary() -> None:
    assert recheck_key(H1, "same text") == recheck_key(H1, "same text")
    assert recheck_key(H1, "same text") != recheck_key(H2, "same text") != recheck_key(H1, "other")
    ok, bad, na = (
        RecheckVerdict("passed", None, -1.0),
        RecheckVerdict("failed", "x"),
        RecheckVerdict.unavailable(),
    )
    assert recheck_summary([ok, bad]) == "checked"
    assert recheck_summary([na, na]) == recheck_summary([]) == "unavailable"
    assert recheck_summary([ok, na]) == "partial"


def test_repeated_failures_rate_limit_then_ban() -> None:
    policy = RecheckPolicy(window_ms=60_000, rate_limit_after=1, ban_after=3)
    fails = RecheckFailures(policy, max_peers=2)
    assert fails.action("p", 0) == "ok"
    assert fails.record("p", 1_000) == "rate_limit"
    assert fails.record("p", 2_000) == "rate_limit"
    assert fails.record("p", 3_000) == "ban" and policy.should_ban(3)
    assert fails.count("p", 62_500) == 1 and fails.action("p", 62_500) == "rate_limit"  # the window slid
    assert fails.action("p", 200_000) == "ok"
    fails.record("q", 0)
    fails.record("r", 0)  # bounded: the least recently used peer is forgotten
    assert fails.count("p", 3_000) == 0 and fails.count("r", 0) == 1
    with pytest.raises(ValueError):
        RecheckPolicy(rate_limit_after=3, ban_after=2)
