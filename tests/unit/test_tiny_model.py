"""The shared tokenizer fixture and tiny model helper behave as other tests assume."""

import torch

from tests.tiny_model import save_tiny_base, tiny_model, tiny_tokenizer


def test_fixture_tokenizer_is_smollm2_chatml():
    tok = tiny_tokenizer()
    assert len(tok) == 49152
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.pad_token_id == tok.eos_token_id  # the pad = eos trap the template check guards
    assert tok.model_max_length == 2048
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")


def test_tiny_model_roundtrip(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = tiny_model(seed=3)
    assert model.config.vocab_size == len(tiny_tokenizer())
    save_tiny_base(tmp_path, seed=3)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.tensor([[1, 28120, 905, 2]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert AutoTokenizer.from_pretrained(tmp_path).eos_token_id == 2
