"""`evaluate` metrics shipped with hf-memory; load them with `evaluate.load(path)`."""
