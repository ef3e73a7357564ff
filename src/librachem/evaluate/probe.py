"""The adapter probe: every adapter model must answer a fixed prompt differently from the
base model.

An adapter that silently does not load (PEFT only warns about missing keys; a no-op LoRA
with B = 0) leaves the "sft" or "dpo" model exactly equal to the base model, and the
metrics would show no change for the wrong reason (issue 18). Next-token logits on one fixed
prompt catch it in one forward pass per model: a LoRA update that changes nothing there is
not credible, while the same weights give the same logits bit for bit on the same device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from librachem.common.errors import TrainingError

#: The fixed probe (a legitimate request; the answer is never generated or stored).
PROBE_PROMPT = "How is aspirin prepared from salicylic acid?"
#: Largest |logit difference| still read as "the same model" (float noise of one device).
SAME_MODEL_TOL = 1e-6


def probe_logits(model: Any, tokenizer: Any) -> Any:
    """fp32 next-token logits (vocabulary,) of ``model`` on :data:`PROBE_PROMPT` rendered
    with the tokenizer's chat template and generation prompt, on the model's device."""
    import torch

    from librachem.common.chat_format import render_prompt

    ids = tokenizer(render_prompt(tokenizer, PROBE_PROMPT), add_special_tokens=False,
                    return_tensors="pt")["input_ids"]
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=ids.to(device)).logits[0, -1].float().cpu()


def probing(loader: Callable[[str], tuple[Any, Any]],
            store: dict[str, Any]) -> Callable[[str], tuple[Any, Any]]:
    """Wrap a model loader so each model it loads leaves its probe logits in ``store``."""
    def load(name: str) -> tuple[Any, Any]:
        model, tokenizer = loader(name)
        store[name] = probe_logits(model, tokenizer)
        return model, tokenizer
    return load


def check_adapters_change_the_model(logits: dict[str, Any], base: Any) -> dict[str, float]:
    """Max |logit difference| of each adapter model (every key but ``base``) from ``base``.

    Returns:
        ``{model name: max abs difference}`` (recorded in ``eval_config.json``).

    Raises:
        TrainingError: an adapter model's probe logits equal the base model's (within
            :data:`SAME_MODEL_TOL`): its adapter did not change the model.
    """
    out: dict[str, float] = {}
    for name, value in logits.items():
        if name == "base":
            continue
        diff = float((value - base).abs().max())
        if diff <= SAME_MODEL_TOL:
            raise TrainingError(
                f"evaluate: the {name} model gives the base model's output on the probe "
                f"prompt (max |logit difference| {diff:.2e}): its adapter did not change the "
                "model (weights not loaded, or a LoRA that was never trained). Check the "
                f"adapter folder of {name} and rerun its stage. Nothing was written.")
        out[name] = round(diff, 4)
    return out
