"""Standing multiplier: slow rise, fast drop, fresh identities light."""

from __future__ import annotations

import itertools

import pytest

from consensus.standing import StandingConfig, standing

DAY = 86400.0


def test_fresh_identity_gets_the_floor() -> None:
    assert standing(0.0, 0, 0) == pytest.approx(StandingConfig().floor)


def test_monotone_in_age_passes_and_failures() -> None:
    ages = [0, DAY, 3 * DAY, 7 * DAY, 30 * DAY]
    for a, b in itertools.pairwise(ages):
        assert standing(a, 10, 0) <= standing(b, 10, 0)
    for p in range(0, 200, 10):
        assert standing(DAY, p, 0) <= standing(DAY, p + 10, 0)
    for f in range(6):
        assert standing(7 * DAY, 50, f) >= standing(7 * DAY, 50, f + 1)
    assert all(0.0 <= standing(a, p, f) <= 1.0 for a in ages for p in (0, 5, 500) for f in (0, 1, 5))


def test_rises_slowly_drops_fast() -> None:
    established = standing(7 * DAY, 50, 0)
    assert standing(DAY, 1, 0) < 0.2  # a day and one pass is still light
    assert standing(7 * DAY, 50, 1) <= established / 4 + 1e-12  # one failure quarters it
    assert standing(365 * DAY, 10**6, 4) == 0.0  # banned


def test_burst_of_fresh_identities_weighs_little() -> None:
    honest = 1000 * standing(30 * DAY, 100, 0)
    sybils = 1000 * standing(0.0, 0, 0)
    assert sybils / (honest + sybils) < 0.1


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError):
        standing(-1.0, 0, 0)
    with pytest.raises(ValueError):
        standing(0.0, -1, 0)
    with pytest.raises(ValueError):
        StandingConfig(floor=0.0)
