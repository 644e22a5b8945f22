"""Writing files so that an interrupted or killed write never leaves a truncated file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable


def is_local_path(name: str) -> bool:
    """Whether `name` can only be a file system path, never a Hub repo id ("name" or "user/name").

    Args:
        name: What the user passed as a folder or repo id.
    """
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Write `path` through a temporary file in the same folder, renamed into place once complete.

    The file gets the permissions a plain `open(path, "w")` would give (0o666 less the umask), not the 0o600 of a
    temporary file. Each call has its own temporary name, so threads saving to one folder do not collide.

    Args:
        path: The file to write.
        write: Writes the whole content to the path it is given.
    """
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
