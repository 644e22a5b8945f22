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
"""Graph reasoning: exact scoring of free-text answers to NLGift-style graph problems."""

import datasets
import evaluate

import hf_memory.graph_reasoning


_CITATION = """\
@inproceedings{zhang2024nlgift,
  title={Can {LLM} Graph Reasoning Generalize beyond Pattern Memorization?},
  author={Zhang, Yizhuo and Wang, Heng and Feng, Shangbin and Tan, Zhaoxuan and Han, Xiaochuang and He, Tianxing and Tsvetkov, Yulia},
  booktitle={Findings of the Association for Computational Linguistics: EMNLP 2024},
  year={2024},
  url={https://arxiv.org/abs/2406.15992}
}
"""

_DESCRIPTION = """\
Graph reasoning scores a model's free-text answers to graph problems (connectivity, shortest path, topological
sort, maximum flow) exactly, against the graph itself rather than against one gold string. Each reference is the
problem's `graph` JSON from hf_memory's `generate_graph_problems` (task, directed, nodes, edges, source, target).

Where the answer is read: the text after each "answer is" (up to the next one) is tried from the last to the first,
and the first part that holds an answer of the task's kind is taken, so a closing "this answer is right" does not
hide it ("the answer isn't" and "the answer is not" do not count). When no part holds one, the whole text is read.
An answer in the requested format followed by prose is scored on the answer (a word such as "a" or "I" after a
chain is not read as node A or I; docs/graph_reasoning.md gives every rule):
- connectivity: yes or no (not when echoed from the question, negated, or "no" as in "no shorter path"), compared
  with whether a path exists;
- shortest path: a chain of node names ("0 -> 3 -> 4", "A, C, D"); it counts when it starts at the source, ends at
  the target, uses only edges of the graph and has the optimal total weight, so every optimal path counts;
- topological sort: a list of node names; it counts when it holds every node once and every edge points forward, so
  every valid order counts;
- maximum flow: a number (units allowed, thousands separators only in groups of three: "1,500" but not "5,6"; a sum
  "3 + 4 = 7" is its result), within `flow_tolerance` of the true value, compared exactly in decimal.
An answer in which nothing of the task's kind is found is unparseable: it counts as wrong, and the unparseable
fraction is reported separately, so a model that does not follow the format is told apart from one that reasons
wrongly.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the model's answers, free text, one per problem.
    references (`list` of `str`): the problems' `graph` JSON strings (the `graph` column of generate_graph_problems).
    return_per_sample (`bool`, defaults to `False`): also return `correct` and `parsed`, one bool per problem.
    flow_tolerance (`float`, defaults to `0.01`): how far a maximum-flow answer may be from the true value.
Returns:
    accuracy (`float`): fraction of answers that are right, unparseable ones counted wrong, in [0, 1].
    unparseable (`float`): fraction of answers in which no answer of the task's kind was found, in [0, 1].
    per_task (`dict`): for each task present, its `accuracy`, `unparseable` and `count`.
    With `return_per_sample=True` also `correct` and `parsed` (`list` of `bool`).
Raises:
    ValueError: naming the argument, when the lists differ in length or are empty, an answer is not a string, or
        a reference is not a valid problem graph (among others: an edge listed twice, since parallel edges are
        refused rather than merged; node names that are blank or differ only in case; an undirected topological
        sort).
Examples:
    Two connectivity answers, one right and one with no yes or no in it:

    >>> import evaluate
    >>> import hf_memory.graph_reasoning
    >>> metric = evaluate.load(hf_memory.graph_reasoning.GRAPH_REASONING)
    >>> graph = '{"task": "connectivity", "directed": false, "nodes": ["0", "1", "2"], "edges": [["0", "1"]], "source": "0", "target": "1"}'
    >>> metric.compute(predictions=["There is an edge. The answer is yes.", "Let me think."], references=[graph, graph])
    {'accuracy': 0.5, 'unparseable': 0.5, 'per_task': {'connectivity': {'accuracy': 0.5, 'unparseable': 0.5, 'count': 2}}}

    Either of two optimal paths counts; a path over a missing edge does not:

    >>> import evaluate
    >>> import hf_memory.graph_reasoning
    >>> metric = evaluate.load(hf_memory.graph_reasoning.GRAPH_REASONING)
    >>> graph = '{"task": "shortest_path", "directed": false, "nodes": ["A", "B", "C", "D"], "edges": [["A", "B", 1], ["B", "D", 1], ["A", "C", 1], ["C", "D", 1]], "source": "A", "target": "D"}'
    >>> answers = ["The answer is A -> B -> D.", "The answer is A -> C -> D.", "The answer is A -> D."]
    >>> metric.compute(predictions=answers, references=[graph] * 3, return_per_sample=True)["correct"]
    [True, True, False]
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GraphReasoning(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://arxiv.org/abs/2406.15992"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Check the batch before Arrow casting, which would silently turn a number into a string answer.

        Args:
            predictions: The model's answers, one string per problem.
            references: The problems' `graph` JSON strings.
            **kwargs: Passed on to `evaluate.Metric.add_batch`.

        Raises:
            ValueError: On the input errors `compute` refuses (see `graph_reasoning_scores`).
        """
        if predictions is not None or references is not None:
            hf_memory.graph_reasoning.graph_reasoning_scores(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Check one answer before Arrow casting, as `add_batch` does.

        Args:
            prediction: The model's answer to one problem.
            reference: That problem's `graph` JSON string.
            **kwargs: Passed on to `evaluate.Metric.add`.

        Raises:
            ValueError: If `prediction` is not a string or `reference` is not a valid problem graph.
        """
        if prediction is not None or reference is not None:
            hf_memory.graph_reasoning.score_graph_answer(prediction, reference)
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references, return_per_sample=False, flow_tolerance=0.01):
        return hf_memory.graph_reasoning.graph_reasoning_scores(
            predictions, references, return_per_sample=return_per_sample, flow_tolerance=flow_tolerance
        )
