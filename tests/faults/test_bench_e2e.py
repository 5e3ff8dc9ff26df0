"""`scripts/bench_e2e.py` in a small configuration: concurrent requests against the running
three-daemon testnet, every one followed to a final state; nothing may be lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_e2e.py"


def test_bench_e2e_small_configuration_loses_nothing(trio_net):
    urls = [trio_net[n].url for n in ("a", "b", "c")]
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--tiny",
        "--requests",
        "9",
        "--max-tokens",
        "8",
        "--max-time",
        "120",
        "--json",
    ]
    for u in urls:
        cmd += ["--url", u]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["submitted"] == out["accepted"] == 9, out
    assert out["lost"] == 0, out
    assert out["succeeded"] == 9, out
    assert out["latency_s"]["p50"] is not None and out["latency_s"]["p99"] >= out["latency_s"]["p50"]
    assert "succeeded 9" in proc.stdout
