"""The LLM layer: one batch-first interface for every stage that talks to a language model."""

from librachem.llm.base import ChatRequest, Completion, LLMClient

__all__ = ["ChatRequest", "Completion", "LLMClient"]
