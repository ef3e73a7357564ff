"""Compose the aligned model: base weights + SFT LoRA + DPO LoRA, the way training saw them.

The ``dpo`` stage trains its adapter on top of ``base + SFT`` with the SFT adapter merged into the
fp32 base weights (so the DPO reference, "the policy with the DPO adapter disabled", is exactly the
SFT model). :func:`load_aligned` rebuilds the same thing: merge the SFT adapter in fp32, then apply
the DPO adapter (on a GPU: in bf16; under QLoRA training: merged into the 4-bit layers, see
:func:`load_sft_merged`). It refuses a DPO adapter that was trained on a different SFT adapter (or on none)
than the one given, since the result would be a model nobody trained.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from librachem.common.errors import TrainingError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: The effective config the sft/dpo stages write into every adapter folder.
EFFECTIVE_CONFIG = "librachem_config.json"


def apply_adapter(model: Any, adapter_dir: Path | str) -> Any:
    """``PeftModel.from_pretrained(model, adapter_dir)`` with a clear error for a damaged
    folder (missing or truncated weights, unreadable ``adapter_config.json``) and for weights
    that do not match the model (:func:`check_adapter_keys`).

    Raises:
        TrainingError: the adapter cannot be loaded, or its weight names do not match the
            model's adapter modules; the message names the folder and cause.
    """
    from peft import PeftModel

    folder = Path(adapter_dir)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise TrainingError(f"{folder}: {ADAPTER_CONFIG} without {ADAPTER_WEIGHTS}; the adapter "
                            "folder is incomplete (rerun its stage, or `dvc checkout`)")
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder))
    except Exception as exc:  # noqa: BLE001 - safetensors, json, HF validation, shape errors
        raise TrainingError(f"{folder}: unreadable adapter ({type(exc).__name__}: "
                            f"{str(exc)[:300]}); rerun its stage, or `dvc checkout`") from exc
    check_adapter_keys(peft_model, folder)
    return peft_model


def check_adapter_keys(peft_model: Any, adapter_dir: Path | str) -> None:
    """Fail unless the saved adapter weights are exactly the adapter tensors of the model.

    PEFT only warns about missing adapter keys and ignores unexpected ones: an adapter whose
    weight names do not match the model (another architecture, a renamed prefix, a different
    ``target_modules``) loads as freshly initialised LoRA layers (B = 0), so the "aligned"
    model is the base model and the metrics show no change for the wrong reason (issue 18).
    The saved names are compared with ``get_peft_model_state_dict`` of the loaded model (the
    names PEFT itself saves).

    Raises:
        TrainingError: missing or unexpected adapter keys (counts and a few names).
    """
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    with safe_open(str(Path(adapter_dir) / ADAPTER_WEIGHTS), framework="pt") as fh:
        saved = set(fh.keys())
    expected = set(get_peft_model_state_dict(peft_model).keys())
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if missing or unexpected:
        raise TrainingError(
            f"{adapter_dir}: the adapter weights do not match the model: {len(missing)} "
            f"missing adapter keys {missing[:3]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:3]}; loaded anyway it would leave the model unchanged. Was it "
            "trained on another base model or with other lora.target_modules? Rerun its stage.")


def has_adapter(adapter_dir: Path | str | None) -> bool:
    """True when ``adapter_dir`` holds a PEFT adapter (a disabled ``sft`` stage writes none)."""
    return adapter_dir is not None and (Path(adapter_dir) / ADAPTER_CONFIG).is_file()


def sft_has_adapter(sft_dir: Path | str | None) -> bool:
    """Whether the ``sft`` stage's folder holds an adapter: True for an adapter, False for
    ``None`` (no SFT asked for) or a stage that ran with ``enabled: false`` (its effective
    config says so).

    Raises:
        TrainingError: the folder is missing or holds neither (a killed or failed sft run:
            the stage removes its old folder first). A missing folder is not read as "SFT
            disabled": the stage always writes one, so DPO would silently start from the
            base model.
    """
    if sft_dir is None or has_adapter(sft_dir):
        return sft_dir is not None
    if not Path(sft_dir).exists():
        raise TrainingError(f"SFT folder {sft_dir} does not exist: the sft stage did not "
                            "finish (killed or failed?). Run `dvc repro sft` or `dvc checkout "
                            "models/sft`; to train DPO from the base model set "
                            "`sft.enabled: false`.")

    config = Path(sft_dir) / EFFECTIVE_CONFIG
    try:
        import json

        disabled = json.loads(config.read_text("utf-8"))["summary"]["enabled"] is False
    except (OSError, ValueError, KeyError, TypeError):
        disabled = False
    if not disabled:
        raise TrainingError(f"{sft_dir}: neither an SFT adapter nor the record of a disabled "
                            "sft stage; the folder is incomplete (a killed or failed run?). "
                            "Rerun `dvc repro sft` or `dvc checkout models/sft`.")
    return False


def adapter_digest(adapter_dir: Path | str | None) -> str | None:
    """sha256 of the adapter weights, or None when there is no adapter."""
    from librachem.common.hashing import sha256_file

    if not has_adapter(adapter_dir):
        return None
    weights = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise TrainingError(f"{adapter_dir}: {ADAPTER_CONFIG} without {ADAPTER_WEIGHTS}")
    return sha256_file(weights)


def load_sft_merged(base_dir: Path | str, sft_dir: Path | str | None = None, *,
                    dtype: Any = None, device_map: Any = None,
                    quantization_config: Any = None) -> Any:
    """Base model with the SFT adapter (if any) merged into its weights.

    Args:
        dtype: torch dtype to load and merge in (default fp32: the CPU path). On a GPU, bf16
            (the stored dtype of an 8B base; half the memory of fp32).
        device_map: passed to ``from_pretrained`` (e.g. ``{"": local_rank}``); None = CPU.
        quantization_config: a ``BitsAndBytesConfig`` (QLoRA): the stored weights are
            quantized while loading (no re-save) and the SFT adapter is merged by PEFT into
            the 4-bit layers (each layer dequantized, the LoRA delta added in ``dtype``,
            re-quantized; PEFT warns of the rounding).

    Returns:
        A plain ``PreTrainedModel`` (no PEFT wrapper), eval mode.

    Raises:
        TrainingError: ``base_dir`` is not a model folder.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if not (Path(base_dir) / "config.json").is_file():
        raise TrainingError(f"{base_dir}: not a Hugging Face model folder (no config.json); "
                            "run the base_model stage first")
    kwargs: dict[str, Any] = {}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype or torch.float32, **kwargs)
    if sft_has_adapter(sft_dir):
        model = merge_into_base(apply_adapter(model, sft_dir))
        log.info("merged SFT adapter %s into %s", sft_dir, base_dir)
    return model.eval()


def merge_into_base(peft_model: Any) -> Any:
    """``peft_model.merge_and_unload()``, also on DeepSpeed ZeRO-3 partitioned weights.

    Without ZeRO-3 this is PEFT's ``merge_and_unload()`` itself. Under ZeRO-3 with
    ``zero3_init_flag`` each rank holds a slice of every base weight (``deepspeed.zero.Init``)
    and PEFT's in-place merge fails on the empty placeholder, so each LoRA layer is merged
    inside ``GatheredParameters(<its base layer's parameters>, modifier_rank=0)`` (PEFT's
    ``gather_params_ctx``): one layer's full weights at a time, rank 0's merged copy
    re-partitioned on exit; then the LoRA wrappers are removed (``unload``). The result equals
    ``merge_and_unload()`` bit for bit (tests/unit/test_zero3.py).

    Returns:
        The base ``PreTrainedModel`` with the adapter's deltas in its weights.

    Raises:
        TrainingError: under ZeRO-3, an adapter with more than LoRA layers
            (``modules_to_save``, trainable tokens), which ``unload`` would drop.
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import check_deepspeed_zero3_enabled, gather_params_ctx
    from peft.utils.other import AuxiliaryTrainingWrapper

    if not check_deepspeed_zero3_enabled():
        return peft_model.merge_and_unload()
    if any(isinstance(m, AuxiliaryTrainingWrapper) for m in peft_model.modules()):
        raise TrainingError("the SFT adapter trains modules_to_save or token rows: merging it "
                            "under ZeRO-3 is not supported; use FSDP or one GPU")
    peft_model.base_model._check_merge_allowed()
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            with gather_params_ctx(list(module.get_base_layer().parameters()), modifier_rank=0):
                module.merge()
    return peft_model.unload()


def _tokenizer_dir(*dirs: Path | str | None) -> Path:
    for folder in dirs:
        if folder is not None and (Path(folder) / "tokenizer_config.json").is_file():
            return Path(folder)
    raise TrainingError(f"no tokenizer in any of {[str(d) for d in dirs if d]}")


def load_aligned(base_dir: Path | str, sft_dir: Path | str | None = None,
                 dpo_dir: Path | str | None = None, *, merge: bool = True,
                 dtype: Any = None, device: str | None = None) -> tuple[Any, Any]:
    """Load the aligned model: base + SFT (merged) + DPO adapter.

    Args:
        base_dir: HF folder of the base model (``models/base``).
        sft_dir: the ``sft`` stage output (``models/sft``); a disabled stage's folder holds no
            adapter and adds nothing.
        dpo_dir: the ``dpo`` stage output (``models/dpo``), or None for the SFT-only model.
        merge: merge the DPO adapter into the weights too (faster inference); False keeps a
            ``PeftModel`` (e.g. to compare with the adapter disabled).
        dtype: cast the composed model to this torch dtype (composition is done in fp32),
            or, with ``device``, the dtype to load and compose in.
        device: ``"cuda"``: load the base straight onto the GPU in ``dtype`` (bf16: no fp32
            copy in host memory) and compose there; None = CPU (composition in fp32).

    Returns:
        (model in eval mode, tokenizer). The tokenizer comes from the last adapter folder, so it
        carries the chat template the adapters were trained with.

    Raises:
        TrainingError: the DPO adapter was trained on another SFT adapter (or on none) than the
            one given, or a folder is not what it should be.
    """

    if dpo_dir is not None:
        record = read_effective_config(dpo_dir)
        trained_on = record.get("inputs", {}).get("sft_adapter_sha256")
        given = adapter_digest(sft_dir)
        if trained_on != given:
            raise TrainingError(
                f"{dpo_dir} was trained on top of SFT adapter {str(trained_on)[:12]} but the SFT "
                f"folder given ({sft_dir}) holds {str(given)[:12]}; pass the sft_dir used in training")
    if device is not None:
        model = load_sft_merged(base_dir, sft_dir, dtype=dtype, device_map=device)
    else:
        model = load_sft_merged(base_dir, sft_dir)
    if has_adapter(dpo_dir):
        model = apply_adapter(model, dpo_dir)
        if merge:
            model = model.merge_and_unload()
    if dtype is not None:
        model = model.to(dtype)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_dir(dpo_dir, sft_dir, base_dir))
    return model.eval(), tokenizer


def read_effective_config(adapter_dir: Path) -> dict[str, Any]:
    """The adapter folder's ``librachem_config.json`` (params, inputs, summary, versions).

    Raises:
        TrainingError: the folder holds no effective config.
    """
    path = Path(adapter_dir) / EFFECTIVE_CONFIG
    if not path.is_file():
        raise TrainingError(f"{adapter_dir}: no {EFFECTIVE_CONFIG}; not an adapter written by "
                            "the sft/dpo stage")
    return json.loads(path.read_text(encoding="utf-8"))
