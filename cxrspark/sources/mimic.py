"""MIMIC-CXR-JPG 2.0.0 / 2.1.0 (Johnson et al. 2019, physionet.org/content/mimic-cxr-jpg): about 377,000 JPEGs
of 228,000 studies of 65,000 patients (credentialed access).

Layout (the PhysioNet folder ``mimic-cxr-jpg/2.0.0/`` or ``2.1.0/``; every CSV may be ``.csv.gz``, as
PhysioNet ships them; 2.1.0 keeps the 2.0.0 file names):

* ``mimic-cxr-2.0.0-metadata.csv``: one row per image, ``dicom_id,subject_id,study_id,
  PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,
  ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning``;
* ``mimic-cxr-2.0.0-chexpert.csv`` or ``mimic-cxr-2.0.0-negbio.csv``: one row per STUDY, ``subject_id,study_id``
  and the 14 observations of the CheXpert labeler (``1.0``, ``0.0``, ``-1.0`` uncertain, blank), made by the
  CheXpert or the NegBio labeler from the study's report;
* ``files/pNN/p<subject_id>/s<study_id>/<dicom_id>.jpg``, ``pNN`` the first two digits of the subject id.

The label file is read first into a dict ``study_id -> (subject_id, label codes, line)`` on the driver
(per-STUDY state: about 230,000 small entries for the whole archive, some 45 MB; subject ids and label codes
are interned, so repeats share one string); the image metadata
is then streamed row by row and joined to it, never held. To refuse a repeated ``dicom_id`` (it would
repeat a record id) one 64-bit fingerprint per image is kept, not the id.

Options:

* ``labels``: ``chexpert`` (default) or ``negbio``: which label file (``mimic-cxr-2.0.0-<labels>.csv``, or
  ``.csv.gz``) is joined.
* ``uncertainty``: ``ignore`` (default), ``ones`` or ``zeros``, and ``pneumonia_findings`` (default
  ``["Pneumonia"]``): as in the ``chexpert`` adapter, whose label rule this adapter uses
  (:func:`cxrspark.sources.chexpert.chexpert_finding`, applied to the study's labels).
* ``image_dir``: the folder holding ``pNN/`` (default ``files``).
* ``encoding``: of the CSVs (default utf-8).

Traps handled:

* The labels are per study, the images per image: every image of a study gets the study's label. A study
  absent from the label file (its report had no findings section, or a label row could not be read) is a
  quarantined record ``missing_label: study s<id> (subject <id>) is not in <label file>``; the count of
  unreadable label-file lines, if any, is named in that reason. A study whose label rows disagree with each
  other, or whose label row names another subject than the image's row, is quarantined as
  ``label_conflict``. A label value other than 1.0/0.0/-1.0/blank makes the study's images
  ``malformed_row`` records.
* ``ViewPosition`` is ``PA``, ``AP``, ``LATERAL``, ``LL`` (left lateral), a rarer projection (e.g.
  ``AP AXIAL``, ``AP LLD``, ``PA RLD``, ``LAO``, ``SWIMMERS``, ``XTABLE LATERAL``) or blank. PA/AP are the
  canonical frontal views, ``LATERAL``/``LL``/``RL``/``XTABLE LATERAL`` are ``Lateral`` (filtered),
  the rare projections keep their text (filtered as ``non_frontal_view``). A blank ``ViewPosition`` is read
  from ``ViewCodeSequence_CodeMeaning`` when it names a view (``postero-anterior`` -> PA,
  ``antero-posterior`` -> AP, ``lateral``/``left lateral``/``right lateral`` -> Lateral), else the view is
  ``unknown`` (kept while ``ingest.keep_unknown_view`` is true, the default).
* ``subject_id`` and ``study_id`` must be whole numbers (the path is built from them); ``dicom_id`` must not
  be empty: otherwise the row is a ``malformed_row`` record. The metadata has no sex or age (they are in
  MIMIC-IV): both stay None.

Record id ``mimic:<dicom_id>``; patient = ``subject_id`` (``mimic:10000032``); ``study_id``, ``dicom_id``,
the raw view fields, ``StudyDate`` and the procedure are in the provenance, with the label file and line,
``labels`` (the study's non-blank observations), ``label_rule`` and ``uncertainty``.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from cxrspark.schema import UNKNOWN_VIEW, SourceRecord
from cxrspark.sources._common import text, unreadable_row
from cxrspark.sources.base import SourceAdapter, SourceError, normalise_view, register
from cxrspark.sources.chexpert import (OBSERVATIONS, Fingerprints, check_label_options, chexpert_finding,
                                       label_values)

METADATA = "mimic-cxr-2.0.0-metadata.csv"
LABEL_FILES = {"chexpert": "mimic-cxr-2.0.0-chexpert.csv", "negbio": "mimic-cxr-2.0.0-negbio.csv"}
REQUIRED_COLUMNS = ("dicom_id", "subject_id", "study_id")
_VIEW_POSITIONS = {"LATERAL": "Lateral", "LL": "Lateral", "RL": "Lateral", "XTABLE LATERAL": "Lateral"}
_VIEW_CODES = {"postero-anterior": "PA", "antero-posterior": "AP", "lateral": "Lateral",
               "left lateral": "Lateral", "right lateral": "Lateral"}
_CODES = {1: "1", 0: "0", -1: "u"}  # the compact form of a study's labels on the driver
_VALUES = {v: k for k, v in _CODES.items()}


def mimic_view(view_position: str, view_code: str) -> str:
    """The canonical view of ``ViewPosition`` (``ViewCodeSequence_CodeMeaning`` when it is blank)."""
    position = " ".join(text(view_position).upper().split())
    if position:
        return _VIEW_POSITIONS.get(position) or normalise_view(position)
    return _VIEW_CODES.get(text(view_code).lower(), UNKNOWN_VIEW)


@register
class MimicAdapter(SourceAdapter):
    kind = "mimic"
    default_options = {"labels": "chexpert", "uncertainty": "ignore", "pneumonia_findings": ["Pneumonia"],
                       "image_dir": "files", "encoding": "utf-8"}

    def __init__(self, name: str, root: Any, options: dict[str, Any]):
        super().__init__(name, root, options)
        self.pneumonia_findings, self.uncertainty = check_label_options(name, self.kind, self.options)
        labeler = str(self.options["labels"]).strip().lower()
        if labeler not in LABEL_FILES:
            raise ValueError(f"source {name!r} (mimic): labels must be one of {sorted(LABEL_FILES)}, "
                             f"got {self.options['labels']!r}")
        self.labeler = labeler

    # ---- layout -------------------------------------------------------------------------------------
    def _find(self, base: str) -> str:
        for name in (base, base + ".gz"):
            if (self.root / name).is_file():
                return name
        raise SourceError(f"source {self.name!r}: no {base} (or {base}.gz) in {self.root}")

    def metadata_name(self) -> str:
        return self._find(METADATA)

    def label_name(self) -> str:
        return self._find(LABEL_FILES[self.labeler])

    def read_labels(self, name: str) -> tuple[dict[int, tuple[str, str | None, int]], int, str | None]:
        """(study_id -> (subject_id, label codes or a conflict text, line), unreadable lines, error of the
        whole file). The codes are one character per observation (``1``, ``0``, ``u`` uncertain, ``.``
        blank, ``?`` invalid) in :data:`OBSERVATIONS` order; a conflict text starts with ``label_conflict``."""
        studies: dict[int, tuple[str, str | None, int]] = {}
        unreadable = 0
        required = ("study_id", "No Finding", *self.pneumonia_findings)
        for lineno, row, error in self.read_csv(name, self.options["encoding"], required):
            if row is None:
                if error and error.startswith("missing_column"):
                    return {}, 0, error
                unreadable += 1
                continue
            study = text(row.get("study_id"))
            if not study.isdigit():
                unreadable += 1
                continue
            values, value_error = label_values(row, lineno)
            codes = "?" if value_error else "".join(_CODES.get(values.get(o), ".") for o in OBSERVATIONS)
            subject = text(row.get("subject_id"))
            key = int(study)
            before = studies.get(key)
            if before is None:
                studies[key] = (sys.intern(subject), sys.intern(codes), lineno)
            elif before[1] is not None and not before[1].startswith("label_conflict") and \
                    (before[0], before[1]) != (subject, codes):
                studies[key] = (before[0], f"label_conflict: study s{study} has differing rows in {name} "
                                           f"(lines {before[2]} and {lineno})", before[2])
        return studies, unreadable, None

    # ---- records --------------------------------------------------------------------------------------
    def records(self) -> Iterator[SourceRecord]:
        self.check_root()
        metadata = self.metadata_name()
        label_file = self.label_name()
        studies, unreadable, file_error = self.read_labels(label_file)
        seen = Fingerprints()
        for lineno, row, error in self.read_csv(metadata, self.options["encoding"], REQUIRED_COLUMNS):
            if row is None:
                yield unreadable_row(self, lineno, error or "malformed_row: unreadable", metadata)
                continue
            dicom = text(row.get("dicom_id"))
            if not dicom:
                yield unreadable_row(self, lineno, f"malformed_row: line {lineno} has an empty dicom_id", metadata)
                continue
            earlier = seen.first_line(dicom, lineno)
            if earlier is not None:
                yield unreadable_row(self, lineno, f"malformed_row: line {lineno} repeats dicom_id {dicom!r} "
                                                   f"(line {earlier})", metadata)
                continue
            yield self._record(lineno, row, dicom, metadata, label_file, studies, unreadable, file_error)

    def _record(self, lineno: int, row: dict[str, Any], dicom: str, metadata: str, label_file: str,
                studies: dict[int, tuple[str, str | None, int]], unreadable: int, file_error: str | None
                ) -> SourceRecord:
        subject, study = text(row.get("subject_id")), text(row.get("study_id"))
        provenance: dict[str, Any] = {"metadata": metadata, "line": lineno, "dicom_id": dicom,
                                      "subject_id": subject, "study_id": study, "label_file": label_file,
                                      "uncertainty": self.uncertainty}
        for column, key in (("ViewPosition", "view_raw"), ("ViewCodeSequence_CodeMeaning", "view_code"),
                            ("PatientOrientationCodeSequence_CodeMeaning", "orientation"),
                            ("StudyDate", "study_date"), ("PerformedProcedureStepDescription", "procedure"),
                            ("Rows", "rows"), ("Columns", "columns")):
            value = text(row.get(column))
            if value:
                provenance[key] = value
        error = None
        if not subject.isdigit() or len(subject) < 2 or not study.isdigit():
            error = (f"malformed_row: line {lineno}: subject_id {subject!r} and study_id {study!r} must be "
                     f"whole numbers")
            source_path, path = "", None
        else:
            source_path = f"{self.options['image_dir']}/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"
            path, error = self.resolve(source_path)
        finding, values = "", {}
        entry = studies.get(int(study)) if study.isdigit() else None
        if file_error:
            error = error or file_error
        elif entry is None:
            if study.isdigit():
                extra = f" ({unreadable} line(s) of it unreadable)" if unreadable else ""
                error = error or (f"missing_label: study s{study} (subject {subject}) is not in "
                                  f"{label_file}{extra}")
        else:
            label_subject, codes, label_line = entry
            provenance["label_line"] = label_line
            if codes.startswith("label_conflict"):
                error = error or codes
            elif label_subject and label_subject != subject:
                error = error or (f"label_conflict: study s{study} is subject {label_subject} in {label_file} "
                                  f"(line {label_line}), subject {subject} in {metadata}")
            elif codes == "?":
                error = error or (f"malformed_row: study s{study}: a label of line {label_line} of {label_file} "
                                  f"is not 1.0, 0.0, -1.0 or blank")
            else:
                values = {o: _VALUES[c] for o, c in zip(OBSERVATIONS, codes) if c != "."}
                finding, rule = chexpert_finding(values, self.pneumonia_findings, self.uncertainty, self.kind)
                provenance["labels"] = values
                provenance["label_rule"] = rule
        if error:
            path = None
        return self.record(
            dicom,
            source_path=source_path,
            path=path,
            finding=finding,
            patient_id=subject or f"unknown-L{lineno}",
            view=mimic_view(row.get("ViewPosition"), row.get("ViewCodeSequence_CodeMeaning")),
            provenance=provenance,
            error=error,
        )
