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

# Nothing reaches the network at run time except a configured LLM endpoint.
for _var, _val in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                   ("HF_DATASETS_OFFLINE", "1"), ("DVC_NO_ANALYTICS", "1"),
                   ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_var, _val)


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
