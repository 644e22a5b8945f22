"""Files and folders: writes that an interrupted or killed process never leaves truncated, JSON records, a lock
held while a folder is written, and checks of an output folder before any work."""

from __future__ import annotations

import json
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


def read_json(path: str, hint: str = "delete the results folder to start over") -> dict:
    """The JSON object in `path`.

    Args:
        path: A JSON file holding one object.
        hint: What the user should do when the file is damaged, appended to the error.

    Raises:
        ValueError: If the file is not valid JSON or does not hold an object (naming the file).
    """
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark, as some editors write, is fine
            data = json.load(f)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason}); {hint}.") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {hint}.") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a JSON file; {hint}.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object; {hint}.")
    return data


def write_json(path: str, data: dict) -> None:
    """Write `data` to `path` as indented JSON with sorted keys (atomically: see `atomic_write`).

    Args:
        path: The file to write.
        data: A JSON-ready dict.
    """

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(path, write)


def folder_lock(path: str):
    """Hold an exclusive lock on the file `path` while the returned handle is open (the OS releases it if the process
    dies), so that two runs never write one folder at once.

    Args:
        path: The lock file, inside the folder it guards.

    Returns:
        The open handle: close it to release the lock.

    Raises:
        ValueError: If another process holds the lock.
    """
    handle = open(path, "a")
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ValueError(
            f"Another run is writing to {os.path.dirname(path)!r} right now: wait for it, or use another folder."
        ) from None
    return handle


def is_saved_dataset(path: str) -> bool:
    """Whether `path` is a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`.

    Args:
        path: A path.
    """
    return os.path.isdir(path) and (
        os.path.exists(os.path.join(path, "dataset_info.json"))
        or os.path.exists(os.path.join(path, "dataset_dict.json"))
    )


def writable_problem(folder: str) -> str | None:
    """What keeps `folder` from being created and written ("'x' is a file; give a folder"), or None.

    Args:
        folder: The folder (it may not exist yet).
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        return f"{folder!r} is a file; give a folder"
    existing = folder
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing and not os.path.isdir(existing):
        return f"{folder!r} cannot be created: {existing!r} is a file"
    try:  # try it: os.access says yes to root on folders nobody can write into (/proc, a read-only mount)
        probe = tempfile.mkdtemp(prefix=".hf-memory-probe-", dir=existing or ".")
    except OSError as err:
        return f"{folder!r} cannot be written ({err.strerror or err} in {existing or '.'!r})"
    os.rmdir(probe)
    return None


def check_writable(folder: str, name: str = "output_dir") -> None:
    """Refuse an output folder that is a file or cannot be created or written, before any work.

    Args:
        folder: The folder (it may not exist yet).
        name: The argument's name in the error.

    Raises:
        ValueError: Naming the argument, the folder and what is wrong.
    """
    problem = writable_problem(folder)
    if problem is not None:
        raise ValueError(f"`{name}` {problem}.")


def metric_folder(name: str) -> str:
    """The folder of the `evaluate` metric `name` shipped in `hf_memory/metrics/`: what `evaluate.load` takes, offline.

    A capability names its metric's folder through this, so that no capability imports `hf_memory.metrics` (the
    metric scripts import the capabilities: the dependency runs one way).

    Args:
        name: The metric's folder name, e.g. "extractable_memorization".
    """
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "metrics", name)
