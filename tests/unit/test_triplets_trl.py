"""The triplet shards go into TRL 1.16's DPOTrainer as loaded, with no conversion code."""

from __future__ import annotations

import math

import pytest

from librachem.generate.stage import GenerateParams, run_generate
from librachem.llm.fake import FakeClient
from tests.fakes import generator, tiny_seeds


@pytest.mark.slow
def test_dpo_trainer_takes_shards_straight_from_load_dataset(tmp_path):
    import datasets
    from trl import DPOConfig, DPOTrainer

    from tests.tiny_model import tiny_model, tiny_tokenizer

    seeds = tiny_seeds(tmp_path / "seeds.parquet")
    params = GenerateParams.model_validate({"generator": {"backend": "fake"}})
    run_generate(seeds, tmp_path / "trip", tmp_path / "data.json", params,
                 FakeClient(generator))
    train = datasets.load_dataset(
        "parquet", data_files={"train": str(tmp_path / "trip" / "train-*.parquet")})["train"]
    args = DPOConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                     max_length=128, use_cpu=True, bf16=False, report_to=[], save_strategy="no",
                     dataloader_pin_memory=False, logging_steps=1)
    trainer = DPOTrainer(model=tiny_model(), ref_model=tiny_model(), args=args,
                         train_dataset=train, processing_class=tiny_tokenizer())
    result = trainer.train()
    assert result.global_step == 2
    assert math.isfinite(result.training_loss)
