"""Check every configured endpoint's API key when a stage starts, before any work.

The ``openai`` backend reads its key from the environment variable ``api_key_env`` only when
its first request misses the call cache, which in ``evaluate`` comes after every local model
has generated. :func:`require_keys` names all missing keys at once, at the start. A replay-only
run (``LIBRACHEM_REPLAY_ONLY=1``) is not checked: it never calls an endpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from librachem.common.errors import LLMError
from librachem.llm.config import LLMParams


def api_key(params: LLMParams) -> str:
    """The key from the environment variable ``params.api_key_env`` (never from params).

    Raises:
        LLMError: the variable is unset or empty; the message says how to set it.
    """
    key = os.environ.get(params.api_key_env, "")
    if not key:
        raise LLMError(
            f"the environment variable {params.api_key_env} is not set. Export your API key "
            f"there (`export {params.api_key_env}=...`); for a local server without auth any "
            "value works. Keys are read only from the environment, never from params.")
    return key


def missing_keys(blocks: Iterable[tuple[str, LLMParams | None]]) -> list[str]:
    """``"<where>: <VAR>"`` for each ``openai`` block whose key variable is unset or empty.

    Args:
        blocks: ``(params path, LLM block or None)`` pairs, e.g.
            ``("evaluate.judge.llm", params.judge.llm)``.
    """
    return [f"{where}: {p.api_key_env}" for where, p in blocks
            if p is not None and p.backend == "openai" and not os.environ.get(p.api_key_env)]


def require_keys(blocks: Iterable[tuple[str, LLMParams | None]], *,
                 replay_only: bool = False) -> None:
    """Raise before any work when an ``openai`` endpoint's key variable is not set.

    Raises:
        LLMError: names every block and variable missing (never a key's value). For a local
            OpenAI-compatible server without auth, set the variable to any value.
    """
    if replay_only:
        return
    missing = missing_keys(blocks)
    if missing:
        raise LLMError("API key not set for " + "; ".join(missing) + ". Export it (`export "
                       "VAR=...`) before the stage starts; nothing was run. For a local "
                       "OpenAI-compatible server without auth, any value works.")
