"""Membership inference: was a document in the training data? The standard attacks from one forward pass of the
model (LOSS, zlib, Min-K%, Min-K%++; with a reference model, the reference attack), their error rates against ground
truth (ROC AUC with a bootstrap interval, TPR at low FPR; the `membership_inference` metric,
`evaluate.load(MEMBERSHIP_INFERENCE)`), and the checks that the audit itself is valid (a blind baseline that never
looks at the model, exact duplicates, n-gram overlap). Every score is oriented the same way: higher = more likely a
member."""

from .attacks import attack_scores, token_statistics, zlib_bytes
from .callback import MEMBERSHIP_LOG_PREFIX, MembershipCallback
from .config import MEMBERSHIP_ATTACKS, ONE_PASS_ATTACKS, MembershipConfig
from .evaluation import (
    DEFAULT_FPRS,
    MEMBERSHIP_INFERENCE,
    MIN_PER_CLASS,
    check_labels,
    check_scores,
    membership_inference_scores,
)
from .report import BLIND_BASELINE, MembershipReport, membership_report
from .scoring import MembershipResult, membership_scores
from .validity import blind_baseline_scores, blind_baseline_test, ngram_overlap


__all__ = [
    "BLIND_BASELINE",
    "DEFAULT_FPRS",
    "MEMBERSHIP_ATTACKS",
    "MEMBERSHIP_INFERENCE",
    "MEMBERSHIP_LOG_PREFIX",
    "MIN_PER_CLASS",
    "ONE_PASS_ATTACKS",
    "MembershipCallback",
    "MembershipConfig",
    "MembershipReport",
    "MembershipResult",
    "attack_scores",
    "blind_baseline_scores",
    "blind_baseline_test",
    "check_labels",
    "check_scores",
    "membership_inference_scores",
    "membership_report",
    "membership_scores",
    "ngram_overlap",
    "token_statistics",
    "zlib_bytes",
]
