"""Per-window extraction results on disk: Parquet shards, a manifest, and resuming an interrupted run.

A results folder holds `.manifest.json` (the settings and the model's identity), one series of shards per process,
`rank00000-000000.parquet`, `rank00000-000001.parquet`, ..., each written whole to a temporary name and renamed
into place (a killed run leaves complete shards only), and `.summary.json` once the run has finished. The shards
load with `datasets.load_dataset("parquet", data_dir=folder)`, which skips hidden files: so the manifest and
summary are hidden.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass

from .._utils import atomic_write, folder_lock, read_json, write_json


MANIFEST_NAME = ".manifest.json"
SUMMARY_NAME = ".summary.json"
STORE_FORMAT = 1
SCORE_COLUMNS = ("exact_match", "memorization_score", "longest_common_prefix", "rouge_l", "rouge_l_text")


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("sequence", pa.int64()),
            ("start", pa.int64()),
            ("exact_match", pa.bool_()),
            ("longest_common_prefix", pa.int64()),
            ("memorization_score", pa.float64()),
            ("rouge_l", pa.float64()),
            ("rouge_l_text", pa.float64()),
            ("prediction", pa.list_(pa.int64())),
            ("reference", pa.list_(pa.int64())),
        ]
    )


def _shard_name(rank: int, index: int) -> str:
    return f"rank{rank:05d}-{index:06d}.parquet"


def _shards(folder: str, rank: int | None = None) -> list[str]:
    pattern = "rank*-*.parquet" if rank is None else f"rank{rank:05d}-*.parquet"
    return sorted(glob.glob(os.path.join(folder, pattern)))


def _rows_in(path: str) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise ValueError(
            f"The shard {path} cannot be read ({type(err).__name__}: {err}). Delete it and rerun the same call: "
            "its windows are measured again."
        ) from None


def open_results_folder(folder: str, manifest: dict, is_main: bool) -> None:
    """Create `folder` with its manifest, or check that an existing run there has the same settings and model.

    Args:
        folder: The results folder.
        manifest: The settings and model identity of this run (`settings`, `model`, `num_processes`).
        is_main: Whether this process writes the manifest (the main process); the others only check it.

    Raises:
        ValueError: If `folder` is a file, or holds results of a run with other settings, another model or another
            number of processes (naming what differs).
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"`output_dir` {folder!r} is a file; give a folder.")
    path = os.path.join(folder, MANIFEST_NAME)
    if os.path.exists(path):
        existing = read_json(path)
        differences = [
            f"{key}: {existing.get(key)!r} there, {manifest[key]!r} now"
            for key in ("format", "settings", "model", "num_processes")
            if existing.get(key) != manifest[key]
        ]
        if differences:
            raise ValueError(
                f"`output_dir` {folder!r} holds results of a different run ({'; '.join(differences)}). Use another "
                "folder, or delete this one to start over."
            )
        return
    if _shards(folder):
        raise ValueError(f"`output_dir` {folder!r} holds shards but no {MANIFEST_NAME}; use another folder.")
    if is_main:
        os.makedirs(folder, exist_ok=True)
        write_json(path, manifest)


@dataclass
class ShardWriter:
    """Appends one process's per-window rows to its shards, a new shard every `flush_every` batches.

    Args:
        folder: The results folder.
        rank: This process's index.
        flush_every: Batches per shard; each flush writes one complete Parquet file.
    """

    folder: str
    rank: int
    flush_every: int

    def __post_init__(self):
        self._lock = folder_lock(os.path.join(self.folder, f".rank{self.rank:05d}.lock"))
        for stale in glob.glob(os.path.join(self.folder, f".rank{self.rank:05d}-*.tmp")):
            os.remove(stale)  # left by a run killed mid-write: never renamed, so never counted
        self.done = sum(_rows_in(path) for path in _shards(self.folder, self.rank))
        self.next_index = len(_shards(self.folder, self.rank))
        self.pending: list[dict] = []
        self.batches = 0

    def last_written(self) -> tuple[int, int] | None:
        """`(sequence, start)` of this process's last written window, or None."""
        import pyarrow.parquet as pq

        shards = _shards(self.folder, self.rank)
        while shards:
            table = pq.read_table(shards[-1], columns=["sequence", "start"])
            if table.num_rows:
                return table["sequence"][-1].as_py(), table["start"][-1].as_py()
            shards.pop()
        return None

    def add(self, rows: dict) -> None:
        """Queue one batch's rows (columns of the shard schema); write a shard every `flush_every` batches.

        Args:
            rows: One list per column, one entry per window of the batch.
        """
        self.pending.append(rows)
        self.batches += 1
        if self.batches % self.flush_every == 0:
            self.flush()

    def close(self) -> None:
        """Flush the queued rows and let another run write this process's shards."""
        try:
            self.flush()
        finally:
            self._lock.close()

    def flush(self) -> None:
        """Write the queued rows as one shard (nothing if none are queued)."""
        if not self.pending:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _schema()
        columns = {name: [v for rows in self.pending for v in rows[name]] for name in schema.names}
        table = pa.Table.from_pydict(columns, schema=schema)
        path = os.path.join(self.folder, _shard_name(self.rank, self.next_index))
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        self.next_index += 1
        self.done += table.num_rows
        self.pending = []


def write_summary(folder: str, summary: dict) -> None:
    """Mark the run in `folder` finished, with its counts.

    Args:
        folder: The results folder.
        summary: `num_windows`, `num_skipped`, `num_sequences`.
    """
    write_json(os.path.join(folder, SUMMARY_NAME), summary)


def read_manifest(folder: str) -> dict:
    """The manifest of the results folder `folder`.

    Args:
        folder: A folder written by `measure_extraction(..., output_dir=folder)`.

    Raises:
        FileNotFoundError: If `folder` holds no manifest.
    """
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder!r} holds no {MANIFEST_NAME}: it is not a measure_extraction results folder.")
    return read_json(path)


def read_summary(folder: str) -> dict | None:
    """The summary of a finished run in `folder`, or None if the run has not finished.

    Args:
        folder: A results folder.
    """
    path = os.path.join(folder, SUMMARY_NAME)
    return read_json(path) if os.path.isfile(path) else None


def iter_score_batches(folder: str) -> Iterator[dict]:
    """The score columns of every shard in `folder`, one shard at a time (never the token ids).

    Args:
        folder: A results folder.

    Yields:
        Per shard, a dict of numpy arrays: `sequence`, `start` and the `SCORE_COLUMNS`.
    """
    import pyarrow.parquet as pq

    for path in _shards(folder):
        _rows_in(path)  # a damaged shard is reported with its name
        table = pq.read_table(path, columns=["sequence", "start", *SCORE_COLUMNS])
        yield {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
