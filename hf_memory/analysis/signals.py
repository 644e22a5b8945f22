"""Memorization signals beyond extraction, from one teacher-forced forward pass per window.

ROME (2024): memorized samples get higher confidence, different logit mean and variance, and the same concept keeps a
more similar representation across contexts. Chen et al. (2024): at the prefix/suffix boundary the per-token entropy
drops for memorized text and jumps for unmemorized text, the input n-gram frequency moves the other way, and hidden
states + entropy predict memorization. `memorization_signals` measures all of these per window,
`representation_similarity` the cross-context similarity, and `MemorizationPredictor` fits a classifier from the
signals to extraction labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._utils import (
    as_sequences,
    check_integer,
    check_progress,
    check_vocabulary,
    eval_mode,
    iter_sequences,
    leading_windows,
    model_device,
    progress_bar,
)


if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

POOLS = ("all", "prefix", "suffix")
PREDICTOR_FEATURES = (
    "confidence",
    "true_prob",
    "logit_mean",
    "logit_var",
    "entropy_prefix",
    "entropy_suffix",
    "entropy_jump",
    "unigram_prefix",
    "unigram_suffix",
    "bigram_prefix",
    "bigram_suffix",
)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the softmax over the last dimension, in float32; zero-probability entries add 0.

    Args:
        logits: Unnormalized log-probabilities; the last dimension is the vocabulary.

    Returns:
        The entropies, shaped like `logits` without its last dimension.

    Examples:
        >>> import math
        >>> round(token_entropy(torch.zeros(4)).item(), 6) == round(math.log(4), 6)  # uniform: log of the vocabulary size
        True
        >>> token_entropy(torch.tensor([0.0, -float("inf"), -float("inf")])).item()  # one-hot
        0.0
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    return torch.where(p > 0, p * -logp, torch.zeros_like(p)).sum(-1)


@dataclass
class NgramCounts:
    """n-gram counts of a token corpus: `counts[n][tuple of n ids]`, and `total[n]` n-grams counted.

    Attributes:
        counts: n-gram order -> `Counter` of the n-grams (tuples of n token ids) seen in the corpus.
        total: n-gram order -> how many n-grams of that order the corpus holds (with repeats).
        num_sequences: How many sequences were counted.
    """

    counts: dict[int, Counter]
    total: dict[int, int]
    num_sequences: int = 0

    @classmethod
    def empty(cls, n: int | Sequence[int] = (1, 2)) -> NgramCounts:
        """Counts of no sequence yet, for the orders in `n`: `add` sequences one at a time (a corpus read as a stream).

        Args:
            n: One n-gram order, or several (each >= 1).

        Returns:
            The empty `NgramCounts`.

        Raises:
            ValueError: If `n` is empty or holds an order below 1.

        Examples:
            >>> counts = NgramCounts.empty(2)
            >>> counts.add([1, 2, 1]); counts.add([1, 2])
            >>> counts.counts[2][(1, 2)], counts.total[2], counts.num_sequences
            (2, 3, 2)
        """
        orders = (n,) if not hasattr(n, "__iter__") or getattr(n, "ndim", None) == 0 else tuple(n)
        if not orders:
            raise ValueError(f"`n` must be a positive integer or a non-empty tuple of them, got {n!r}.")
        orders = tuple(check_integer(k, "n", minimum=1, hint="an n-gram order, or a tuple of them") for k in orders)
        return cls({k: Counter() for k in orders}, {k: 0 for k in orders})

    def add(self, ids: Sequence[int] | torch.Tensor) -> None:
        """Count the n-grams of one more sequence (n-grams never cross sequence boundaries).

        Args:
            ids: One token id sequence.
        """
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else [int(t) for t in ids]
        for k, table in self.counts.items():
            grams = list(zip(*(ids[i:] for i in range(k))))
            table.update(grams)
            self.total[k] += len(grams)
        self.num_sequences += 1

    def lookup(self, ids: Sequence[int] | torch.Tensor, n: int) -> np.ndarray:
        """Count of the n-gram ending at each position of `ids` (NaN where fewer than n - 1 tokens precede it).

        Args:
            ids: One token id sequence.
            n: The n-gram order; one of the orders counted.

        Returns:
            A float array of `len(ids)` counts (0 for an n-gram never seen).

        Raises:
            ValueError: If order `n` was not counted.

        Examples:
            >>> ngram_counts([[1, 2, 1, 2]]).lookup([2, 1, 2, 3], 2).tolist()
            [nan, 1.0, 2.0, 0.0]
        """
        if n not in self.counts:
            raise ValueError(f"`n` must be one of the counted orders {sorted(self.counts)}, got {n!r}.")
        ids = [int(t) for t in ids]
        table = self.counts[n]
        out = np.full(len(ids), np.nan)
        for end in range(n - 1, len(ids)):
            out[end] = table.get(tuple(ids[end - n + 1 : end + 1]), 0)
        return out


def ngram_counts(
    sequences: Sequence[Sequence[int]] | torch.Tensor | datasets.Dataset, n: int | Sequence[int] = (1, 2)
) -> NgramCounts:
    """Count the n-grams (for each order in `n`) of a corpus of token id sequences.

    The corpus takes the same inputs as `measure_extraction`, read as a stream (a generator or `IterableDataset`
    works); n-grams do not cross sequence boundaries.

    Args:
        sequences: Token id sequences (lists, 1-D tensors), a 2-D tensor (one sequence per row), or a
            `datasets.Dataset` with an `input_ids` column.
        n: One n-gram order, or several (each >= 1); `memorization_signals` needs 1 and 2.

    Returns:
        The `NgramCounts` of every order in `n`.

    Raises:
        ValueError: If `n` is empty or holds an order below 1, or `sequences` is empty or not token ids.

    Examples:
        >>> counts = ngram_counts([[1, 2, 1, 2], [2, 1]])
        >>> counts.counts[1][(2,)], counts.counts[2][(1, 2)], counts.total[2]
        (3, 2, 4)
    """
    counts = NgramCounts.empty(n)
    for seq in iter_sequences(sequences):
        counts.add(seq)
    if not counts.num_sequences:
        raise ValueError("`sequences` is empty: give at least one sequence of token ids.")
    return counts


@dataclass
class MemorizationSignals:
    """Per-window signals (rows in input order). Offsets count from the boundary: 0 = the first suffix token.

    - `confidence`, `true_prob`: mean over the suffix of the max next-token probability and of the true token's.
    - `logit_mean`, `logit_var`: mean and variance of the logits over the vocabulary, averaged over the suffix.
    - `entropy[i, j]`: entropy of the distribution predicting the token at offset `entropy_offsets[j]`.
    - `unigram[i, j]`, `bigram[i, j]`: corpus count of the input token at offset `ngram_offsets[j]` and of the
      bigram ending there (NaN at the first token); None without `ngram_counts`.
    - `hidden[l, i]`: hidden states of layer l (0 = embeddings) mean-pooled over the `pool` positions; None if off.

    Attributes:
        confidence: Shape (windows,): mean over the suffix of the largest next-token probability.
        true_prob: Shape (windows,): mean over the suffix of the true next token's probability.
        logit_mean: Shape (windows,): mean of the logits over the vocabulary and the suffix.
        logit_var: Shape (windows,): variance of the logits over the vocabulary, averaged over the suffix.
        entropy: Shape (windows, prefix_len + suffix_len - 1): entropy (nats) of each next-token prediction.
        entropy_offsets: Offset from the boundary of the token each `entropy` column predicts (-prefix_len + 1 ..
            suffix_len - 1).
        ngram_offsets: Offset from the boundary of each `unigram` / `bigram` column (-prefix_len .. suffix_len - 1).
        unigram: Shape (windows, prefix_len + suffix_len): corpus count of each input token; None without
            `ngram_counts`.
        bigram: Same shape: corpus count of the bigram ending at each input token (NaN at the first); None without
            `ngram_counts`.
        hidden: Shape (layers + 1, windows, hidden size): pooled hidden states; None with `hidden_states=False`.
        prefix_len: Tokens of each window's prefix.
        suffix_len: Tokens of each window's suffix.
        pool: The positions `hidden` is pooled over: "all", "prefix" or "suffix".
    """

    confidence: np.ndarray
    true_prob: np.ndarray
    logit_mean: np.ndarray
    logit_var: np.ndarray
    entropy: np.ndarray
    entropy_offsets: np.ndarray
    ngram_offsets: np.ndarray
    unigram: np.ndarray | None = None
    bigram: np.ndarray | None = None
    hidden: np.ndarray | None = None
    prefix_len: int = 0
    suffix_len: int = 0
    pool: str = "all"

    def __len__(self) -> int:
        return len(self.confidence)

    def boundary(self, name: str, window: int) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, values) of "entropy", "unigram" or "bigram" cut to offsets -window .. window - 1.

        Args:
            name: The signal: "entropy", "unigram" or "bigram".
            window: How many positions to keep on each side of the boundary (fewer where the window is shorter).

        Returns:
            `(offsets, values)`: the kept offsets, and the signal's columns at them (one row per window).

        Raises:
            ValueError: If `name` is unknown, or the signals have no n-gram counts and `name` asks for them.
        """
        if name not in ("entropy", "unigram", "bigram"):
            raise ValueError(f"`name` must be 'entropy', 'unigram' or 'bigram', got {name!r}.")
        values = getattr(self, name)
        if values is None:
            raise ValueError(f"These signals have no `{name}`: pass `ngram_counts` to `memorization_signals`.")
        offsets = self.entropy_offsets if name == "entropy" else self.ngram_offsets
        keep = (offsets >= -window) & (offsets < window)
        return offsets[keep], values[:, keep]


@torch.inference_mode()
def memorization_signals(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]] | torch.Tensor | datasets.Dataset,
    prefix_len: int = 32,
    suffix_len: int = 32,
    ngram_counts: NgramCounts | None = None,
    hidden_states: bool = True,
    pool: str = "all",
    batch_size: int = 16,
    show_progress: bool = True,
) -> MemorizationSignals:
    """Confidence, logit statistics, per-token entropy and n-gram frequency across the boundary, and pooled hidden
    states, for the first prefix_len + suffix_len tokens of each sequence (a shorter sequence is an error).

    Args:
        model: A causal language model (`*ForCausalLM`); run in eval mode, its mode restored afterwards.
        sequences: Token id sequences (lists, 1-D tensors), a 2-D tensor (one sequence per row), or a
            `datasets.Dataset` with an `input_ids` column.
        prefix_len: Tokens before the boundary.
        suffix_len: Tokens from the boundary on; confidence and logit statistics are averaged over them.
        ngram_counts: Corpus n-gram counts with orders 1 and 2 (`ngram_counts(corpus)`); None leaves `unigram` and
            `bigram` unset.
        hidden_states: Also return the pooled hidden states of every layer.
        pool: Positions the hidden states are averaged over: "all", "prefix" or "suffix".
        batch_size: Windows per forward pass.
        show_progress: Show a progress bar in windows, updated every batch: True or False, or a tqdm bar to
            advance instead of a new one.

    Returns:
        The `MemorizationSignals`, one row per sequence in input order.

    Raises:
        ValueError: If a sequence is too short, `pool` is unknown, `batch_size` < 1, or `ngram_counts` lacks order
            1 or 2.

    Examples:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> s = memorization_signals(model, [list(range(20))] * 3, prefix_len=8, suffix_len=8, show_progress=False)
        >>> s.entropy.shape, s.entropy_offsets[[0, -1]].tolist(), s.hidden.shape
        ((3, 15), [-7, 7], (2, 3, 16))
    """
    windows = leading_windows(sequences, prefix_len, suffix_len)
    check_vocabulary(windows, model, "sequences")
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    show_progress = check_progress(show_progress)
    if pool not in POOLS:
        raise ValueError(f"`pool` must be one of {', '.join(map(repr, POOLS))}, got {pool!r}.")
    if ngram_counts is not None and not {1, 2} <= set(getattr(ngram_counts, "counts", {})):
        raise ValueError(
            "`ngram_counts` must be an `NgramCounts` with orders 1 and 2, e.g. `ngram_counts(corpus, n=(1, 2))`."
        )
    device = model_device(model)
    length = prefix_len + suffix_len
    span = {"all": slice(0, length), "prefix": slice(0, prefix_len), "suffix": slice(prefix_len, length)}[pool]
    parts = {k: [] for k in ("confidence", "true_prob", "logit_mean", "logit_var", "entropy", "hidden")}
    with (
        eval_mode(model, "memorization_signals"),
        progress_bar(show_progress, total=len(windows), desc="signals", unit="window") as bar,
    ):
        for b in range(0, len(windows), batch_size):
            ids = windows[b : b + batch_size].to(device)
            out = model(input_ids=ids, use_cache=False, output_hidden_states=hidden_states)
            logits = out.logits[:, :-1].float()  # position t predicts token t + 1
            parts["entropy"].append(token_entropy(logits).cpu())
            suffix = logits[:, prefix_len - 1 :]
            probs = suffix.softmax(-1)
            parts["confidence"].append(probs.amax(-1).mean(-1).cpu())
            parts["true_prob"].append(probs.gather(-1, ids[:, prefix_len:, None])[..., 0].mean(-1).cpu())
            parts["logit_mean"].append(suffix.mean((-1, -2)).cpu())
            parts["logit_var"].append(suffix.var(-1, unbiased=False).mean(-1).cpu())
            if hidden_states:
                parts["hidden"].append(torch.stack([h[:, span].float().mean(1) for h in out.hidden_states]).cpu())
            bar.update(len(ids))
    signals = {k: torch.cat(v).numpy() for k, v in parts.items() if k != "hidden"}
    hidden = torch.cat(parts["hidden"], dim=1).numpy() if hidden_states else None
    unigram = bigram = None
    if ngram_counts is not None:
        rows = windows.tolist()
        unigram = np.stack([ngram_counts.lookup(r, 1) for r in rows])
        bigram = np.stack([ngram_counts.lookup(r, 2) for r in rows])
    return MemorizationSignals(
        **signals,
        entropy_offsets=np.arange(1, length) - prefix_len,
        ngram_offsets=np.arange(length) - prefix_len,
        unigram=unigram,
        bigram=bigram,
        hidden=hidden,
        prefix_len=prefix_len,
        suffix_len=suffix_len,
        pool=pool,
    )


@dataclass
class RepresentationSimilarity:
    """Mean pairwise cosine similarity of a concept's representations across its contexts, per layer (0 = embeddings).

    Attributes:
        per_concept: Concept -> its similarity per layer, shape (layers + 1,).
        mean: The similarity per layer averaged over the concepts, shape (layers + 1,).
    """

    per_concept: dict
    mean: np.ndarray


def _concept_spans(concept_contexts: Mapping, tokenizer) -> dict:
    """{concept: [(token ids, [token positions of the concept])]} from text (with a tokenizer) or from token spans."""
    if not isinstance(concept_contexts, Mapping) or not concept_contexts:
        raise ValueError("`concept_contexts` must be a non-empty mapping: concept -> list of contexts.")
    spans = {}
    for concept, contexts in concept_contexts.items():
        contexts = list(contexts)
        if len(contexts) < 2:
            raise ValueError(
                f"Concept {concept!r} has {len(contexts)} context(s) in `concept_contexts`: give at least 2."
            )
        rows = []
        for j, context in enumerate(contexts):
            if tokenizer is not None:
                if not isinstance(concept, str) or not isinstance(context, str):
                    raise ValueError(
                        "With a `tokenizer`, `concept_contexts` must map concept strings to lists of texts."
                    )
                start = context.find(concept)
                if start < 0:
                    raise ValueError(f"Concept {concept!r} does not occur in its context {j}: {context[:80]!r}.")
                end = start + len(concept)
                enc = tokenizer(context, return_offsets_mapping=True)
                positions = [t for t, (s, e) in enumerate(enc["offset_mapping"]) if s < end and e > start]
                ids = enc["input_ids"]
            else:
                try:
                    ids, (start, end) = context
                except (TypeError, ValueError):
                    raise ValueError(
                        "Without a `tokenizer`, each context must be (token ids, (start, end)), the concept's token span."
                    ) from None
                span = f"the span of {concept!r} in context {j}"
                positions = list(range(check_integer(start, span, minimum=0), check_integer(end, span, minimum=0)))
            ids = as_sequences([ids])[0]
            if not positions or min(positions) < 0 or max(positions) >= len(ids):
                raise ValueError(f"Concept {concept!r}, context {j}: its token span is empty or outside the context.")
            rows.append((ids, positions))
        spans[concept] = rows
    return spans


@torch.inference_mode()
def representation_similarity(
    model: torch.nn.Module, concept_contexts: Mapping, tokenizer: PreTrainedTokenizerBase | None = None
) -> RepresentationSimilarity:
    """For each concept, the mean over pairs of contexts of the cosine similarity of its representation, per layer.

    The representation of a concept in a context is the hidden state averaged over the concept's tokens.
    `concept_contexts`: {concept text: [context texts containing it]} with a `tokenizer` (first occurrence), or
    {key: [(token ids, (start, end)), ...]} with the concept's token span in each context.

    Args:
        model: A language model that returns hidden states (`output_hidden_states=True`); run in eval mode.
        concept_contexts: Concept -> at least 2 contexts, in one of the two forms above.
        tokenizer: A fast tokenizer (it must return offset mappings) when the contexts are texts; None when they
            are token ids with spans.

    Returns:
        The `RepresentationSimilarity`: per concept and averaged over concepts.

    Raises:
        ValueError: If `concept_contexts` is empty, a concept has fewer than 2 contexts, a concept is not found in
            its context, or a span is empty or outside its context.

    Examples:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> sim = representation_similarity(model, {"7 8": [([1, 2, 7, 8], (2, 4)), ([5, 7, 8, 9], (1, 3))]})
        >>> sim.per_concept["7 8"].shape, round(float(sim.per_concept["7 8"][0]), 4)  # embeddings: identical tokens
        ((2,), 1.0)
    """
    spans = _concept_spans(concept_contexts, tokenizer)
    for concept, rows in spans.items():
        for j, (ids, _) in enumerate(rows):
            check_vocabulary(ids, model, f"concept_contexts[{concept!r}][{j}]")
    device = model_device(model)
    per_concept = {}
    with eval_mode(model, "representation_similarity"):
        for concept, rows in spans.items():
            reps = []
            for ids, positions in rows:
                out = model(input_ids=ids[None].to(device), use_cache=False, output_hidden_states=True)
                reps.append(torch.stack([h[0, positions].float().mean(0) for h in out.hidden_states]).cpu())
            reps = torch.nn.functional.normalize(torch.stack(reps).double(), dim=-1)  # contexts x layers x hidden
            pairs = [(reps[a] * reps[b]).sum(-1) for a, b in combinations(range(len(reps)), 2)]
            per_concept[concept] = torch.stack(pairs).mean(0).numpy()
    return RepresentationSimilarity(per_concept, np.mean(list(per_concept.values()), axis=0))
