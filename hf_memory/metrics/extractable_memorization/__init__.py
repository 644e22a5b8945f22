"""The extractable-memorization `evaluate` metric; load it with `evaluate.load(hf_memory.EXTRACTABLE_MEMORIZATION)`."""
