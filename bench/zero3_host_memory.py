"""Host memory of loading the base model for training under DeepSpeed ZeRO-3 (issue 15.5).

Runs the stages' own loading code (``librachem.train.loading.zero3_init`` around
``librachem.common.adapters.load_sft_merged``: base + SFT adapter merged) in ``--ranks``
processes on this machine's CPU (DeepSpeed's CPU accelerator, gloo), as ``accelerate launch
--config_file zero3.yaml`` would on GPUs, twice:

* ``full``: ``zero3_init_flag: false`` (before issue 15): every rank loads and merges one
  full copy in host memory before DeepSpeed partitions it;
* ``partitioned``: ``zero3_init_flag: true`` (the packaged ``zero3.yaml`` now): weights are
  partitioned while loading (``deepspeed.zero.Init``) and the SFT adapter is merged one
  gathered layer at a time.

The model is a random Llama written to a temp folder in bf16 (``--hidden``/``--layers``; the
default is ~1.2 GB, 8B-shaped layers at reduced width so two ranks fit 24 GiB). Prints the
peak growth of each rank's private (anonymous) memory (MiB) during the load and one JSON line:
``model_mib`` and, per path, ``<path>_host_copies`` = (the model's files in the page cache,
shared by all ranks, + the sum of private growth) / model size. Issue 15 asks for about one
model, not one per rank. On DeepSpeed's CPU accelerator the partitioned path keeps the
partitions themselves (one model in all) and the gathered layers in host memory, where on
GPUs they sit in GPU memory: its CPU figure is an upper bound for the GPU case, not a
measurement of it.

Needs DeepSpeed: ``make setup`` puts it in ``.venv/deepspeed`` (or ``pip install -e '.[gpu]'``).
Usage:
``.venv/bin/python bench/zero3_host_memory.py [--ranks 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEEPSPEED_DIR = REPO / ".venv" / "deepspeed"  # make setup; or deepspeed in the venv itself


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zero3_env(rank: int, world: int, port: int, init: bool,
              accelerator: str = "cpu") -> dict[str, str]:
    """The variables ``accelerate launch`` sets for a DeepSpeed ZeRO-3 run, on DeepSpeed's
    ``accelerator`` (``cpu``: gloo; ``cuda``: one GPU per rank, nccl)."""
    return {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
            "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true" if init else "false",
            "ACCELERATE_MIXED_PRECISION": "bf16", "DS_ACCELERATOR": accelerator,
            "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1"}


def worker(base: str, sft: str) -> None:
    """One rank: load base + SFT merged the way train_adapter does; print a JSON line with
    the RSS growth (MiB) and whether the weights came out partitioned."""
    import threading

    import deepspeed
    import psutil
    import torch

    cuda = os.environ.get("DS_ACCELERATOR") == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    from librachem.common.adapters import load_sft_merged
    from librachem.train.loading import zero3_init

    proc, peak, done = psutil.Process(), [0], threading.Event()

    def private() -> int:
        """Anonymous memory (bytes): what this rank allocated itself. Mapped checkpoint pages
        are page cache, counted once for all ranks (USS would count a file page as private
        when only one rank maps it)."""
        with open(f"/proc/{proc.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Anonymous:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no Anonymous: line in smaps_rollup")

    def sample() -> None:  # peak during the load (ru_maxrss would also count the imports)
        while not done.is_set():
            peak[0] = max(peak[0], private())
            done.wait(0.02)

    torch.distributed.barrier()
    before = private()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with zero3_init() as partitioned:
        model = load_sft_merged(base, sft, dtype=torch.bfloat16)
    done.set()
    sampler.join()
    peak[0] = max(peak[0], private())
    weight = model.model.layers[0].self_attn.q_proj.weight
    torch.distributed.barrier()
    print(json.dumps({"rank": torch.distributed.get_rank(), "zero3_init": partitioned,
                      "partitioned": hasattr(weight, "ds_id") and weight.numel() == 0,
                      "private_growth_mib": round((peak[0] - before) / 2**20, 1),
                      "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)
                      if cuda else None}), flush=True)


def build(folder: Path, hidden: int, layers: int) -> tuple[Path, Path, float]:
    """A random bf16 Llama (8B's vocabulary and head/MLP ratios) and a LoRA SFT adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(REPO))
    from tests.tiny_model import tiny_tokenizer

    config = LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=int(hidden * 3.5),
                         num_hidden_layers=layers, num_attention_heads=hidden // 128,
                         num_key_value_heads=max(1, hidden // 512), tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    base, sft = folder / "base", folder / "sft"
    model.save_pretrained(base, max_shard_size="200MB")
    tiny_tokenizer().save_pretrained(base)
    size_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    # the LoRA targets of params.yaml and the paper profile: every projection
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.01)
    peft.save_pretrained(sft)
    return base, sft, size_mib


def run(ranks: int, base: Path, sft: Path, init: bool, accelerator: str = "cpu") -> list[dict]:
    port = _free_port()
    procs = []
    for rank in range(ranks):
        env = {**os.environ, **zero3_env(rank, ranks, port, init, accelerator),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), str(DEEPSPEED_DIR),
                                                           os.environ.get("PYTHONPATH")])),
               "PATH": os.pathsep.join([str(DEEPSPEED_DIR / "bin"), os.environ["PATH"]])}
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", str(base), str(sft)],
                                      env=env, stdout=subprocess.PIPE, text=True))
    out = []
    try:
        for proc in procs:
            stdout, _ = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise SystemExit(f"a rank failed (exit {proc.returncode}); see its stderr above")
            out.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:  # a failed rank leaves the others waiting in a gloo barrier
            if proc.poll() is None:
                proc.kill()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--accelerator", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: one GPU per rank; the partitions and gathers then live in GPU "
                         "memory and the host figure is the one issue 15 asks about")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    with tempfile.TemporaryDirectory() as tmp:
        base, sft, size_mib = build(Path(tmp), args.hidden, args.layers)
        result: dict = {"model_mib": round(size_mib, 1), "ranks": args.ranks,
                        "accelerator": args.accelerator}
        for name, init in (("full", False), ("partitioned", True)):
            rows = run(args.ranks, base, sft, init, args.accelerator)
            assert all(r["partitioned"] == init for r in rows), rows
            growth = [r["private_growth_mib"] for r in rows]
            print(f"{name:12s} private (anonymous) memory growth per rank (MiB): {growth}")
            # every rank maps the same safetensors files: the page cache holds them once
            result[f"{name}_host_copies"] = round((size_mib + sum(growth)) / size_mib, 2)
            result[f"{name}_private_mib"] = growth
            if args.accelerator == "cuda":
                result[f"{name}_gpu_peak_mib"] = [r["gpu_peak_mib"] for r in rows]
    where = ("on the CPU accelerator the partitions themselves live in host memory"
             if args.accelerator == "cpu" else "partitions and gathers in GPU memory")
    print(f"model {size_mib:.0f} MiB bf16, {args.ranks} ranks ({args.accelerator}); host memory "
          f"in model copies (page cache once + private per rank): zero3_init_flag false "
          f"{result['full_host_copies']}, true {result['partitioned_host_copies']} ({where})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
