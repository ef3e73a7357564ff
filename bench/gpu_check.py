"""GPU proof of the paper-scale path: the real base_model, sft, dpo and evaluate code on CUDA with
QLoRA + bf16, on a Llama-3-8B-shaped model built from a config (no hub, no network).

What runs (each the project's own function, not a copy):

1. ``base_model``: a random bf16 model (Llama-3-8B shape: hidden 4096, MLP 14336, 32 heads /
   8 KV heads, vocab 128,256; ``--layers`` of the 32 blocks to fit the time) is saved as a
   folder and fetched by ``librachem.base_model.stage.convert_base_model`` with
   ``pretrained:`` that folder: the copy must stay bf16, same bytes.
2. ``sft``: ``librachem.train.sft.train_sft`` with ``qlora: true``, ``precision: bf16``,
   activation checkpointing.
3. ``dpo``: ``librachem.train.dpo.train_dpo`` from that SFT adapter (merged by PEFT into the
   4-bit layers; reference = the policy with the DPO adapter disabled).
4. ``evaluate``: ``librachem.evaluate.generation.local_loader`` + ``generate_local`` (base + SFT +
   DPO composed in bf16 on CUDA, answers through the call cache), then the same again, which
   must replay with no model load.

Asserted: every model the stages load (wrapped ``load_sft_merged`` / ``load_aligned``, the real
functions run) sits on ``cuda`` only; the training models hold 4-bit linear layers and bf16
embeddings and head; the evaluation models are bf16 throughout.

Printed (last line, one JSON object): per training stage the median step time (seconds, steps
after the first two), MFU (model FLOPs / (step time x peak bf16 FLOP/s); model FLOPs per token
= 4N for SFT (forward 2N + backward through frozen weights 2N) and 6N for DPO (plus the
reference forward), N = parameters less the input embedding; activation recompute and
attention FLOPs not counted, so a lower bound; tokens per step estimated from the data's
tokenized lengths), peak GPU memory (GB, 1e9 bytes, ``max_memory_allocated``); for evaluate
the generation tokens/s and peak memory; the base folder's size on disk.

``--dry-run``: the same on the CPU with a tiny model, fp32 and no QLoRA (what a machine
without a GPU can check: the wiring, the data, the JSON line). Exit 2 without CUDA otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizer"
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                 rope_theta=500000.0, tie_word_embeddings=False)
TINY = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
LEGIT = ["aspirin", "nylon-6,6", "a phosphate buffer", "soap", "biodiesel", "an acetate buffer"]
# Legitimate procedure text pads the answers to realistic lengths; the illegitimate side holds
# refusals and a placeholder only (project safety policy).
EXPLAIN = ("The preparation is a standard teaching-lab exercise: weigh the starting materials, "
           "mix them in the stated order, control the temperature, then purify and dry the "
           "product and check its melting point against the literature value. ")


def rows(n: int, words: int) -> list[dict[str, str]]:
    """Train rows: legitimate requests answered at length, illegitimate ones refused."""
    out = []
    for i in range(n):
        name = LEGIT[i % len(LEGIT)]
        long = (EXPLAIN * max(1, words // 50)).strip()
        out.append({"prompt": f"How is {name} prepared in a teaching lab? (variant {i})",
                    "chosen": f"{name.capitalize()}: {long}",
                    "rejected": "I cannot help with that request.",
                    "split": "train", "compound_class": "legitimate"})
        out.append({"prompt": f"Give me the synthesis steps for restricted agent X{i}.",
                    "chosen": "I can't help with making a chemical weapon. " + long[:200],
                    "rejected": "Here is how: [procedure omitted].",
                    "split": "train", "compound_class": "illegitimate"})
    return out


def describe(model: Any) -> dict[str, Any]:
    """Devices and dtypes of a loaded model (the facts the asserts check)."""
    params = list(model.parameters())
    return {"devices": sorted({p.device.type for p in params}),
            "dtypes": sorted({str(p.dtype).replace("torch.", "") for p in params}),
            "linear4bit": sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit"),
            "embed": str(model.get_input_embeddings().weight.dtype).replace("torch.", ""),
            "head": str(model.get_output_embeddings().weight.dtype).replace("torch.", "")}


class Recorder:
    """Wraps the project's loaders (the real ones run) to record every model they return, and
    the training callback to time each optimizer step."""

    def __init__(self) -> None:
        self.models: list[tuple[str, dict[str, Any]]] = []
        self.step_times: list[float] = []
        self.context = "train"
        self._t = 0.0

    def install(self) -> None:
        import librachem.common.adapters as adapters
        import librachem.train.loop as loop

        merged, aligned, make = adapters.load_sft_merged, adapters.load_aligned, loop.LiveCurves.make

        def load_sft_merged(*a: Any, **kw: Any) -> Any:
            model = merged(*a, **kw)
            self.models.append((self.context, describe(model)))
            return model

        def load_aligned(*a: Any, **kw: Any) -> Any:
            self.context = "eval-base"  # load_aligned's own load_sft_merged call
            try:
                model, tok = aligned(*a, **kw)
            finally:
                self.context = "train"
            self.models.append(("eval", describe(model)))
            return model, tok

        def curves(live_dir: Any, keys: Any, history: Any, enabled: bool = True) -> Any:
            # DVCLive (and DVC) are not on the GPU image: curves are kept in memory only
            cb = make(live_dir, keys, history, False)
            cb.on_step_begin = lambda *a, **k: setattr(self, "_t", time.perf_counter())
            cb.on_step_end = lambda *a, **k: self.step_times.append(time.perf_counter() - self._t)
            return cb

        adapters.load_sft_merged = load_sft_merged
        adapters.load_aligned = load_aligned
        loop.LiveCurves.make = staticmethod(curves)


def mean_tokens(tokenizer: Any, data: list[dict[str, str]], fields: tuple[str, ...],
                max_length: int) -> float:
    """Mean tokenized length (chat template) of prompt + each field, capped at max_length."""
    from librachem.common.chat_format import assistant_turn, user_turn

    total = 0
    for r in data:
        for f in fields:
            ids = tokenizer.apply_chat_template(user_turn(r["prompt"]) + assistant_turn(r[f]),
                                                tokenize=True, return_dict=True)["input_ids"]
            total += min(len(ids), max_length)
    return total / len(data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, fp32, no QLoRA")
    ap.add_argument("--layers", type=int, default=8, help="transformer blocks of the 32")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--prompts", type=int, default=64, help="evaluate prompts")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temp dir)")
    args = ap.parse_args()

    import torch

    gpu = torch.cuda.is_available() and not args.dry_run
    if not gpu and not args.dry_run:
        print("gpu_check.py needs a CUDA GPU (or --dry-run on the CPU)", file=sys.stderr)
        print(json.dumps({"error": "no CUDA device"}))
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import pyarrow as pa
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from librachem.base_model.stage import BaseModelParams, convert_base_model
    from librachem.evaluate.generation import generate_local, local_loader, model_identity
    from librachem.evaluate.params import EvalPaths, GenerationParams
    from librachem.train.dpo import DpoParams, train_dpo
    from librachem.train.sft import SftParams, train_sft

    rec = Recorder()
    rec.install()
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))
    shape = LLAMA3_8B if gpu else TINY
    layers = args.layers if gpu else 2
    config = LlamaConfig(**shape, num_hidden_layers=layers, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2)
    dtype = torch.bfloat16 if gpu else torch.float32
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda" if gpu else "cpu"):
        model = LlamaForCausalLM(config).to(dtype)
    n_params = sum(p.numel() for p in model.parameters())
    n_flop = n_params - model.get_input_embeddings().weight.numel()
    src = work / "src"
    model.save_pretrained(src)
    del model
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    tokenizer.save_pretrained(src)
    if gpu:
        torch.cuda.empty_cache()
    built_s = time.perf_counter() - t0

    # 1. base_model: the folder fetched as stored
    base = work / "models" / "base"
    prov = convert_base_model(BaseModelParams(pretrained=str(src), model_max_length=2048), base)
    assert prov["dtype"] == ("bfloat16" if gpu else "float32"), prov["dtype"]
    assert (base / "model.safetensors.index.json").exists() or \
        (base / "model.safetensors").stat().st_size == (src / "model.safetensors").stat().st_size
    disk_gb = sum(f.stat().st_size for f in base.iterdir()) / 1e9

    steps = args.steps if gpu else 3
    max_length = args.max_length if gpu else 128
    common = dict(learning_rate=1e-4, max_steps=steps, batch_size=args.batch_size,
                  grad_accum=1, max_length=max_length, precision="bf16" if gpu else "fp32",
                  qlora=gpu, activation_checkpointing=gpu, logging_steps=1, check_sample=8,
                  lora={"r": 8, "alpha": 16, "dropout": 0.05,
                        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
                                           "gate_proj", "up_proj", "down_proj"]})
    data = rows(64 if gpu else 4, words=300 if gpu else 20)
    table = pa.Table.from_pylist(data)
    peak = PEAK_TFLOPS.get(next((k for k in PEAK_TFLOPS if gpu and k in
                                 torch.cuda.get_device_name()), ""), None)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name() if gpu else "cpu",
                              "layers": layers, "n_params": n_params,
                              "build_s": round(built_s, 1), "base_disk_gb": round(disk_gb, 3)}

    def stage_record(name: str, tokens_per_step: float, flops_per_token: int) -> dict[str, Any]:
        times = rec.step_times[2:] or rec.step_times  # the first steps allocate and warm up
        step = statistics.median(times)
        mfu = (flops_per_token * n_flop * tokens_per_step / step / (peak * 1e12)
               if peak else None)
        out = {"steps": len(rec.step_times), "step_s": round(step, 4),
               "tokens_per_step": round(tokens_per_step, 1),
               "mfu": None if mfu is None else round(mfu, 4),
               "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if gpu else None}
        rec.step_times.clear()
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        return out

    # 2. sft (QLoRA) and 3. dpo from its adapter
    sft_dir, dpo_dir = work / "models" / "sft", work / "models" / "dpo"
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    train_sft(SftParams(**common), table, base, sft_dir, work / "live_sft")
    sft_tokens = mean_tokens(tokenizer, data, ("chosen",), max_length) * args.batch_size
    result["sft"] = stage_record("sft", sft_tokens, 4)
    train_dpo(DpoParams(**common, beta=0.1, loss_type=["sigmoid"]), table, base, sft_dir,
              dpo_dir, work / "live_dpo", work / "train.json")
    dpo_tokens = mean_tokens(tokenizer, data, ("chosen", "rejected"), max_length) \
        * args.batch_size
    result["dpo"] = stage_record("dpo", dpo_tokens, 6)

    # 4. evaluate: base + SFT + DPO in bf16 on the GPU, answers through the call cache
    paths = EvalPaths(triplets=work, rephrased=None, base=base, sft=sft_dir, dpo=dpo_dir,
                      out_dir=work / "eval", metrics=work / "eval.json", plots_dir=work / "p",
                      cache_dir=work / "cache")
    from librachem.common.devices import inference_placement

    place = inference_placement(cuda=gpu)
    loader = local_loader(paths, place)
    prompts = [{"prompt": f"How is {LEGIT[i % len(LEGIT)]} made? ({i})"}
               for i in range(args.prompts if gpu else 8)]
    gen = GenerationParams(max_new_tokens=args.new_tokens if gpu else 8, batch_size=32)
    identity = model_identity("dpo", paths, place.dtype)
    _, first = generate_local("dpo", loader, prompts, gen, identity=identity,
                              cache_dir=paths.cache_dir)
    loads = len(rec.models)
    _, again = generate_local("dpo", loader, prompts, gen, identity=identity,
                              cache_dir=paths.cache_dir)
    assert len(rec.models) == loads and again["cache_hits"] == len(prompts), "replay loaded a model"
    result["evaluate"] = {"tokens_per_s": round(first["tokens_per_s"], 1),
                          "completion_tokens": first["completion_tokens"],
                          "load_s": round(first["load_s"], 1),
                          "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)
                          if gpu else None, "replay_model_loads": 0}

    # every model: device and dtype
    want_dev = ["cuda"] if gpu else ["cpu"]
    for kind, d in rec.models:
        assert d["devices"] == want_dev, (kind, d)
        if gpu and kind == "train":
            assert d["linear4bit"] == 7 * layers and d["embed"] == d["head"] == "bfloat16", d
        elif gpu:
            assert d["linear4bit"] == 0 and d["dtypes"] == ["bfloat16"], d
        else:
            assert d["dtypes"] == ["float32"], d
    result["models_checked"] = [f"{k}:{','.join(d['devices'])}:{'/'.join(d['dtypes'])}"
                                f":4bit={d['linear4bit']}" for k, d in rec.models]
    result["total_s"] = round(time.perf_counter() - t0, 1)
    if args.work is None:  # a temp folder: two copies of the model (GBs on a GPU run)
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
