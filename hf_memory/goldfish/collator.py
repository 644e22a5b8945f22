"""`GoldfishDataCollator`: wrap any collator so its training batches carry goldfish-masked labels."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.utils import logging

from .config import GoldfishConfig
from .mask import IGNORE_INDEX, document_offsets, first_droppable_offset, goldfish_mask


logger = logging.get_logger(__name__)


def _labels_are_the_inputs(batch, input_ids: torch.Tensor, labels: torch.Tensor, kept: torch.Tensor) -> bool:
    """Whether the labels are a causal LM's: the input ids themselves (some set to -100), position by position."""
    if "decoder_input_ids" in batch or labels.shape != input_ids.shape:
        return False
    return bool((labels == input_ids)[kept].all())


def _unreachable_documents(kept: torch.Tensor, offsets: torch.Tensor, config: GoldfishConfig) -> tuple[int, int]:
    """(documents with a label, how many of them have no label that the mask may drop): a label before
    `first_droppable_offset` is out of reach, so a document that short trains exactly as with the standard loss."""
    first = first_droppable_offset(config)
    document = (offsets == 0).reshape(-1).long().cumsum(0) - 1  # column 0 of every row starts a document
    count = int(document[-1]) + 1 if document.numel() else 0
    labelled = torch.zeros(count, dtype=torch.bool, device=kept.device)
    reachable = torch.zeros_like(labelled)
    labelled[document[kept.reshape(-1)]] = True
    reachable[document[(kept & (offsets >= first)).reshape(-1)]] = True
    return int(labelled.sum()), int((labelled & ~reachable).sum())


class GoldfishDataCollator:
    """Wrap any collator so the training batches it builds carry goldfish-masked ``labels``.

    Document boundaries come from the batch's ``position_ids`` (packing / padding-free) or, failing that, its
    ``attention_mask`` (so left padding does not shift the mask). A seq2seq batch, whose labels are not the input
    ids (another length, ``decoder_input_ids`` in the batch, or other tokens where a label is set), is masked on
    the label tokens themselves (the decoder's sequence, each row one document, its first `h` labels kept), with
    one warning saying so: the encoder's input is never hashed. With ``return_dropped_counts=True`` the batch also
    holds ``goldfish_dropped_tokens`` (per row), which ``GoldfishTrainer`` pops for its logs.

    A label is hashed from the ``h`` tokens of its document that end at it, so no label of a document of at most
    ``h`` tokens (13 by default: a short chat turn, a one-line secret) is ever dropped: such documents train as with
    the standard loss. The first batch that holds one logs a warning with the count (lower ``h`` to reach them).

    Args:
        base_collator: The collator that builds the batch (a dict with `input_ids` and `labels`); goldfish then
            drops labels from it.
        config: Which labels to drop.
        return_dropped_counts: Also return `goldfish_dropped_tokens`, the number of labels dropped in each row.

    Raises:
        TypeError: If `base_collator` is not callable or `config` is not a `GoldfishConfig`.

    Examples:
        >>> from transformers import default_data_collator
        >>> collator = GoldfishDataCollator(default_data_collator, GoldfishConfig(k=2, strategy="static"))
        >>> batch = collator([{"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9]}])
        >>> batch["labels"].tolist()
        [[5, -100, 7, -100, 9]]
    """

    def __init__(self, base_collator: Callable, config: GoldfishConfig, return_dropped_counts: bool = False) -> None:
        if not callable(base_collator):
            raise TypeError(f"`base_collator` must be callable, got {type(base_collator).__name__}.")
        if not isinstance(config, GoldfishConfig):
            raise TypeError(f"`config` must be a GoldfishConfig, got {type(config).__name__}.")
        self.base_collator = base_collator
        self.config = config
        self.return_dropped_counts = return_dropped_counts
        self._warned_short = False

    def __call__(self, features: list, *args, **kwargs):
        """Build a batch with the base collator, then set the goldfish-dropped labels to -100.

        Args:
            features: The examples of one batch, as the base collator takes them.
            *args: Passed on to the base collator.
            **kwargs: Passed on to the base collator.

        Returns:
            The base collator's batch (a dict or `BatchEncoding`), its `labels` a tensor with the dropped labels
            set to -100 (and `goldfish_dropped_tokens` with `return_dropped_counts=True`).

        Raises:
            ValueError: If the batch has no `input_ids` or no `labels`.
        """
        batch = self.base_collator(features, *args, **kwargs)
        if "input_ids" not in batch:
            raise ValueError(
                f"`base_collator` returned no `input_ids` (keys: {sorted(batch)}); goldfish hashes the input tokens."
            )
        if "labels" not in batch:
            raise ValueError(
                f"The batch has no `labels` (keys: {sorted(batch)}): goldfish drops labels, so the collator or the "
                "dataset must provide them (e.g. DataCollatorForLanguageModeling(tokenizer, mlm=False))."
            )
        input_ids, labels = torch.as_tensor(batch["input_ids"]), torch.as_tensor(batch["labels"])
        kept = labels != IGNORE_INDEX
        if _labels_are_the_inputs(batch, input_ids, labels, kept):
            positions = batch.get("position_ids")
            if positions is None and batch.get("attention_mask") is not None:
                positions = torch.as_tensor(batch["attention_mask"]).long().cumsum(-1) - 1
            drop = goldfish_mask(input_ids, self.config, positions) & kept
            if not self._warned_short:
                offsets = (
                    torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
                    if positions is None
                    else document_offsets(torch.as_tensor(positions).to(input_ids.device))
                )
                documents, short = _unreachable_documents(kept, offsets, self.config)
                if short:
                    self._warned_short = True
                    reach, fix = (
                        (f"at or before `start` = {self.config.start}", "Lower `start`")
                        if self.config.strategy == "static"
                        else (
                            f"with fewer than `h` = {self.config.h} tokens of their document before them",
                            "Lower `h`",
                        )
                    )
                    logger.warning(
                        f"GoldfishDataCollator: {short} of the {documents} documents in this batch are too short for "
                        f"goldfish to drop any of their labels (it never drops labels {reach}): they train as with "
                        f"the standard loss. {fix} to reach them. (Warned once per collator.)"
                    )
        else:  # seq2seq: the targets are the decoder's own sequence, hashed as a causal LM hashes its inputs
            logger.warning_once(
                "GoldfishDataCollator: the labels are not the input_ids (a seq2seq batch: another length, "
                "`decoder_input_ids`, or other tokens): goldfish hashes the label tokens themselves, each row's "
                "labels one document."
            )
            positions = kept.long().cumsum(-1) - 1
            drop = goldfish_mask(labels.masked_fill(~kept, 0), self.config, positions) & kept
        batch["labels"] = labels.masked_fill(drop, IGNORE_INDEX)
        if self.return_dropped_counts:
            batch["goldfish_dropped_tokens"] = drop.reshape(-1, drop.shape[-1]).sum(-1)
        return batch
