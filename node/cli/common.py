"""What every command group shares: the data-dir option and the one-line error.

It imports nothing from the other CLI modules, so the root app (``node.cli.app``) can
import every group and every group can import this without an import cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from node.config import default_data_dir

__all__ = ["DataDirOption", "fail", "resolve_data_dir"]

# Reusable option: other modules' commands should take the data dir the same way.
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        "-d",
        help="Node data directory (default: $RAKIS_DATA_DIR, else the user data dir).",
        file_okay=False,
        show_default=False,
    ),
]


def resolve_data_dir(data_dir: Path | None) -> Path:
    """The ``--data-dir`` value, else ``RAKIS_DATA_DIR``, else the platform's user data dir."""
    return data_dir.expanduser() if data_dir is not None else default_data_dir()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error to stderr and return the Exit to raise (``raise fail(...)``)."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)
