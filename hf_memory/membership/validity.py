"""Checks that a membership audit is valid: can the two sets be told apart without the model (a blind baseline),
do they share documents (exact duplicates) or long n-grams?

Das, Zhang & Tramèr (2024) and Meeus et al. (2024) found that on published membership-inference benchmarks a
classifier that never sees the model beats the attacks, because members and non-members were drawn from different
distributions (e.g. before and after a date). An attack AUC means memorization only when such a classifier sits at
chance, i.e. when the non-members are a random split of the same source.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from .._utils import check_integer, require_extra
from .evaluation import check_labels


_WORDS = re.compile(r"\w+")


def check_texts(texts, size: int | None = None) -> list[str]:
    """Texts as a list of strings.

    Args:
        texts: One text per sample.
        size: The length it must have, or None.

    Raises:
        ValueError: If `texts` is not a list of strings or has another length than `size`.
    """
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
        raise ValueError(f"`texts` must be a list of strings (one per sample), got {type(texts).__name__}.")
    texts = list(texts)
    bad = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
    if bad is not None:
        raise ValueError(f"`texts[{bad}]` must be a string, got {type(texts[bad]).__name__}.")
    if size is not None and len(texts) != size:
        raise ValueError(f"`texts` has {len(texts)} texts, but there are {size} labels.")
    return texts


def blind_baseline_scores(texts: Sequence[str], is_member, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold membership scores of a classifier that reads the texts alone and never the model.

    A bag of words and word bigrams (TF-IDF, sublinear term frequencies) and a logistic regression, fitted and
    applied by stratified `folds`-fold cross-validation (scikit-learn): each sample is scored by the classifier
    fitted on the other folds, so its AUC estimates how well the texts alone separate members from non-members. Near
    0.5 the sets look alike; clearly above, an attack's AUC may come from the distribution shift, not from the model.

    Args:
        texts: One text per sample.
        is_member: Per sample, 1 (or True) for a member, 0 for a non-member.
        folds: Cross-validation folds (>= 2; lowered to the size of the smaller class when that is smaller).
        seed: Seed of the fold split.

    Returns:
        Per sample, the predicted probability of being a member (higher = member), in input order.

    Raises:
        ValueError: If the labels are not 0/1 or hold fewer than 2 of a class, `texts` is not a list of strings of
            the same length, or the texts hold no word at all.
        ImportError: Without scikit-learn (the `analysis` extra).

    Examples:
        Members that all say "alpha" and non-members that all say "omega" are told apart without any model:

        >>> texts = [f"alpha note {i}" for i in range(6)] + [f"omega memo {i}" for i in range(6)]
        >>> scores = blind_baseline_scores(texts, [1] * 6 + [0] * 6, folds=3)
        >>> bool(scores[:6].min() > scores[6:].max())
        True
    """
    labels = check_labels(is_member)
    texts = check_texts(texts, labels.size)
    folds = check_integer(folds, "folds", minimum=2)
    seed = check_integer(seed, "seed", minimum=0)
    smaller = int(min(labels.sum(), (~labels).sum()))
    if smaller < 2:
        raise ValueError(
            f"The blind baseline cross-validates: it needs at least 2 members and 2 non-members, got "
            f"{int(labels.sum())} and {int((~labels).sum())}."
        )
    if not any(_WORDS.search(text) for text in texts):
        raise ValueError("`texts` hold no word: the blind baseline reads words.")
    require_extra("analysis", "The blind baseline")
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    classifier = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b"),
        LogisticRegression(max_iter=1000),
    )
    split = StratifiedKFold(n_splits=min(folds, smaller), shuffle=True, random_state=seed)
    probabilities = cross_val_predict(classifier, np.array(texts, dtype=object), labels, cv=split,
                                      method="predict_proba")  # fmt: skip
    return probabilities[:, 1]


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORDS.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def ngram_overlap(member_texts: Sequence[str], non_member_texts: Sequence[str], n: int = 13) -> dict:
    """How much of each non-member's word n-grams also occur in some member (MIMIR's overlap measure).

    Words are the runs of letters, digits and underscores, lower-cased. A non-member with fewer than `n` words has
    no n-gram and is left out (counted in `too_short`).

    Args:
        member_texts: The members' texts.
        non_member_texts: The non-members' texts.
        n: The n-gram length in words (>= 1); MIMIR uses 7 and 13.

    Returns:
        `{"n", "mean", "median", "max", "too_short"}`: the share of each non-member's n-grams found in a member,
        averaged, its median and its maximum over the non-members (None when every non-member is too short).

    Examples:
        >>> ngram_overlap(["a b c d"], ["a b c x", "q r s t"], n=3)
        {'n': 3, 'mean': 0.25, 'median': 0.25, 'max': 0.5, 'too_short': 0}
    """
    n = check_integer(n, "n", minimum=1)
    seen: set = set()
    for text in member_texts:
        seen |= _ngrams(text, n)
    shares, too_short = [], 0
    for text in non_member_texts:
        grams = _ngrams(text, n)
        if not grams:
            too_short += 1
            continue
        shares.append(len(grams & seen) / len(grams))
    if not shares:
        return {"n": n, "mean": None, "median": None, "max": None, "too_short": too_short}
    return {
        "n": n,
        "mean": float(np.mean(shares)),
        "median": float(np.median(shares)),
        "max": float(np.max(shares)),
        "too_short": too_short,
    }


def cross_duplicates(keys: Sequence, labels: np.ndarray) -> np.ndarray:
    """Which samples have an exact duplicate in the other set (a key held by both a member and a non-member).

    Args:
        keys: Per sample, what identifies its content (its text, or a digest of it).
        labels: Per sample, True for a member.

    Returns:
        A bool mask: True for every copy, member or non-member, of a key found in both sets.
    """
    member_keys = {key for key, label in zip(keys, labels) if label}
    non_member_keys = {key for key, label in zip(keys, labels) if not label}
    shared = member_keys & non_member_keys
    return np.array([key in shared for key in keys], dtype=bool)
