"""`NgramIndex`: the n-grams of a corpus, built by streaming token ids, asked "which next tokens would complete an
indexed n-gram after these n - 1 tokens?".

A Bloom filter can only answer membership, and asking it about every vocabulary token after every row's context
would be |V| probes per row per step (about 49k for SmolLM2). The "bloom" index therefore holds three kinds of key
per n-gram (Talbot and Osborne's trick of checking lower orders first): its prefix, its prefix with the bucket of
its last token (buckets of about sqrt(|V|) consecutive ids), and the n-gram itself. A context whose prefix key is
absent (nearly every step of text the model did not train on) costs one probe; a present one costs one probe per
bucket and one per token of the buckets that answer present (a few hundred for SmolLM2, not 49k). Every level only
prunes: an n-gram is reported when all three of its keys are present, so no indexed n-gram is ever missed and a
non-indexed one is reported at most at the filter's false-positive rate. The "exact" index keeps the sorted
64-bit prefix hashes and their next tokens, and answers with two binary searches per row.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from .._utils import (
    __version__,
    as_sequences,
    as_token_ids,
    atomic_write,
    check_bool,
    check_integer,
    is_local_path,
    iter_sequences,
    push_saved_to_hub,
    read_json,
    tokenizer_fingerprint,
    write_json,
)
from .config import NgramIndexConfig
from .hashing import bucket_keys, context_hashes, flat_prefix_hashes, ngram_keys, prefix_keys
from .store import BLOOM_LIBRARY, BloomStore, ExactStore


if TYPE_CHECKING:
    import datasets

INDEX_FORMAT = 1
FACTS_NAME = "memfree_index.json"
BLOOM_NAME = "memfree_bloom.bin"
EXACT_NAME = "memfree_ngrams.npz"
_IN_MEMORY = (list, tuple, torch.Tensor, Mapping)  # inputs checked whole before any work
_CHUNK_TOKENS = 1 << 20  # tokens hashed at a time while building
_CANARIES = 8  # keys known to be in a saved filter, probed again on loading


def _bucket_bits(vocab_size: int) -> int:
    """log2 of the bucket width: about sqrt(|V|) tokens per bucket, which balances bucket probes against token probes
    for a prefix with one indexed next token."""
    return max(1, round(math.log2(max(vocab_size, 2)) / 2))


def _check_tokenizer_object(tokenizer) -> None:
    if not callable(getattr(tokenizer, "get_vocab", None)) or not callable(getattr(tokenizer, "__len__", None)):
        raise ValueError(f"`tokenizer` must be a transformers tokenizer (with get_vocab), got {tokenizer!r:.80}.")


def _facts_digest(facts: dict) -> str:
    """The sha256 of `memfree_index.json`'s content (its own digest left out): an edited file is refused."""
    content = {key: value for key, value in facts.items() if key != "facts_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class NgramIndex:
    """The n-grams of a corpus, for `MemFreeLogitsProcessor`: build it with `NgramIndex.build`, or load a saved one
    with `NgramIndex.from_pretrained`.

    N-grams are taken inside each sequence (never across two). The index records the fingerprint of the tokenizer
    it was built with, and the guard refuses any other tokenizer.

    Args:
        config: The `NgramIndexConfig` of the index.
        store: Where the keys are (built by `build` or read by `from_pretrained`; not made by hand).
        vocab_size: Token ids the index covers (0 .. vocab_size - 1).
        tokenizer_fingerprint: The sha256 of the tokenizer's vocabulary, or None.
        num_ngrams: Distinct n-grams indexed, or None when not counted.
        num_keys: Distinct keys in the store.
        num_ngram_occurrences: N-gram positions read from the corpus.

    Attributes:
        config: The `NgramIndexConfig` it was built with.
        vocab_size: Token ids it covers (0 .. vocab_size - 1).
        tokenizer_fingerprint: The sha256 of the tokenizer's vocabulary, or None when built from `vocab_size` alone.
        num_ngrams: Distinct n-grams indexed (None for a "bloom" index built with `capacity`, which never counts).
        num_keys: Distinct keys in the Bloom filter (prefixes, prefix-bucket pairs and n-grams; estimated from the
            filter when built with `capacity`); equal to `num_ngrams` for "exact".
        num_ngram_occurrences: N-gram positions read from the corpus (repeats included).
    """

    def __init__(
        self,
        config: NgramIndexConfig,
        store: BloomStore | ExactStore,
        vocab_size: int,
        tokenizer_fingerprint: str | None,
        num_ngrams: int | None,
        num_keys: int,
        num_ngram_occurrences: int,
    ):
        if not isinstance(config, NgramIndexConfig):
            raise TypeError(f"`config` must be an NgramIndexConfig, got {type(config).__name__}.")
        self.config = config
        self._store = store
        self.vocab_size = vocab_size
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self.num_ngrams = num_ngrams
        self.num_keys = num_keys
        self.num_ngram_occurrences = num_ngram_occurrences
        self.bucket_bits = _bucket_bits(vocab_size)
        self._canaries = np.zeros(0, dtype=np.uint64)  # "bloom": keys known to be in, probed again on loading

    # ------------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        sequences: Sequence[Sequence[int]] | torch.Tensor | datasets.Dataset | Iterable,
        tokenizer=None,
        config: NgramIndexConfig | None = None,
        n: int = NgramIndexConfig.n,
        mode: str = NgramIndexConfig.mode,
        false_positive_rate: float = NgramIndexConfig.false_positive_rate,
        hash_seed: int = NgramIndexConfig.hash_seed,
        capacity: int | None = NgramIndexConfig.capacity,
        vocab_size: int | None = None,
        show_progress: bool = True,
    ) -> NgramIndex:
        """Index every n-gram of `sequences`, read as a stream.

        Args:
            sequences: The corpus as token ids, in any form `measure_extraction` takes: lists, 1-D tensors, a 2-D
                tensor, a `datasets.Dataset` or `IterableDataset` with `input_ids` (padding dropped by its
                `attention_mask`), or any iterable of id sequences or row dicts. Read once, lazily.
            tokenizer: The tokenizer of those ids; its vocabulary's fingerprint is stored, and the guard refuses
                any other tokenizer. May be None only when `vocab_size` is given (the index then cannot check).
            config: An `NgramIndexConfig`; or give its fields as keyword arguments (`n`, `mode`,
                `false_positive_rate`, `hash_seed`, `capacity`), which override a given config's.
            n: Tokens per indexed n-gram (>= 2).
            mode: "bloom" or "exact" (see `NgramIndexConfig`).
            false_positive_rate: For "bloom": the false-positive rate of one probe, in (0, 1).
            hash_seed: Seed of the n-gram hash.
            capacity: For "bloom": distinct n-grams to size the filter for (streams straight in); None counts them
                first.
            vocab_size: Token ids the index covers; default `len(tokenizer)`.
            show_progress: Show a progress bar in sequences (True or False).

        Returns:
            The index.

        Raises:
            TypeError: If `config` is not an `NgramIndexConfig`, or an unknown setting is passed.
            ValueError: Before any work: a bad setting (`n` < 2, a false-positive rate outside (0, 1), ...),
                `tokenizer` not a tokenizer, neither `tokenizer` nor `vocab_size` given, an in-memory corpus that
                is empty, holds no sequence of `n` tokens, or holds an id outside 0 .. vocab_size - 1 (naming
                `sequences[i]`). A streamed corpus is checked as it is read, with the same messages.
            ImportError: For "bloom" without the `memfree` extra (fastbloom-rs).

        Examples:
            >>> index = NgramIndex.build([[5, 6, 7, 8, 9]], n=3, mode="exact", vocab_size=16, show_progress=False)
            >>> index.num_ngrams
            3
            >>> index.contains([[6, 7, 8], [6, 7, 9]]).tolist()
            [True, False]
        """
        settings = {
            "n": n,
            "mode": mode,
            "false_positive_rate": false_positive_rate,
            "hash_seed": hash_seed,
            "capacity": capacity,
        }
        config = NgramIndexConfig.from_arguments(config, settings, "`NgramIndex.build`")
        show_progress = check_bool(show_progress, "show_progress")
        vocab_size = check_integer(vocab_size, "vocab_size", minimum=1, allow_none=True)
        fingerprint = None
        if tokenizer is not None:
            _check_tokenizer_object(tokenizer)
            fingerprint = tokenizer_fingerprint(tokenizer)
            if vocab_size is None:
                vocab_size = len(tokenizer)
        if vocab_size is None:
            raise ValueError(
                "Give `tokenizer` or `vocab_size` (the tokenizer the corpus was tokenized with, or its vocabulary "
                "size): the index needs one."
            )
        if config.mode == "bloom":
            from .._utils import require_extra

            require_extra("memfree", "The MemFree Bloom-filter index (mode='bloom')")
        n = config.n
        if isinstance(sequences, _IN_MEMORY):  # in memory: check all of it before any work
            sequences = as_sequences(sequences)
            for i, row in enumerate(sequences):
                _check_ids(row, vocab_size, f"sequences[{i}]")
            if not any(len(row) >= n for row in sequences):
                raise ValueError(
                    f"No sequence in `sequences` has n = {n} tokens ({len(sequences)} given): lower `n` or give "
                    "longer sequences."
                )

        builder = _Builder(config, vocab_size)
        count = 0
        bar = tqdm(unit="seq", desc="n-gram index", disable=not show_progress)
        try:
            for i, row in enumerate(iter_sequences(sequences)):
                _check_ids(row, vocab_size, f"sequences[{i}]")
                builder.add(row.numpy())
                count += 1
                bar.update(1)
            builder.flush()
        finally:
            bar.close()
        if count == 0:
            raise ValueError("`sequences` is empty: give at least one sequence of token ids.")
        if builder.occurrences == 0:
            raise ValueError(
                f"No sequence in `sequences` has n = {n} tokens ({count} read): lower `n` or give longer sequences."
            )
        return builder.finish(fingerprint)

    # ------------------------------------------------------------------ asking

    @property
    def n(self) -> int:
        """Tokens per indexed n-gram."""
        return self.config.n

    @property
    def mode(self) -> str:
        """ "bloom" or "exact"."""
        return self.config.mode

    @property
    def nbytes(self) -> int:
        """Bytes the index's keys take in memory (the Bloom filter's bit array, or the two sorted arrays)."""
        store = self._store
        return store.num_bits // 8 if isinstance(store, BloomStore) else store.nbytes

    @property
    def false_positive_rate(self) -> float:
        """The false-positive rate of one probe of this filter given the keys it holds: the probability that the
        index reports an n-gram that is not in the corpus is at most this. 0.0 for "exact" (short of a 64-bit
        hash collision)."""
        if isinstance(self._store, ExactStore):
            return 0.0
        return self._store.expected_false_positive_rate(self.num_keys)

    def _contexts(self, contexts, width: int, name: str) -> np.ndarray:
        ids = as_token_ids(contexts, name, dims=(2,))
        if ids.shape[1] != width:
            raise ValueError(f"`{name}` must have {width} columns (n = {self.n}), got shape {tuple(ids.shape)}.")
        return ids.cpu().numpy()

    def contains(self, ngrams) -> np.ndarray:
        """Whether each n-gram is in the index (for "bloom": possibly a false positive, never a false negative).

        Args:
            ngrams: Token ids of shape (count, n): a 2-D tensor, array or nested list.

        Returns:
            A boolean numpy array of length `count`.

        Raises:
            ValueError: If `ngrams` is not 2-D integer token ids with `n` columns.
        """
        ids = self._contexts(ngrams, self.n, "ngrams")
        hashes = context_hashes(ids[:, :-1], self.config.hash_seed)
        last = ids[:, -1]
        inside = last < self.vocab_size
        if isinstance(self._store, ExactStore):
            return self._store.contains(hashes, last) & inside
        store = self._store
        found = store.contains(prefix_keys(hashes)) & inside
        rows = np.flatnonzero(found)
        found[rows] &= store.contains(bucket_keys(hashes[rows], last[rows] >> self.bucket_bits))
        rows = np.flatnonzero(found)
        found[rows] &= store.contains(ngram_keys(hashes[rows], last[rows]))
        return found

    def forbidden_tokens(self, contexts, vocab_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The next tokens that would complete an indexed n-gram after each context.

        Args:
            contexts: The last n - 1 tokens of each row, shape (rows, n - 1).
            vocab_size: Consider token ids below this only (the width of the model's scores); default and at most
                the index's `vocab_size` (no id at or above it is in the corpus).

        Returns:
            `(rows, tokens)`: two int64 numpy arrays of the same length, one entry per forbidden (row, token).

        Raises:
            ValueError: If `contexts` is not 2-D integer token ids with n - 1 columns.

        Examples:
            >>> index = NgramIndex.build([[5, 6, 7, 8, 9]], n=3, mode="exact", vocab_size=16, show_progress=False)
            >>> rows, tokens = index.forbidden_tokens([[6, 7], [1, 2]])
            >>> rows.tolist(), tokens.tolist()
            ([0], [8])
        """
        ids = self._contexts(contexts, self.n - 1, "contexts")
        limit = self.vocab_size if vocab_size is None else min(self.vocab_size, int(vocab_size))
        return self._forbidden(ids, limit)

    def _forbidden(self, ids: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """`forbidden_tokens` for checked contexts (a 2-D int64 array of n - 1 columns): the guard's fast path."""
        hashes = context_hashes(ids, self.config.hash_seed)
        if isinstance(self._store, ExactStore):
            rows, tokens = self._store.successors(hashes)
            keep = tokens < limit
            return rows[keep], tokens[keep]
        return self._bloom_forbidden(hashes, limit)

    def _bloom_forbidden(self, hashes: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        store, bits = self._store, self.bucket_bits
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        rows = np.flatnonzero(store.contains(prefix_keys(hashes)))
        if not len(rows) or limit <= 0:
            return empty
        num_buckets = (limit + (1 << bits) - 1) >> bits
        buckets = np.arange(num_buckets, dtype=np.int64)
        present = store.contains(bucket_keys(hashes[rows, None], buckets[None, :]))
        which, bucket = np.nonzero(present)  # (row among `rows`, bucket) pairs that answered present
        if not len(which):
            return empty
        tokens = (bucket[:, None] << bits) + np.arange(1 << bits, dtype=np.int64)[None, :]
        owners = np.broadcast_to(rows[which][:, None], tokens.shape)
        valid = tokens < limit
        tokens, owners = tokens[valid], owners[valid]
        hit = store.contains(ngram_keys(hashes[owners], tokens))
        return owners[hit].astype(np.int64), tokens[hit]

    def check_tokenizer(self, tokenizer) -> None:
        """Refuse a tokenizer other than the one the index was built with.

        Args:
            tokenizer: A transformers tokenizer.

        Raises:
            ValueError: If `tokenizer` is not a tokenizer, or its vocabulary differs from the index's (an index
                built from `vocab_size` alone, without a tokenizer, accepts any tokenizer).
        """
        _check_tokenizer_object(tokenizer)
        if self.tokenizer_fingerprint is not None and tokenizer_fingerprint(tokenizer) != self.tokenizer_fingerprint:
            raise ValueError(
                "`tokenizer` is not the tokenizer this n-gram index was built with (their vocabularies differ): its "
                "n-grams are other token ids. Build the index with this model's tokenizer."
            )

    def __repr__(self) -> str:
        counted = f"ngrams={self.num_ngrams}" if self.num_ngrams is not None else f"keys~{self.num_keys}"
        return (
            f"NgramIndex(n={self.n}, mode={self.mode!r}, {counted}, vocab_size={self.vocab_size}, "
            f"bytes={self.nbytes}, false_positive_rate={self.false_positive_rate:.3g})"
        )

    # ------------------------------------------------------------------ copies (in memory only; files never pickle)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if isinstance(self._store, BloomStore):
            state["_store"] = ("bloom", self._store.to_bytes(), self._store.num_hashes)
        return state

    def __setstate__(self, state: dict) -> None:
        store = state["_store"]
        if isinstance(store, tuple):
            state["_store"] = BloomStore.from_bytes(store[1], store[2])
        self.__dict__.update(state)

    # ------------------------------------------------------------------ files

    def _facts(self, data_name: str, data_path: str) -> dict:
        facts = {
            "format": INDEX_FORMAT,
            "hf_memory_version": __version__,
            "config": self.config.to_dict(),
            "vocab_size": self.vocab_size,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "num_ngrams": self.num_ngrams,
            "num_keys": self.num_keys,
            "num_ngram_occurrences": self.num_ngram_occurrences,
            "data_file": data_name,
            "data_bytes": os.path.getsize(data_path),
            "data_sha256": _sha256(data_path),
        }
        if isinstance(self._store, BloomStore):
            facts["library"] = {
                "name": BLOOM_LIBRARY,
                "version": BloomStore.library_version(),
                "num_hashes": self._store.num_hashes,
            }
            facts["canaries"] = [int(key) for key in self._canaries]
        facts["facts_sha256"] = _facts_digest(facts)
        return facts

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write the index into `save_directory`: `memfree_config.json` (the settings, `NgramIndexConfig`),
        `memfree_index.json` (vocabulary size, tokenizer fingerprint, counts, the data file's size and sha256, and a
        digest of its own content) and
        the keys as binary (`memfree_bloom.bin`: the filter's bit array; `memfree_ngrams.npz`: two numpy arrays).
        No pickle. Each file is written to a temporary name and renamed into place; the data file goes first and
        the JSON that records its checksum after it, so a save that was cut short is detected when loading.

        Args:
            save_directory: A local folder, created if needed.

        Returns:
            The folder's path.

        Raises:
            ValueError: If `save_directory` is a file or cannot be written.
        """
        from .._utils import check_writable

        folder = os.fspath(save_directory)
        check_writable(folder, "save_directory")
        os.makedirs(folder, exist_ok=True)
        store = self._store
        if isinstance(store, BloomStore):
            name, data = BLOOM_NAME, store.to_bytes()

            def write(temporary: str) -> None:
                with open(temporary, "wb") as f:
                    f.write(data)
        else:
            name = EXACT_NAME

            def write(temporary: str) -> None:
                with open(temporary, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                    np.savez(f, prefixes=store.prefixes, tokens=store.tokens)

        path = os.path.join(folder, name)
        atomic_write(path, write)
        write_json(os.path.join(folder, FACTS_NAME), self._facts(name, path))
        self.config.save_pretrained(folder)
        return folder

    @classmethod
    def from_pretrained(
        cls, pretrained_path: str | os.PathLike, revision: str | None = None, token: str | bool | None = None
    ) -> NgramIndex:
        """Read an index written by `save_pretrained`, from a local folder or a Hub model repo.

        Args:
            pretrained_path: A local folder, or a Hub repo id ("user/name").
            revision: The Hub revision when `pretrained_path` is a repo id.
            token: The Hub token when `pretrained_path` is a private repo id.

        Raises:
            ValueError: If a file is missing, damaged, edited or from another save (the data file's size or sha256
                differs from the recorded one, `memfree_index.json` no longer matches its own digest, the settings
                differ between the two JSON files), or the Bloom filter no longer
                answers for keys known to be in it (a fastbloom-rs release that hashes differently).
            ImportError: For a "bloom" index without the `memfree` extra.
        """
        folder = os.fspath(pretrained_path)
        if os.path.isdir(folder):
            fetch = None
        elif is_local_path(folder) or os.path.exists(folder):
            raise ValueError(f"{folder!r} is not a folder (and not a Hub repo id of the form 'user/name').")
        else:
            from huggingface_hub import hf_hub_download

            def fetch(name: str) -> str:
                try:
                    return hf_hub_download(folder, name, revision=revision, token=token)
                except Exception as err:  # offline, no such repo or file: say which file was looked for where
                    first = str(err).splitlines()[0] if str(err) else ""
                    raise ValueError(
                        f"{folder!r} is not a local folder, and {name} could not be fetched from the Hub repo of that "
                        f"name: {type(err).__name__}: {first}"
                    ) from err

        def path_of(name: str) -> str:
            if fetch is not None:
                return fetch(name)
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                raise ValueError(f"No {name} in {folder!r}: it does not hold a saved NgramIndex.")
            return path

        hint = "save the index again"
        facts = read_json(path_of(FACTS_NAME), hint=hint)
        config_path = path_of(NgramIndexConfig.config_name)
        config = NgramIndexConfig.from_pretrained(os.path.dirname(config_path))
        if facts.get("format") != INDEX_FORMAT:
            raise ValueError(f"{FACTS_NAME} in {folder!r} has format {facts.get('format')!r}; this release reads 1.")
        if facts.get("facts_sha256") != _facts_digest(facts):
            raise ValueError(
                f"{FACTS_NAME} in {folder!r} was edited or damaged (its content no longer matches the digest it was "
                f"saved with); {hint}."
            )
        try:
            recorded = NgramIndexConfig.from_dict(facts["config"])
            data_name, size, checksum = facts["data_file"], int(facts["data_bytes"]), facts["data_sha256"]
            vocab_size = check_integer(facts["vocab_size"], "vocab_size", minimum=1)
            counts = [
                check_integer(facts[name], name, minimum=0, allow_none=name == "num_ngrams")
                for name in ("num_ngrams", "num_keys", "num_ngram_occurrences")
            ]
            fingerprint = facts["tokenizer_fingerprint"]
            if fingerprint is not None and not isinstance(fingerprint, str):
                raise ValueError(f"tokenizer_fingerprint {fingerprint!r} is not a string")
            if recorded.mode == "bloom":
                num_hashes = check_integer(facts["library"]["num_hashes"], "num_hashes", minimum=1, maximum=64)
                canaries = np.array([check_integer(key, "canary", minimum=0) for key in facts["canaries"]], np.uint64)
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            raise ValueError(f"{FACTS_NAME} in {folder!r} is damaged ({type(err).__name__}: {err}); {hint}.") from None
        if recorded != config:
            raise ValueError(
                f"{NgramIndexConfig.config_name} and {FACTS_NAME} in {folder!r} disagree ({config} vs {recorded}): "
                f"they come from different saves; {hint}."
            )
        expected_name = BLOOM_NAME if config.mode == "bloom" else EXACT_NAME
        if data_name != expected_name:
            raise ValueError(f"{FACTS_NAME} in {folder!r} names {data_name!r}, not {expected_name!r}; {hint}.")
        data_path = path_of(data_name)
        if os.path.getsize(data_path) != size or _sha256(data_path) != checksum:
            raise ValueError(
                f"{data_path} is not the file this index saved (its size or sha256 differs from the one recorded in "
                f"{FACTS_NAME}): it was edited, cut short or written by another save; {hint}."
            )
        if config.mode == "bloom":
            library = facts["library"]
            with open(data_path, "rb") as f:
                store = BloomStore.from_bytes(f.read(), num_hashes)
            if not store.contains(canaries).all():
                raise ValueError(
                    f"The Bloom filter in {folder!r} does not find the keys it was saved with: it was written by "
                    f"{BLOOM_LIBRARY} {library.get('version')}, which hashes differently from the installed "
                    f"{BloomStore.library_version()}. Install that version or rebuild the index."
                )
        else:
            try:
                with np.load(data_path, allow_pickle=False) as arrays:
                    prefixes, tokens = arrays["prefixes"], arrays["tokens"]
            except Exception as err:  # a zip or array that numpy cannot read
                raise ValueError(f"{data_path} is not a saved exact n-gram index ({err}); {hint}.") from None
            if prefixes.dtype != np.uint64 or tokens.dtype != np.uint32 or prefixes.shape != tokens.shape:
                raise ValueError(f"{data_path} does not hold the arrays of an exact n-gram index; {hint}.")
            store = ExactStore(prefixes, tokens)
        index = cls(config, store, vocab_size, fingerprint, *counts)
        if config.mode == "bloom":
            index._canaries = canaries
        return index

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | bool | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
    ):
        """Create the Hub model repo `repo_id` if needed and upload the index's files to it.

        Args:
            repo_id: "user/name" of the model repo.
            private: Whether a newly created repo is private.
            token: The Hub token (default: the saved login).
            commit_message: The commit message (default: "Upload NgramIndex").
            revision: The branch to push to.

        Returns:
            The `huggingface_hub.CommitInfo` of the upload.
        """
        return push_saved_to_hub(self, repo_id, private, token, commit_message, revision)


def _check_ids(row: torch.Tensor, vocab_size: int, label: str) -> None:
    if row.numel() and int(row.max()) >= vocab_size:
        raise ValueError(
            f"`{label}` holds token id {int(row.max())}, outside the vocabulary of {vocab_size} (ids 0 to "
            f"{vocab_size - 1}): give the tokenizer (or `vocab_size`) the corpus was tokenized with."
        )


class _Builder:
    """Hashes the corpus in chunks of about a million tokens and gathers the keys (or adds them to the filter)."""

    def __init__(self, config: NgramIndexConfig, vocab_size: int):
        self.config = config
        self.vocab_size = vocab_size
        self.bits = _bucket_bits(vocab_size)
        self.rows: list[np.ndarray] = []
        self.buffered = 0
        self.occurrences = 0
        self.parts: list[tuple[np.ndarray, ...]] = []  # per chunk: distinct keys (bloom) or pairs (exact)
        self.canaries: np.ndarray | None = None
        self.store = None
        if config.mode == "bloom" and config.capacity is not None:  # sized up front: keys stream straight in
            self.store = BloomStore.create(3 * config.capacity, config.false_positive_rate)

    def add(self, row: np.ndarray) -> None:
        if len(row) < self.config.n:
            return
        self.rows.append(row)
        self.buffered += len(row)
        if self.buffered >= _CHUNK_TOKENS:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        n = self.config.n
        flat = np.concatenate(self.rows)
        lengths = np.array([len(row) for row in self.rows])
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        starts = np.concatenate([offset + np.arange(length - n + 1) for offset, length in zip(offsets, lengths)])
        self.rows, self.buffered = [], 0
        hashes = flat_prefix_hashes(flat, n - 1, self.config.hash_seed)[starts]
        last = flat[starts + n - 1].astype(np.int64)
        self.occurrences += len(starts)
        if self.config.mode == "exact":
            store = ExactStore.from_pairs(hashes, last)
            self.parts.append((store.prefixes, store.tokens))
            return
        keys = np.concatenate([prefix_keys(hashes), bucket_keys(hashes, last >> self.bits), ngram_keys(hashes, last)])
        if self.canaries is None:
            self.canaries = keys[-_CANARIES:].copy()
        if self.store is not None:
            self.store.add(keys)
        else:
            ngrams = np.unique(keys[2 * len(starts) :])
            self.parts.append((np.unique(keys[: 2 * len(starts)]), ngrams))

    def finish(self, fingerprint: str | None) -> NgramIndex:
        config = self.config
        if config.mode == "exact":
            store = ExactStore.from_pairs(
                np.concatenate([p for p, _ in self.parts]), np.concatenate([t for _, t in self.parts])
            )
            return NgramIndex(
                config, store, self.vocab_size, fingerprint, store.num_ngrams, store.num_ngrams, self.occurrences
            )
        if self.store is None:
            others = np.unique(np.concatenate([o for o, _ in self.parts]))
            ngrams = np.unique(np.concatenate([g for _, g in self.parts]))
            self.parts = []
            num_keys, num_ngrams = len(others) + len(ngrams), len(ngrams)
            store = BloomStore.create(num_keys, config.false_positive_rate)
            store.add(others)
            store.add(ngrams)
        else:
            store, num_ngrams = self.store, None
            num_keys = min(store.estimated_keys(), 3 * self.occurrences)  # the estimate is infinite when saturated
            sized = 3 * config.capacity
            if num_keys > sized:
                warnings.warn(
                    f"The corpus holds about {num_keys} distinct keys, more than the {sized} the filter was sized for "
                    f"(3 x capacity = {config.capacity} n-grams): its false-positive rate is about "
                    f"{store.expected_false_positive_rate(num_keys):.3g}, not {config.false_positive_rate}. Raise "
                    "`capacity`, or leave it None to count the n-grams first.",
                    UserWarning,
                    stacklevel=3,
                )
        index = NgramIndex(config, store, self.vocab_size, fingerprint, num_ngrams, num_keys, self.occurrences)
        if self.canaries is not None:
            index._canaries = self.canaries
        return index
