"""Benchmark: the ``dpo`` stage's training step time vs a bare TRL script, same run.

Both sides train the identical model (``--model tiny``: the 2-layer test Llama; ``--model base``:
``models/base``, SmolLM2-135M), identical rows, LoRA and DPOConfig values. The stage side calls
``librachem.train.dpo.train_dpo`` (template check, drop counting, DVCLive curves, model card ...); the
bare side is the minimal TRL script (``DPOTrainer(model, None, DPOConfig, dataset,
processing_class, peft_config).train()``). A callback installed on both (by wrapping
``DPOTrainer.__init__``) records the wall time between consecutive optimizer steps (forward,
backward, optimizer, callbacks and logging included); the first ``--warmup`` steps are ignored.
Sides alternate for ``--rounds`` rounds; the ratio of medians is printed.

Step time is measured twice: wall clock and process CPU time (``time.process_time``). On a
shared machine (other jobs on the same cores) wall time mostly measures the neighbours, so the
headline ratio uses CPU time, with torch limited to ``--threads`` (default 1) so that CPU time is
not inflated by spinning OpenMP threads; ``vs_bare_trl_wall`` is reported next to it.

Last line: one JSON object with ``vs_bare_trl`` = stage step time / bare step time
(target <= 1.05).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.tiny_model / tests.triplets


def _rows(n_pairs: int):
    from tests.triplets import triplet_table

    return triplet_table(pairs=n_pairs, test_rows=0)


def _install_timer(times: list[tuple[float, float]]):
    from transformers import TrainerCallback
    from trl import DPOTrainer

    original = DPOTrainer.__init__

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            times.append((time.perf_counter(), time.process_time()))

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            times.append((time.perf_counter(), time.process_time()))

    def init(self, *args, **kwargs):
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), StepTimer()]
        original(self, *args, **kwargs)

    DPOTrainer.__init__ = init
    return lambda: setattr(DPOTrainer, "__init__", original)


def _step_times(stamps: list[tuple[float, float]], warmup: int) -> list[tuple[float, float]]:
    deltas = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]
    return deltas[warmup:]


def run_stage(params, table, base_dir: Path, work: Path) -> None:
    from librachem.train.dpo import train_dpo

    train_dpo(params, table, base_dir, None, work / "dpo", work / "live", work / "train.json")


def run_bare(params, table, base_dir: Path, work: Path) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    data = table.to_pydict()
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": p}],
         "chosen": [{"role": "assistant", "content": c}],
         "rejected": [{"role": "assistant", "content": r}]}
        for p, c, r in zip(data["prompt"], data["chosen"], data["rejected"])])
    args = DPOConfig(output_dir=str(work / "bare"), learning_rate=params.learning_rate,
                     lr_scheduler_type=params.lr_scheduler, warmup_steps=params.warmup_ratio,
                     max_steps=params.max_steps, per_device_train_batch_size=params.batch_size,
                     gradient_accumulation_steps=params.grad_accum, max_length=params.max_length,
                     beta=params.beta, loss_type=list(params.loss_type), bf16=False,
                     use_cpu=True, activation_checkpointing=False, seed=params.seed,
                     data_seed=params.seed, logging_steps=1, save_strategy="no",
                     report_to="none", dataloader_pin_memory=False, max_grad_norm=1.0)
    lora = LoraConfig(r=params.lora.r, lora_alpha=params.lora.alpha,
                      lora_dropout=params.lora.dropout,
                      target_modules=list(params.lora.target_modules), task_type="CAUSAL_LM")
    DPOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset,
               processing_class=tokenizer, peft_config=lora).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "base"], default="tiny")
    parser.add_argument("--base-dir", type=Path, default=ROOT / "models" / "base")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    import logging
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.disable(logging.WARNING)
    import torch

    from librachem.train.dpo import DpoParams

    torch.set_num_threads(args.threads)

    params = DpoParams(max_steps=args.steps + args.warmup, batch_size=args.batch_size,
                       max_length=args.max_length, warmup_ratio=0.1, check_sample=16)
    table = _rows(n_pairs=(args.steps + args.warmup) * args.batch_size)
    stamps: list[tuple[float, float]] = []
    restore = _install_timer(stamps)
    results: dict[str, list[tuple[float, float]]] = {"stage": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model == "tiny":
            from tests.tiny_model import save_tiny_base

            base_dir = save_tiny_base(work / "base")
        else:
            base_dir = args.base_dir
            if not (base_dir / "config.json").is_file():
                sys.exit(f"{base_dir} has no model; run `dvc repro base_model` or use --model tiny")
        for round_ in range(args.rounds):
            for side, fn in (("bare", run_bare), ("stage", run_stage)):
                stamps.clear()
                fn(params, table, base_dir, work / f"{side}{round_}")
                results[side].extend(_step_times(stamps, args.warmup))
    restore()
    def med(side: str, i: int) -> float:
        return statistics.median(d[i] for d in results[side])

    out = {"model": args.model, "steps_per_side": len(results["stage"]), "threads": args.threads,
           "batch_size": args.batch_size, "max_length": args.max_length,
           "stage_step_cpu_s": round(med("stage", 1), 4), "bare_step_cpu_s": round(med("bare", 1), 4),
           "stage_step_wall_s": round(med("stage", 0), 4), "bare_step_wall_s": round(med("bare", 0), 4),
           "vs_bare_trl_wall": round(med("stage", 0) / med("bare", 0), 4),
           "vs_bare_trl": round(med("stage", 1) / med("bare", 1), 4)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
