# Copyright 2026 The hf-memory authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Extractable memorization: how much of a training-data continuation a model reproduces from its prefix."""

import datasets
import evaluate

from hf_memory.extraction.scores import as_token_row, check_token_columns, extraction_scores


_CITATION = """\
@inproceedings{carlini2023quantifying,
  title={Quantifying Memorization Across Neural Language Models},
  author={Carlini, Nicholas and Ippolito, Daphne and Jagielski, Matthew and Lee, Katherine and Tram{\\`e}r, Florian and Zhang, Chiyuan},
  booktitle={The Eleventh International Conference on Learning Representations},
  year={2023},
  note={arXiv:2202.07646 (2022)},
  url={https://arxiv.org/abs/2202.07646}
}
@inproceedings{biderman2023emergent,
  title={Emergent and Predictable Memorization in Large Language Models},
  author={Biderman, Stella and Prashanth, USVSN Sai and Sutawika, Lintang and Schoelkopf, Hailey and Anthony, Quentin and Purohit, Shivanshu and Raff, Edward},
  booktitle={Advances in Neural Information Processing Systems},
  volume={36},
  year={2023},
  url={https://arxiv.org/abs/2304.11158}
}
@inproceedings{hans2024goldfish,
  title={Be like a Goldfish, Don't Memorize! Mitigating Memorization in Generative {LLM}s},
  author={Hans, Abhimanyu and Wen, Yuxin and Jain, Neel and Kirchenbauer, John and Kazemi, Hamid and Singhania, Prajwal and Singh, Siddharth and Somepalli, Gowthami and Geiping, Jonas and Bhatele, Abhinav and Goldstein, Tom},
  booktitle={Advances in Neural Information Processing Systems},
  volume={37},
  year={2024},
  url={https://arxiv.org/abs/2406.10209}
}
"""

_DESCRIPTION = """\
Extractable memorization compares what a language model generates from a training-data prefix (the prediction)
with the tokens that really followed that prefix in the training data (the reference), both as token ids.
Four per-sample scores are averaged over the samples:

- exact_match: 1 when the first len(reference) predicted tokens equal the reference, else 0; the sample is then
  "k-extractable" in the sense of Carlini et al. (2022).
- memorization_score: the fraction of reference positions whose token the prediction reproduces at the same
  position (Biderman et al. 2023, as used for Pythia).
- longest_common_prefix: the number of leading tokens the prediction gets right before its first mistake.
- rouge_l: ROUGE-L F-measure on token ids, the F1 of the longest common subsequence of the two id sequences; it
  credits memorized spans that are shifted or interrupted. It is not the number Hans et al. (2024) report: they
  run `evaluate`'s `rouge` on the decoded text, which compares lower-cased words (hf_memory's
  `measure_extraction(..., tokenizer=...)` reports that one as `rouge_l_text`).

A prediction longer than its reference is scored on its first len(reference) tokens for exact_match (Carlini et
al.: the reference is extracted if greedy decoding produces it), memorization_score and longest_common_prefix (the
extra tokens are ignored there), while rouge_l uses the whole prediction, so extra tokens lower its precision.
Positions a shorter prediction does not reach count as mistakes. With strict_exact_match=True, exact_match is
instead equality of the whole prediction with the reference, as in the goldfish paper's evaluation: a longer
prediction is then not a match.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): generated token ids, one sequence per sample (lists, tuples, numpy
        arrays or torch tensors of integers). May be empty or of any length.
    references (`list` of `list` of `int`): the true continuation token ids, one non-empty sequence per sample.
    return_per_sample (`bool`, defaults to `False`): also return the per-sample scores.
    strict_exact_match (`bool`, defaults to `False`): exact_match requires the whole prediction to equal the
        reference (Hans et al. 2024); by default its first len(reference) tokens must (Carlini et al. 2022).
Returns:
    exact_match (`float`): fraction of samples reproduced exactly, in [0, 1].
    memorization_score (`float`): mean fraction of reference positions matched, in [0, 1].
    longest_common_prefix (`float`): mean number of leading matching tokens, in [0, max len(reference)].
    rouge_l (`float`): mean ROUGE-L F-measure over token ids, in [0, 1].
    With `return_per_sample=True` also:
    exact_match_per_sample (`list` of `bool`), memorization_score_per_sample (`list` of `float`),
    longest_common_prefix_per_sample (`list` of `int`), rouge_l_per_sample (`list` of `float`).
Raises:
    ValueError: naming the argument, when `predictions` and `references` differ in length, are empty, when a
        reference is empty, or when a sample is not a 1-D sequence of token ids, integers from 0 to 2**63 - 1
        (floats, strings, bools and negative ids such as the label mask -100 are refused).
Examples:
    One sample memorized verbatim, one reproduced only for its first half:

    >>> import evaluate
    >>> import hf_memory
    >>> metric = evaluate.load(hf_memory.EXTRACTABLE_MEMORIZATION)
    >>> metric.compute(predictions=[[1, 2, 3, 4], [5, 6, 7, 8]], references=[[1, 2, 3, 4], [5, 6, 0, 0]])
    {'exact_match': 0.5, 'memorization_score': 0.75, 'longest_common_prefix': 3.0, 'rouge_l': 0.75}

    Per-sample scores; the second prediction is shifted by one token, which only ROUGE-L credits:

    >>> import evaluate
    >>> import hf_memory
    >>> metric = evaluate.load(hf_memory.EXTRACTABLE_MEMORIZATION)
    >>> results = metric.compute(
    ...     predictions=[[1, 2, 3, 4], [9, 1, 2, 3]], references=[[1, 2, 3, 4], [1, 2, 3, 4]], return_per_sample=True
    ... )
    >>> for name, value in results.items():
    ...     print(name, value)
    exact_match 0.5
    memorization_score 0.5
    longest_common_prefix 2.0
    rouge_l 0.875
    exact_match_per_sample [True, False]
    memorization_score_per_sample [1.0, 0.0]
    longest_common_prefix_per_sample [4, 0]
    rouge_l_per_sample [1.0, 0.75]

    A prediction shorter than its reference (the missing positions are mistakes) and one longer than it (the
    extra tokens only lower ROUGE-L precision):

    >>> import evaluate
    >>> import hf_memory
    >>> metric = evaluate.load(hf_memory.EXTRACTABLE_MEMORIZATION)
    >>> results = metric.compute(
    ...     predictions=[[1, 2], [1, 2, 3, 4, 5, 6]], references=[[1, 2, 3, 4], [1, 2, 3, 4]], return_per_sample=True
    ... )
    >>> results["exact_match_per_sample"], results["memorization_score_per_sample"]
    ([False, True], [0.5, 1.0])
    >>> results["longest_common_prefix_per_sample"], results["rouge_l_per_sample"]
    ([2, 4], [0.6666666666666666, 0.8])

    The goldfish paper's strict exact match: the longer prediction is no longer a match.

    >>> import evaluate
    >>> import hf_memory
    >>> metric = evaluate.load(hf_memory.EXTRACTABLE_MEMORIZATION)
    >>> metric.compute(predictions=[[1, 2, 3, 4, 5], [1, 2, 3, 4]], references=[[1, 2, 3, 4], [1, 2, 3, 4]],
    ...     strict_exact_match=True)["exact_match"]
    0.5
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExtractableMemorization(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
            reference_urls=[
                "https://arxiv.org/abs/2202.07646",
                "https://arxiv.org/abs/2304.11158",
                "https://arxiv.org/abs/2406.10209",
            ],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Check the batch before Arrow casting, which would silently turn 1.0 or True into a token id.

        Args:
            predictions: Generated token ids, one sequence per sample, as for `compute`.
            references: The true continuation token ids, one non-empty sequence per sample.
            **kwargs: Passed on to `evaluate.Metric.add_batch`.

        Raises:
            ValueError: On the input errors `compute` refuses (see `extraction_scores`).
        """
        if predictions is not None or references is not None:
            check_token_columns(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Check one sample before Arrow casting, as `add_batch` does.

        Args:
            prediction: The generated token ids of one sample.
            reference: The true continuation token ids of that sample (at least one token).
            **kwargs: Passed on to `evaluate.Metric.add`.

        Raises:
            ValueError: If a sample is not a 1-D sequence of integer token ids, or `reference` is empty.
        """
        if prediction is not None or reference is not None:
            as_token_row("prediction", prediction)
            if as_token_row("reference", reference).size == 0:
                raise ValueError("`reference` is empty: it needs at least one token")
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references, return_per_sample=False, strict_exact_match=False):
        return extraction_scores(
            predictions, references, return_per_sample=return_per_sample, strict_exact_match=strict_exact_match
        )
