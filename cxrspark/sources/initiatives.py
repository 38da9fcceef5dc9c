"""The COVID-19 chest X-ray dataset initiatives of Chung et al. (Figure1 and Actualmed).

Both publish ``metadata.csv`` + ``images/`` with the same columns; they differ in the encoding
(Figure1: ISO-8859-1, Actualmed: UTF-8 with CRLF) and in how a row names its image:

* Figure1 has no file-name column: the image is ``images/<patientid>.<jpg|jpeg|png>``, and further
  images of one patient carry a letter suffix (``COVID-00039a``, ``-b``...), removed for the patient id.
* Actualmed names the file in the ``imagename`` column.

An empty ``finding`` stays '' (unusable label: the pipeline filters it); ``notes`` go to provenance.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

from cxrspark.schema import SourceRecord
from cxrspark.sources._common import extras, text, under, unreadable_row
from cxrspark.sources.base import (SourceAdapter, normalise_modality, normalise_sex, normalise_view,
                                   parse_age, register)

_PROVENANCE_COLUMNS = {
    "offset": "offset", "notes": "notes", "artifacts/distortion": "artifacts",
    "survival": "survival", "temperature": "temperature", "pO2 saturation": "po2_saturation",
}
_LETTER_SUFFIX = re.compile(r"^(.*\d)[a-z]$")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def strip_letter_suffix(patient_id: str) -> str:
    """'COVID-00039a' -> 'COVID-00039' (a single lower-case letter after a digit); others unchanged."""
    m = _LETTER_SUFFIX.match(patient_id)
    return m.group(1) if m else patient_id


class InitiativeAdapter(SourceAdapter):
    """Shared reader; the registered subclasses only set the defaults of their initiative."""

    default_options: ClassVar[dict] = {
        "metadata": "metadata.csv", "encoding": "utf-8", "image_column": "imagename", "image_dir": "images",
    }
    #: a trailing letter after the id's digits marks a further image of the same patient
    letter_suffix_images: ClassVar[bool] = False

    def _image(self, row: dict, patient: str) -> tuple[str, str | None, str | None]:
        """(source_path, absolute path, error) of the row's image."""
        image_dir = str(self.options["image_dir"] or "").strip("/")
        column = self.options["image_column"]
        if column:
            name = text(row.get(column))
            if not name:
                return "", None, f"missing_file: empty {column!r}"
            source_path = under(image_dir, name)
            path, error = self.resolve(source_path)
            return source_path, path, error
        if not patient:
            return "", None, "missing_file: empty patientid"
        stem = f"{image_dir}/{patient}" if image_dir else patient
        # the extension is not in the metadata: the per-file check takes the first that exists
        path, error = self.resolve_any(stem + ext for ext in IMAGE_EXTENSIONS)
        return stem + IMAGE_EXTENSIONS[0], path, error

    def required_columns(self) -> tuple[str, ...]:
        """The columns naming the image (the image column, else patientid) and the finding."""
        return (self.options["image_column"] or "patientid", "finding")

    def records(self) -> Iterator[SourceRecord]:
        self.check_root()
        metadata = self.options["metadata"]
        for lineno, row, error in self.read_csv(metadata, self.options["encoding"], self.required_columns()):
            if row is None:
                yield unreadable_row(self, lineno, error or "malformed_row: unreadable", metadata)
                continue
            image_id = text(row.get("patientid"))
            patient = strip_letter_suffix(image_id) if self.letter_suffix_images else image_id
            source_path, path, error = self._image(row, image_id)
            finding = row.get("finding") or ""
            provenance = {"metadata": metadata, "line": lineno, "patientid": image_id,
                          "view_raw": row.get("view", ""), **extras(row, _PROVENANCE_COLUMNS)}
            yield self.record(
                f"L{lineno}",
                source_path=source_path,
                path=path,
                finding=finding,
                patient_id=patient or f"unknown-L{lineno}",
                view=normalise_view(row.get("view")),
                modality=normalise_modality(row.get("modality")),
                sex=normalise_sex(row.get("sex")),
                age=parse_age(row.get("age")),
                license=None,  # neither initiative states a license ("research purposes only")
                provenance=provenance,
                error=error,
            )


@register
class Figure1Adapter(InitiativeAdapter):
    kind = "figure1"
    default_options = {**InitiativeAdapter.default_options, "encoding": "latin-1", "image_column": None}
    letter_suffix_images = True


@register
class ActualmedAdapter(InitiativeAdapter):
    kind = "actualmed"
    default_options = {**InitiativeAdapter.default_options, "encoding": "utf-8", "image_column": "imagename"}
