"""FastMem latency: ours against the official scheme re-implemented, plain generate, and the lm_head floor.

One prompt of about 400 tokens (a chat turn holding standard-library docstrings and a question), 10 memorization
steps on the whole prompt, 32 answer tokens, greedy; with and without contrastive decoding (CD, alpha 0.5).
`--layers n` trains the last n layers' FFNs in both (a) and (b) (the official `--train_layer n`); CD, which ours
runs for the last layer alone, is then left out.

  (a) ours: `fastmem_generate` - one trunk forward, then FFN -> norm -> lm_head per step, generation from the
      memorization's KV cache; CD on one trunk with two FFN heads.
  (b) the official scheme: a full forward at step 0, then the last n decoder layers re-run from their cached inputs
      every step (autograd loss over the full logits), then `generate` prefills the prompt again; CD decodes with two
      full models (the memorized one and a copy of the original), each with its own KV cache.
  (c) plain `generate` of the same 32 tokens, no memorization.
  floor: the 10 steps' lm_head matmuls alone (forward logits and the gradient with respect to the hidden states).

Arms alternate over --rounds rounds; medians are printed with the ratios. Goals: (a) <= 0.75x (b) end to end; CD
decode per token <= 0.6x (b)'s; memorize phase <= 1.5x the floor.

    python benchmarks/fastmem_latency.py
    python benchmarks/fastmem_latency.py --layers 2 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf_memory import FastMem, FastMemConfig, last_ffn_modules, load_model, stdlib_docstrings  # noqa: E402


def build_prompt(tokenizer, tokens: int) -> torch.Tensor:
    text = ""
    for doc in stdlib_docstrings(min_chars=300):
        text += doc + "\n\n"
        if len(tokenizer(text)["input_ids"]) > tokens - 40:
            break
    ids = tokenizer(text)["input_ids"][: tokens - 40]
    context = tokenizer.decode(ids)
    messages = [{"role": "user", "content": f"{context}\n\nQuestion: what is the first function described above?"}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]


def official_memorize(model, ids, config: FastMemConfig, layers: int = 1):
    """The official loop: step 0 a full forward capturing the inputs of the first of the last `layers` layers; later
    steps re-run those layers, then the final norm once (the official code also applies it between them, which
    changes what is trained when layers > 1; not copied here)."""
    num_layers = len(model.model.layers)
    trained = range(num_layers - layers, num_layers)
    modules = [model.get_submodule(name) for i in trained for name in last_ffn_modules(model, layer=i)]
    params = [p for module in modules for p in module.parameters()]
    first = model.model.layers[num_layers - layers]
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    captured = {}
    handle = first.register_forward_pre_hook(lambda m, a, k: captured.update(args=a, kwargs=k), with_kwargs=True)
    targets = ids[:, 1:]
    reference = None
    for step in range(config.steps):
        if step == 0:
            logits = model(input_ids=ids, use_cache=False).logits
            handle.remove()
        else:
            hidden = captured["args"][0] if captured["args"] else captured["kwargs"]["hidden_states"]
            kwargs = {k: v for k, v in captured["kwargs"].items() if k != "hidden_states"}
            for i in trained:
                out = model.model.layers[i](hidden, *captured["args"][1:], **kwargs)
                hidden = out[0] if isinstance(out, tuple) else out
            logits = model.lm_head(model.model.norm(hidden))
        log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = F.nll_loss(log_probs.flatten(0, 1), targets.flatten())
        if reference is None:
            reference = log_probs.detach()
        kl = F.kl_div(log_probs, reference, log_target=True, reduction="batchmean") / log_probs.shape[1]
        loss = nll + config.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
    for p in model.parameters():
        p.requires_grad_(flags[p])
        p.grad = None


def two_model_cd(memorized, original, ids, new_tokens, alpha):
    """Greedy FastMem+CD with two full models, each with its own KV cache (the official decoding)."""
    with torch.inference_mode():
        out_m, out_o = memorized(input_ids=ids, use_cache=True), original(input_ids=ids, use_cache=True)
        tokens, decode_start = [], time.perf_counter()
        for i in range(new_tokens):
            logits = (1 + alpha) * out_m.logits[:, -1] - alpha * out_o.logits[:, -1]
            token = logits.argmax(-1, keepdim=True)
            tokens.append(token)
            if i == 0:
                decode_start = time.perf_counter()
            if i == new_tokens - 1:
                break
            out_m = memorized(input_ids=token, cache=out_m.cache, use_cache=True)
            out_o = original(input_ids=token, cache=out_o.cache, use_cache=True)
        return torch.cat(tokens, 1), (time.perf_counter() - decode_start) / (new_tokens - 1)


class DecodeTimer:
    """A logits processor that timestamps every decoding step of `generate` (processors run once per new token)."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores

    def per_token(self) -> float:
        return (self.times[-1] - self.times[0]) / (len(self.times) - 1)


def lm_head_floor(model, tokens: int, steps: int) -> float:
    weight = model.get_output_embeddings().weight.detach()
    hidden = torch.randn(tokens, weight.shape[1])
    start = time.perf_counter()
    for _ in range(steps):
        logits = hidden @ weight.T
        _ = logits @ weight
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=400)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=1, help="train the last n layers' FFNs (CD arms need 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model()
    model.eval()
    ids = build_prompt(tokenizer, args.prompt_tokens)
    config = FastMemConfig(steps=args.steps, layers=args.layers)
    gen = {
        "max_new_tokens": args.new_tokens,
        "do_sample": False,
        "eos_token_id": None,
        "pad_token_id": tokenizer.pad_token_id,
    }
    original = copy.deepcopy(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    n = ids.shape[1] - 1

    def ours(cd: bool):
        cfg = FastMemConfig(steps=args.steps, lr=config.lr, layers=args.layers, contrastive=args.alpha if cd else 0.0)
        timer = DecodeTimer()
        start = time.perf_counter()
        fm = FastMem(model, cfg)
        with fm.memorize(ids) as memorized:
            memorize_end = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(input_ids=ids, cache=memorized.cache, logits_processor=[timer], **gen)
        end = time.perf_counter()
        return {
            "total": end - start,
            "memorize": memorize_end - start,
            "decode/token": timer.per_token(),
            "answer": out[0, ids.shape[1] :],
        }

    def official(cd: bool):
        timer = DecodeTimer()
        start = time.perf_counter()
        official_memorize(model, ids, config, args.layers)
        memorize_end = time.perf_counter()
        if cd:
            answer, per_token = two_model_cd(model, original, ids, args.new_tokens, args.alpha)
        else:
            with torch.inference_mode():
                answer = model.generate(input_ids=ids, logits_processor=[timer], **gen)[0, ids.shape[1] :]
            per_token = timer.per_token()
        end = time.perf_counter()
        model.load_state_dict(weights)
        return {"total": end - start, "memorize": memorize_end - start, "decode/token": per_token, "answer": answer}

    def plain(cd: bool):
        timer = DecodeTimer()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, logits_processor=[timer], **gen)
        return {
            "total": time.perf_counter() - start,
            "memorize": 0.0,
            "decode/token": timer.per_token(),
            "answer": out[0, ids.shape[1] :],
        }

    def trunk():
        """The one forward (a) runs before its steps; it is also (a)'s prefill, reused by generation."""
        start = time.perf_counter()
        with torch.inference_mode():
            model(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1)
        return time.perf_counter() - start

    arms = {"(a) ours": ours, "(b) official": official, "(c) plain generate": plain}
    with_cd = (False, True) if args.layers == 1 else (False,)
    results = {(name, cd): [] for name in arms for cd in with_cd if not (cd and name.startswith("(c)"))}
    floors, trunks = [], []
    for round_ in range(args.rounds):
        order = list(results) if round_ % 2 == 0 else list(reversed(results))
        for name, cd in order:
            results[(name, cd)].append(arms[name](cd))
        floors.append(lm_head_floor(model, n, args.steps))
        trunks.append(trunk())
    floor, trunk_time = statistics.median(floors), statistics.median(trunks)

    def med(key, field):
        return statistics.median(r[field] for r in results[key])

    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    )
    print(f"\nFastMem latency on {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"SmolLM2-135M, prompt {ids.shape[1]} tokens, {args.steps} steps, last {args.layers} layer(s)' FFN, "
        f"{args.new_tokens} new tokens, CD alpha {args.alpha}, {args.rounds} rounds (medians)\n"
    )
    print(f"{'arm':<22}{'CD':>4}{'total (s)':>11}{'memorize (s)':>14}{'decode/token (ms)':>19}")
    for name, cd in results:
        print(
            f"{name:<22}{'yes' if cd else 'no':>4}{med((name, cd), 'total'):>11.2f}{med((name, cd), 'memorize'):>14.2f}"
            f"{1e3 * med((name, cd), 'decode/token'):>19.1f}"
        )
    print(f"\nfloor: {args.steps} steps of lm_head matmuls on {n} positions: {floor:.2f} s")
    a, b = ("(a) ours", False), ("(b) official", False)
    acd, bcd = ("(a) ours", True), ("(b) official", True)
    print(f"end to end, (a)/(b): {med(a, 'total') / med(b, 'total'):.2f}x without CD (goal <= 0.75x)")
    if acd in results:
        print(f"end to end with CD, (a)/(b): {med(acd, 'total') / med(bcd, 'total'):.2f}x (goal <= 0.75x)")
        ratio = med(acd, "decode/token") / med(bcd, "decode/token")
        print(f"CD decode per token, (a)/(b): {ratio:.2f}x (goal <= 0.6x)")
    print(
        f"memorize phase / floor: (a) {med(a, 'memorize') / floor:.2f}x, (b) {med(b, 'memorize') / floor:.2f}x "
        f"(goal <= 1.5x for (a)); (a) without its trunk forward ({trunk_time:.2f} s, which is also its prefill): "
        f"{(med(a, 'memorize') - trunk_time) / floor:.2f}x"
    )
    for with_cd, (x, y) in ((False, (a, b)), (True, (acd, bcd))):
        if x in results:
            same = all(torch.equal(p["answer"], q["answer"]) for p, q in zip(results[x], results[y]))
            print(f"same answers (a) vs (b) {'with' if with_cd else 'without'} CD: {same}")


if __name__ == "__main__":
    main()
