"""The sft and dpo Click stages on a tiny model and a tiny shard set (no hub, CPU)."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from tests.tiny_model import save_tiny_base
from tests.triplets import triplet_table

pytestmark = pytest.mark.slow

TINY = {"max_steps": 2, "batch_size": 2, "max_length": 96, "check_sample": 4,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}}


@pytest.fixture
def workspace(tmp_path):
    from librachem.common.shards import write_shards

    table = triplet_table(pairs=4)
    write_shards(tmp_path / "augmented", {"all": table}, table.schema)
    save_tiny_base(tmp_path / "base")
    return tmp_path


def _params(path, sft=None, dpo=None):
    path.write_text(yaml.safe_dump({"sft": {**TINY, **(sft or {})},
                                    "dpo": {**TINY, **(dpo or {})}}))
    return path


def _run(command, ws, *args):
    result = CliRunner().invoke(command, ["--params", str(ws / "params.yaml"), "--data",
                                          str(ws / "augmented"), "--base", str(ws / "base"),
                                          *args], catch_exceptions=False)
    return result


def test_sft_then_dpo_stage(workspace):
    from stages.dpo import main as dpo_main
    from stages.sft import main as sft_main

    import pyarrow as pa

    from librachem.common.shards import write_shards

    ws = workspace
    # degenerate rows (issue 18 point 5): an identical pair (after case/whitespace
    # normalisation) and a prompt that leaves < min_completion_tokens of max_length
    rows = triplet_table(pairs=4).to_pylist()
    rows.append({**rows[0], "prompt": "How is compound Z prepared?",
                 "rejected": "  " + rows[0]["chosen"].upper()})
    rows.append({**rows[0], "prompt": "Describe compound L0 " + "in detail " * 20})
    write_shards(ws / "augmented", {"all": pa.Table.from_pylist(rows)}, pa.Table.from_pylist(
        rows).schema)
    _params(ws / "params.yaml", sft={"max_drop_rate": 0.5, "min_completion_tokens": 24},
            dpo={"max_drop_rate": 0.5, "min_completion_tokens": 24})
    result = _run(sft_main, ws, "--out", str(ws / "sft"), "--live", str(ws / "m_sft"))
    assert result.exit_code == 0, result.output
    assert (ws / "sft" / "adapter_model.safetensors").is_file()
    assert (ws / "m_sft" / "plots" / "metrics" / "loss.tsv").is_file()
    result = _run(dpo_main, ws, "--sft", str(ws / "sft"), "--out", str(ws / "dpo"),
                  "--live", str(ws / "m_dpo"), "--summary", str(ws / "train.json"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((ws / "train.json").read_text())
    assert metrics["dpo"]["steps"] == 2 and metrics["sft"]["steps"] == 2
    assert metrics["dpo"]["rows_used"] == 8  # the 'test' split is not trained on
    assert metrics["dpo"]["dropped_identical_pair"] == 1
    assert metrics["dpo"]["dropped_completion_budget_below_min"] == 1
    assert metrics["dpo"]["rows_dropped"] == 2
    # SFT trains on chosen only: an identical pair is still a valid SFT example
    assert metrics["sft"]["rows_used"] == 9 and metrics["sft"]["dropped_identical_pair"] == 0
    assert metrics["sft"]["dropped_completion_budget_below_min"] == 1
    for key in ("rewards/margins", "rewards/accuracies", "learning_rate"):
        assert (ws / "m_dpo" / "plots" / "metrics" / f"{key}.tsv").is_file()


@pytest.mark.parametrize(("dpo", "message"), [
    ({"lora": {"target_modules": ["q_proj", "c_attn"]}}, "['c_attn'] match no module"),
    ({"max_length": 16}, "unfit for training"),
    ({"loss_weights": [1.0, 2.0]}, "one weight per loss_type"),
])
def test_dpo_stage_bad_params_fail_cleanly(workspace, dpo, message):
    from librachem.train.sft import SftParams, train_sft
    from stages.dpo import main as dpo_main

    ws = workspace
    _params(ws / "params.yaml", dpo=dpo)
    # DPO from the base model: the folder a disabled sft stage writes
    train_sft(SftParams(enabled=False), None, ws / "base", ws / "nosft", ws / "m_nosft")
    result = _run(dpo_main, ws, "--sft", str(ws / "nosft"), "--out", str(ws / "dpo"),
                  "--live", str(ws / "m"), "--summary", str(ws / "t.json"))
    assert result.exit_code == 1
    assert message in result.output
    assert not (ws / "dpo" / "adapter_model.safetensors").exists()


def test_dpo_stage_refuses_data_without_manifest(workspace):
    from stages.dpo import main as dpo_main

    ws = workspace
    _params(ws / "params.yaml")
    (ws / "augmented" / "manifest.json").unlink()
    result = _run(dpo_main, ws, "--sft", str(ws / "nosft"), "--out", str(ws / "dpo"),
                  "--live", str(ws / "m"), "--summary", str(ws / "t.json"))
    assert result.exit_code == 1 and "SchemaError" in result.output


def test_template_check_failure_stops_training(workspace, monkeypatch):
    """A collator that masks labels where input == pad (= eos) is caught before training."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from stages.sft import main as sft_main

    original = DataCollatorForLanguageModeling.torch_call

    def pad_eq_eos_bug(self, examples):
        out = original(self, examples)
        out["labels"] = out["labels"].masked_fill(out["input_ids"] == self.pad_token_id, -100)
        return out

    monkeypatch.setattr(DataCollatorForLanguageModeling, "torch_call", pad_eq_eos_bug)
    ws = workspace
    _params(ws / "params.yaml")
    result = _run(sft_main, ws, "--out", str(ws / "sft"), "--live", str(ws / "m"))
    assert result.exit_code == 1 and "masked_eos" in result.output
    report = json.loads((ws / "sft" / "template_check.json").read_text())
    assert report["ok"] is False and report["counts"]["masked_eos"] == 4
    assert not (ws / "sft" / "adapter_model.safetensors").exists()
