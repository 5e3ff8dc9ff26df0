"""The 2-minute soak (scripts/soak.py): steady load while nodes are killed, restarted,
partitioned and healed; no accepted request may be lost (no final state anywhere)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def test_two_minute_soak_loses_nothing(tmp_path):
    from soak import soak

    netns = os.geteuid() == 0 and shutil.which("ip") is not None
    res = soak(minutes=2, nodes=5, netns=netns, interval=6.0, chaos_every=25.0, seed=7, root=tmp_path)
    print(res)
    assert res["accepted"] >= 10, res
    assert res["lost"] == 0, res
    assert sum(res["faults"].values()) >= 3, res
