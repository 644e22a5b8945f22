"""The membership-inference `evaluate` metric; load it with `evaluate.load(hf_memory.MEMBERSHIP_INFERENCE)`."""
