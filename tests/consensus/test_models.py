"""Model identity (consensus.models) and the commit window (consensus.windows)."""

from __future__ import annotations

import pytest

from consensus import AcceptedModels, ModelRef, commit_window_ms, parse_model_ref

H1 = "sha256:" + "1" * 64
H2 = "sha256:" + "2" * 64


def test_parse_model_ref() -> None:
    assert parse_model_ref("smollm2-135m") == ModelRef("smollm2-135m")
    assert parse_model_ref(f"smollm2-135m@{H1}") == ModelRef("smollm2-135m", H1)
    assert str(ModelRef("m", H1)) == f"m@{H1}"
    for bad in [
        "",
        "@" + H1,
        "m@",
        "m@sha256:" + "1" * 63,
        "m@sha256:" + "G" * 64,
        " m",
        "m@" + H1 + "@x",
        7,
    ]:
        with pytest.raises(ValueError):
            parse_model_ref(bad)  # type: ignore[arg-type]


def test_accepted_models_refusals() -> None:
    acc = AcceptedModels.parse(["free", f"pinned@{H1}", f"pinned@{H2}"])
    assert acc.aliases == ("free", "pinned")
    assert acc.accepts("free", H2) and acc.accepts("pinned", H1) and acc.accepts("pinned", H2)
    assert acc.refusal("other", H1)[0] == "model_not_accepted"
    assert acc.refusal("pinned", "sha256:" + "3" * 64)[0] == "model_hash_not_accepted"
    assert acc.refusal("free", "not-a-hash")[0] == "model_hash_not_accepted"
    for bad in ([], ["a", "a"], ["a", f"a@{H1}"], [f"a@{H1}", f"a@{H1}"]):
        with pytest.raises(ValueError):
            AcceptedModels.parse(bad)


def test_commit_window() -> None:
    assert commit_window_ms(120_000) == 30_000
    assert commit_window_ms(4_000) == 2_000 and commit_window_ms(1_500) == 1_500
    assert commit_window_ms(10**7) == 60_000
    assert commit_window_ms(10_000, 1) == 1 and commit_window_ms(10_000, 10_000) == 10_000
    for args in ((0,), (10_000, 0), (10_000, 10_001), (10_000, True), (1.5,)):
        with pytest.raises(ValueError):
            commit_window_ms(*args)  # type: ignore[arg-type]
