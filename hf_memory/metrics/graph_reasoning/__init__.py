"""The graph-reasoning `evaluate` metric; load it with `evaluate.load(hf_memory.GRAPH_REASONING)`."""
