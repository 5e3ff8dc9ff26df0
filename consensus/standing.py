"""Standing: how much sortition weight an identity has earned, from facts a node saw.

Why: a puzzle (``consensus.puzzle``) makes identities cost work, but an attacker with
hardware can still mint many at once. Standing makes a fresh identity light: its
sortition weight is a small floor that grows only with time seen and with outputs
that passed other nodes' proof-of-inference re-checks (issue 15), and collapses on a
failed re-check. A burst of fresh identities therefore weighs little however many
there are, and an identity caught once loses most of what it earned.

    earned     = 0.5 * min(1, age_s / full_age_s) + 0.5 * passed / (passed + half_passes)
    multiplier = (floor + (1 - floor) * earned) * failure_factor ** failed
    multiplier = 0 once failed >= ban_failures

With the defaults: a fresh identity weighs 0.05 of a fully established one; a week
seen with no work reaches 0.53; a week and 50 passed re-checks 0.76; each failed
re-check quarters the weight and the fourth removes the node from committees.

Trade-offs
- Slow onboarding: an honest newcomer gets about 1/20 of an established node's
  share of the work at first. That is the price of Sybil resistance.
- Age is *local* (first time this node saw the identity), so it cannot be faked over
  the wire, but it can be bought by patience: an attacker that runs honest nodes for
  a week and does real work earns full standing, then attacks once. Standing raises
  the cost of an attack (time, honest work, puzzle work); it does not forbid it.
- Standing views differ between nodes (different first sightings, different re-check
  histories); the sortition slack (``consensus.sortition``) absorbs the difference.
- Counts, not rates: failures never age out here. A node that was once faulty has to
  earn its way back through age and passes on the *next* identity, or the daemon can
  reset counts by policy; this function stays pure and monotone.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StandingConfig", "standing"]


@dataclass(frozen=True, slots=True)
class StandingConfig:
    floor: float = 0.05
    full_age_s: float = 7 * 24 * 3600.0
    half_passes: float = 50.0
    failure_factor: float = 0.25
    ban_failures: int = 4

    def __post_init__(self) -> None:
        if not 0.0 < self.floor <= 1.0:
            raise ValueError("floor must be in (0, 1]")
        if not (self.full_age_s > 0.0 and self.half_passes > 0.0):
            raise ValueError("full_age_s and half_passes must be > 0")
        if not 0.0 <= self.failure_factor < 1.0:
            raise ValueError("failure_factor must be in [0, 1)")
        if self.ban_failures < 1:
            raise ValueError("ban_failures must be >= 1")


def standing(age_s: float, passed: int, failed: int, config: StandingConfig = StandingConfig()) -> float:
    """Sortition weight multiplier in [0, 1]: non-decreasing in age and passes,
    non-increasing in failures (see the module docstring for the formula)."""
    if not age_s >= 0.0:
        raise ValueError(f"age_s must be >= 0, got {age_s!r}")
    if passed < 0 or failed < 0:
        raise ValueError("passed and failed must be >= 0")
    if failed >= config.ban_failures:
        return 0.0
    earned = 0.5 * min(1.0, age_s / config.full_age_s) + 0.5 * passed / (passed + config.half_passes)
    return (config.floor + (1.0 - config.floor) * earned) * config.failure_factor**failed
