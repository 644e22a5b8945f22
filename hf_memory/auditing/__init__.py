"""Memorization audit: "did my fine-tune memorize my data?" as one call or `hf-memory audit`, with a
self-contained HTML report and the numbers on the model card."""

from .config import AuditConfig
from .report import HTML_FILE, MEMBERSHIP_FILE, RESULTS_FILE, WINDOWS_FILE, AuditReport
from .run import DEFAULT_MAX_WINDOWS, audit


__all__ = [
    "DEFAULT_MAX_WINDOWS",
    "HTML_FILE",
    "MEMBERSHIP_FILE",
    "RESULTS_FILE",
    "WINDOWS_FILE",
    "AuditConfig",
    "AuditReport",
    "audit",
]
