"""The installed hf-memory version, for the files the package writes (config files, manifests, reports)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version


try:
    __version__ = _version("hf-memory")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


def is_newer_version(written_by) -> bool:
    """Whether `written_by` (a version string read from a file) is a later hf-memory release than this one.

    Args:
        written_by: The version a file records; anything that is not a version string counts as not newer.
    """
    from packaging.version import InvalidVersion, Version

    if not isinstance(written_by, str):
        return False
    try:
        return Version(written_by) > Version(__version__)
    except InvalidVersion:
        return False
