"""The installed package version, as peers (``peer_info``) and ``rakis --version`` see it."""

from __future__ import annotations

from importlib import metadata

__all__ = ["package_version"]


def package_version() -> str:
    """The installed ``rakis`` version; ``0.0.0+unknown`` when run from a source tree without install."""
    try:
        return metadata.version("rakis")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"
