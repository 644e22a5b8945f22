"""Extractable memorization at forward-pass cost.

Greedy decoding from a training prefix reproduces the true suffix exactly up to the first position where the
teacher-forced argmax differs from the true token. One forward pass over prefix + suffix therefore gives the greedy
longest common prefix and exact match of a whole batch. For the position-wise score, greedy decoding resumes at the
divergence point from that forward's KV cache (positions past the divergence are masked out), only for the windows
that diverged. All numbers come from the `extractable_memorization` metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .._utils import check_choice, check_integer, check_vocabulary, eval_mode, model_device, require_extra
from ..metrics.extractable_memorization.extractable_memorization import extraction_scores
from .decoding import generate_suffixes, resume_greedy, teacher_forced
from .text import decode_for_rouge, text_rouge_l
from .windows import extraction_windows


if TYPE_CHECKING:
    import datasets


EXTRACTION_METHODS = ("auto", "prefix", "generate")


@dataclass
class ExtractionResult:
    """Per-window greedy continuations and true suffixes, in input order, with the metric's aggregate numbers.

    Attributes:
        predictions: The greedy continuation of each window's prefix, as token ids (with
            `measure_extraction(..., method="prefix")` it stops at the first wrong token).
        references: The true suffix of each window, as token ids.
        longest_common_prefix: Per window, how many leading suffix tokens greedy decoding reproduces.
        metrics: The `extractable_memorization` metric's means over the windows (`exact_match`,
            `memorization_score`, `longest_common_prefix`, `rouge_l`; only the first and third with
            `method="prefix"`), plus `rouge_l_text` when a tokenizer was given.
        windows: Per window, `(sequence index, start token)`: where in the input it was cut.
        num_skipped: How many sequences were shorter than `prefix_len + suffix_len` and gave no window.
        rouge_l_text: Per window, ROUGE-L of the decoded texts as `evaluate`'s `rouge` computes it (see
            `text_rouge_l`); None unless `measure_extraction` was given a tokenizer.
    """

    predictions: list[list[int]]
    references: list[list[int]]
    longest_common_prefix: list[int]
    metrics: dict
    windows: list[tuple[int, int]] = field(default_factory=list)  # (sequence index, start token) per window
    num_skipped: int = 0  # sequences shorter than prefix_len + suffix_len
    rouge_l_text: list[float] | None = None

    def per_sample(self) -> dict:
        """The metric's per-window lists (exact match, positional score, longest common prefix, ROUGE-L).

        With `method="prefix"` the predictions are cut at the first wrong token, so only `exact_match_per_sample`
        and `longest_common_prefix_per_sample` are meaningful there.

        Returns:
            The `extraction_scores(..., return_per_sample=True)` dict: the four means and, per metric, a
            `<name>_per_sample` list in window order; with text ROUGE-L also `rouge_l_text` and its list.
        """
        scores = extraction_scores(self.predictions, self.references, return_per_sample=True)
        if self.rouge_l_text is not None:
            scores["rouge_l_text"] = self.metrics["rouge_l_text"]
            scores["rouge_l_text_per_sample"] = list(self.rouge_l_text)
        return scores


@torch.inference_mode()
def measure_extraction(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]] | torch.Tensor | datasets.Dataset,
    prefix_len: int = 32,
    suffix_len: int = 32,
    stride: int | None = None,
    batch_size: int = 64,
    method: str = "auto",
    show_progress: bool = True,
    tokenizer=None,
) -> ExtractionResult:
    """Greedy extraction of each window's suffix from its prefix, scored by the `extractable_memorization` metric.

    One window per sequence (its first prefix_len + suffix_len tokens), or one every `stride` tokens; shorter
    sequences are skipped and counted in `num_skipped`. Under `accelerate launch` each process scores a share and
    the results are gathered in input order. The model is put in eval mode for the call and given back its mode.

    Args:
        model: A causal language model (transformers `...ForCausalLM`), on the device to run on.
        sequences: Token id sequences (lists, 1-D tensors, a 2-D tensor) or a `datasets.Dataset` with `input_ids`.
        prefix_len: Tokens of each window given to the model.
        suffix_len: Tokens of each window the model must reproduce greedily.
        stride: Cut a window every `stride` tokens of each sequence; None cuts one window, at its start.
        batch_size: Windows per forward pass.
        method: "auto" (teacher-forced shortcut, greedy resumed from the KV cache where it diverges), "prefix"
            (shortcut only: exact match and longest common prefix are exact, predictions stop at the first wrong
            token, so only those two metrics are reported) or "generate" (plain batched greedy `generate`, the
            reference).
        show_progress: Show a progress bar (on the local main process only).
        tokenizer: The model's tokenizer; when given, predictions and references are also decoded (special tokens
            skipped, as the goldfish paper's evaluation does) and scored by text-level ROUGE-L (`rouge_l_text`,
            the number Hans et al. report; needs the `analysis` extra). Not with `method="prefix"`.

    Returns:
        An `ExtractionResult` with the predictions, references and scores of every window, in input order.

    Raises:
        ValueError: If a length, `stride` or `batch_size` is not a positive integer, `method` is unknown, a
            sequence is not integer token ids, no sequence is long enough for one window, or `tokenizer` cannot
            decode or comes with `method="prefix"`.
        ImportError: If `tokenizer` is given and rouge_score (the `analysis` extra) is missing.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> result = measure_extraction(model, [list(range(20)), [1, 2, 3]], prefix_len=8, suffix_len=8, show_progress=False)
        >>> len(result.predictions), result.num_skipped, sorted(result.metrics)
        (1, 1, ['exact_match', 'longest_common_prefix', 'memorization_score', 'rouge_l'])
    """
    prefix_len = check_integer(prefix_len, "prefix_len", minimum=1)
    suffix_len = check_integer(suffix_len, "suffix_len", minimum=1)
    stride = check_integer(stride, "stride", minimum=1, allow_none=True)
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    check_choice(method, "method", EXTRACTION_METHODS)
    if tokenizer is not None:
        if not callable(getattr(tokenizer, "batch_decode", None)):
            raise ValueError(
                f"`tokenizer` must be a transformers tokenizer (with batch_decode), got {tokenizer!r:.80}."
            )
        if method == "prefix":
            raise ValueError(
                "`tokenizer` (text-level ROUGE-L) needs whole predictions, which method='prefix' does not produce: "
                "use method='auto' or 'generate'."
            )
        require_extra("analysis", "Text-level ROUGE-L (`tokenizer=`)")
    windows, index, skipped = extraction_windows(sequences, prefix_len, suffix_len, stride)
    if not windows:
        raise ValueError(
            f"No sequence in `sequences` has prefix_len + suffix_len = {prefix_len + suffix_len} tokens "
            f"({skipped} skipped): lower `prefix_len` / `suffix_len` or give longer sequences."
        )
    check_vocabulary(torch.stack(windows), model, "sequences")

    from accelerate import PartialState

    device = model_device(model)
    state = PartialState(cpu=device.type == "cpu")  # a CPU model under torchrun / accelerate launch: gloo
    predictions, lcps = [], []
    with eval_mode(model), state.split_between_processes(list(range(len(windows)))) as mine:
        batches = range(0, len(mine), batch_size)
        for b in tqdm(batches, desc="extraction", disable=not show_progress or not state.is_local_main_process):
            batch = torch.stack([windows[i] for i in mine[b : b + batch_size]]).to(device)
            suffix = batch[:, prefix_len:]
            if method == "generate":
                preds = generate_suffixes(model, batch, prefix_len)
                lcp = (preds == suffix).long().cumprod(1).sum(1)
            else:
                greedy, out = teacher_forced(model, batch, prefix_len, use_cache=method == "auto")
                lcp = (greedy == suffix).long().cumprod(1).sum(1)
                if method == "auto":
                    preds = resume_greedy(model, out, batch, greedy, lcp, prefix_len)
                else:  # the greedy continuation is known up to and including its first wrong token
                    preds = [torch.cat([s[:n], g[n : n + 1]]) for s, g, n in zip(suffix, greedy, lcp.tolist())]
            predictions += [p.tolist() for p in preds]
            lcps += lcp.tolist()

    if state.num_processes > 1:
        from accelerate.utils import gather_object

        predictions, lcps = gather_object(predictions), gather_object(lcps)
    references = [w[prefix_len:].tolist() for w in windows]
    metrics = extraction_scores(predictions, references)
    if method == "prefix":
        metrics = {k: metrics[k] for k in ("exact_match", "longest_common_prefix")}
    rouge_text = None
    if tokenizer is not None:
        rouge_text = text_rouge_l(decode_for_rouge(tokenizer, predictions), decode_for_rouge(tokenizer, references))
        metrics["rouge_l_text"] = sum(rouge_text) / len(rouge_text)
    return ExtractionResult(predictions, references, lcps, metrics, index, skipped, rouge_text)
