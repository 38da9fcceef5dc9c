"""Source adapters: one module per public dataset family, all registered on import.

``make_adapter(kind, name, root, options)`` builds the adapter of a ``conf/sources.yaml`` entry.
"""
from __future__ import annotations

from cxrspark.sources.base import SourceAdapter, SourceError, adapter_kinds, make_adapter, register

# Importing the adapter modules fills the registry (each class is decorated with @register).
from cxrspark.sources import cohen, folders, initiatives, mhh, nih, rsna  # noqa: E402,F401  isort: skip

__all__ = ["SourceAdapter", "SourceError", "adapter_kinds", "make_adapter", "register"]
