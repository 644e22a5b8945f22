"""Membership inference measured while `Trainer.train()` runs: how well the attacks tell the training documents from
held-out ones, logged as `membership/auc_<attack>`, so a user watches leakage rise as the model overfits.

The schedule, the model's unwrapping and modes, the global random states and the logging through the Trainer come
from `_utils.MeasuringCallback`; each measurement is `membership_scores` on both sets and the ROC AUC of each attack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._utils import MeasuringCallback, as_token_ids, check_vocabulary, require_extra
from .config import ONE_PASS_ATTACKS, MembershipConfig
from .evaluation import MIN_PER_CLASS, roc_auc
from .scoring import membership_scores


if TYPE_CHECKING:
    from transformers import TrainerState, TrainingArguments


MEMBERSHIP_LOG_PREFIX = "membership/"


def _documents(data, name: str, text_column: str) -> list:
    """`data` as a list that can be read at every measurement (a generator or iterator is refused)."""
    if isinstance(data, (str, bytes)) or not (hasattr(data, "__iter__") or isinstance(data, torch.Tensor)):
        raise ValueError(
            f"`{name}` must be documents (a list of texts or of token id sequences, a 2-D tensor, a datasets.Dataset), "
            f"got {type(data).__name__}."
        )
    if iter(data) is data:
        raise ValueError(f"`{name}` is an iterator: it is read at every measurement, so give a list (or a Dataset).")
    return list(data)  # a datasets.Dataset gives its rows as dicts


def _key(item, name: str, index: int, text_column: str):
    """What identifies a document's content: its text, or its token ids as a tuple."""
    if isinstance(item, Mapping):
        if text_column in item:
            item = item[text_column]
        elif "input_ids" in item:
            item = item["input_ids"]
        else:
            raise ValueError(f"`{name}[{index}]` is a row without a {text_column!r} or `input_ids` entry.")
    if isinstance(item, str):
        return item
    return tuple(as_token_ids(item, f"{name}[{index}]", dims=(1,)).tolist())


class MembershipCallback(MeasuringCallback):
    """Log how well membership inference tells `members` (training documents) from `non_members` (held out) while
    `Trainer.train()` runs.

    At each measurement, `membership_scores` scores both sets with the model being trained and each attack's ROC AUC
    is logged through the Trainer as `membership/auc_<attack>` (`membership/auc_loss`, `membership/auc_zlib`,
    `membership/auc_min_k`, `membership/auc_min_k_plus_plus`; `membership/auc_reference` with a reference model): 0.5
    is chance, 1.0 every member scores above every non-member. As the model overfits its training data the AUCs
    rise; `metric_for_best_model="membership/auc_loss"` with `greater_is_better=False` keeps the checkpoint that
    leaks least. For the intervals and TPR at low FPR of a finished model, run `membership_report` (or `audit` with
    `non_members`) once after training.

    The schedule, the model measured (unwrapped, eval mode, no gradient), the global random states kept (training is
    bit-identical with and without the callback) and the behaviour without a Trainer are those of
    `hf_memory._utils.MeasuringCallback`.

    Args:
        members: Documents the model trains on (a sample of `train_dataset`), in a form `membership_scores` takes,
            held in memory (a list, a 2-D tensor, a `datasets.Dataset`): they are scored at every measurement.
        non_members: Held-out documents of the same source (a random split), in the same form.
        tokenizer: The model's tokenizer; needed for text (None: the Trainer's `processing_class`), optional for
            token ids (then it decodes them for `zlib`).
        reference_model: A model that did not train on the members (the base of a fine-tune), for `reference`.
        every: "eval" (after each evaluation), "epoch", or N optimizer steps (and the last).
        config: A `MembershipConfig`; the keyword arguments below override it.
        attacks: See `MembershipConfig.attacks` (`ce_diagnostic` is refused: it trains the model at each
            measurement).
        k: See `MembershipConfig.k`.
        max_tokens: See `MembershipConfig.max_tokens`.
        windows: See `MembershipConfig.windows`.
        batch_size: See `MembershipConfig.batch_size`.
        text_column: See `MembershipConfig.text_column`.

    Attributes:
        history: One dict per measurement: `step`, `epoch` and `auc_<attack>` per attack.
        seconds: Wall-clock seconds spent measuring so far.

    Raises:
        ImportError: Without scikit-learn (the `analysis` extra).
        ValueError: At construction: a set that is an iterator, not documents, or with fewer than 5 documents; a
            document found in both sets (the same text or token ids); a bad setting or schedule; `ce_diagnostic`.
            When training starts: text without a tokenizer, or a token id outside the model's vocabulary.

    Examples:
        >>> members = [[1, 2, 3, 4, 5, i] for i in range(5)]
        >>> non_members = [[5, 4, 3, 2, 1, i] for i in range(5)]
        >>> callback = MembershipCallback(members, non_members, every=10)
        >>> # Trainer(model, args, train_dataset=..., callbacks=[callback]).train()
        >>> callback.metric_names()
        ['auc_loss', 'auc_min_k', 'auc_min_k_plus_plus']
    """

    log_prefix = MEMBERSHIP_LOG_PREFIX

    def __init__(
        self,
        members,
        non_members,
        tokenizer=None,
        reference_model: torch.nn.Module | None = None,
        every: str | int = "eval",
        config: MembershipConfig | None = None,
        *,
        attacks: Sequence[str] | None = MembershipConfig.attacks,
        k: float = MembershipConfig.k,
        max_tokens: int = MembershipConfig.max_tokens,
        windows: bool = MembershipConfig.windows,
        batch_size: int = MembershipConfig.batch_size,
        text_column: str = MembershipConfig.text_column,
    ) -> None:
        super().__init__(every)
        require_extra("analysis", "MembershipCallback (its ROC AUC)")
        self.config = MembershipConfig.from_arguments(
            config,
            {
                "attacks": attacks,
                "k": k,
                "max_tokens": max_tokens,
                "windows": windows,
                "batch_size": batch_size,
                "text_column": text_column,
            },
            "`MembershipCallback`",
        )
        if self.config.attacks is not None and "ce_diagnostic" in self.config.attacks:
            raise ValueError(
                "`attacks` lists 'ce_diagnostic', which takes SGD steps on every document at every measurement: run it "
                "with `membership_scores` after training instead."
            )
        if self.config.attacks is not None and "reference" in self.config.attacks and reference_model is None:
            raise ValueError("`attacks` asks for 'reference', which needs a `reference_model` (e.g. the base model).")
        if reference_model is not None and not isinstance(reference_model, torch.nn.Module):
            raise ValueError(
                f"`reference_model` must be a causal language model, got {type(reference_model).__name__}."
            )
        self.members = _documents(members, "members", self.config.text_column)
        self.non_members = _documents(non_members, "non_members", self.config.text_column)
        keys = {}
        for name, documents in (("members", self.members), ("non_members", self.non_members)):
            if len(documents) < MIN_PER_CLASS:
                raise ValueError(f"`{name}` needs at least {MIN_PER_CLASS} documents, got {len(documents)}.")
            keys[name] = [_key(item, name, i, self.config.text_column) for i, item in enumerate(documents)]
        kinds = {isinstance(key, str) for key in keys["members"] + keys["non_members"]}
        if len(kinds) > 1:
            raise ValueError("`members` and `non_members` mix texts and token ids: give both as one kind.")
        self.is_text = kinds == {True}
        shared = set(keys["members"]) & set(keys["non_members"])
        if shared:
            first = next(i for i, key in enumerate(keys["non_members"]) if key in shared)
            raise ValueError(
                f"{len(shared)} document(s) are both in `members` and `non_members` (e.g. `non_members[{first}]`): the "
                "same document cannot be both."
            )
        self.tokenizer, self.reference_model = tokenizer, reference_model

    def metric_names(self) -> list[str]:
        """The AUCs each measurement reports, `auc_<attack>` (without the `membership/` prefix)."""
        if self.config.attacks is not None:
            attacks = list(self.config.attacks)
        else:
            text_known = self.is_text or self.tokenizer is not None
            attacks = [name for name in ONE_PASS_ATTACKS if name != "zlib" or text_known]
            attacks += ["reference"] if self.reference_model is not None else []
        return [f"auc_{name}" for name in attacks]

    def check(self, model, args: TrainingArguments, **kwargs: Any) -> None:
        """Refuse, before the first step, text without a tokenizer and token ids outside the model's vocabulary.

        Args:
            model: The model about to be trained (unwrapped).
            args: The Trainer's training arguments (unused).
            **kwargs: The other objects the Trainer passes to callbacks: `processing_class` is the tokenizer when
                none was given.

        Raises:
            ValueError: As described.
        """
        if self.tokenizer is None and self.is_text:
            tokenizer = kwargs.get("processing_class") or kwargs.get("tokenizer")
            if not callable(tokenizer):
                raise ValueError(
                    "`members` and `non_members` are texts: give the model's `tokenizer` to MembershipCallback (or "
                    "to the Trainer as `processing_class`)."
                )
            self.tokenizer = tokenizer
        if not self.is_text:
            for name, documents in (("members", self.members), ("non_members", self.non_members)):
                for i, item in enumerate(documents):
                    ids = _key(item, name, i, self.config.text_column)
                    check_vocabulary(torch.tensor(ids), model, f"{name}[{i}]")
                    if self.reference_model is not None:
                        check_vocabulary(torch.tensor(ids), self.reference_model, f"{name}[{i}] (reference model)")

    def measure(self, model, state: TrainerState) -> dict[str, float]:
        """Each attack's ROC AUC of the members against the non-members, with the model as it is now.

        Args:
            model: The model being trained (unwrapped, in eval mode, no gradient).
            state: The Trainer's state (unused).

        Returns:
            `auc_<attack>` per attack.
        """
        scored = [
            membership_scores(
                model,
                documents,
                self.tokenizer,
                self.reference_model,
                config=self.config,
                show_progress=False,
            )
            for documents in (self.members, self.non_members)
        ]
        labels = np.concatenate([np.ones(len(scored[0]), dtype=bool), np.zeros(len(scored[1]), dtype=bool)])
        out = {}
        for attack in scored[0].attacks:
            values = np.concatenate([scored[0].scores[attack], scored[1].scores[attack]])
            out[f"auc_{attack}"] = roc_auc(values, labels)
        return out
