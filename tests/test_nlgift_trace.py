"""examples/nlgift_trace.py: the uniform trace target, the cached-tail trainer, and the smoke run of the script."""

from __future__ import annotations

import json

import pytest
import torch

from hf_memory.graph_reasoning import generate_graph_problems, graph_reasoning_scores

from .testing_utils import load_example, run_example, tiny_causal_lm


nlgift = load_example("nlgift_trace")


def _graph(edges, source, target, nodes=None):
    nodes = nodes or sorted({n for edge in edges for n in edge} | {source, target}, key=str)
    return {"nodes": nodes, "edges": [list(e) for e in edges], "source": source, "target": target}


def test_trace_stops_at_the_target_and_lists_neighbours_in_prompt_order():
    graph = _graph([("0", "6"), ("0", "7"), ("1", "3"), ("1", "4"), ("1", "5"), ("1", "7"), ("3", "5")], "5", "7")
    assert nlgift.trace_target(graph) == (
        "Start at 5. 5 touches 1, 3. 1 touches 3, 4, 5, 7. 7 is reached. The answer is yes."
    )


def test_trace_of_an_unreachable_target_visits_the_whole_component():
    graph = _graph([("a", "b"), ("b", "c"), ("d", "e")], "a", "e")
    assert nlgift.trace_target(graph) == (
        "Start at a. a touches b. b touches a, c. c touches b. "
        "Nothing is left to visit; e is not reached. The answer is no."
    )
    lonely = _graph([("b", "c")], "a", "c", nodes=["a", "b", "c"])
    assert nlgift.trace_target(lonely).startswith("Start at a. a touches nothing. Nothing is left")


@pytest.mark.parametrize("cell", list(nlgift.TEST_CELLS))
def test_every_trace_is_scored_right_by_the_metric(cell):
    problems, graphs = nlgift.problems_for(cell, 40, seed=5)
    traces = [nlgift.trace_target(g) for g in graphs]
    scores = graph_reasoning_scores(traces, problems["graph"], return_per_sample=True)
    assert all(scores["correct"]), [t for t, ok in zip(traces, scores["correct"]) if not ok][:2]
    # the trace names nodes as the encoding does (letters, first names), never the raw numbers of another encoding
    for trace, graph in zip(traces, graphs):
        assert trace.split()[2].rstrip(".") == graph["source"]
        read = nlgift.trace_steps(trace, graph)
        assert read["steps"] >= 1 and read["right"] == read["steps"] and read["first_right"]


def test_trace_steps_count_wrong_lookups_and_replies_without_a_trace():
    graph = _graph([("2", "5"), ("4", "5"), ("0", "2"), ("0", "4"), ("2", "4")], "5", "3", nodes=list("012345"))
    wrong = "Start at 5. 5 touches 2, 4. 2 touches 0, 4. 4 touches 0, 2, 0. 9 touches 1. The answer is no."
    assert nlgift.trace_steps(wrong, graph) == {"steps": 4, "right": 1, "first_right": True}
    assert nlgift.trace_steps("Start at 5. 5 touches 4, 2. The answer is no.", graph)["first_right"] is True
    assert nlgift.trace_steps("Start at 5. 5 touches 2, 2, 4. The answer is no.", graph)["first_right"] is False
    assert nlgift.trace_steps("Start at 5. 5 touches 2. The answer is no.", graph)["first_right"] is False
    assert nlgift.trace_steps("The answer is yes.", graph) == {"steps": 0, "right": 0, "first_right": None}


class _Tokenizer:
    """Characters as ids: enough for `tail_examples` and the trainer, no download."""

    eos_token = "\n"
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [min(ord(c), 255) for c in text]}


def _peft(model):
    from peft import LoraConfig, get_peft_model

    layers = model.config.num_hidden_layers
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        layers_to_transform=list(range(layers - nlgift.RECIPE["lora_layers"], layers)),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


@pytest.fixture
def tail_setup(monkeypatch):
    monkeypatch.setitem(nlgift.RECIPE, "lora_layers", 2)
    model = tiny_causal_lm(vocab_size=256, hidden=16, layers=4)
    problems = generate_graph_problems("connectivity", "semantic", "edge_list", n=6, seed=1)
    graphs = [json.loads(g) for g in problems["graph"]]
    examples = nlgift.tail_examples(_Tokenizer(), problems, graphs)
    examples = [(head[-40:], reply[:30]) for head, reply in examples]  # short rows keep the test fast
    return model, examples


def test_cached_tail_loss_equals_the_full_models_loss_on_the_reply(tail_setup):
    model, examples = tail_setup
    cached = nlgift.cache_tail_inputs(model, examples, split=2, batch_size=4)
    tuned = _peft(model)
    for p in tuned.parameters():  # a non-zero adapter, so that the tail's LoRA path is exercised too
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    rows = [0, 3, 5]
    with torch.no_grad(), nlgift.tail_only(tuned) as decoder:
        assert len(decoder.layers) == 2
        cached_loss = nlgift.batch_loss(tuned, decoder, examples, cached, rows)
    width = max(len(examples[i][0]) + len(examples[i][1]) for i in rows)
    ids = torch.zeros((3, width), dtype=torch.long)
    mask = torch.zeros((3, width), dtype=torch.long)
    labels = torch.full((3, width), -100)
    for r, i in enumerate(rows):
        head, reply = examples[i]
        ids[r, : len(head) + len(reply)] = torch.tensor(head + reply)
        mask[r, : len(head) + len(reply)] = 1
        labels[r, len(head) : len(head) + len(reply)] = torch.tensor(reply)
    with torch.no_grad():
        full_loss = tuned(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert len(tuned.base_model.model.model.layers) == 4
    torch.testing.assert_close(cached_loss, full_loss, rtol=1e-5, atol=1e-5)


def test_training_lowers_the_loss_and_an_interrupt_puts_the_layers_back(tail_setup):
    model, examples = tail_setup
    cached = nlgift.cache_tail_inputs(model, examples, split=2)
    tuned = _peft(model)
    layers = tuned.base_model.model.model.layers
    losses = nlgift.train_cached_tail(tuned, examples, cached, epochs=4, seed=0)
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert tuned.base_model.model.model.layers is layers and not tuned.training

    def stop(epoch, loss):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nlgift.train_cached_tail(tuned, examples, cached, epochs=2, seed=0, on_epoch=stop)
    assert tuned.base_model.model.model.layers is layers and not tuned.training


def test_a_second_tail_only_on_one_decoder_is_refused_in_this_thread_and_another(tail_setup):
    import threading

    model, _ = tail_setup
    tuned = _peft(model)
    layers = tuned.base_model.model.model.layers
    errors = []

    def other_thread():
        try:
            with nlgift.tail_only(tuned):
                pass
        except RuntimeError as error:
            errors.append(str(error))

    with nlgift.tail_only(tuned) as decoder:
        with pytest.raises(RuntimeError, match="already runs only its last layers"):
            with nlgift.tail_only(tuned):
                pass
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert len(decoder.layers) == 2  # the refused calls left the cut as it was
    assert len(errors) == 1 and "another tail_only block" in errors[0]
    assert tuned.base_model.model.model.layers is layers
    with nlgift.tail_only(tuned) as decoder:  # free again once the block ended
        assert len(decoder.layers) == 2


@pytest.mark.slow
def test_small_run_scores_every_cell_and_resumes(tmp_path):
    output = tmp_path / "nlgift.json"
    done = run_example("nlgift_trace", "--small", "--output", str(output), timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(output.read_text())
    cells = results["settings"]["cells"]
    assert set(results["base"]) == set(cells) == set(results["seeds"]["0"]["cells"])
    n = results["settings"]["test_items"]
    for cell in cells:
        assert len(results["base"][cell]["correct"]) == len(results["rule"][cell]) == n
        # a reply ends at its answer: nothing is generated after "The answer is yes/no."
        for answer in results["seeds"]["0"]["cells"][cell]["answers"]:
            assert answer.count("The answer is") <= 1
    assert len(results["seeds"]["0"]["losses"]) == results["settings"]["epochs"]
    assert "Seed 0: tuned on edge_list" in done.stdout and "tuned vs rule" in done.stdout
    again = run_example("nlgift_trace", "--small", "--output", str(output), timeout=600)
    assert again.returncode == 0 and "seed 0 epoch" not in again.stdout  # the adapter is loaded, not retrained
    assert json.loads(output.read_text())["seeds"] == results["seeds"]


def test_recipe_options_are_checked_and_the_rest_passes_through(monkeypatch):
    monkeypatch.setattr(nlgift, "RECIPE", dict(nlgift.RECIPE))
    monkeypatch.setattr(nlgift, "OVERRIDES", {})
    monkeypatch.setattr(nlgift, "DEVICE", "cpu")
    rest = nlgift.recipe_arguments(["--lora-layers", "30", "--epochs", "4", "--summary", "--output", "x.json"])
    assert rest == ["--summary", "--output", "x.json"]
    assert nlgift.RECIPE["lora_layers"] == 30 and nlgift.OVERRIDES == {"epochs": 4}
    for bad, message in (
        (["--lora-layers", "0"], "--lora-layers"),
        (["--lr", "5"], "--lr"),
        (["--epochs", "-1"], "--epochs"),
        (["--device", "bogus"], "--device"),
    ):
        with pytest.raises(SystemExit, match=message):
            nlgift.recipe_arguments(bad)


def test_a_results_file_of_another_recipe_is_refused_before_any_work(tmp_path):
    output = tmp_path / "r.json"
    settings = {**nlgift.settings(small=True)}
    output.write_text(json.dumps({"settings": settings, "recipe": {**nlgift.RECIPE, "lora_layers": 30}}))
    with pytest.raises(SystemExit, match="other settings"):
        nlgift.run(small=True, output=str(output))
