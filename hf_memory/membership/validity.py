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


BLIND_MAX_SAMPLES = 2000  # the blind baseline's kernel is samples x samples: a larger set is subsampled
BLIND_RIDGE = 1.0  # the ridge penalty (rows of the TF-IDF matrix have norm 1)


def _check_blind(texts, is_member, folds, repeats, seed):
    labels = check_labels(is_member)
    texts = check_texts(texts, labels.size)
    folds = check_integer(folds, "folds", minimum=2)
    repeats = check_integer(repeats, "repeats", minimum=1)
    seed = check_integer(seed, "seed", minimum=0)
    members, non_members = int(labels.sum()), int((~labels).sum())
    if min(members, non_members) < 2:
        raise ValueError(
            f"The blind baseline cross-validates: it needs at least 2 members and 2 non-members, got {members} and "
            f"{non_members}."
        )
    if not any(_WORDS.search(text) for text in texts):
        raise ValueError("`texts` hold no word: the blind baseline reads words.")
    require_extra("analysis", "The blind baseline")
    return texts, labels, folds, repeats, seed


def _smoother(texts: Sequence[str], folds: int, repeats: int, seed: int) -> np.ndarray:
    """The out-of-fold linear smoother `H`: for ANY labels `y`, `H @ y` are the out-of-fold scores.

    Features: TF-IDF of words and word bigrams (sublinear term frequencies), fitted on all texts (it never sees a
    label). Classifier: ridge regression of the 0/1 label on them (kernel form; offset = the training folds' mean
    label), fitted on `folds - 1` folds and applied to the held-out one, over `repeats` random fold splits (which do
    not depend on the labels), averaged. Because the folds and the features ignore the labels, `H` does too: the
    classifier is refitted for a permuted labelling at the cost of one product.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.model_selection import KFold

    features = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
    matrix = features.fit_transform(texts)
    kernel = (matrix @ matrix.T).toarray()
    n = len(texts)
    smoother = np.zeros((n, n))
    folds = min(folds, n)
    for repeat in range(repeats):
        split = KFold(n_splits=folds, shuffle=True, random_state=seed + repeat)
        for train, test in split.split(np.zeros(n)):
            # Ridge with an intercept: features centred on the training folds' mean (kernel form).
            inner, cross = kernel[np.ix_(train, train)], kernel[np.ix_(test, train)]
            column_means, grand = inner.mean(axis=0), inner.mean()
            inner = inner - column_means[None, :] - column_means[:, None] + grand
            cross = cross - cross.mean(axis=1, keepdims=True) - column_means[None, :] + grand
            weights = np.linalg.solve(inner + BLIND_RIDGE * np.eye(len(train)), cross.T).T  # [test, train]
            # Linear in the centred training labels; the intercept (their mean) is left out: it differs between
            # folds with their share of members and would bias the pooled AUC below 0.5.
            smoother[np.ix_(test, train)] += weights - weights.mean(axis=1, keepdims=True)
    return smoother / repeats


def _aucs(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The ROC AUC of each column of `scores` [samples, k] against the matching column of `labels` (ties: half)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=0)
    positives = labels.sum(axis=0)
    negatives = labels.shape[0] - positives
    return ((ranks * labels).sum(axis=0) - positives * (positives + 1) / 2) / (positives * negatives)


def blind_baseline_scores(
    texts: Sequence[str], is_member, folds: int = 5, seed: int = 0, repeats: int = 1
) -> np.ndarray:
    """Out-of-fold membership scores of a classifier that reads the texts alone and never the model.

    A bag of words and word bigrams (TF-IDF, sublinear term frequencies, fitted on all texts: it never sees a label)
    and a ridge regression of the 0/1 label on it, fitted and applied by `folds`-fold cross-validation (the fold split
    ignores the labels), averaged over `repeats` fold splits: each sample is scored by classifiers fitted without it,
    so its AUC estimates how well the texts alone separate members from non-members. Near 0.5 the sets look alike;
    clearly above, an attack's AUC may come from the distribution shift, not from the model. `blind_baseline_test`
    says how far above 0.5 is "clearly" (a permutation test).

    Args:
        texts: One text per sample (at most `BLIND_MAX_SAMPLES`, 2000).
        is_member: Per sample, 1 (or True) for a member, 0 for a non-member.
        folds: Cross-validation folds (>= 2).
        seed: Seed of the fold splits.
        repeats: Fold splits averaged (>= 1).

    Returns:
        Per sample, its out-of-fold score (higher = member), in input order.

    Raises:
        ValueError: If the labels are not 0/1 or hold fewer than 2 of a class, `texts` is not a list of strings of
            the same length or holds more than 2000 texts, or the texts hold no word at all.
        ImportError: Without scikit-learn (the `analysis` extra).

    Examples:
        Members that all say "alpha" and non-members that all say "omega" are told apart without any model:

        >>> texts = [f"alpha note {i}" for i in range(6)] + [f"omega memo {i}" for i in range(6)]
        >>> scores = blind_baseline_scores(texts, [1] * 6 + [0] * 6, folds=3)
        >>> bool(scores[:6].min() > scores[6:].max())
        True
    """
    texts, labels, folds, repeats, seed = _check_blind(texts, is_member, folds, repeats, seed)
    if len(texts) > BLIND_MAX_SAMPLES:
        raise ValueError(
            f"`texts` holds {len(texts)} texts, more than the blind baseline takes ({BLIND_MAX_SAMPLES}): give a "
            "random subsample (`membership_report` does it itself)."
        )
    return _smoother(texts, folds, repeats, seed) @ labels.astype(np.float64)


def blind_baseline_test(
    texts: Sequence[str],
    is_member,
    folds: int = 5,
    repeats: int = 3,
    permutations: int = 999,
    seed: int = 0,
) -> dict:
    """The blind baseline with its calibrated verdict: a permutation test of its cross-validated AUC.

    The classifier of `blind_baseline_scores` (its folds over `repeats` splits) is refitted on `permutations` random
    relabellings of the same texts (the same number of members), each scored the same way: these AUCs are what the
    baseline reaches by chance on this very data, fitting variance included. The p-value is the share of them (plus
    the observed one) at least as high as the observed AUC. When members and non-members are a random split of one
    source, the labels are exchangeable and the p-value is exact: the verdict `p <= alpha` fires on a random split
    with probability alpha, whatever the sample size. (A bootstrap of the out-of-fold scores does not see the fits
    vary, and its interval is too narrow.)

    More than `BLIND_MAX_SAMPLES` (2000) samples: the test runs on a stratified random subsample of that size
    (seeded), returned as `indices`.

    Args:
        texts: One text per sample.
        is_member: Per sample, 1 (or True) for a member, 0 for a non-member.
        folds: Cross-validation folds (>= 2).
        repeats: Fold splits averaged (>= 1).
        permutations: Random relabellings (>= 19); the smallest p-value is `1 / (permutations + 1)`.
        seed: Seed of the fold splits, the relabellings and the subsample.

    Returns:
        `{"scores", "indices", "auc", "p_value", "null_aucs"}`: the out-of-fold scores of the samples `indices`
        (all of them, in order, up to 2000), their AUC, the p-value and the relabellings' AUCs.

    Raises:
        ValueError: As `blind_baseline_scores`; `permutations` below 19.
        ImportError: Without scikit-learn (the `analysis` extra).

    Examples:
        >>> texts = [f"alpha note {i}" for i in range(10)] + [f"omega memo {i}" for i in range(10)]
        >>> test = blind_baseline_test(texts, [1] * 10 + [0] * 10, permutations=99)
        >>> test["auc"], bool(test["p_value"] <= 0.05)
        (1.0, True)
    """
    texts, labels, folds, repeats, seed = _check_blind(texts, is_member, folds, repeats, seed)
    permutations = check_integer(permutations, "permutations", minimum=19)
    rng = np.random.default_rng(seed)
    indices = np.arange(len(texts))
    if len(texts) > BLIND_MAX_SAMPLES:
        members, others = np.flatnonzero(labels), np.flatnonzero(~labels)
        share = round(BLIND_MAX_SAMPLES * len(members) / len(texts))  # members kept: their share, >= 2 a class
        keep = int(np.clip(share, max(2, BLIND_MAX_SAMPLES - len(others)), min(len(members), BLIND_MAX_SAMPLES - 2)))
        indices = np.sort(np.concatenate([rng.choice(members, keep, replace=False),
                                          rng.choice(others, BLIND_MAX_SAMPLES - keep, replace=False)]))  # fmt: skip
        texts, labels = [texts[i] for i in indices], labels[indices]
    smoother = _smoother(texts, folds, repeats, seed)
    y = labels.astype(np.float64)
    relabelled = np.stack([rng.permutation(y) for _ in range(permutations)], axis=1)
    columns = np.concatenate([y[:, None], relabelled], axis=1)
    aucs = _aucs(smoother @ columns, columns)
    observed, null = float(aucs[0]), aucs[1:]
    return {
        "scores": smoother @ y,
        "indices": indices,
        "auc": observed,
        "p_value": float((1 + np.sum(null >= observed - 1e-12)) / (permutations + 1)),
        "null_aucs": null,
    }


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
