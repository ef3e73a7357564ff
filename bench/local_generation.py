"""Batched vs one-prompt-at-a-time generation with the ``local`` backend on SmolLM2-135M.

32 chemistry prompts, up to 128 new tokens each, greedy. Both runs use
:class:`librachem.llm.local.LocalClient` on the same loaded model; tokens/s counts generated
tokens (up to and including EOS). Target (issue 3): ``batched_speedup`` >= 4.

Needs ``models/base`` (``.venv/bin/dvc repro base_model``). CUDA + bf16 when present.
Usage: ``.venv/bin/python bench/local_generation.py [--model-dir models/base] [--batch-size 32]``
Prints a few human lines, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from librachem.llm.base import ChatRequest  # noqa: E402
from librachem.llm.local import LocalClient  # noqa: E402

TOPICS = ["the boiling point of water", "why ice floats", "what a buffer solution is",
          "how soap removes grease", "the ideal gas law", "what pH measures",
          "how a catalyst works", "what an isotope is", "why salt melts ice on roads",
          "how batteries store energy", "what oxidation means", "how photosynthesis stores energy",
          "what a covalent bond is", "how distillation separates liquids",
          "why metals conduct electricity", "what Avogadro's number is"]


def prompts() -> list[str]:
    out = [f"Explain {t} to a high-school student." for t in TOPICS]
    out += [f"Give three everyday examples related to {t}." for t in TOPICS]
    return out  # 32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=REPO / "models" / "base")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--single-prompts", type=int, default=32,
                    help="run the one-at-a-time baseline on only the first N prompts (its "
                         "tokens/s is a rate, so a subset estimates it on a busy machine)")
    args = ap.parse_args()
    if not (args.model_dir / "config.json").is_file():
        sys.exit(f"{args.model_dir} is missing: run `.venv/bin/dvc repro base_model` first")

    client = LocalClient.from_pretrained(str(args.model_dir), batch_size=args.batch_size,
                                         model_id="smollm2-135m-instruct")
    client.progress = False
    reqs = [ChatRequest(messages=({"role": "user", "content": p},), model="smollm2-135m-instruct",
                        max_tokens=args.max_new_tokens, temperature=0.0) for p in prompts()]
    client.complete(reqs[:2])  # warm-up (kernels, allocator)

    client.batch_size = args.batch_size
    t0 = time.perf_counter()
    batched = client.complete(reqs)
    t_batched = time.perf_counter() - t0

    print(f"batched: {sum(c.completion_tokens for c in batched)} tokens in {t_batched:.1f} s",
          flush=True)
    client.batch_size = 1
    t0 = time.perf_counter()
    single = client.complete(reqs[:args.single_prompts])
    t_single = time.perf_counter() - t0

    tok_b = sum(c.completion_tokens for c in batched)
    tok_s = sum(c.completion_tokens for c in single)
    same = sum(a.text == b.text for a, b in zip(batched, single))  # greedy: should all match
    rate_b, rate_s = tok_b / t_batched, tok_s / t_single
    print(f"device {client.model.device} dtype {client.model.dtype}")
    print(f"batched (batch {args.batch_size}): {tok_b} tokens in {t_batched:.1f} s = "
          f"{rate_b:.1f} tok/s | one at a time: {tok_s} tokens in {t_single:.1f} s = "
          f"{rate_s:.1f} tok/s ({len(single)} prompts) | identical texts {same}/{len(single)}")
    print("target: batched_speedup >= 4")
    print(json.dumps({"batched_speedup": round(rate_b / rate_s, 2)}))


if __name__ == "__main__":
    main()
