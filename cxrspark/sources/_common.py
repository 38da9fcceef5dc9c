"""Small helpers shared by the built-in adapters (not part of the adapter contract)."""
from __future__ import annotations

import os
from typing import Any

from cxrspark.schema import SourceRecord
from cxrspark.sources.base import SourceAdapter


def text(value: Any) -> str:
    """A metadata cell as stripped text ('' for None)."""
    return "" if value is None else str(value).strip()


def text_or_none(value: Any) -> str | None:
    out = text(value)
    return out or None


def under(folder: str, name: str) -> str:
    """The metadata's relative path of ``name`` in ``folder``; an absolute name stays absolute (and is refused
    by :meth:`SourceAdapter.resolve`)."""
    name = str(name).strip()
    folder = str(folder or "").strip().rstrip("/\\")
    if not folder or os.path.isabs(name) or name.startswith(("/", "\\")):
        return name
    return f"{folder}/{name}"


def extras(row: dict[str, Any], columns: dict[str, str]) -> dict[str, str]:
    """{provenance key: cell} for the non-empty cells of ``row`` named in ``columns`` (column -> key)."""
    out: dict[str, str] = {}
    for column, key in columns.items():
        value = text(row.get(column))
        if value:
            out[key] = value
    return out


def unreadable_row(adapter: SourceAdapter, lineno: int, error: str, metadata: str) -> SourceRecord:
    """The record of a metadata row that could not be parsed at all (bad encoding, wrong field count).

    Nothing of the row is known, so its patient key is unique to the row (it can never group with
    another row) and its path is None; the pipeline quarantines it with ``error``.
    """
    return adapter.record(f"L{lineno}", source_path="", path=None, finding="",
                          patient_id=f"unknown-L{lineno}", provenance={"metadata": metadata, "line": lineno},
                          error=error)
