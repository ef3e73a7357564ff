"""Token prices from the versioned table ``librachem/resources/prices.yaml``.

Cost is never guessed: a model missing from the table has no price (``None``); callers count
such calls as *unpriced* instead of adding a made-up number (or a NaN) to the cost.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from librachem.common.config import read_yaml
from librachem.common.errors import ConfigError


class Price(BaseModel):
    """US dollars per one million input (prompt) and output (completion) tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input_per_m: float = Field(ge=0)
    output_per_m: float = Field(ge=0)


class PriceTable(BaseModel):
    """The whole price file: ``version``, ``as_of`` date, ``source``, ``currency``, ``models``
    and ``aliases`` (dated snapshot -> the family entry with the same list price)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int
    as_of: str
    source: str
    currency: str = "USD"
    #: share of the list price the Batch API takes off (OpenAI pricing: "Batch API: save
    #: 50% on inputs and outputs"); used by :meth:`for_batch`.
    batch_discount: float = Field(default=0.5, ge=0, le=1)
    models: dict[str, Price]
    aliases: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _aliases_resolve(self) -> PriceTable:
        for alias, target in self.aliases.items():
            if target not in self.models:
                raise ValueError(f"alias {alias!r} -> {target!r}: no such model entry")
            if alias in self.models:
                raise ValueError(f"{alias!r} is both a model entry and an alias")
        return self

    def price(self, model: str) -> Price | None:
        """Exact id, else its alias; ``None`` when the model is in neither (never guessed
        from a name pattern: a new snapshot may have a new price)."""
        found = self.models.get(model)
        if found is None and model in self.aliases:
            found = self.models[self.aliases[model]]
        return found

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Dollars for one call, or ``None`` when ``model`` has no price."""
        p = self.price(model)
        if p is None:
            return None
        return (prompt_tokens * p.input_per_m + completion_tokens * p.output_per_m) / 1e6

    def for_batch(self) -> PriceTable:
        """This table at Batch API prices: every price times ``1 - batch_discount``."""
        f = 1.0 - self.batch_discount
        return self.model_copy(update={"models": {
            m: Price(input_per_m=p.input_per_m * f, output_per_m=p.output_per_m * f)
            for m, p in self.models.items()}})


_DEFAULT_NAME = "prices.yaml"


def load_prices(path: Path | str | None = None) -> PriceTable:
    """Load the price table (default: the packaged ``prices.yaml``).

    Raises:
        ConfigError: the file is unreadable or does not match :class:`PriceTable`.
    """
    if path is None:
        ref = resources.files("librachem") / "resources" / _DEFAULT_NAME
        with resources.as_file(ref) as p:
            raw = read_yaml(p)
    else:
        raw = read_yaml(path)
    try:
        return PriceTable.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid price table {path or _DEFAULT_NAME}: {exc}") from None
