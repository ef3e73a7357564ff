"""librachem: a data-versioned, reproducible LibraChem pipeline (arXiv 2501.13952)."""

__version__ = "0.1.0"
