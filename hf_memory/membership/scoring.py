"""`membership_scores`: every one-pass attack from one forward pass of the target model, streamed over the data."""

from __future__ import annotations

import contextlib
import itertools
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from .._utils import check_progress, eval_mode, is_prompt_learning, model_device, progress_bar, require_extra
from .attacks import attack_scores, token_statistics, zlib_bytes
from .config import MEMBERSHIP_ATTACKS, ONE_PASS_ATTACKS, MembershipConfig
from .inputs import Document, DocumentReader, is_in_memory


if TYPE_CHECKING:
    import datasets


_POSITIONS_PER_CHUNK = 128  # positions whose vocabulary-wide statistics are computed at a time (memory bound)


@dataclass
class MembershipResult:
    """Per-document membership scores, in input order: one column per attack, **higher = more likely a member**.

    Attributes:
        scores: Attack name -> one float64 score per document.
        num_tokens: Per document, the tokens the target model scored (every token but the first of each row).
        digests: Per document, a BLAKE2b digest of its text (or token ids): `membership_report` finds documents
            that are in both the member and the non-member set by it.
        num_truncated: How many documents were longer than `max_tokens` and cut (never with `windows=True`).
        config: The settings the scores were computed with.
    """

    scores: dict[str, np.ndarray]
    num_tokens: np.ndarray
    digests: list[str] = field(default_factory=list)
    num_truncated: int = 0
    config: MembershipConfig = field(default_factory=MembershipConfig)

    def __len__(self) -> int:
        return len(self.num_tokens)

    @property
    def attacks(self) -> list[str]:
        """The attacks scored, in `MEMBERSHIP_ATTACKS` order."""
        return list(self.scores)

    def to_dict(self) -> dict:
        """The scores, token counts, digests and settings as plain JSON types."""
        return {
            "scores": {name: values.tolist() for name, values in self.scores.items()},
            "num_tokens": self.num_tokens.tolist(),
            "digests": list(self.digests),
            "num_truncated": self.num_truncated,
            "config": self.config.to_dict(),
        }

    def dataset(self) -> datasets.Dataset:
        """The per-document rows as a `datasets.Dataset`: one column per attack, `num_tokens` and `digest`."""
        from datasets import Dataset

        return Dataset.from_dict({**self.scores, "num_tokens": self.num_tokens, "digest": list(self.digests)})


def resolve_attacks(config: MembershipConfig, has_reference: bool, text_known: bool) -> tuple[str, ...]:
    """The attacks a call computes, in `MEMBERSHIP_ATTACKS` order.

    Args:
        config: The settings (`attacks`: a list, or None for the default).
        has_reference: Whether a reference model was given.
        text_known: Whether the scored text is known (text data, or token ids with a tokenizer).

    Raises:
        ValueError: If `reference` is asked without a reference model, or `zlib` without a known text.
    """
    if config.attacks is None:
        chosen = [name for name in ONE_PASS_ATTACKS if name != "zlib" or text_known]
        if has_reference:
            chosen.append("reference")
        return tuple(chosen)
    if "reference" in config.attacks and not has_reference:
        raise ValueError("`attacks` asks for 'reference', which needs a `reference_model` (e.g. the base model).")
    if "zlib" in config.attacks and not text_known:
        raise ValueError(
            "`attacks` asks for 'zlib', which needs the text: give text data, or a `tokenizer` to decode the token "
            "ids."
        )
    return tuple(name for name in MEMBERSHIP_ATTACKS if name in config.attacks)


def _learned_positions(model) -> int | None:
    """The positions a model with learned absolute position embeddings (GPT-2, OPT, GPT-Neo, ...) takes, from its
    config; None for rotary, ALiBi or other unbounded positions (where a longer input is no error)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    inputs = model.get_input_embeddings()
    learned = any(
        isinstance(module, torch.nn.Embedding)
        and module is not inputs
        and ("pos" in name.rsplit(".", 1)[-1] or name.rsplit(".", 1)[-1] == "wpe")
        for name, module in model.named_modules()
    )
    if not learned:
        return None
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _check_model(model, name: str, max_tokens: int) -> None:
    if not isinstance(model, torch.nn.Module) or not callable(getattr(model, "get_input_embeddings", None)):
        raise ValueError(f"`{name}` must be a transformers causal language model, got {type(model).__name__}.")
    if is_prompt_learning(model):
        raise ValueError(
            f"`{name}` is a PEFT prompt-learning model: its virtual tokens shift every position of the output. Score "
            "the base model, or a LoRA-style adapter."
        )
    limit = _learned_positions(model)
    if limit is not None and max_tokens > limit:
        raise ValueError(
            f"`max_tokens` = {max_tokens} is more than `{name}` takes ({limit} learned positions): lower "
            "`max_tokens` (with `windows=True` long documents are still scored whole)."
        )


def _chunks(stream: Iterable, size: int) -> Iterator[list]:
    iterator = iter(stream)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _sorted_batches(rows: Sequence[torch.Tensor], batch_size: int) -> Iterator[list[int]]:
    """Row indices in batches of similar length (longest first), so that padding stays small."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _padded(rows: Sequence[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (pad id 0: padded positions are masked, and come after every real one) and the mask."""
    length = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _forward_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


def _target_statistics(model, rows: Sequence[torch.Tensor], batch_size: int):
    """Per row: (log-probabilities of its true tokens, Min-K%++ z-scores), on the CPU, padding never scored."""
    out: list = [None] * len(rows)
    device = model_device(model)
    for batch in _sorted_batches(rows, batch_size):
        ids, mask = _padded([rows[i] for i in batch], device)
        logits = _forward_logits(model, ids, mask)
        for j, i in enumerate(batch):
            n = len(rows[i]) - 1  # positions 0 .. n-1 predict tokens 1 .. n
            parts = []
            for start in range(0, n, _POSITIONS_PER_CHUNK):
                end = min(start + _POSITIONS_PER_CHUNK, n)
                parts.append(token_statistics(logits[j, start:end], ids[j, start + 1 : end + 1]))
            out[i] = (torch.cat([p[0] for p in parts]).cpu(), torch.cat([p[1] for p in parts]).cpu())
        del logits
    return out


def _reference_nll(model, rows: Sequence[torch.Tensor], batch_size: int) -> list[tuple[float, int]]:
    """Per row: (sum of its tokens' NLL under `model`, number of scored tokens)."""
    out: list = [None] * len(rows)
    device = model_device(model)
    for batch in _sorted_batches(rows, batch_size):
        ids, mask = _padded([rows[i] for i in batch], device)
        logits = _forward_logits(model, ids, mask)
        for j, i in enumerate(batch):
            n = len(rows[i]) - 1
            total = 0.0
            for start in range(0, n, _POSITIONS_PER_CHUNK):
                end = min(start + _POSITIONS_PER_CHUNK, n)
                log_p = torch.log_softmax(logits[j, start:end].float(), dim=-1)
                total -= float(log_p.gather(-1, ids[j, start + 1 : end + 1, None]).double().sum())
            out[i] = (total, n)
        del logits
    return out


def _ce_losses_after(model, rows: Sequence[torch.Tensor], config: MembershipConfig) -> list[float]:
    """Per row: the CE after `ce_steps` SGD steps on it (`hf_memory.analysis.ce_diagnostic`)."""
    from ..analysis import ce_diagnostic

    result = ce_diagnostic(model, list(rows), lr=config.ce_lr, steps=config.ce_steps, show_progress=False)
    return result.loss_after


def _score_chunk(model, reference_model, documents: list[Document], attacks, config, columns) -> None:
    """Score one chunk of documents; append each document's scores to `columns` in input order."""
    rows = [row for document in documents for row in document.rows]
    owner = [d for d, document in enumerate(documents) for _ in document.rows]
    with torch.inference_mode():
        statistics = _target_statistics(model, rows, config.batch_size)
        reference = None
        if reference_model is not None:
            reference_rows = [row for document in documents for row in document.reference_rows]
            reference_owner = [d for d, document in enumerate(documents) for _ in document.reference_rows]
            reference = [[0.0, 0] for _ in documents]
            for (total, n), d in zip(
                _reference_nll(reference_model, reference_rows, config.batch_size), reference_owner
            ):
                reference[d][0] += total
                reference[d][1] += n
    ce_after = None
    if "ce_diagnostic" in attacks:
        ce_after = [[0.0, 0] for _ in documents]
        for loss, row, d in zip(_ce_losses_after(model, rows, config), rows, owner):
            ce_after[d][0] += loss * (len(row) - 1)  # token-weighted over a document's windows
            ce_after[d][1] += len(row) - 1
    per_document: list[list] = [[] for _ in documents]
    for stats, d in zip(statistics, owner):
        per_document[d].append(stats)
    for d, document in enumerate(documents):
        log_probs = torch.cat([s[0] for s in per_document[d]])
        z = torch.cat([s[1] for s in per_document[d]])
        compressed = zlib_bytes(document.text) if "zlib" in attacks else None
        scores = attack_scores(log_probs, z, config.k, compressed)
        reference_nll = None if reference is None else reference[d][0] / reference[d][1]
        if "reference" in attacks:
            scores["reference"] = reference_nll + scores["loss"]  # reference NLL - target NLL
        if ce_after is not None:
            loss_after = ce_after[d][0] / ce_after[d][1]
            scores["ce_diagnostic"] = -loss_after if reference_nll is None else reference_nll - loss_after
        for name in attacks:
            columns[name].append(scores[name])
        columns["num_tokens"].append(len(log_probs))
        columns["digests"].append(document.digest)
        columns["num_truncated"] += int(document.truncated)


def membership_scores(
    model: torch.nn.Module,
    data,
    tokenizer=None,
    reference_model: torch.nn.Module | None = None,
    reference_tokenizer=None,
    config: MembershipConfig | None = None,
    *,
    attacks: Sequence[str] | None = MembershipConfig.attacks,
    k: float = MembershipConfig.k,
    max_tokens: int = MembershipConfig.max_tokens,
    windows: bool = MembershipConfig.windows,
    batch_size: int = MembershipConfig.batch_size,
    read_ahead: int = MembershipConfig.read_ahead,
    add_special_tokens: bool = MembershipConfig.add_special_tokens,
    text_column: str = MembershipConfig.text_column,
    ce_lr: float = MembershipConfig.ce_lr,
    ce_steps: int = MembershipConfig.ce_steps,
    show_progress: bool = True,
) -> MembershipResult:
    """Membership-inference scores of every document: **higher = more likely a member** (a training document).

    One forward pass of the target model gives every one-pass attack from the same logits:

    - `loss`: the mean token log-likelihood (minus the mean NLL; LOSS, Yeom et al. 2018);
    - `zlib`: minus the mean NLL divided by the zlib-compressed size of the scored text in bytes (Carlini et al.
      2021);
    - `min_k`: the mean of the lowest k% token log-probabilities (Min-K% Prob, Shi et al. 2024);
    - `min_k_plus_plus`: each token's log-probability standardized by the mean and standard deviation of the
      log-probabilities under the model's own next-token distribution at that position (the whole vocabulary), then
      the mean of the lowest k% (Min-K%++, Zhang et al. 2025).

    With `reference_model` (for a fine-tune: the base it was tuned from), one forward pass of it more gives
    `reference`: the reference's mean NLL minus the target's (Carlini et al. 2021; a document the target finds much
    easier than the reference does scores high). `ce_diagnostic` (only when listed in `attacks`) runs
    `hf_memory.analysis.ce_diagnostic` on every row: minus the CE after `ce_steps` SGD steps of `ce_lr`, or, with a
    reference, the reference's NLL minus that CE (the calibrated diagnostic); it changes the weights while it runs
    and restores them bit-exactly.

    Text is tokenized by each model's own tokenizer (`tokenizer`, `reference_tokenizer`), so a reference of another
    family works on text; the reference reads the same text span the target scored. Token-id data is read by both
    models as is, so it needs a shared vocabulary, and is refused when the two tokenizers (or, without them, the two
    embeddings) differ. Each document is cut to its first `max_tokens` tokens (counted in `num_truncated`), or with
    `windows=True` scored whole, in windows. The first token of a row is context only; padding is never scored.
    Documents are read `read_ahead` at a time and batched by length, so memory does not grow with their number
    (generators and `IterableDataset`s are consumed as they stream); scores come back in input order. Under
    `torchrun` / `accelerate launch` every process reads the data, scores every `num_processes`-th chunk of
    `read_ahead` documents, and the chunks are gathered in order: every process returns the whole result, the same
    scores as one process gives.

    Args:
        model: The target: a causal language model (`*ForCausalLM`, possibly with a LoRA-style PEFT adapter).
        data: Documents: texts (a list or any iterable of `str`, a `datasets.Dataset` / `IterableDataset` with a
            text column, row dicts), or token ids (lists, 1-D tensors, a 2-D tensor, a tokenizer's output, a dataset
            with `input_ids`; an `attention_mask` drops padded positions). Not both kinds.
        tokenizer: The target's tokenizer: needed for text, optional for token ids (then it decodes them for `zlib`).
        reference_model: A model that did not train on the members (for a fine-tune, its base), or None.
        reference_tokenizer: The reference's tokenizer, for text data; None: the reference reads the target's
            tokens (then the two embeddings must have the same size).
        config: A `MembershipConfig`; the keyword arguments below that differ from its defaults override it.
        attacks: See `MembershipConfig.attacks`.
        k: See `MembershipConfig.k`.
        max_tokens: See `MembershipConfig.max_tokens`.
        windows: See `MembershipConfig.windows`.
        batch_size: See `MembershipConfig.batch_size`.
        read_ahead: See `MembershipConfig.read_ahead`.
        add_special_tokens: See `MembershipConfig.add_special_tokens`.
        text_column: See `MembershipConfig.text_column`.
        ce_lr: See `MembershipConfig.ce_lr`.
        ce_steps: See `MembershipConfig.ce_steps`.
        show_progress: Show a progress bar over the documents (updated every `read_ahead` documents): True or
            False, or a tqdm bar to advance instead of a new one.

    Returns:
        A `MembershipResult`: one score column per attack, in input order.

    Raises:
        TypeError: If `config` is not a `MembershipConfig`.
        ValueError: Before any work, on a bad setting, a model that cannot be scored (a PEFT prompt-learning model,
            `max_tokens` beyond its positions), an attack that cannot be computed (`reference` without a reference
            model, `zlib` without text), text without a tokenizer, token-id data for a reference of another
            vocabulary, and, for in-memory data, a document that is empty, shorter than 2 tokens, of the other kind
            than the first, or holding an id outside a model's vocabulary (named `data[i]`). A streamed document is
            checked when it is read. Empty data is refused.
        ImportError: For `ce_diagnostic` without the `analysis` extra.

    Examples:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> result = membership_scores(model, [[1, 2, 3, 4, 5], [6, 7, 8]], show_progress=False)
        >>> result.attacks, len(result)
        (['loss', 'min_k', 'min_k_plus_plus'], 2)
    """
    config = MembershipConfig.from_arguments(
        config,
        {
            "attacks": attacks,
            "k": k,
            "max_tokens": max_tokens,
            "windows": windows,
            "batch_size": batch_size,
            "read_ahead": read_ahead,
            "add_special_tokens": add_special_tokens,
            "text_column": text_column,
            "ce_lr": ce_lr,
            "ce_steps": ce_steps,
        },
        "`membership_scores`",
    )
    show_progress = check_progress(show_progress, "show_progress")
    _check_model(model, "model", config.max_tokens)
    if reference_model is not None:
        _check_model(reference_model, "reference_model", config.max_tokens)
        if reference_model is model:
            raise ValueError("`reference_model` is `model` itself: every reference score would be 0.")
    if config.attacks is not None and "ce_diagnostic" in config.attacks:
        require_extra("analysis", "The ce_diagnostic membership score")
    need_text = config.attacks is None or "zlib" in config.attacks
    reader = DocumentReader(data, config, model, tokenizer, reference_model, reference_tokenizer, need_text)
    documents = iter(reader)
    if is_in_memory(data):
        if reader.validate() == 0:
            raise ValueError("`data` is empty: give at least one document.")
        documents = iter(reader)
    first = next(documents, None)
    if first is None:
        raise ValueError("`data` is empty: give at least one document.")
    chosen = resolve_attacks(config, reference_model is not None, first.text is not None)
    if "ce_diagnostic" in chosen:
        require_extra("analysis", "The ce_diagnostic membership score")
    from accelerate import PartialState

    state = PartialState(cpu=model_device(model).type == "cpu")  # under torchrun / accelerate launch: gloo on CPU
    rank, world = state.process_index, state.num_processes
    parts = []  # (chunk number, its columns): this process's share, every `world`-th chunk
    with (
        eval_mode(model, "membership_scores"),
        eval_mode(reference_model, "membership_scores") if reference_model is not None else contextlib.nullcontext(),
        progress_bar(
            show_progress, desc="membership scores", unit="doc", disable=not state.is_local_main_process
        ) as progress,
    ):
        for number, chunk in enumerate(_chunks(itertools.chain([first], documents), config.read_ahead)):
            if number % world != rank:
                continue
            columns = {name: array("d") for name in chosen}
            columns.update(num_tokens=array("q"), digests=[], num_truncated=0)
            _score_chunk(model, reference_model, chunk, chosen, config, columns)
            parts.append((number, columns))
            progress.update(len(chunk))
    if world > 1:
        from accelerate.utils import gather_object

        parts = sorted(gather_object(parts), key=lambda part: part[0])
    columns = {name: array("d") for name in chosen}
    columns.update(num_tokens=array("q"), digests=[], num_truncated=0)
    for _, part in parts:
        for name, values in part.items():
            columns[name] += values
    return MembershipResult(
        scores={name: np.frombuffer(columns[name], dtype=np.float64).copy() for name in chosen},
        num_tokens=np.frombuffer(columns["num_tokens"], dtype=np.int64).copy(),
        digests=columns["digests"],
        num_truncated=columns["num_truncated"],
        config=config,
    )
