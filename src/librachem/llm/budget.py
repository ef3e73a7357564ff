"""``max_cost_usd``: a stage's LLM spend never goes over its bound.

Before a request is sent, its worst-case cost is *reserved*: every prompt byte counted as a
token (a byte-level BPE token -- tiktoken's, Llama's -- is at least one byte, so this bounds
the real count from above) plus 4 tokens per message, and ``max_tokens`` of output, at the
model's list price (:mod:`librachem.llm.pricing`). A request whose reservation would take
spent + reserved over the bound is not sent; requests in flight finish (they were
reserved) and are cached, then the stage stops with :class:`BudgetExceededError`. When an
answer arrives its reservation is replaced by its reported cost. The bound therefore holds
even if every request in flight used its whole ``max_tokens``.
"""

from __future__ import annotations

from librachem.common.errors import ConfigError, LLMError
from librachem.llm.base import ChatRequest, Completion
from librachem.llm.pricing import PriceTable


class BudgetExceededError(LLMError):
    """The next request could cost more than what is left of ``max_cost_usd``."""


def prompt_token_bound(req: ChatRequest) -> int:
    """An upper bound on the prompt tokens of ``req`` (see module docstring)."""
    return sum(len(str(m.get("content", "")).encode()) + 4 for m in req.messages) + 3


class Budget:
    """Spend and reservations of one client against ``max_usd``.

    Raises:
        ConfigError: (at :meth:`admit`) a model without a price: its cost cannot be bounded.
    """

    def __init__(self, max_usd: float, prices: PriceTable, label: str) -> None:
        self.max_usd = max_usd
        self.prices = prices
        self.label = label
        self.spent = 0.0
        self.reserved = 0.0
        self.refused = 0
        self._held: dict[int, float] = {}

    def _bound(self, req: ChatRequest) -> float:
        cost = self.prices.cost(req.model, prompt_token_bound(req), req.max_tokens)
        if cost is None:
            raise ConfigError(
                f"max_cost_usd is set ({self.label}) but model {req.model!r} is not in the price "
                "table (librachem/resources/prices.yaml): its cost cannot be bounded. Add its "
                "price or unset max_cost_usd.")
        return cost

    def admit(self, token: int, req: ChatRequest) -> str | None:
        """Reserve ``req``'s worst case under ``token``; ``None`` when admitted, else why not."""
        bound = self._bound(req)
        if self.spent + self.reserved + bound > self.max_usd:
            self.refused += 1
            return (f"max_cost_usd = {self.max_usd:g} USD ({self.label}) reached: spent "
                    f"{self.spent:.4f}, in flight up to {self.reserved:.4f}, the next request "
                    f"could cost up to {bound:.4f} (prompt bytes + max_tokens {req.max_tokens} "
                    f"at {req.model} list prices)")
        self._held[token] = bound
        self.reserved += bound
        return None

    def release(self, token: int) -> None:
        """Drop ``token``'s reservation (the request was not sent)."""
        self.reserved -= self._held.pop(token, 0.0)

    def settle(self, token: int, req: ChatRequest, c: Completion) -> None:
        """Replace ``token``'s reservation by the reported cost of ``c``."""
        self.reserved -= self._held.pop(token, 0.0)
        cost = self.prices.cost(req.model, c.prompt_tokens, c.completion_tokens)
        self.spent += cost or 0.0
