"""The commit window: how long after a request is signed its commits are accepted.

Commits close at ``request ts + commit window``, a time fixed by the signed request
alone. Nothing a peer sends (a reveal request, a reveal, a burst of commits) closes
them earlier: a fast operator holding ``quorum`` identities can no longer commit at
once, ask for reveals and shut out the slower honest nodes that really ran the model.

The window is the security frame's ``commit_window_ms`` when the client sets it, else
``commit_window_ms(max_time_ms)``: a quarter of ``max_time_ms``, clamped to
[2 s, 60 s] and never past ``max_time_ms``. Why these numbers:

- a quarter: ``max_time_ms`` is the client's budget for the whole request; inference
  must fit inside the window, while revealing and checking (one embedding and one
  teacher-forced prefill per distinct output) are far cheaper and fit in the rest.
  The default client budget of 120 s gives honest nodes 30 s to infer and commit.
- at least 2 s: a window shorter than gossip propagation plus a small model's answer
  would shut out honest nodes on an ordinary network;
- at most 60 s: every request waits for the full window (commits cannot close early
  without reopening the capture), so an uncapped window would make long budgets slow.

Clients whose nodes are fast set ``commit_window_ms`` explicitly and pay less latency.
``node.wire`` validates the field and this module computes the default: one function,
used by both.
"""

from __future__ import annotations

__all__ = [
    "COMMIT_WINDOW_FRACTION_DIVISOR",
    "MAX_DEFAULT_COMMIT_WINDOW_MS",
    "MIN_DEFAULT_COMMIT_WINDOW_MS",
    "commit_window_ms",
]

COMMIT_WINDOW_FRACTION_DIVISOR = 4  # default window = max_time_ms / 4 ...
MIN_DEFAULT_COMMIT_WINDOW_MS = 2_000  # ... at least 2 s ...
MAX_DEFAULT_COMMIT_WINDOW_MS = 60_000  # ... at most 60 s, never past max_time_ms


def commit_window_ms(max_time_ms: int, requested: int | None = None) -> int:
    """The commit window in ms for a security frame (see module docstring).

    ``requested`` is the frame's ``commit_window_ms`` (None when absent); it must lie in
    ``[1, max_time_ms]``. Raises ValueError on a bad value.
    """
    if isinstance(max_time_ms, bool) or not isinstance(max_time_ms, int) or max_time_ms < 1:
        raise ValueError(f"max_time_ms must be an integer >= 1, got {max_time_ms!r}")
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int):
            raise ValueError(f"commit_window_ms must be an integer, got {requested!r}")
        if not 1 <= requested <= max_time_ms:
            raise ValueError(f"commit_window_ms {requested} must be in [1, max_time_ms={max_time_ms}]")
        return requested
    window = max_time_ms // COMMIT_WINDOW_FRACTION_DIVISOR
    window = max(MIN_DEFAULT_COMMIT_WINDOW_MS, min(MAX_DEFAULT_COMMIT_WINDOW_MS, window))
    return min(window, max_time_ms)
