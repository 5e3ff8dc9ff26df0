"""``OrchestratorConfig``: fault modes are the ``FaultMode`` enum, checked when built."""

from __future__ import annotations

import pytest

from node.config import FaultMode, load_settings
from node.orchestrator.config import OrchestratorConfig


@pytest.mark.parametrize("mode", list(FaultMode))
def test_fault_accepts_the_enum_and_its_string_value(mode):
    assert OrchestratorConfig(fault=mode).fault is mode
    assert OrchestratorConfig(fault=mode.value).fault is mode
    assert OrchestratorConfig(fault=mode).silent is (mode is FaultMode.SILENT)


def test_unknown_fault_is_a_clear_error_naming_the_field_and_the_modes():
    with pytest.raises(ValueError, match=r"fault must be one of .*'off-topic'.*got 'evil'"):
        OrchestratorConfig(fault="evil")


def test_from_settings_carries_the_fault_mode(tmp_path):
    cfg = OrchestratorConfig.from_settings(load_settings(tmp_path, fault="garbage"))
    assert cfg.fault is FaultMode.GARBAGE
    assert OrchestratorConfig.from_settings(load_settings(tmp_path / "d")).fault is FaultMode.HONEST
