"""Hannover Medical School COVID-19 image repository (github.com/ml-workgroup/covid-19-image-repository).

Layout: ``data.csv`` + ``png/<image_id>.png``. Every patient of the repository is a COVID-19 case
(there is no finding column), so each row's finding is 'COVID-19'. License: CC BY 3.0.
"""
from __future__ import annotations

from collections.abc import Iterator

from cxrspark.schema import SourceRecord
from cxrspark.sources._common import extras, text, unreadable_row
from cxrspark.sources.base import (SourceAdapter, normalise_modality, normalise_sex, normalise_view,
                                   parse_age, register)

FINDING = "COVID-19"
LICENSE = "CC BY 3.0"
_PROVENANCE_COLUMNS = {
    "image_id": "image_id", "admission_offset": "admission_offset",
    "icu_admission_offset": "icu_admission_offset", "icu_release_offset": "icu_release_offset",
    "death_offset": "death_offset", "size": "size", "weight": "weight",
}


@register
class MhhAdapter(SourceAdapter):
    kind = "mhh"
    default_options = {"metadata": "data.csv", "encoding": "utf-8", "image_dir": "png", "extension": ".png"}

    def records(self) -> Iterator[SourceRecord]:
        self.check_root()
        metadata = self.options["metadata"]
        for lineno, row, error in self.read_csv(metadata, self.options["encoding"], ("image_id",)):
            if row is None:
                yield unreadable_row(self, lineno, error or "malformed_row: unreadable", metadata)
                continue
            image_id = text(row.get("image_id"))
            if image_id:
                source_path = f"{self.options['image_dir']}/{image_id}{self.options['extension']}"
                path, error = self.resolve(source_path)
            else:
                source_path, path, error = "", None, "missing_file: empty image_id"
            yield self.record(
                f"L{lineno}",
                source_path=source_path,
                path=path,
                finding=FINDING,
                patient_id=text(row.get("patient_id")) or f"unknown-L{lineno}",
                view=normalise_view(row.get("projection")),
                modality=normalise_modality(row.get("modality")),
                sex=normalise_sex(row.get("sex")),
                age=parse_age(row.get("age")),
                license=LICENSE,
                provenance={"metadata": metadata, "line": lineno, "view_raw": row.get("projection", ""),
                            "modality_raw": row.get("modality", ""), **extras(row, _PROVENANCE_COLUMNS)},
                error=error,
            )
