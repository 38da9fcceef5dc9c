"""Cohen et al., "COVID-19 image data collection" (github.com/ieee8023/covid-chestxray-dataset).

Layout: ``metadata.csv`` (UTF-8) + ``<folder>/<filename>``, one row per image *use* (a file can be
referenced by several rows, e.g. two offsets of one patient). Findings, views and modalities are
per row; the license is per image.
"""
from __future__ import annotations

from collections.abc import Iterator

from cxrspark.schema import SourceRecord
from cxrspark.sources._common import extras, text, text_or_none, under, unreadable_row
from cxrspark.sources.base import (SourceAdapter, normalise_modality, normalise_sex, normalise_view,
                                   parse_age, register)

# metadata column -> provenance key (kept when non-empty)
_PROVENANCE_COLUMNS = {
    "offset": "offset", "date": "date", "location": "location", "doi": "doi", "url": "url",
    "clinical_notes": "clinical_notes", "other_notes": "other_notes",
}


@register
class CohenAdapter(SourceAdapter):
    kind = "cohen"
    default_options = {"metadata": "metadata.csv", "encoding": "utf-8", "image_dir": "images"}

    def records(self) -> Iterator[SourceRecord]:
        self.check_root()
        metadata = self.options["metadata"]
        # without a file name or a finding column no row can be used: each becomes a missing_column row
        for lineno, row, error in self.read_csv(metadata, self.options["encoding"], ("filename", "finding")):
            if row is None:
                yield unreadable_row(self, lineno, error or "malformed_row: unreadable", metadata)
                continue
            folder = text(row.get("folder")) or self.options["image_dir"]
            filename = text(row.get("filename"))
            source_path = under(folder, filename) if filename else ""
            path, error = self.resolve(source_path) if filename else (None, "missing_file: empty filename")
            finding = row.get("finding") or ""
            patient = text(row.get("patientid")) or f"unknown-L{lineno}"
            provenance = {"metadata": metadata, "line": lineno, "view_raw": row.get("view", ""),
                          "modality_raw": row.get("modality", ""),
                          **extras(row, _PROVENANCE_COLUMNS)}
            yield self.record(
                f"L{lineno}",
                source_path=source_path,
                path=path,
                finding=finding,
                patient_id=patient,
                view=normalise_view(row.get("view")),
                modality=normalise_modality(row.get("modality")),
                sex=normalise_sex(row.get("sex")),
                age=parse_age(row.get("age")),
                license=text_or_none(row.get("license")),
                provenance=provenance,
                error=error,
            )
