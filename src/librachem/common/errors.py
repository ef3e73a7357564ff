"""The one exception family of librachem.

`src/` raises these; every stage script catches :class:`LibrachemError` once and turns it
into a ``click.ClickException`` (clean message, exit code 1).
"""


class LibrachemError(Exception):
    """Base class of every error librachem raises on purpose."""


class ConfigError(LibrachemError):
    """A params value is missing, unknown, of the wrong type or out of range."""


class DataError(LibrachemError):
    """Input data is malformed: bad CSV row, invalid SMILES, duplicate, corrupt shard."""


class SchemaError(DataError):
    """A table does not match its declared pyarrow schema, or a manifest is missing."""


class LLMError(LibrachemError):
    """An LLM call failed for good (non-retryable 4xx, retries exhausted, missing key)."""


class CacheMissError(LLMError):
    """Replay-only mode asked for a request the call cache does not hold."""


class JudgeParseError(LibrachemError):
    """A judge reply could not be parsed into a verdict."""


class QualityGateError(LibrachemError):
    """Too many rows were dropped by the quality gates (drop rate over the threshold)."""


class TrainingError(LibrachemError):
    """Training cannot start or went wrong (template check failed, bad LoRA target, ...)."""
