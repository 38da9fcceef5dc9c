"""Atomic output directory, the human-readable report of an ingest run, and its split protocol."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

#: the MLflow tag ``dataset.protocol`` of a run on a dataset (see :func:`protocol_of`)
LEAKY_PROTOCOL = "leaky-image-split"
PATIENT_PROTOCOL = "patient-split"
LEAKY_WARNING = ("leaky audit protocol: ingest.split.unit=image splits every image on its own: a patient's "
                 "films land in several splits{kept}; metrics on this dataset are not results (for audits of "
                 "the source studies' protocol only)")


class AtomicDir:
    """Write into a hidden sibling staging folder; ``commit()`` swaps it into place.

    A run that fails or is killed leaves only ``<output>.incomplete-*`` (removed at the next run's
    start), never a half-written ``<output>``. ``commit()`` is two renames: a run killed between them
    leaves the previous output as ``<output>.old-*``, and the next run puts it back before anything
    else. Works on local and shared POSIX filesystems.
    """

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final).resolve()
        self.final.parent.mkdir(parents=True, exist_ok=True)
        recover(self.final)
        for stale in self.final.parent.glob(self.final.name + ".incomplete-*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.staging = self.final.parent / f"{self.final.name}.incomplete-{uuid.uuid4().hex[:8]}"
        self.staging.mkdir()

    def path(self, *parts: str) -> str:
        return str(self.staging.joinpath(*parts))

    def commit(self) -> Path:
        old = None
        if self.final.exists():
            old = self.final.parent / f"{self.final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.final, old)
        os.replace(self.staging, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def recover(final: Path) -> None:
    """Undo an interrupted ``commit()``: with no ``final``, the newest ``final.old-*`` is the previous
    complete output and goes back; any other ``.old-*`` is a replaced output whose removal was cut short.
    Newest = latest ctime: the rename into ``.old-*`` sets it (mtime would be when it was written)."""
    olds = sorted(final.parent.glob(final.name + ".old-*"), key=lambda p: p.stat().st_ctime)
    if olds and not final.exists():
        os.replace(olds.pop(), final)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


def format_counts(table: list[dict], splits: list[str]) -> str:
    """A source x class x split table of curated images, with totals."""
    keys = sorted({(r["source"], r["label"]) for r in table})
    cell = {(r["source"], r["label"], r["split"]): r["n"] for r in table}
    w0 = max([len("source"), *(len(k[0]) for k in keys)]) + 2
    w1 = max([len("class"), *(len(k[1]) for k in keys)]) + 2
    head = f"{'source':<{w0}}{'class':<{w1}}" + "".join(f"{s:>8}" for s in splits) + f"{'total':>8}"
    lines = [head, "-" * len(head)]
    col_tot = {s: 0 for s in splits}
    for src, lab in keys:
        vals = [cell.get((src, lab, s), 0) for s in splits]
        for s, v in zip(splits, vals):
            col_tot[s] += v
        lines.append(f"{src:<{w0}}{lab:<{w1}}" + "".join(f"{v:>8}" for v in vals) + f"{sum(vals):>8}")
    lines.append("-" * len(head))
    lines.append(f"{'total':<{w0 + w1}}" + "".join(f"{col_tot[s]:>8}" for s in splits)
                 + f"{sum(col_tot.values()):>8}")
    return "\n".join(lines)


def protocol_record(ing: Any) -> dict[str, Any]:
    """summary.json's ``protocol`` object of an ingest config (cxrspark.config.IngestConfig)."""
    leaky = ing.split.unit == "image"
    return {"split_unit": ing.split.unit, "leaky_audit": ing.split.leaky_audit, "dedup_exact": ing.dedup.exact,
            "dedup_near": ing.dedup.near, "leaky": leaky}


def leaky_warning(ing: Any) -> str | None:
    """The warning line of an ingest with the leaky image-level split (None for the patient split)."""
    if ing.split.unit != "image":
        return None
    off = [f"dedup.{k}=false" for k in ("exact", "near") if not getattr(ing.dedup, k)]
    return "WARNING: " + LEAKY_WARNING.format(
        kept=f", and duplicates are kept ({', '.join(off)}) and straddle splits too" if off else "")


def is_leaky(summary: dict[str, Any]) -> bool:
    """Whether an ingest output's summary.json describes the leaky image-level split: its ``protocol``
    object, else (an output written before it existed) its recorded ``ingest.split.unit``."""
    protocol = summary.get("protocol")
    if isinstance(protocol, dict) and "leaky" in protocol:
        return bool(protocol["leaky"])
    split = ((summary.get("config") or {}).get("ingest") or {}).get("split") or {}
    return split.get("unit") == "image"


def protocol_of(summary: dict[str, Any]) -> str:
    """The MLflow tag ``dataset.protocol`` of a run on the dataset whose summary.json is ``summary``:
    ``leaky-image-split`` or ``patient-split``."""
    return LEAKY_PROTOCOL if is_leaky(summary) else PATIENT_PROTOCOL
