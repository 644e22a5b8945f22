"""The rows of an audit in progress, kept on disk chunk by chunk so that an interrupted audit resumes.

`out/.partial/` holds `manifest.json` (the settings, the models' identities and a fingerprint of the sampled
windows) and one Parquet file per finished chunk, `chunk-<first window>.parquet`, each written whole under a
temporary name and renamed into place: a killed audit leaves complete chunks only.
"""

from __future__ import annotations

import glob
import os

from .._utils import atomic_write, folder_lock, read_json, write_json
from .report import _column_types


PARTIAL_DIR = ".partial"
PARTIAL_FORMAT = "hf-memory-audit-partial/1"
MANIFEST_FILE = "manifest.json"


class PartialRows:
    """The finished chunks of one audit in `folder`, opened as a context manager (which holds the folder's lock).

    Args:
        folder: The partial-rows folder (`out/.partial`), created if missing.
        manifest: What identifies the audit: `format`, `settings`, `model`, `reference_model`, `windows`.

    Raises:
        ValueError: On entering, if the folder holds chunks of an audit with another manifest (naming what differs),
            or another process is writing it.
    """

    def __init__(self, folder: str, manifest: dict) -> None:
        self.folder, self.manifest = folder, manifest
        self._lock = None

    def __enter__(self) -> PartialRows:
        os.makedirs(self.folder, exist_ok=True)
        self._lock = folder_lock(os.path.join(self.folder, ".lock"))
        try:
            self._open()
        except BaseException:
            self._lock.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._lock.close()

    def _open(self) -> None:
        path = os.path.join(self.folder, MANIFEST_FILE)
        hint = f"delete {self.folder!r} to start the audit over"
        if os.path.exists(path):
            existing = read_json(path, hint)
            differences = [key for key in self.manifest if existing.get(key) != self.manifest[key]]
            if differences:
                what = {"windows": "data (other windows were drawn)", "reference_model": "reference model"}
                raise ValueError(
                    f"`out` holds an unfinished audit with different {', '.join(what.get(k, k) for k in differences)} "
                    f"in {self.folder!r}: rerun it with its own arguments to finish it, or {hint}."
                )
        elif glob.glob(os.path.join(self.folder, "chunk-*.parquet")):
            raise ValueError(f"{self.folder!r} holds chunks but no {MANIFEST_FILE}: {hint}.")
        else:
            write_json(path, self.manifest)
        for stale in glob.glob(os.path.join(self.folder, ".chunk-*.tmp")):
            os.remove(stale)  # left by a process killed mid-write: never renamed, so never counted

    def _path(self, begin: int) -> str:
        return os.path.join(self.folder, f"chunk-{begin:09d}.parquet")

    def has(self, begin: int) -> bool:
        """Whether the chunk that starts at window `begin` is already written.

        Args:
            begin: Index of the chunk's first window.
        """
        return os.path.exists(self._path(begin))

    def write(self, begin: int, rows: list[dict]) -> None:
        """Write one finished chunk's rows.

        Args:
            begin: Index of the chunk's first window.
            rows: The chunk's report rows.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = _column_types()
        schema = pa.schema(list(types.items()))
        table = pa.table({name: [row.get(name) for row in rows] for name in types}, schema=schema)
        atomic_write(self._path(begin), lambda tmp: pq.write_table(table, tmp))

    def rows(self, begins: list[int]) -> list[dict]:
        """Every row of the chunks that start at `begins`, in that order.

        Args:
            begins: The chunks' first windows.

        Raises:
            ValueError: If a chunk file cannot be read (naming it).
        """
        import pyarrow.parquet as pq

        out = []
        for begin in begins:
            path = self._path(begin)
            try:
                out += pq.read_table(path).to_pylist()
            except Exception as err:  # pyarrow raises several types for a damaged file
                raise ValueError(
                    f"{path} cannot be read ({type(err).__name__}: {err}): delete it and rerun the same audit."
                ) from None
        return out
