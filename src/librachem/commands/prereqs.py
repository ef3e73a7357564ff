"""What a params file needs from the machine, checked before anything is paid for.

``librachem check-params`` validates every section, then asks :func:`missing_prerequisites`:

* ``sft.qlora`` / ``dpo.qlora``: a CUDA GPU and the ``bitsandbytes`` package
  (``pip install -e '.[gpu]'``);
* every ``openai`` endpoint (``generate.generator``, ``augment.rephraser``,
  ``evaluate.judge.llm``, ``evaluate.baselines[*].llm``): its ``api_key_env`` variable set;
* a hub id in ``base_model.pretrained``: ``HF_TOKEN`` in the environment (gated models such as
  ``meta-llama/*`` need it; it is read from the environment only) and no offline switch set.

Only names are reported, never a key's value.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any


def missing_prerequisites(sections: dict[str, Any]) -> list[str]:
    """One line per missing prerequisite of the validated ``sections`` (empty: all present).

    Args:
        sections: section name -> validated params model (:func:`~librachem.common.config.validate_all`).
    """
    from librachem.llm.keys import missing_keys

    out: list[str] = []
    qlora = [name for name in ("sft", "dpo") if name in sections
             and getattr(sections[name], "qlora", False)
             and getattr(sections[name], "enabled", True)]
    if qlora:
        import torch

        where = " / ".join(f"{n}.qlora" for n in qlora)
        if not torch.cuda.is_available():
            out.append(f"CUDA GPU: {where} is true but torch sees no CUDA device "
                       "(train on a GPU machine, or set qlora: false)")
        if importlib.util.find_spec("bitsandbytes") is None:
            out.append(f"bitsandbytes: {where} needs it; pip install -e '.[gpu]'")
    blocks: list[tuple[str, Any]] = []
    if "generate" in sections:
        blocks.append(("generate.generator", sections["generate"].generator))
    if "augment" in sections:
        blocks.append(("augment.rephraser", sections["augment"].rephraser))
    if "evaluate" in sections:
        ev = sections["evaluate"]
        blocks.append(("evaluate.judge.llm", ev.judge.llm))
        blocks += [(f"evaluate.baselines[{b.name}].llm", b.llm) for b in ev.baselines]
    out += [f"API key: {m} is not set" for m in missing_keys(blocks)]
    base = sections.get("base_model")
    pretrained = getattr(base, "pretrained", None)
    if pretrained:
        from librachem.base_model.hub import is_hub_id
        from librachem.common.stagecli import user_offline_var

        if is_hub_id(pretrained):
            if not os.environ.get("HF_TOKEN"):
                out.append(f"HF_TOKEN: base_model.pretrained = {pretrained!r} is a hub id; gated "
                           "models (e.g. meta-llama/*) need HF_TOKEN of an account that accepted "
                           "the licence (export it; never put it in params.yaml)")
            var = user_offline_var()
            if var is not None:
                out.append(f"hub access: {var} is set, so base_model cannot download "
                           f"{pretrained!r}; unset it")
    return out
