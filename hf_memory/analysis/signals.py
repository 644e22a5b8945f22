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
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
from tqdm.auto import tqdm

from .._utils import as_sequences, check_integer, eval_mode, leading_windows, model_device


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

    Example:
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
    """n-gram counts of a token corpus: `counts[n][tuple of n ids]`, and `total[n]` n-grams counted."""

    counts: dict[int, Counter]
    total: dict[int, int]

    def lookup(self, ids, n: int) -> np.ndarray:
        """Count of the n-gram ending at each position of `ids` (NaN where fewer than n tokens precede it)."""
        if n not in self.counts:
            raise ValueError(f"`n` must be one of the counted orders {sorted(self.counts)}, got {n!r}.")
        ids = [int(t) for t in ids]
        table = self.counts[n]
        out = np.full(len(ids), np.nan)
        for end in range(n - 1, len(ids)):
            out[end] = table.get(tuple(ids[end - n + 1 : end + 1]), 0)
        return out


def ngram_counts(sequences, n=(1, 2)) -> NgramCounts:
    """Count the n-grams (for each order in `n`) of a corpus of token id sequences (same inputs as `measure_extraction`).

    Example:
        >>> counts = ngram_counts([[1, 2, 1, 2], [2, 1]])
        >>> counts.counts[1][(2,)], counts.counts[2][(1, 2)], counts.total[2]
        (3, 2, 4)
    """
    orders = (n,) if isinstance(n, int) else tuple(n)
    if not orders:
        raise ValueError(f"`n` must be a positive integer or a non-empty tuple of them, got {n!r}.")
    orders = tuple(check_integer(k, "n", minimum=1, hint="an n-gram order, or a tuple of them") for k in orders)
    counts, total = {k: Counter() for k in orders}, {k: 0 for k in orders}
    for seq in as_sequences(sequences):
        ids = seq.tolist()
        for k in orders:
            grams = list(zip(*(ids[i:] for i in range(k))))
            counts[k].update(grams)
            total[k] += len(grams)
    return NgramCounts(counts, total)


@dataclass
class MemorizationSignals:
    """Per-window signals (rows in input order). Offsets count from the boundary: 0 = the first suffix token.

    - `confidence`, `true_prob`: mean over the suffix of the max next-token probability and of the true token's.
    - `logit_mean`, `logit_var`: mean and variance of the logits over the vocabulary, averaged over the suffix.
    - `entropy[i, j]`: entropy of the distribution predicting the token at offset `entropy_offsets[j]`.
    - `unigram[i, j]`, `bigram[i, j]`: corpus count of the input token at offset `ngram_offsets[j]` and of the
      bigram ending there (NaN at the first token); None without `ngram_counts`.
    - `hidden[l, i]`: hidden states of layer l (0 = embeddings) mean-pooled over the `pool` positions; None if off.
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
        """(offsets, values) of "entropy", "unigram" or "bigram" cut to offsets -window .. window - 1."""
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
    model,
    sequences,
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

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> s = memorization_signals(model, [list(range(20))] * 3, prefix_len=8, suffix_len=8, show_progress=False)
        >>> s.entropy.shape, s.entropy_offsets[[0, -1]].tolist(), s.hidden.shape
        ((3, 15), [-7, 7], (2, 3, 16))
    """
    windows = leading_windows(sequences, prefix_len, suffix_len)
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
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
    with eval_mode(model):
        for b in tqdm(range(0, len(windows), batch_size), desc="signals", disable=not show_progress):
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
    """Mean pairwise cosine similarity of a concept's representations across its contexts, per layer (0 = embeddings)."""

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
                positions = list(range(start, end))
            ids = as_sequences([ids])[0]
            if not positions or min(positions) < 0 or max(positions) >= len(ids):
                raise ValueError(f"Concept {concept!r}, context {j}: its token span is empty or outside the context.")
            rows.append((ids, positions))
        spans[concept] = rows
    return spans


@torch.inference_mode()
def representation_similarity(model, concept_contexts: Mapping, tokenizer=None) -> RepresentationSimilarity:
    """For each concept, the mean over pairs of contexts of the cosine similarity of its representation, per layer.

    The representation of a concept in a context is the hidden state averaged over the concept's tokens.
    `concept_contexts`: {concept text: [context texts containing it]} with a `tokenizer` (first occurrence), or
    {key: [(token ids, (start, end)), ...]} with the concept's token span in each context.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> sim = representation_similarity(model, {"7 8": [([1, 2, 7, 8], (2, 4)), ([5, 7, 8, 9], (1, 3))]})
        >>> sim.per_concept["7 8"].shape, round(float(sim.per_concept["7 8"][0]), 4)  # embeddings: identical tokens
        ((2,), 1.0)
    """
    spans = _concept_spans(concept_contexts, tokenizer)
    device = model_device(model)
    per_concept = {}
    with eval_mode(model):
        for concept, rows in spans.items():
            reps = []
            for ids, positions in rows:
                out = model(input_ids=ids[None].to(device), use_cache=False, output_hidden_states=True)
                reps.append(torch.stack([h[0, positions].float().mean(0) for h in out.hidden_states]).cpu())
            reps = torch.nn.functional.normalize(torch.stack(reps).double(), dim=-1)  # contexts x layers x hidden
            pairs = [(reps[a] * reps[b]).sum(-1) for a, b in combinations(range(len(reps)), 2)]
            per_concept[concept] = torch.stack(pairs).mean(0).numpy()
    return RepresentationSimilarity(per_concept, np.mean(list(per_concept.values()), axis=0))
