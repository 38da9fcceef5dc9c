"""Source adapters: one module per public dataset family, all registered on import.

``make_adapter(kind, name, root, options)`` builds the adapter of a ``conf/sources.yaml`` entry. Every
module of this package (but ``base`` and private ``_*`` ones) is imported here, so a new adapter is one
new module with a class decorated with ``@register``: nothing else to edit.
"""
from __future__ import annotations

import importlib
import pkgutil

from cxrspark.sources.base import SourceAdapter, SourceError, adapter_kinds, make_adapter, register

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base" and not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["SourceAdapter", "SourceError", "adapter_kinds", "make_adapter", "register"]
