"""The daemon's hold on its data directory: an exclusive lock file and ``node.json``.

``node.json`` tells tools (``rakis testnet``, supervisors) where a running node
listens; it is written atomically once the node is ready and removed at shutdown.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from node.store import StoreError

__all__ = ["LOCK_FILE", "NODE_JSON", "lock_data_dir", "remove_node_json", "write_node_json"]

NODE_JSON = "node.json"
LOCK_FILE = "daemon.lock"


def write_node_json(data_dir: Path, info: dict[str, Any]) -> Path:
    path = data_dir / NODE_JSON
    tmp = path.with_name(f".{NODE_JSON}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def remove_node_json(data_dir: Path) -> None:
    """Remove ``node.json`` (the node is no longer listening); a missing file is fine."""
    try:
        (data_dir / NODE_JSON).unlink()
    except OSError:
        pass


def lock_data_dir(data_dir: Path) -> Any:
    """Hold an exclusive lock on the data dir for the daemon's lifetime: two daemons on
    one database would both answer for the same node key and interleave its state."""
    import fcntl

    path = data_dir / LOCK_FILE
    fh = open(path, "a+")  # noqa: SIM115 - held open until shutdown
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        other = fh.read().strip() or "?"
        fh.close()
        raise StoreError(f"data directory {data_dir} is in use by another rakis node (pid {other})") from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
    except OSError as e:  # e.g. a full disk: name the place, not just the errno
        try:
            fh.close()  # flushes again, and fails again on a full disk
        except OSError:
            pass
        raise StoreError(f"cannot write {path}: {e.strerror} (is the data directory full?)") from None
    return fh
