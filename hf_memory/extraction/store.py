"""The rows an extraction run writes to its results folder (the folder itself is `hf_memory._utils.store`'s: a
manifest, Parquet shards per process, a summary; see `measure_extraction`). They load with
`datasets.load_dataset("parquet", data_files=os.path.join(folder, "rank*-*.parquet"))` (or `data_dir=folder`, which
skips hidden files such as the manifest and summary, when the folder holds nothing else)."""

from __future__ import annotations


SCORE_COLUMNS = ("exact_match", "memorization_score", "longest_common_prefix", "rouge_l", "rouge_l_text")


def shard_schema():
    """The Arrow schema of every shard."""
    import pyarrow as pa

    return pa.schema(
        [
            ("sequence", pa.int64()),
            ("start", pa.int64()),
            ("exact_match", pa.bool_()),
            ("longest_common_prefix", pa.int64()),
            ("memorization_score", pa.float64()),
            ("rouge_l", pa.float64()),
            ("rouge_l_text", pa.float64()),
            ("log_p", pa.float64()),
            ("prediction", pa.list_(pa.int64())),
            ("reference", pa.list_(pa.int64())),
        ]
    )
