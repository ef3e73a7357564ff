"""Glue shared by the stage scripts in ``stages/``: one error boundary, logging set-up."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from librachem.common.errors import LibrachemError

F = TypeVar("F", bound=Callable[..., Any])

#: Hugging Face offline switches this module defaults to "1" when the user has not set them.
HUB_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
#: The variables set here (not by the user), with the value set: the ``base_model`` stage lifts
#: only these for a hub download (:func:`lift_hub_offline_defaults`); a user's own
#: ``HF_HUB_OFFLINE=1`` is never overridden.
DEFAULTED: dict[str, str] = {}

# Nothing reaches the network at run time except a configured LLM endpoint (and, in the
# base_model stage, the hub for a hub id). Defaults only: an explicit environment wins.
for _var, _val in (*((v, "1") for v in HUB_OFFLINE_VARS), ("DVC_NO_ANALYTICS", "1"),
                   ("TOKENIZERS_PARALLELISM", "false")):
    if _var not in os.environ:
        os.environ[_var] = _val
        DEFAULTED[_var] = _val


def user_offline_var() -> str | None:
    """The hub offline variable the *user* set to a true value (``1``/``true``/``yes``/
    ``on``), or None when hub access is only off by this module's default."""
    for var in HUB_OFFLINE_VARS[:2]:  # the two that huggingface_hub reads
        value = os.environ.get(var)
        if value is None or DEFAULTED.get(var) == value:
            continue
        if value.strip().lower() in {"1", "true", "yes", "on"}:
            return var
    return None


def lift_hub_offline_defaults() -> None:
    """Undo this module's offline defaults (never a user's own setting), for a hub download.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import; when it is already imported its
    constant is updated too (the user did not ask for offline: :func:`user_offline_var`)."""
    import sys

    for var in HUB_OFFLINE_VARS:
        if var in DEFAULTED and os.environ.get(var) == DEFAULTED[var]:
            del os.environ[var]
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and user_offline_var() is None:
        constants.HF_HUB_OFFLINE = False


def stage_main(func: F) -> F:
    """Decorate a Click command body: configure logging, turn
    :class:`~librachem.common.errors.LibrachemError` into ``click.ClickException`` (exit 1),
    and, after a successful body, fail with "params changed during the run, rerun" when a
    params section the body read (:func:`~librachem.common.config.load_section`) was edited
    while it ran (:func:`~librachem.common.config.check_params_unchanged`)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from librachem.common.config import check_params_unchanged, forget_sections_read

        logging.basicConfig(level=os.environ.get("LIBRACHEM_LOG", "INFO"),
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        forget_sections_read()
        try:
            result = func(*args, **kwargs)
            check_params_unchanged()
            return result
        except LibrachemError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc

    return wrapper  # type: ignore[return-value]
