"""The shared internals: argument checks, sequences, model context managers, extras, the lazy map."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import torch

from hf_memory._utils import (
    as_sequences,
    check_choice,
    check_integer,
    check_number,
    eval_mode,
    lazy_getattr,
    leading_windows,
    require_extra,
    restored,
)
from tests.testing_utils import tiny_causal_lm


@pytest.mark.parametrize("value", [3, np.int64(3), np.int8(3), np.uint16(3)])
def test_check_integer_accepts_integers_and_returns_python_ints(value):
    out = check_integer(value, "n", minimum=1)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("value", [True, np.bool_(True), 3.0, "3", None, [3], np.array([3]), 0, -5])
def test_check_integer_refuses_the_rest_naming_the_argument(value):
    with pytest.raises(ValueError, match=r"`n` must be an integer >= 1 \(a count\), got "):
        check_integer(value, "n", minimum=1, hint="a count")


def test_check_integer_none_and_bounds():
    assert check_integer(None, "stride", minimum=1, allow_none=True) is None
    assert check_integer(-(2**70), "layer") == -(2**70)  # no bound: any integer, however large
    with pytest.raises(ValueError, match="`stride` must be an integer >= 1 or None"):
        check_integer(0, "stride", minimum=1, allow_none=True)


@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.5), np.float64(1.0), np.int64(1)])
def test_check_number_accepts_finite_reals(value):
    out = check_number(value, "scale", minimum=0, maximum=1)
    assert type(out) is float and 0 <= out <= 1


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "0.5", None, 1.5, -0.1, complex(1, 0)])
def test_check_number_refuses_the_rest(value):
    with pytest.raises(ValueError, match=r"`scale` must be a finite number in \[0, 1\]"):
        check_number(value, "scale", minimum=0, maximum=1)


def test_check_number_exclusive_minimum_and_messages():
    with pytest.raises(ValueError, match="`lr` must be a finite number > 0, got 0"):
        check_number(0, "lr", minimum=0, exclusive_minimum=True)
    with pytest.raises(ValueError, match=r"`x` must be a finite number in \(0, 1\]"):
        check_number(0.0, "x", minimum=0, maximum=1, exclusive_minimum=True)
    assert check_number(None, "clip", allow_none=True) is None


def test_check_choice():
    assert check_choice("auto", "method", ("auto", "prefix")) == "auto"
    for bad in ("Auto", None, ["auto"], {"auto": 1}):
        with pytest.raises(ValueError, match="`method` must be one of 'auto', 'prefix', got"):
            check_choice(bad, "method", ("auto", "prefix"))


def test_iter_sequences_reads_every_input_lazily():
    from datasets import Dataset

    from hf_memory._utils import iter_sequences

    rows = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    masks = [[1, 1, 0], [1, 1], [0, 1, 1, 1]]
    expected = [[1, 2], [4, 5], [7, 8, 9]]
    dataset = Dataset.from_dict({"input_ids": rows, "attention_mask": masks, "text": ["a", "b", "c"]})
    torch_dataset = Dataset.from_dict({"input_ids": rows, "attention_mask": masks}).with_format("torch")
    sources = {
        "dataset": dataset,
        "dataset, torch format": torch_dataset,
        "iterable dataset": dataset.to_iterable_dataset(),
        "generator of row dicts": ({"input_ids": r, "attention_mask": m} for r, m in zip(rows, masks)),
        "mapping": {"input_ids": rows, "attention_mask": masks},
    }
    for what, source in sources.items():
        assert [t.tolist() for t in iter_sequences(source, batch_size=2)] == expected, what
    mixed = iter([[1, 2], torch.tensor([3]), np.array([4, 5], dtype=np.uint8), {"input_ids": [6]}])
    assert [t.tolist() for t in iter_sequences(mixed)] == [[1, 2], [3], [4, 5], [6]]

    consumed = []

    def endless():
        i = 0
        while True:
            consumed.append(i)
            yield [i, i + 1]
            i += 1

    stream = iter_sequences(endless())
    assert [next(stream).tolist() for _ in range(3)] == [[0, 1], [1, 2], [2, 3]] and len(consumed) == 3
    assert list(iter_sequences(iter([]))) == []


@pytest.mark.parametrize(
    "source,message",
    [
        (5, "`sequences` must be token id sequences"),
        ("1 2 3", "`sequences` must be token id sequences"),
        (iter([[1, 2], [0.5]]), r"`sequences\[1\]` must hold integer token ids"),
        (iter([{"ids": [1]}]), r"`sequences\[0\]` is a mapping without `input_ids`"),
        (iter([{"input_ids": [1, 2], "attention_mask": [1]}]), r"`sequences\[0\]`: `attention_mask` has shape"),
        (torch.zeros(2, 2, 2, dtype=torch.long), "1-D or 2-D tensor"),
    ],
)
def test_iter_sequences_names_the_bad_item(source, message):
    from hf_memory._utils import iter_sequences

    with pytest.raises(ValueError, match=message):
        list(iter_sequences(source))


def test_iter_sequences_refuses_a_dataset_without_input_ids():
    from datasets import Dataset

    from hf_memory._utils import iter_sequences

    dataset = Dataset.from_dict({"text": ["a"]})
    for source in (dataset, dataset.to_iterable_dataset()):
        with pytest.raises(ValueError, match="without an `input_ids` column"):
            list(iter_sequences(source))


def test_sequences_and_windows():
    rows = as_sequences(np.array([[1, 2, 3], [4, 5, 6]]))
    assert [r.tolist() for r in rows] == [[1, 2, 3], [4, 5, 6]] and rows[0].dtype == torch.long
    with pytest.raises(ValueError, match="`sequences` is empty"):
        as_sequences([])
    with pytest.raises(ValueError, match=r"`sequences\[1\]` must hold integer token ids"):
        as_sequences([[1, 2], [0.5, 1.0]])
    windows = leading_windows([list(range(10)), list(range(5, 20))], np.int64(2), 3)
    assert windows.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    with pytest.raises(ValueError, match=r"`sequences\[0\]` has 10 tokens, fewer than"):
        leading_windows([list(range(10))], 8, 8)


def test_restored_is_bit_exact_on_every_exit_path():
    model = tiny_causal_lm("llama")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    grads = {name: torch.full_like(p, 7.0) for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = grads[name]
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error), restored(model, grads=True) as (params, saved):
            model.eval()
            with torch.no_grad():
                for p in params.values():
                    p.add_(1.0)
                    p.requires_grad_(True)
                    p.grad = None
            raise error
        assert model.training and not frozen.requires_grad
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert all(p.grad is grads[name] for name, p in model.named_parameters())


def test_restored_subset_leaves_other_parameters_alone_but_restores_every_requires_grad():
    model = tiny_causal_lm("llama")
    names = [n for n, _ in model.named_parameters() if "mlp" in n]
    other = next(p for n, p in model.named_parameters() if "mlp" not in n)
    with restored(model, names=names) as (params, saved):
        assert sorted(params) == sorted(names) and set(saved) == set(names)
        for p in model.parameters():
            p.requires_grad_(False)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(KeyError):
        with restored(model, names=["not.a.parameter"]):
            pass
    assert other.requires_grad


def test_eval_mode_gives_the_flag_back():
    model = tiny_causal_lm("llama").train()
    with pytest.raises(KeyboardInterrupt), eval_mode(model):
        assert not model.training
        raise KeyboardInterrupt
    assert model.training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training


def test_eval_mode_overlapping_calls_from_two_threads_give_the_flags_back():
    # Thread A enters, thread B enters, A leaves, B leaves: B must not restore the eval flags A had set.
    model = tiny_causal_lm("llama").train()
    model.model.layers[0].eval()  # a submodule with its own flag
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        with eval_mode(model):
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def second():
        a_in.wait(5)
        with eval_mode(model):
            b_in.set()
            a_out.wait(5)
            assert not model.training

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert a_out.is_set() and b_in.is_set()
    assert model.training and not model.model.layers[0].training
    assert all(m.training for n, m in model.named_modules() if not n.startswith("model.layers.0"))


def test_require_extra_names_every_missing_module(monkeypatch):
    require_extra("plots", "A figure")  # installed: nothing happens
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(
        ImportError, match=r'A figure needs matplotlib, which is not installed: .*"hf-memory\[plots\]"'
    ):
        require_extra("plots", "A figure")
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "scipy", None)
    with pytest.raises(ImportError, match="needs sklearn and scipy, which are not installed"):
        require_extra("analysis", "X")


def test_lazy_getattr_loads_once_and_from_several_threads():
    namespace = {}
    getattr_, dir_ = lazy_getattr("hf_memory", namespace, {"goldfish": ["goldfish_mask"]})
    results = []
    threads = [threading.Thread(target=lambda: results.append(getattr_("goldfish_mask"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    from hf_memory.goldfish import goldfish_mask

    assert results == [goldfish_mask] * 4 and namespace["goldfish_mask"] is goldfish_mask
    assert "goldfish_mask" in dir_()
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        getattr_("nothing")


def test_check_number_exclusive_maximum_names_the_open_interval():
    assert check_number(np.float32(0.5), "p", minimum=0, maximum=1, exclusive_maximum=True) == 0.5
    with pytest.raises(ValueError, match=r"`p` must be a finite number in \(0, 1\), got 1"):
        check_number(1, "p", minimum=0, maximum=1, exclusive_minimum=True, exclusive_maximum=True)
    with pytest.raises(ValueError, match=r"< 2"):
        check_number(2.0, "q", maximum=2, exclusive_maximum=True)


def test_a_reader_and_a_writer_of_another_thread_never_overlap_on_one_model():
    """An audit's CE diagnostic (a writer) moved the weights under an extraction pass of another thread (a reader)."""
    from hf_memory._utils import exclusive

    model = tiny_causal_lm("llama").train()
    inside, release, errors = threading.Event(), threading.Event(), []

    def hold(context):
        with context:
            inside.set()
            release.wait(5)

    for first, second in (
        (lambda: exclusive(model, "writer"), lambda: eval_mode(model, "reader")),
        (lambda: eval_mode(model, "reader"), lambda: exclusive(model, "writer")),
    ):
        inside.clear(), release.clear()
        thread = threading.Thread(target=hold, args=(first(),))
        thread.start()
        inside.wait(5)
        with pytest.raises(RuntimeError, match="another thread|is changing its weights"):
            with second():
                errors.append("overlapped")
        release.set()
        thread.join(5)
    assert not errors and model.training
    with exclusive(model, "writer"), eval_mode(model, "reader"):  # one thread may nest them
        assert not model.training
    with eval_mode(model, "reader"), exclusive(model, "writer"):
        pass
    assert model.training


def test_check_bool_takes_only_true_and_false():
    import numpy as np

    from hf_memory._utils import check_bool

    assert check_bool(True, "x") is True and check_bool(np.bool_(False), "x") is False
    assert check_bool(torch.tensor(True), "x") is True
    assert check_bool(None, "x", allow_none=True) is None
    for bad in (1, 0, "yes", [True], None, np.int64(1)):
        with pytest.raises(ValueError, match="`x` must be True or False"):
            check_bool(bad, "x")


def test_check_keywords_names_every_unknown_one_as_a_type_error():
    from hf_memory._utils import check_keywords

    check_keywords({"a": 1}, ("a", "b"), "`f`")
    with pytest.raises(TypeError, match=r"`f` got unexpected keyword arguments \['c', 'd'\]; it takes \['a', 'b'\]"):
        check_keywords({"a": 1, "d": 2, "c": 3}, ("b", "a"), "`f`")


@pytest.mark.parametrize("wrap", ["peft", "deepcopy", "shared_module"])
def test_the_guards_hold_the_weights_not_the_python_object(wrap):
    """B9: FastMem on a base model did not block measure_extraction on the PeftModel wrapping the same weights."""
    import copy

    from hf_memory._utils import changing_model, exclusive

    base = tiny_causal_lm("llama")
    if wrap == "peft":
        from peft import LoraConfig, get_peft_model

        other = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    elif wrap == "deepcopy":
        other = copy.deepcopy(base)  # its own weights: not blocked
    else:
        other = torch.nn.Sequential(base.model.embed_tokens)  # one shared tensor is enough
    inside, release = threading.Event(), threading.Event()

    def hold():
        with exclusive(base, "memorize"):
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    inside.wait(5)
    try:
        if wrap == "deepcopy":
            assert changing_model(other) is None
            with eval_mode(other, "measure_extraction"):
                pass
        else:
            assert changing_model(other) == "memorize"
            with pytest.raises(RuntimeError, match="memorize is changing its weights"):
                with eval_mode(other, "measure_extraction"):
                    pass
            with pytest.raises(RuntimeError, match="already doing so"):
                with exclusive(other, "latent scan"):
                    pass
    finally:
        release.set()
        thread.join(5)
    assert changing_model(other) is None and changing_model(base) is None
    with eval_mode(other, "measure_extraction"), exclusive(base, "memorize"):  # one thread nests them
        pass


# ---------------------------------------------------------------- regressions of the first hostile trial (issue 11)


def test_two_in_place_calls_on_one_model_never_overlap():
    from hf_memory import FastMem, FastMemConfig, ce_diagnostic, latent_memorization_scan
    from tests.testing_utils import model_state as state
    from tests.testing_utils import same_state as same

    model = tiny_causal_lm("llama")
    before = state(model)
    inside, release, errors = threading.Event(), threading.Event(), []

    def hold():
        with FastMem(model, FastMemConfig(steps=1, lr=1e-2)).memorize(torch.arange(4, 20)):
            inside.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    inside.wait(30)
    for call in (
        lambda: ce_diagnostic(model, [list(range(4, 20))], show_progress=False),
        lambda: latent_memorization_scan(model, [list(range(4, 20))], 4, 4, n_perturbations=1, show_progress=False),
        lambda: FastMem(model, FastMemConfig(steps=1)).memorize(torch.arange(4, 20)).__enter__(),
    ):
        try:
            call()
        except RuntimeError as err:
            errors.append(str(err))
    release.set()
    thread.join(30)
    assert len(errors) == 3 and all("FastMem.memorize is already doing so" in e for e in errors)
    assert same(model, before)  # was: the last FFN kept its memorized values
