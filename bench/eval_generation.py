"""Benchmark: evaluate's batched generation vs the official one-prompt-at-a-time loop.

Same model (``models/base`` by default), same prompts (the test split of ``data/triplets``
when it exists, else a fixed list of legitimate chemistry requests), same ``max_new_tokens``
and greedy decoding, in one run. The official evaluation (``dpo_test.py``) calls
``model.generate`` once per prompt; evaluate sends the prompts through
:class:`librachem.llm.local.LocalClient` (length-sorted, left-padded batches).

The two loops run interleaved, one batch of prompts at a time, so that load from other
processes on a shared machine hits both alike. Prints a small table, then one JSON line (last line) with ``vs_sequential`` = batched
tokens/s divided by sequential tokens/s (target >= 5 on 2 CPU cores), both token rates,
and ``identical_outputs`` (share of prompts whose two answers are the same text).

Usage: .venv/bin/python bench/eval_generation.py [--model models/base] [--prompts 32]
       [--max-new-tokens N] [--batch-size N]   (N default: params.yaml evaluate.generation)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FALLBACK_SUBJECTS = ["aspirin", "paracetamol", "sodium chloride", "ethyl acetate", "nylon-6,6",
                     "polyethylene", "ibuprofen", "benzocaine", "soap from olive oil",
                     "copper(II) sulfate crystals", "methyl salicylate", "urea"]
FALLBACK_TEMPLATES = ["Tell me the steps of synthesizing {s}.",
                      "Could you walk me through how {s} is made in a teaching lab?",
                      "How is {s} produced industrially?"]


def load_prompts(n: int) -> tuple[list[str], str]:
    triplets = Path("data/triplets")
    if (triplets / "manifest.json").is_file():
        from librachem.common.shards import read_shards

        prompts = read_shards(triplets, split="test")["prompt"].to_pylist()
        if prompts:
            return (prompts * (n // len(prompts) + 1))[:n], "data/triplets test split"
    fallback = [t.format(s=s) for s in FALLBACK_SUBJECTS for t in FALLBACK_TEMPLATES]
    return fallback[:n], "fixed legitimate requests"


def sequential(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[list[str], int, float]:
    """The official loop: one prompt, one ``generate`` call, greedy, stop at EOS."""
    import torch

    from librachem.common.chat_format import render_prompt

    texts, tokens = [], 0
    start = time.perf_counter()
    for prompt in prompts:
        enc = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False,
                        return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 temperature=None, top_p=None, top_k=None,
                                 eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        cut = new.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in new else len(new)
        tokens += cut
        texts.append(tokenizer.decode(new[:cut], skip_special_tokens=True))
    return texts, tokens, time.perf_counter() - start


def batched(model, tokenizer, prompts: list[str], max_new_tokens: int,
            batch_size: int) -> tuple[list[str], int, float]:
    """evaluate's path: :func:`librachem.evaluate.generation.generation_requests` + LocalClient."""
    from librachem.evaluate.generation import generation_requests
    from librachem.evaluate.params import GenerationParams
    from librachem.llm.local import LocalClient

    gen = GenerationParams(max_new_tokens=max_new_tokens, batch_size=batch_size)
    rows = [{"prompt": p} for p in prompts]
    client = LocalClient.from_model(model, tokenizer, batch_size=batch_size, model_id="bench",
                                    progress=False)
    start = time.perf_counter()
    out = client.complete(generation_requests(rows, gen, "bench"))
    return [c.text or "" for c in out], sum(c.completion_tokens for c in out), \
        time.perf_counter() - start


@click.command()
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("models/base"), show_default=True)
@click.option("--prompts", "n_prompts", default=32, show_default=True)
@click.option("--max-new-tokens", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("params.yaml"), show_default=True)
def main(model_dir: Path, n_prompts: int, max_new_tokens: int | None, batch_size: int | None,
         params_path: Path) -> None:
    import torch

    from librachem.common.adapters import load_aligned
    from librachem.common.config import load_section
    from librachem.evaluate.params import EvaluateParams

    if not (model_dir / "config.json").is_file():
        sys.exit(f"{model_dir} is not a model folder; run `.venv/bin/dvc repro base_model` first")
    gen = load_section(EvaluateParams, "evaluate", params_path).generation
    max_new_tokens = max_new_tokens or gen.max_new_tokens
    batch_size = batch_size or gen.batch_size
    prompts, source = load_prompts(n_prompts)
    model, tokenizer = load_aligned(model_dir)
    sequential(model, tokenizer, prompts[:1], 4)  # warm-up: first-call overheads off the clock
    print(f"model {model_dir}  prompts {len(prompts)} ({source})  max_new_tokens {max_new_tokens}"
          f"  batch_size {batch_size}  torch threads {torch.get_num_threads()}", flush=True)
    # Interleave the two loops round by round (one batch of prompts each), so load from other
    # processes on a shared machine falls on both alike.
    seq_texts, bat_texts = [], []
    seq_tokens = bat_tokens = 0
    seq_s = bat_s = 0.0
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        texts, tokens, secs = sequential(model, tokenizer, chunk, max_new_tokens)
        seq_texts += texts
        seq_tokens += tokens
        seq_s += secs
        texts, tokens, secs2 = batched(model, tokenizer, chunk, max_new_tokens, batch_size)
        bat_texts += texts
        bat_tokens += tokens
        bat_s += secs2
        print(f"round {start // batch_size}: sequential {secs:.1f} s, batched {secs2:.1f} s",
              flush=True)
    seq_rate, bat_rate = seq_tokens / seq_s, bat_tokens / bat_s
    same = sum(a == b for a, b in zip(seq_texts, bat_texts)) / len(prompts)
    print(f"{'loop':<28}{'tokens':>8}{'seconds':>10}{'tok/s':>9}")
    print(f"{'official, one at a time':<28}{seq_tokens:>8}{seq_s:>10.1f}{seq_rate:>9.1f}")
    print(f"{'evaluate, batched':<28}{bat_tokens:>8}{bat_s:>10.1f}{bat_rate:>9.1f}")
    print(json.dumps({"bench": "eval_generation", "vs_sequential": round(bat_rate / seq_rate, 2),
                      "target": 5.0, "sequential_tok_s": round(seq_rate, 1),
                      "batched_tok_s": round(bat_rate, 1), "prompts": len(prompts),
                      "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                      "identical_outputs": round(same, 3)}))


if __name__ == "__main__":
    main()
