"""Suite-wide settings: offline model loading, bounded torch threads."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Identity puzzles cost about a minute at the default difficulty; tests that exercise
# them set their own (tests/node/test_identity_puzzle.py). Both the setting's env var
# (daemons started from here inherit it) and the in-process default, which `rakis init`
# and `Settings` read at import, for tests that clear every RAKIS_* variable.
os.environ.setdefault("RAKIS_PUZZLE_DIFFICULTY", "0")
import consensus.puzzle as _puzzle  # noqa: E402

_puzzle.DEFAULT_DIFFICULTY = 0
