"""One resumable results folder for every harness that writes its rows as it goes (extraction, the audit, ...).

A folder holds:

- `.manifest.json`: what identifies the run (`format`, `kind`, the settings, the model and tokenizer identities with
  a fingerprint of the weights, the data's fingerprint where it is known up front, the number of processes) and the
  `hf_memory_version` that wrote it. A later run into the folder must match it, or is refused with one message
  naming what differs.
- one series of Parquet shards per process, `rank00000-000000.parquet`, `rank00000-000001.parquet`, ..., each
  written whole under a temporary name and renamed into place (a killed run leaves complete shards only). Each
  shard's key-value metadata records its rows and a running SHA-256 of the *inputs* of every row of its process up
  to the shard's end, so a resumed run checks, shard by shard, that the inputs it skips are the ones that were
  scored (data edited in between is refused, not mixed in).
- `.summary.json` once the run has finished: per process its rows, shards and final input digest, the totals, and
  the caller's own counts. A finished folder whose shards no longer match its summary (one deleted) is refused on
  reading, not read as complete.
- `.rank00000.lock`: held while a process writes, so two runs never write one folder at once (the OS lets go of it
  if the process dies).

Only files named like shards are read as shards; anything else in the folder is left alone.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping

from .config import VERSION_KEY
from .files import atomic_write, folder_lock, read_json, write_json
from .version import __version__


STORE_FORMAT = 2
MANIFEST_NAME = ".manifest.json"
SUMMARY_NAME = ".summary.json"
_ROWS_KEY = b"hf_memory.rows"
_DIGEST_KEY = b"hf_memory.input_sha256"
_SHARD = re.compile(r"rank(\d{5})-(\d{6})\.parquet")
_EMPTY_DIGEST = hashlib.sha256().hexdigest()


def shard_name(rank: int, index: int) -> str:
    """The file name of process `rank`'s shard number `index`.

    Args:
        rank: The process index.
        index: The shard's number in that process's series, from 0.
    """
    return f"rank{rank:05d}-{index:06d}.parquet"


def different_run(folder: str, name: str, differences: list[str]) -> ValueError:
    """The one refusal for a folder that holds another run: it names the argument, the folder and what differs.

    Args:
        folder: The results folder.
        name: The argument that named it (`output_dir`, `out`).
        differences: One phrase per difference ("settings prefix_len: 8 there, 16 now").
    """
    return ValueError(
        f"`{name}` {folder!r} holds results of a different run ({'; '.join(differences)}). Use another folder, or "
        "delete this one to start over."
    )


RECORDED_ONLY = ("name_or_path",)  # manifest keys kept for people, not compared: a checkpoint may move


_NOTES = {"weights_sha256": " (other weights: another checkpoint, or weights changed since)"}


def _differences(then, now, label: str) -> list[str]:
    """What differs between two manifest entries, key by key for dicts."""
    if isinstance(then, Mapping) and isinstance(now, Mapping):
        return [
            f"{label} {key}: {then.get(key)!r} there, {now.get(key)!r} now{_NOTES.get(key, '')}"
            for key in sorted(set(then) | set(now), key=str)
            if key not in RECORDED_ONLY and then.get(key) != now.get(key)
        ]
    return [] if then == now else [f"{label}: {then!r} there, {now!r} now{_NOTES.get(label, '')}"]


def describe_differences(then: Mapping, now: Mapping, keys: Iterable[str] | None = None) -> str:
    """What differs between a stored run's record and this run's, in the one shape every refusal uses
    ("settings prefix_len: 8 there, 16 now; model weights_sha256: ... there, ... now"), dict entries key by key.

    Args:
        then: The stored record.
        now: This run's record.
        keys: The keys to compare; None compares every key of either (but `hf_memory_version`).
    """
    keys = sorted(set(then) | set(now), key=str) if keys is None else keys
    return "; ".join(d for key in keys if key != VERSION_KEY for d in _differences(then.get(key), now.get(key), key))


class ResultFolder:
    """A results folder, for reading: its manifest, summary and shards.

    Args:
        folder: The folder.
        name: The argument that named it, for the error messages.
    """

    def __init__(self, folder: str | os.PathLike, name: str = "output_dir") -> None:
        self.folder, self.name = os.fspath(folder), name

    def _path(self, file: str) -> str:
        return os.path.join(self.folder, file)

    def manifest(self) -> dict:
        """The folder's manifest.

        Raises:
            FileNotFoundError: If the folder holds none.
            ValueError: If it is damaged (naming it).
        """
        path = self._path(MANIFEST_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{self.folder!r} holds no {MANIFEST_NAME}: it is not a results folder.")
        manifest = read_json(path, f"delete {self.folder!r} to start over")
        if not isinstance(manifest.get("settings", {}), Mapping) or not isinstance(manifest.get("model", {}), Mapping):
            raise ValueError(f"{path} is damaged (its settings or model is not a JSON object); delete the folder.")
        return manifest

    def summary(self) -> dict | None:
        """The summary of a finished run, or None while it has not finished."""
        path = self._path(SUMMARY_NAME)
        return read_json(path, f"delete {path} and rerun the same call") if os.path.isfile(path) else None

    def shard_paths(self, rank: int | None = None) -> list[str]:
        """The shard files (of process `rank` only, if given), in name order; other files are ignored.

        Args:
            rank: A process index, or None for the shards of every process.
        """
        pattern = "rank*-*.parquet" if rank is None else f"rank{rank:05d}-*.parquet"
        found = glob.glob(os.path.join(glob.escape(self.folder), pattern))
        return sorted(p for p in found if _SHARD.fullmatch(os.path.basename(p)))

    def shards_by_rank(self) -> dict[int, list[str]]:
        """Every process's shards, in name order."""
        ranks: dict[int, list[str]] = {}
        for path in self.shard_paths():
            ranks.setdefault(int(_SHARD.fullmatch(os.path.basename(path)).group(1)), []).append(path)
        return ranks

    def read(self, path: str, columns: list[str] | None = None):
        """The table in shard `path` (only `columns`, if given).

        Args:
            path: A shard.
            columns: The columns to read; None reads them all.

        Raises:
            ValueError: If the shard cannot be read (naming it and the way to redo its rows).
        """
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path, columns=columns)
        except Exception as err:  # damaged data pages: OSError, ArrowInvalid, ...
            raise damaged_shard(path, err) from None

    def iter_tables(self, columns: list[str] | None = None) -> Iterator:
        """Every shard's table (only `columns`), one shard at a time, process by process.

        Args:
            columns: The columns to read; None reads them all.
        """
        for path in self.shard_paths():
            yield self.read(path, columns)

    def check_complete(self) -> dict | None:
        """The summary of a finished run whose shards are all there, None for a run that has not finished.

        Raises:
            ValueError: If the summary records shards or rows that are not in the folder (a shard deleted or
                replaced), naming the process and what is missing.
        """
        summary = self.summary()
        if summary is None or "ranks" not in summary:  # unfinished, or written before counts were recorded
            return summary
        ranks = summary["ranks"]
        if not isinstance(ranks, Mapping) or not all(
            str(rank).isdigit()
            and isinstance(entry, Mapping)
            and all(isinstance(entry.get(key), int) for key in ("rows", "shards"))
            for rank, entry in ranks.items()
        ):
            raise ValueError(
                f"{self._path(SUMMARY_NAME)} is damaged (its `ranks` are not rows and shards per process); delete it "
                "and rerun the same call."
            )
        found = self.shards_by_rank()
        for rank, expected in ranks.items():
            paths = found.get(int(rank), [])
            rows = sum(shard_metadata(path)[0] for path in paths)
            if len(paths) != expected["shards"] or rows != expected["rows"]:
                names = {os.path.basename(p) for p in paths}
                missing = [shard_name(int(rank), i) for i in range(expected["shards"])]
                missing = ", ".join(shard for shard in missing if shard not in names)
                raise ValueError(
                    f"`{self.name}` {self.folder!r} is not complete: its summary records {expected['shards']} shards "
                    f"and {expected['rows']} rows of process {rank}, but {len(paths)} shards and {rows} rows are "
                    f"there{f' (missing: {missing})' if missing else ''}. Rerun the same call to measure the missing "
                    "rows again (delete the shards after a missing one first)."
                )
        return summary


def damaged_shard(path: str, err: BaseException) -> ValueError:
    """The error for a shard that cannot be read, naming it and the way to redo its rows.

    Args:
        path: The shard.
        err: What reading it raised.
    """
    rank = _SHARD.fullmatch(os.path.basename(path)).group(1)
    return ValueError(
        f"The shard {path} cannot be read ({type(err).__name__}: {err}). Delete it, and any later shard of the same "
        f"process (rank{rank}-*.parquet with a higher number), and rerun the same call: their rows are measured again."
    )


def shard_metadata(path: str) -> tuple[int, str | None]:
    """`(rows, input digest)` of a shard, from its Parquet footer (the digest is None in shards of older folders).

    Args:
        path: A shard.

    Raises:
        ValueError: If the shard cannot be read (naming it).
    """
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise damaged_shard(path, err) from None
    digest = (meta.metadata or {}).get(_DIGEST_KEY)
    return meta.num_rows, None if digest is None else digest.decode()


def open_store(folder: str, manifest: dict, is_main: bool = True, name: str = "output_dir") -> None:
    """Create `folder` with its manifest, or check that the run already there is this run.

    Args:
        folder: The results folder (created if missing).
        manifest: What identifies the run: `kind`, `settings`, `model` and anything else (`tokenizer`, `data`,
            `num_processes`, ...); `format` and `hf_memory_version` are added. Only the main process writes it;
            the others check it (after the main process wrote it).
        is_main: Whether this process writes the manifest.
        name: The argument that named the folder, for the error messages.

    Raises:
        ValueError: If `folder` is a file, holds shards but no manifest, holds a run written by an older hf-memory
            (another store format), or holds another run (the one message of `different_run`, naming every
            difference).
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"`{name}` {folder!r} is a file; give a folder.")
    store = ResultFolder(folder, name)
    manifest = json_ready({"format": STORE_FORMAT, **manifest})
    if os.path.exists(store._path(MANIFEST_NAME)):
        existing = store.manifest()
        if existing.get("format") != STORE_FORMAT:
            raise ValueError(
                f"`{name}` {folder!r} was written by an older hf-memory (results format {existing.get('format')!r}, "
                f"this one writes {STORE_FORMAT}), which recorded too little to check that new rows belong with its "
                "rows: none is added to it. Its rows still load; use another folder for this run, or delete it."
            )
        differences = describe_differences(existing, manifest)
        if differences:
            raise different_run(folder, name, [differences])
        return
    if store.shard_paths():
        raise ValueError(f"`{name}` {folder!r} holds shards but no {MANIFEST_NAME}; use another folder.")
    if is_main:
        os.makedirs(folder, exist_ok=True)
        write_json(store._path(MANIFEST_NAME), {**manifest, "hf_memory_version": __version__})


class ShardWriter:
    """Appends one process's rows to its shards and checks, on a resumed run, that the inputs it skips are the
    scored ones.

    Each row comes with the bytes of its input (e.g. a window's position and token ids): a running SHA-256 of them
    is stored in every shard's metadata. A resumed run hands the writer the inputs of the rows it skips (`skip`),
    and the writer compares the running digest at every shard boundary: other data raises before a row is added.
    Use it as a context manager (or call `close`): the queued rows are written and the lock let go on every exit.

    Args:
        folder: The results folder (its manifest already written by `open_store`).
        schema: The pyarrow schema of the rows.
        rank: This process's index.
        flush_every: `add` calls per shard: at most this many are redone after a crash.
        name: The argument that named the folder, for the error messages.
        data_name: The argument that held the inputs, for the error messages (`sequences`, `data`).

    Attributes:
        done: Rows of this process already on disk (an earlier run's): the caller skips that many.
    """

    def __init__(
        self,
        folder: str,
        schema,
        rank: int = 0,
        flush_every: int = 1,
        name: str = "output_dir",
        data_name: str = "data",
    ) -> None:
        self.folder, self.schema, self.rank, self.flush_every = folder, schema, rank, flush_every
        self.name, self.data_name = name, data_name
        self._store = ResultFolder(folder, name)
        self._lock = folder_lock(os.path.join(folder, f".rank{rank:05d}.lock"))
        try:  # whatever is refused here, the lock is let go at once (not when the exception is freed)
            for stale in glob.glob(os.path.join(glob.escape(folder), f".rank{rank:05d}-*.tmp")):
                os.remove(stale)  # left by a run killed mid-write: never renamed, so never counted
            shards = self._store.shard_paths(rank)
            gap = next((i for i, path in enumerate(shards) if os.path.basename(path) != shard_name(rank, i)), None)
            if gap is not None:  # the rows on disk would not be the first rows of this process's share
                later = [os.path.basename(path) for path in shards[gap:]]
                raise ValueError(
                    f"The shard {os.path.join(folder, shard_name(rank, gap))} is missing, but later shards of the "
                    f"same process are there ({', '.join(later)}). Delete those too and rerun the same call: their "
                    "rows are measured again."
                )
            self._boundaries = []  # (rows up to the end of a shard, running digest there, shard)
            total = 0
            for path in shards:
                rows, digest = shard_metadata(path)
                total += rows
                self._boundaries.append((total, digest, os.path.basename(path)))
            self.done = total
            self._next_index = len(shards)
        except BaseException:
            self._lock.close()
            raise
        self._digest = hashlib.sha256()
        self._seen = 0
        self._boundary = 0  # the next boundary `skip` reaches
        self._pending: list[tuple[dict, list[bytes]]] = []
        self._unfinished = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def skip(self, inputs: list[bytes]) -> None:
        """Account for rows an earlier run wrote: feed their inputs, and check them at each shard boundary.

        Args:
            inputs: The input bytes of the next rows, in order (at most `done` rows in all).

        Raises:
            ValueError: If the inputs differ from those of the rows on disk (naming the shard where they stop
                matching), or there are more of them than rows on disk.
        """
        for item in inputs:
            if self._seen >= self.done:
                raise ValueError(
                    f"`{self.data_name}` differ from those of the run that wrote `{self.name}` {self.folder!r}: its "
                    f"{self.done} rows end inside a batch of these (rows added or removed). Use another folder for "
                    "other data, or delete this one to start over."
                )
            self._digest.update(item)
            self._seen += 1
            while self._boundary < len(self._boundaries) and self._boundaries[self._boundary][0] < self._seen:
                self._boundary += 1  # an empty shard's boundary
            if self._boundary < len(self._boundaries) and self._boundaries[self._boundary][0] == self._seen:
                _, digest, shard = self._boundaries[self._boundary]
                self._boundary += 1
                if digest is not None and digest != self._digest.hexdigest():
                    rows = self._seen
                    raise ValueError(
                        f"`{self.data_name}` differ from those of the run that wrote `{self.name}` {self.folder!r}: "
                        f"the inputs of the {rows} rows up to its shard {shard} are not the same (edited, reordered "
                        "or other data). Use another folder for other data, or delete this one to start over."
                    )

    def add(self, rows: dict, inputs: list[bytes]) -> None:
        """Queue one batch's rows; write a shard every `flush_every` calls.

        Args:
            rows: One list per column of the schema, one entry per row.
            inputs: Per row, the bytes of its input (what identifies it: a resumed run must give the same).
        """
        if self._seen < self.done:
            raise RuntimeError("ShardWriter.add before the rows on disk were skipped")
        self._pending.append((rows, inputs))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows as one shard (nothing if none are queued); before the first, mark the run in the
        folder unfinished (remove its summary), since the summary no longer covers every row there."""
        if not self._pending:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._unfinished:
            try:
                os.remove(os.path.join(self.folder, SUMMARY_NAME))
            except FileNotFoundError:
                pass
            self._unfinished = True
        columns = {name: [v for rows, _ in self._pending for v in rows[name]] for name in self.schema.names}
        digest = self._digest.copy()
        for _, inputs in self._pending:
            for item in inputs:
                digest.update(item)
        table = pa.Table.from_pydict(columns, schema=self.schema)
        table = table.replace_schema_metadata(
            {_ROWS_KEY: str(table.num_rows).encode(), _DIGEST_KEY: digest.hexdigest().encode()}
        )
        path = os.path.join(self.folder, shard_name(self.rank, self._next_index))
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        self._digest, self._seen = digest, self._seen + table.num_rows
        self.done += table.num_rows
        self._boundaries.append((self.done, digest.hexdigest(), os.path.basename(path)))
        self._next_index += 1
        self._pending = []

    def close(self) -> None:
        """Write the queued rows and let another run write this process's shards."""
        try:
            self.flush()
        finally:
            self._lock.close()

    def check_all_skipped(self) -> None:
        """Refuse an input that ended before the rows on disk did (fewer rows than the earlier run scored).

        Raises:
            ValueError: If fewer rows were skipped than are on disk.
        """
        if self._seen < self.done:
            raise ValueError(
                f"`{self.data_name}` hold fewer rows than the run that wrote `{self.name}` {self.folder!r} had "
                f"already scored ({self._seen} of {self.done}): use another folder for other data."
            )


def finish_store(folder: str, counts: Mapping | None = None, name: str = "output_dir") -> dict:
    """Mark the run in `folder` finished: write its summary (call once every process has closed its writer).

    Args:
        folder: The results folder.
        counts: The caller's own numbers to record (e.g. `num_skipped`), JSON-ready.
        name: The argument that named the folder, for the error messages.

    Returns:
        The summary written: `ranks` (per process `rows`, `shards`, `input_sha256`), `num_rows`, `num_shards`, and
        the caller's counts.
    """
    store = ResultFolder(folder, name)
    ranks = {}
    for rank, paths in sorted(store.shards_by_rank().items()):
        metadata = [shard_metadata(path) for path in paths]
        ranks[str(rank)] = {
            "rows": sum(rows for rows, _ in metadata),
            "shards": len(paths),
            "input_sha256": metadata[-1][1] if metadata else _EMPTY_DIGEST,
        }
    summary = {
        **(dict(counts) if counts else {}),
        "ranks": ranks,
        "num_rows": sum(entry["rows"] for entry in ranks.values()),
        "num_shards": sum(entry["shards"] for entry in ranks.values()),
    }
    write_json(os.path.join(folder, SUMMARY_NAME), summary)
    return summary


def warn_unfinished(folder: str, count: int, what: str) -> None:
    """Warn that the numbers read from `folder` cover only the rows written so far.

    Args:
        folder: The results folder.
        count: Rows read.
        what: The call to rerun, e.g. "measure_extraction".
    """
    warnings.warn(
        f"The run in {folder!r} has not finished: these numbers cover the {count} rows written so far. Rerun the same "
        f"{what} call to complete it.",
        stacklevel=3,
    )


def input_bytes(*parts) -> bytes:
    """The bytes that identify one row's input: integers and token-id arrays, in order, as int64 little-endian.

    Args:
        *parts: Integers, and 1-D integer tensors or arrays.
    """
    import numpy as np

    chunks = []
    for part in parts:
        array = part.cpu().numpy() if hasattr(part, "cpu") else np.asarray(part)
        chunks.append(np.ascontiguousarray(array, dtype="<i8").tobytes())
        chunks.append(b"|")
    return b"".join(chunks)


def json_ready(value):
    """`value` round-tripped through JSON, as a manifest stores it (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value))
