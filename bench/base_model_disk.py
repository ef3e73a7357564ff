"""Disk cost of ``models/base`` under DVC, simulated with a config-built bf16 model (no hub).

A random Llama in bf16 (``--hidden``/``--layers``/``--vocab`` set its size; the default is
~1 GB) stands in for a downloaded 8B model (16 GB: scale the figures by 16 / size). For each
DVC ``cache.type`` it makes a fresh DVC project whose only stage is the real ``base_model``
stage (``pretrained:`` the simulated folder, standing in for the hub download that
``snapshot_download(local_dir=...)`` writes straight into ``models/base``), runs ``dvc repro``
and reports the bytes on disk of the workspace folder plus the DVC cache, counted once per
inode (``du``), as a ratio to the model's size.

Prints one JSON line: ``{"model_gb", "by_cache_type": {type: {"on_disk_gb", "copies"}}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def du_bytes(*paths: Path) -> int:
    """Bytes on disk of ``paths`` together, hard links counted once (GNU du)."""
    out = subprocess.run(["du", "-scB1", *map(str, paths)], capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()[-1]
    return int(out.split()[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--types", default="copy,hardlink,symlink,reflink")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    work = Path(tempfile.mkdtemp(prefix="base-disk-"))
    src = work / "hub-model"
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                      intermediate_size=int(args.hidden * 3.5), num_attention_heads=16,
                      num_key_value_heads=8, tie_word_embeddings=False, bos_token_id=1,
                      eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(src)
    AutoTokenizer.from_pretrained(ROOT / "tests" / "fixtures" / "tokenizer").save_pretrained(src)
    model_bytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    dvc = [sys.executable, "-m", "dvc"]
    results = {}
    for ctype in args.types.split(","):
        proj = work / f"proj-{ctype}"
        proj.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
        subprocess.run([*dvc, "init", "-q"], cwd=proj, check=True, env=env)
        subprocess.run([*dvc, "config", "cache.type", ctype], cwd=proj, check=True, env=env)
        (proj / "params.yaml").write_text(f"base_model:\n  pretrained: {src}\n")
        (proj / "dvc.yaml").write_text(
            "stages:\n  base_model:\n"
            f"    cmd: {sys.executable} {ROOT / 'stages' / 'base_model.py'} --params params.yaml"
            " --out models/base\n    params: [base_model]\n    outs: [models/base]\n")
        done = subprocess.run([*dvc, "repro", "-q"], cwd=proj, env=env, capture_output=True,
                              text=True)
        if done.returncode != 0:
            results[ctype] = {"error": (done.stderr or done.stdout).strip()[-300:]}
            continue
        on_disk = du_bytes(proj / "models", proj / ".dvc" / "cache")
        results[ctype] = {"on_disk_gb": round(on_disk / 1e9, 3),
                          "copies": round(on_disk / model_bytes, 2),
                          "workspace_is_link": (proj / "models" / "base").is_symlink() or any(
                              f.is_symlink() or f.stat().st_nlink > 1
                              for f in (proj / "models" / "base").glob("*.safetensors"))}
        shutil.rmtree(proj, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"model_gb": round(model_bytes / 1e9, 3), "simulated": True,
                      "by_cache_type": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
