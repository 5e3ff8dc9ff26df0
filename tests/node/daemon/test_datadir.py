"""The daemon's hold on its data directory: one daemon per directory, node.json written atomically."""

from __future__ import annotations

import json
import os

import pytest

from node.daemon.datadir import NODE_JSON, lock_data_dir, remove_node_json, write_node_json
from node.store import StoreError


def test_one_daemon_per_data_dir(tmp_path):
    held = lock_data_dir(tmp_path)
    try:
        with pytest.raises(StoreError, match=f"in use by another rakis node \\(pid {os.getpid()}\\)"):
            lock_data_dir(tmp_path)
    finally:
        held.close()
    lock_data_dir(tmp_path).close()  # free again once released


def test_node_json_written_whole_then_removed(tmp_path):
    path = write_node_json(tmp_path, {"api_url": "http://127.0.0.1:1", "pid": 1})
    assert path.name == NODE_JSON
    assert json.loads(path.read_text()) == {"api_url": "http://127.0.0.1:1", "pid": 1}
    assert [p.name for p in tmp_path.iterdir()] == [NODE_JSON]  # no temp file left
    remove_node_json(tmp_path)
    remove_node_json(tmp_path)  # already gone: fine
    assert not path.exists()
