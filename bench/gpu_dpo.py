"""GPU benchmark: LoRA DPO steps on a randomly initialised Llama-3-8B-shaped model in bf16.

No download: the model is built from a config (hidden 4096, 32 layers, 32 heads / 8 KV heads,
MLP 14336, vocab 128,256) with random weights on the GPU; text is tokenised with the SmolLM2
tokenizer fixture (its ids fit the larger vocabulary). LoRA r 16 on q/k/v/o, DPO sigmoid loss,
reference = adapter disabled (TRL ``ref_model=None``), the same set-up as the ``dpo`` stage.

Reports, over the steps after ``--warmup``:
- ``tokens_per_s``: non-padding tokens of chosen + rejected sequences per second;
- ``mfu``: model FLOPs / (time x peak bf16 FLOP/s), model FLOPs = 6 x N x tokens (policy forward
  2N, backward through frozen weights 2N + adapter grads, reference forward 2N; attention FLOPs
  left out, so this is a lower bound). Peak: H100/H200 989 TFLOP/s dense bf16, A100 312, or
  ``--peak-tflops``;
- ``peak_mem_gb``: ``torch.cuda.max_memory_allocated`` in GB (1e9 bytes).

Exits with status 2 and a clear message when CUDA is not available. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizer"
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                 max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False)


def _peak(name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value * 1e12
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024, help="max_length (prompt+completion)")
    parser.add_argument("--layers", type=int, default=32, help="fewer for a quick smoke run")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--activation-checkpointing", action="store_true")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_dpo.py needs a CUDA GPU (bf16 Llama-3-8B-shaped model); none is available "
              "here. Run it on a GPU machine: .venv/bin/python bench/gpu_dpo.py", file=sys.stderr)
        print(json.dumps({"error": "no CUDA device", "tokens_per_s": None, "mfu": None,
                          "peak_mem_gb": None}))
        return 2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        TrainerCallback,
    )
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    config = LlamaConfig(**{**LLAMA3_8B, "num_hidden_layers": args.layers},
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # build in bf16 directly (no fp32 copy of 8B)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    n_params = sum(p.numel() for p in model.parameters())

    # Prompts ~1/4 of max_length, completions ~3/8 each, from a fixed word list.
    words = "acid base salt solvent reagent yield filter heat stir cool dry mass".split()
    n_rows = (args.steps + args.warmup) * args.batch_size
    per = max(8, args.seq_len // 8)
    rows = []
    for i in range(n_rows):
        text = lambda k, off: " ".join(words[(i + j + off) % len(words)] for j in range(k))  # noqa: E731
        rows.append({"prompt": [{"role": "user", "content": text(per * 2 - 40, 0)}],
                     "chosen": [{"role": "assistant", "content": text(per * 3, 1)}],
                     "rejected": [{"role": "assistant", "content": text(per * 3, 2)}]})
    dataset = Dataset.from_list(rows)

    stamps: list[float] = []
    tokens: list[int] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):  # noqa: ANN001
            torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        def on_train_end(self, a, state, control, **kw):  # noqa: ANN001
            torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    dpo_args = DPOConfig(output_dir="/tmp/gpu_dpo", learning_rate=5e-4, max_steps=n_rows //
                         args.batch_size, per_device_train_batch_size=args.batch_size,
                         max_length=args.seq_len, bf16=True, logging_steps=1,
                         activation_checkpointing=args.activation_checkpointing,
                         save_strategy="no", report_to="none", disable_tqdm=True)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, ref_model=None, args=dpo_args, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=lora, callbacks=[Timer()])
    collate = trainer.data_collator
    for s in range(0, len(trainer.train_dataset), args.batch_size):
        batch = collate([trainer.train_dataset[j] for j in range(s, s + args.batch_size)])
        tokens.append(int(batch["attention_mask"].sum()))
    torch.cuda.reset_peak_memory_stats()
    trainer.train()

    deltas = [b - a for a, b in zip(stamps, stamps[1:])][args.warmup:]
    # Sequential sampler is not guaranteed; token counts per batch are near-equal by design.
    measured_tokens = sum(tokens[args.warmup:args.warmup + len(deltas)])
    seconds = sum(deltas)
    tps = measured_tokens / seconds
    name = torch.cuda.get_device_name(0)
    peak = _peak(name, args.peak_tflops)
    out = {"device": name, "params_b": round(n_params / 1e9, 3), "layers": args.layers,
           "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": len(deltas),
           "step_s": round(seconds / len(deltas), 4), "tokens_per_s": round(tps, 1),
           "mfu": round(6 * n_params * tps / peak, 4) if peak else None,
           "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
