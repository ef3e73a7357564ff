"""Why LLM calls failed: one cause per failed completion, counted per stage, and the
failure-rate gate every LLM stage applies (generate, augment, evaluate's baselines).

A failed :class:`~librachem.llm.base.Completion` carries its reason in ``error``; the
backends write it with a fixed prefix (:mod:`librachem.llm.openai_backend`), read back here:

=================  ==========================================================
cause              ``error`` starts with (after ``gave up after N attempts: ``)
=================  ==========================================================
``connection``     ``connection error``
``timeout``        ``timeout``
``rate_limit``     ``HTTP 429`` (past ``rate_limit_deadline_s``)
``http_5xx``       ``HTTP 5..`` (and 408)
``http_4xx``       ``HTTP 4..`` (the server's message follows)
``malformed``      ``malformed response`` / ``empty content``
``content_filter`` ``content_filter``
``parse_error``    ``json:`` (a JSON-schema reply that never validated)
``other``          anything else (e.g. a fake script's exception)
=================  ==========================================================

``exhausted_retries`` counts, across causes, the failures that were retried until the bound
(``max_retries``, or the deadline for 429s) ran out.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from librachem.common.errors import QualityGateError
from librachem.llm.base import Completion

CAUSES = ("connection", "timeout", "rate_limit", "http_5xx", "http_4xx", "malformed",
          "content_filter", "parse_error", "other")

_GAVE_UP = re.compile(r"^gave up after (\d+) attempts(?: \([^)]*\))?: ")
_HTTP = re.compile(r"^HTTP (\d{3})")


def error_cause(error: str) -> str:
    """The cause (one of :data:`CAUSES`) of a failure reason or retry reason."""
    text = _GAVE_UP.sub("", error, count=1)
    if text.startswith("connection error"):
        return "connection"
    if text.startswith("timeout"):
        return "timeout"
    m = _HTTP.match(text)
    if m:
        status = int(m.group(1))
        if status == 429:
            return "rate_limit"
        return "http_5xx" if status >= 500 or status == 408 else "http_4xx"
    if text.startswith(("malformed response", "empty content")):
        return "malformed"
    if text.startswith("content_filter"):
        return "content_filter"
    if text.startswith("json:"):
        return "parse_error"
    return "other"


def failure_cause(c: Completion) -> str | None:
    """The cause of a failed completion, ``None`` for a good one."""
    if c.ok:
        return None
    if c.finish_reason == "content_filter":
        return "content_filter"
    if c.finish_reason == "parse_error":
        return "parse_error"
    return error_cause(c.error or "")


def exhausted(c: Completion) -> bool:
    """True when ``c`` failed after its retries ran out (``gave up after N>1 attempts``)."""
    m = _GAVE_UP.match(c.error or "")
    return bool(m) and int(m.group(1)) > 1


class FailureLog:
    """Failed calls by cause with the last error text of each, and retries by cause."""

    def __init__(self) -> None:
        self.by_cause: Counter[str] = Counter()
        self.last_error: dict[str, str] = {}
        self.exhausted = 0
        self.retries: Counter[str] = Counter()
        self.last_retry_error: dict[str, str] = {}

    def add(self, c: Completion) -> None:
        cause = failure_cause(c)
        if cause is None:
            return
        self.by_cause[cause] += 1
        self.last_error[cause] = (c.error or c.finish_reason)[:500]
        self.exhausted += exhausted(c)

    def retry(self, reason: str) -> None:
        cause = error_cause(reason)
        self.retries[cause] += 1
        self.last_retry_error[cause] = reason[:500]

    def report(self, attempts: int, retries: int) -> dict[str, Any]:
        """JSON-ready: ``failed_by_cause`` (every cause, 0 when none), ``last_error``
        (cause -> text, failed causes only), ``exhausted_retries``, ``attempts`` (HTTP
        attempts, or backend calls for local/fake), ``retries``, ``retries_by_cause``,
        ``last_retry_error``."""
        return {"failed_by_cause": {k: int(self.by_cause.get(k, 0)) for k in CAUSES},
                "last_error": dict(sorted(self.last_error.items())),
                "exhausted_retries": int(self.exhausted),
                "attempts": int(attempts), "retries": int(retries),
                "retries_by_cause": {k: int(v) for k, v in sorted(self.retries.items())},
                "last_retry_error": dict(sorted(self.last_retry_error.items()))}


def summary(report: dict[str, Any]) -> str:
    """One line for an error message: causes with counts and last error, attempts, retries."""
    causes = [f"{k} {n} (last: {report['last_error'].get(k, '?')})"
              for k, n in report["failed_by_cause"].items() if n]
    text = "; ".join(causes) if causes else "no failed calls"
    return (f"{text}; {report['attempts']} attempts, {report['retries']} retries, "
            f"{report['exhausted_retries']} gave up after retrying")


def check_failure_rate(stage: str, key: str, client: Any, max_rate: float, where: Any,
                       *, exclude_parse_failures: bool = False) -> None:
    """The LLM failure-rate gate: raise when more than ``max_rate`` of ``client``'s calls
    failed for good.

    Args:
        stage: stage name for the message. key: the params key of ``max_rate`` (e.g.
            ``augment.max_llm_failure_rate``). client: a client with ``stats()`` (and,
            optionally, ``failure_report()``). where: file or folder to point the user at.
        exclude_parse_failures: do not count JSON parse failures (a judge's unparseable
            replies have a gate of their own).

    Raises:
        QualityGateError: naming failed/total calls, the rate, the bound, and the failures
            by cause with the last error of each.
    """
    stats = client.stats() if hasattr(client, "stats") else {}
    calls = stats.get("calls", 0)
    failed = stats.get("failures", 0) - (stats.get("parse_failures", 0)
                                         if exclude_parse_failures else 0)
    if not calls or failed / calls <= max_rate:
        return
    detail = (summary(client.failure_report()) if hasattr(client, "failure_report")
              else "no detail")
    raise QualityGateError(
        f"{stage}: {int(failed)} of {int(calls)} LLM calls failed for good (rate "
        f"{failed / calls:.3f} > {key} {max_rate}): {detail}. Finished calls are cached; a "
        f"rerun repeats only the failed ones. See {where}")
