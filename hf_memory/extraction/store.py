"""Per-window extraction results on disk: Parquet shards, a manifest, and resuming an interrupted run.

A results folder holds `.manifest.json` (the settings and the model's identity, with a fingerprint of its weights),
one series of shards per process, `rank00000-000000.parquet`, `rank00000-000001.parquet`, ..., each written whole to
a temporary name and renamed into place (a killed run leaves complete shards only), and `.summary.json` once the run
has finished. Only files named like shards are read as shards. They load with
`datasets.load_dataset("parquet", data_files=os.path.join(folder, "rank*-*.parquet"))` (or `data_dir=folder`, which
skips hidden files such as the manifest and summary, when the folder holds nothing else).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from .._utils import atomic_write, folder_lock, read_json, write_json


MANIFEST_NAME = ".manifest.json"
SUMMARY_NAME = ".summary.json"
STORE_FORMAT = 1
SCORE_COLUMNS = ("exact_match", "memorization_score", "longest_common_prefix", "rouge_l", "rouge_l_text")


def shard_schema():
    """The Arrow schema of every shard."""
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


_SHARD = re.compile(r"rank(\d{5})-(\d{6})\.parquet")


def shard_paths(folder: str, rank: int | None = None) -> list[str]:
    """The shard files in `folder` (of process `rank` only, if given), in name order; other files are ignored.

    Args:
        folder: A results folder.
        rank: A process index, or None for the shards of every process.
    """
    pattern = "rank*-*.parquet" if rank is None else f"rank{rank:05d}-*.parquet"
    return sorted(p for p in glob.glob(os.path.join(folder, pattern)) if _SHARD.fullmatch(os.path.basename(p)))


def _shard_index(path: str) -> int:
    return int(_SHARD.fullmatch(os.path.basename(path)).group(2))


def damaged_shard(path: str, err: BaseException) -> ValueError:
    """The error for a shard that cannot be read, naming it and the way to redo its windows.

    Args:
        path: The shard.
        err: What reading it raised.
    """
    rank = _SHARD.fullmatch(os.path.basename(path)).group(1)
    return ValueError(
        f"The shard {path} cannot be read ({type(err).__name__}: {err}). Delete it, and any later shard of the same "
        f"process (rank{rank}-*.parquet with a higher number), and rerun the same call: their windows are measured "
        "again."
    )


def _rows_in(path: str) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise damaged_shard(path, err) from None


def read_shard(path: str, columns: list[str] | None = None):
    """The table in shard `path` (only `columns`, if given), or a `ValueError` naming a damaged shard.

    Args:
        path: A shard.
        columns: The columns to read; None reads them all.
    """
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except Exception as err:  # damaged data pages: OSError, ArrowInvalid, ...
        raise damaged_shard(path, err) from None


def check_shards(folder: str) -> None:
    """Read every shard in `folder` whole, raising a `ValueError` that names the first damaged one.

    Args:
        folder: A results folder.
    """
    for path in shard_paths(folder):
        read_shard(path)


WEIGHTS_KEY = "weights_sha256"  # in the manifest's `model`: the fingerprint of the model's weights


def open_results_folder(folder: str, manifest: dict, is_main: bool) -> bool:
    """Create `folder` with its manifest, or check that an existing run there has the same settings and model.

    The model's weight fingerprint (`manifest["model"]["weights_sha256"]`) is compared by the main process only
    (the others may pass None: it is computed once). A manifest written before fingerprints were recorded matches
    on the model's name and config alone, and is reported as such: the caller must add no row to that folder.

    Args:
        folder: The results folder.
        manifest: The settings and model identity of this run (`format`, `settings`, `model`, `num_processes`).
        is_main: Whether this process writes the manifest (the main process); the others only check it.

    Returns:
        True if the folder's manifest has no weight fingerprint (written by an older hf-memory), else False.

    Raises:
        ValueError: If `folder` is a file, or holds results of a run with other settings, another model (name,
            config or weights) or another number of processes (naming what differs).
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"`output_dir` {folder!r} is a file; give a folder.")
    path = os.path.join(folder, MANIFEST_NAME)
    if os.path.exists(path):
        existing = read_json(path)
        then, now = existing.get("model"), dict(manifest["model"])
        legacy = isinstance(then, dict) and WEIGHTS_KEY not in then
        if legacy or not is_main:
            now.pop(WEIGHTS_KEY, None)
            then = {k: v for k, v in then.items() if k != WEIGHTS_KEY} if isinstance(then, dict) else then
        differences = [
            f"{key}: {existing.get(key)!r} there, {manifest[key]!r} now"
            for key in ("format", "settings", "num_processes")
            if existing.get(key) != manifest[key]
        ]
        if not isinstance(then, dict):
            differences.append(f"model: {then!r} there, {now!r} now")
        else:
            differences += [
                f"model {key}: {then.get(key)!r} there, {now.get(key)!r} now"
                for key in sorted(set(then) | set(now))
                if then.get(key) != now.get(key)
            ]
        if differences:
            raise ValueError(
                f"`output_dir` {folder!r} holds results of a different run ({'; '.join(differences)}). Use another "
                "folder, or delete this one to start over."
            )
        return legacy
    if shard_paths(folder):
        raise ValueError(f"`output_dir` {folder!r} holds shards but no {MANIFEST_NAME}; use another folder.")
    if is_main:
        os.makedirs(folder, exist_ok=True)
        write_json(path, manifest)
    return False


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
        try:  # whatever is refused here, the lock is let go at once (not when the exception is freed)
            for stale in glob.glob(os.path.join(self.folder, f".rank{self.rank:05d}-*.tmp")):
                os.remove(stale)  # left by a run killed mid-write: never renamed, so never counted
            shards = shard_paths(self.folder, self.rank)
            gap = next((i for i, path in enumerate(shards) if _shard_index(path) != i), None)
            if gap is not None:  # the rows on disk would not be the first windows of this process's share
                later = [os.path.basename(path) for path in shards[gap:]]
                raise ValueError(
                    f"The shard {os.path.join(self.folder, _shard_name(self.rank, gap))} is missing, but later shards "
                    f"of the same process are there ({', '.join(later)}). Delete those too and rerun the same call: "
                    "their windows are measured again."
                )
            self.done = sum(_rows_in(path) for path in shards)
            self.next_index = len(shards)
        except BaseException:
            self._lock.close()
            raise
        self.pending: list[dict] = []
        self.batches = 0
        self._unfinished = False  # whether this run has marked the folder unfinished (its summary removed)

    def last_written(self) -> tuple[int, int, list[int]] | None:
        """`(sequence, start, reference)` of this process's last written window, or None.

        Raises:
            ValueError: If the shard holding it is damaged (naming it).
        """
        shards = shard_paths(self.folder, self.rank)
        while shards:
            table = read_shard(shards[-1], columns=["sequence", "start", "reference"])
            if table.num_rows:
                return tuple(table[name][-1].as_py() for name in ("sequence", "start", "reference"))
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
        """Write the queued rows as one shard (nothing if none are queued); before the first, mark the run in the
        folder unfinished (remove its summary), since it no longer covers every row there."""
        if not self.pending:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._unfinished:
            remove_summary(self.folder)
            self._unfinished = True

        schema = shard_schema()
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
        summary: `num_skipped`, `num_sequences`.
    """
    write_json(os.path.join(folder, SUMMARY_NAME), summary)


def remove_summary(folder: str) -> None:
    """Mark the run in `folder` unfinished (rows are about to be added), if it was marked finished.

    Args:
        folder: The results folder.
    """
    try:
        os.remove(os.path.join(folder, SUMMARY_NAME))
    except FileNotFoundError:
        pass


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

    Raises:
        ValueError: If a shard is damaged (naming it).
    """
    for path in shard_paths(folder):
        table = read_shard(path, columns=["sequence", "start", *SCORE_COLUMNS])
        yield {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
