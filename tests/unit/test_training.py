"""SFT + DPO on a tiny random Llama (2 layers, hidden 64, SmolLM2 tokenizer): real TRL runs of a
few steps. One module fixture trains both adapters; the tests inspect what it captured."""

from __future__ import annotations

import json
import math

import pytest
import torch

from librachem.common.adapters import load_aligned, load_sft_merged
from librachem.common.errors import TrainingError
from librachem.train.dpo import DpoParams, train_dpo
from librachem.train.sft import SftParams, train_sft
from tests.tiny_model import save_tiny_base
from tests.triplets import triplet_table

pytestmark = pytest.mark.slow

SMALL = dict(max_steps=3, batch_size=4, max_length=96, check_sample=8,
             lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
IDS = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 2, 198, 1, 4093, 198, 1589, 314]])


def _capture(monkeypatch, cls, store):
    """Wrap cls.train to keep the trainer and a copy of its frozen weights before training."""
    original = cls.train

    def train(self, *args, **kwargs):
        frozen = {n: p.detach().clone() for n, p in self.model.named_parameters()
                  if not p.requires_grad}
        lora = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        store.update(trainer=self, frozen=frozen, lora=lora)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "train", train)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from trl import DPOTrainer, SFTTrainer

    root = tmp_path_factory.mktemp("train")
    base = save_tiny_base(root / "base", seed=1)
    table = triplet_table()
    mp = pytest.MonkeyPatch()
    sft, dpo = {}, {}
    try:
        _capture(mp, SFTTrainer, sft)
        _capture(mp, DPOTrainer, dpo)
        sft["summary"] = train_sft(SftParams(learning_rate=1e-2, **SMALL), table, base,
                                   root / "sft", root / "live_sft")
        dpo["summary"] = train_dpo(DpoParams(learning_rate=1e-2, **SMALL), table, base,
                                   root / "sft", root / "dpo", root / "live_dpo",
                                   root / "train.json")
    finally:
        mp.undo()
    return {"root": root, "base": base, "sft": sft, "dpo": dpo}


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_adapter_weights_change_base_weights_do_not(trained, stage):
    run = trained[stage]
    model = run["trainer"].model
    params = dict(model.named_parameters())
    assert run["lora"] and all("lora_" in n for n in run["lora"])
    changed = [n for n, before in run["lora"].items() if not torch.equal(params[n], before)]
    assert changed, "no LoRA weight moved"
    assert all(torch.equal(params[n], before) for n, before in run["frozen"].items())


def test_first_dpo_loss_is_ln2_and_losses_finite(trained):
    summary = json.loads((trained["root"] / "train.json").read_text())
    assert summary["dpo"]["loss_first"] == pytest.approx(math.log(2), abs=1e-4)
    losses = (trained["root"] / "live_dpo" / "plots" / "metrics" / "loss.tsv").read_text()
    values = [float(line.split("\t")[-1]) for line in losses.splitlines()[1:]]
    assert len(values) == 3 and all(math.isfinite(v) for v in values)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "learning_rate"):
        assert (trained["root"] / "live_dpo" / "plots" / "metrics" / f"{key}.tsv").is_file()
    assert math.isfinite(summary["sft"]["loss_last"])


def test_outputs_carry_config_card_and_template_report(trained):
    out = trained["root"] / "dpo"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json",
                 "librachem_config.json", "README.md", "template_check.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "librachem_config.json").read_text())
    assert record["params"]["beta"] == 0.1 and record["versions"]["trl"]
    assert record["data"]["rows_used_by_class"] == {"illegitimate": 12, "legitimate": 12}
    assert json.loads((out / "template_check.json").read_text())["ok"] is True
    assert "rows_used" in (out / "README.md").read_text()


def test_runtime_goes_to_live_metrics_not_the_adapter_folder(trained):
    root = trained["root"]
    for stage in ("sft", "dpo"):
        record = json.loads((root / stage / "librachem_config.json").read_text())
        assert "train_runtime_s" not in record["summary"], stage
        assert record["summary"]["global_steps"] == 3
        assert "train_runtime_s" not in (root / stage / "README.md").read_text()
        live = json.loads((root / f"live_{stage}" / "metrics.json").read_text())
        assert live["train_runtime_s"] > 0, stage
    assert json.loads((root / "train.json").read_text())["dpo"]["runtime_s"] > 0


def test_diverged_training_is_an_error_not_a_nan_adapter(tmp_path):
    """transformers logs a NaN loss as the last finite value by default; the stage logs it
    unfiltered and checks loss and grad_norm, so a diverged run saves no adapter."""
    base = save_tiny_base(tmp_path / "base", seed=1)
    huge = dict(SMALL, lora={"r": 4, "alpha": 1e30, "dropout": 0.0,
                             "target_modules": ["q_proj", "v_proj"]})
    with pytest.raises(TrainingError, match="grad_norm became inf|loss became nan"):
        train_sft(SftParams(learning_rate=1e-2, **huge), triplet_table(), base,
                  tmp_path / "sft", tmp_path / "live")
    assert not (tmp_path / "sft" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("override", [{"lora": {"alpha": float("inf")}},
                                      {"weight_decay": float("inf")},
                                      {"learning_rate": float("nan")}, {"seed": 2**32}])
def test_non_finite_params_and_oversized_seed_are_rejected(override):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        SftParams(**override)


_RUN_TWICE = """
import sys
from pathlib import Path
from librachem.train.dpo import DpoParams, train_dpo
from librachem.train.sft import SftParams, train_sft
from tests.tiny_model import save_tiny_base
from tests.triplets import triplet_table
root = Path(sys.argv[1])
small = dict(max_steps=2, batch_size=4, max_length=96, check_sample=8,
             lora={"r": 4, "alpha": 8, "dropout": 0.0,
                   "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"]})
base = save_tiny_base(root / "base", seed=1)
train_sft(SftParams(learning_rate=1e-2, **small), triplet_table(), base, root / "sft",
          root / "live_sft")
train_dpo(DpoParams(learning_rate=1e-2, **small), triplet_table(), base, root / "sft",
          root / "dpo", root / "live_dpo", None)
"""


def test_rerun_writes_byte_identical_adapter_folders(tmp_path):
    """Same inputs, different string hash seeds (PEFT writes target_modules in set order) and
    different wall clocks: the sft and dpo folders, which DVC hashes, must not change."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    runs = []
    for seed in ("1", "2"):
        root = tmp_path / "run"
        env = {**os.environ, "PYTHONHASHSEED": seed,
               "PYTHONPATH": os.pathsep.join([str(repo / "src"), str(repo)])}
        subprocess.run([sys.executable, "-c", _RUN_TWICE, str(root)], check=True, env=env,
                       cwd=repo, capture_output=True)
        runs.append({f"{d}/{f.name}": f.read_bytes() for d in ("sft", "dpo")
                     for f in sorted((root / d).iterdir())})
        root.rename(tmp_path / f"run{seed}")
    assert runs[0].keys() == runs[1].keys() and "dpo/adapter_model.safetensors" in runs[0]
    changed = [name for name in runs[0] if runs[0][name] != runs[1][name]]
    assert changed == []


def test_save_reload_gives_identical_logits(trained):
    live = trained["dpo"]["trainer"].model.eval()
    with torch.no_grad():
        expected = live(IDS).logits
        root = trained["root"]
        model, _ = load_aligned(root / "base", root / "sft", root / "dpo", merge=False)
        assert torch.equal(model(IDS).logits, expected)
        merged, _ = load_aligned(root / "base", root / "sft", root / "dpo")
        assert torch.allclose(merged(IDS).logits, expected, atol=1e-5)


def test_composition_equals_manual_adapter_sum(trained):
    """load_aligned == base weights + (alpha/r) B_sft A_sft + (alpha/r) B_dpo A_dpo."""
    from safetensors.torch import load_file

    root = trained["root"]
    manual = load_sft_merged(root / "base", None)
    weights = dict(manual.named_parameters())
    scale = SMALL["lora"]["alpha"] / SMALL["lora"]["r"]
    with torch.no_grad():
        for stage in ("sft", "dpo"):
            adapter = load_file(str(root / stage / "adapter_model.safetensors"))
            a_keys = [k for k in adapter if k.endswith("lora_A.weight")]
            assert len(a_keys) == 4  # q_proj and v_proj of 2 layers
            for a_key in a_keys:
                b = adapter[a_key.replace("lora_A", "lora_B")]
                target = a_key.removeprefix("base_model.model.").replace(".lora_A.weight",
                                                                          ".weight")
                weights[target] += scale * b @ adapter[a_key]
        aligned, _ = load_aligned(root / "base", root / "sft", root / "dpo")
        assert torch.allclose(aligned(IDS).logits, manual(IDS).logits, atol=1e-5)
        sft_only = load_sft_merged(root / "base", root / "sft")
        assert not torch.allclose(aligned(IDS).logits, sft_only(IDS).logits, atol=1e-5)


def test_load_aligned_refuses_wrong_sft(trained):
    root = trained["root"]
    with pytest.raises(TrainingError, match="trained on top of SFT adapter"):
        load_aligned(root / "base", None, root / "dpo")


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "adapter_model.safetensors").write_bytes(
        (d / "adapter_model.safetensors").read_bytes()[:100]), "unreadable adapter"),
    (lambda d: (d / "adapter_model.safetensors").unlink(), "folder is incomplete"),
    (lambda d: (d / "adapter_config.json").write_text("{not json"), "unreadable adapter"),
])
def test_damaged_adapter_folder_is_a_clear_error(trained, tmp_path, damage, message):
    import shutil

    root = trained["root"]
    sft = tmp_path / "sft"
    shutil.copytree(root / "sft", sft)
    damage(sft)
    with pytest.raises(TrainingError, match=message):
        load_aligned(root / "base", sft, None)


def test_adapter_folder_is_replaced_whole_and_keeps_the_template_report(trained):
    root = trained["root"]
    names = {p.name for p in (root / "dpo").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "librachem_config.json",
            "template_check.json", "README.md"} <= names
    assert "training_args.bin" not in names
    assert not list(root.glob(".tmp-*"))  # the temporary sibling was moved into place


def test_dpo_from_base_when_sft_disabled(tmp_path):
    base = save_tiny_base(tmp_path / "base", seed=2)
    table = triplet_table(pairs=4)
    (tmp_path / "ls" / "plots" / "metrics").mkdir(parents=True)
    (tmp_path / "ls" / "plots" / "metrics" / "grad_norm.tsv").write_text("step\tgrad_norm\n0\t1\n")
    train_sft(SftParams(enabled=False, **SMALL), table, base, tmp_path / "sft", tmp_path / "ls")
    assert not (tmp_path / "sft" / "adapter_config.json").exists()
    # the outputs dvc.yaml declares exist, stale curves are gone
    assert json.loads((tmp_path / "ls" / "metrics.json").read_text()) == {"enabled": False,
                                                                         "step": 0}
    assert [p.name for p in (tmp_path / "ls" / "plots" / "metrics").iterdir()] == ["loss.tsv"]
    params = DpoParams(precompute_ref_log_probs=True, format="question_answer",
                       **{**SMALL, "max_steps": 1})
    metrics = train_dpo(params, table, base, tmp_path / "sft", tmp_path / "dpo",
                        tmp_path / "ld", None)
    assert "sft" not in metrics and metrics["dpo"]["steps"] == 1
    assert metrics["dpo"]["loss_first"] == pytest.approx(math.log(2), abs=1e-4)
    model, tok = load_aligned(base, tmp_path / "sft", tmp_path / "dpo")
    assert tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False,
                                   add_generation_prompt=True) == "Question: q\n\nAnswer:"


def test_incomplete_sft_folder_is_refused_not_taken_for_disabled(trained, tmp_path):
    """What a kill during SFT training leaves (the template report, no adapter, no record)
    must not be read as "sft disabled" by dpo or load_aligned."""
    import shutil

    root = trained["root"]
    partial = tmp_path / "sft"
    partial.mkdir()
    shutil.copy2(root / "sft" / "template_check.json", partial)
    with pytest.raises(TrainingError, match="folder is incomplete"):
        load_aligned(root / "base", partial, None)
    with pytest.raises(TrainingError, match="folder is incomplete"):
        train_dpo(DpoParams(**SMALL), triplet_table(), root / "base", partial,
                  tmp_path / "dpo", tmp_path / "ld", None)


def test_a_missing_sft_folder_is_an_error_not_sft_disabled(tmp_path):
    """A kill during the sft stage can leave no models/sft (it removes the old folder first);
    DPO and evaluate must refuse, not silently start from the base model."""
    from librachem.common.adapters import sft_has_adapter

    with pytest.raises(TrainingError, match="does not exist.*dvc repro sft"):
        sft_has_adapter(tmp_path / "sft")
    assert sft_has_adapter(None) is False
