"""BIMCV-COVID19+ (de la Iglesia Vayá et al. 2020, bimcv.cipf.es/bimcv-projects/bimcv-covid19): CXR and CT
of COVID-19 positive patients of the Valencian region, in a BIDS-like tree.

Layout: the image list ``COVID19_POSI_v1.0.xlsx`` (one row per image; on its first sheet row 1 is a title,
row 2 the header, 261 columns: ``Subject, Session, mod, File, Type, Position_Manual, Exclude,
Exclude Reason, Labels, ..., Patient's Age, Patient's Sex, ..., Position_DL, ..., View Position, ...,
Modality, ...``) and the images ``<Subject>/<Session>/<mod>/<File>`` (``sub-S03427/ses-E06828/mod-rx/
sub-S03427_ses-E06828_acq-2_run-1_bp-chest_vp-ll_dx.png``), each with a JSON sidecar. A tab- or
comma-separated export of the same sheet (same header, with or without the title line) is read alike.
The release's per-session ``labels_covid19_posi.tsv`` (one row per REPORT, no file names) is not an image
list and is not read.

Options:

* ``metadata``: ``auto`` (default) takes ``COVID19_POSI_v1.0.xlsx``, else the first ``*.xlsx`` at the root
  by name, else the first ``*.tsv``/``*.csv`` (``.gz`` too); any other value is used as given.
* ``label``: ``covid`` (default): every image is COVID-19 (the POSI set holds the images of patients with
  a positive COVID-19 test); ``report``: the class from the report's ``Labels`` (rule below).
* ``covid_findings``: the report labels read as COVID-19 under ``label: report`` (default
  ``["COVID 19", "viral pneumonia"]``; the sheet also has ``COVID 19 uncertain``, not counted by default).
* ``pneumonia_findings``: the report labels read as Pneumonia under ``label: report`` (default
  ``["pneumonia", "atypical pneumonia"]``).
* ``image_dir``: ``auto`` (default): the root, plus every top-level folder that holds ``sub-*`` folders
  (a copy unpacked part by part); a folder or a list of folders (``""`` = the root) is used as given.
  Several folders give several candidate paths per image (the executors take the one that exists).
* ``encoding``: of a text export (default utf-8).

Traps handled:

* The sheet is streamed (openpyxl read-only, one row at a time); its title row is skipped; empty trailing
  rows are ignored. Line numbers in ``provenance.line`` and in reasons are sheet rows (data from row 3).
* 2,347 of the 5,525 rows are CT volumes (``Type`` ``ct.nii.gz``, ``Modality`` CT): filtered as
  ``modality: CT``; their path is left empty, so a copy without the CT volumes does not report them as
  missing files.
* The view is ``Position_Manual`` (the manually checked projection) when given: it wins over the DICOM
  ``View Position`` and the file-name tag ``_vp-..._``, which are often wrong (protocol defaults: a study
  whose two images are both tagged ``vp-ll``, one of them PA; 81 rows with DICOM ``LL`` checked as PA,
  356 with DICOM ``AP`` checked as PA). On this sheet ``Position_Manual`` only says PA or L. Without it the
  DICOM ``View Position`` decides, then the file-name tag. All three and the classifier's ``Position_DL``
  are kept in ``provenance``.
* ``Exclude`` ``True`` (12 rows: ``burned in information``, ``inverted``) is filtered with the reason:
  the finding is ``excluded by the source: <Exclude Reason>`` (a text labels.py does not map).
* ``Labels`` is a list string with its outer ``['`` and ``']`` cut off (``normal``, ``', 'aortic elongation``,
  ``COVID 19', ' pneumonia``): parsed as in padchest.py (never ``eval``); empty in 50 X-ray rows.
  Unparseable Labels quarantine the row under ``label: report`` only (the covid rule does not read them).
* The same ``File`` appears on several rows (one image, several reports: 144 files, 145 extra rows): the
  first row is the image's record, every later one a ``malformed_row`` record naming the first line.
* ``Subject`` (``sub-S...``) is the patient (``PatientID`` repeats it); ``Session`` is the study
  (``provenance.session``); the DICOM ``Patient ID`` (``000384``) goes to ``provenance.dicom_patient_id``.
  ``Patient's Age`` is DICOM (``075Y``, missing in 1,177 rows), ``Patient's Sex`` M/F.
* Pixels: the PNGs are 8- or 16-bit greyscale, read by :mod:`cxrspark.images.decode` like any PNG (a wide
  PNG is scaled by its own minimum and maximum). The JSON sidecar is NOT read: it holds the image's DICOM
  header, whose fields this adapter needs (``View Position``, sex, age, modality) are columns of the sheet.

Label rule under ``label: report`` (first that applies):

* any label in ``covid_findings`` -> COVID-19;
* any label in ``pneumonia_findings`` -> Pneumonia;
* exactly ``normal`` -> Normal;
* no labels -> filtered (``no_labels``); anything else (``exclude``, ``COVID 19 uncertain`` alone,
  ``increased density``...) -> filtered with its text (``other_findings``).

The finding is built as in padchest.py (labels joined by ``|``, the rule's class appended when labels.py
would not read it: ``COVID 19|pneumonia/COVID-19``); under ``label: covid`` it is ``COVID-19``.
``provenance.labels`` keeps the parsed report labels and ``provenance.label_rule`` the rule that decided.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

from cxrspark.labels import COVID, NORMAL, PNEUMONIA
from cxrspark.schema import UNKNOWN_VIEW, SourceRecord
from cxrspark.sources.base import (SourceAdapter, SourceError, normalise_modality, normalise_sex,
                                   normalise_view, parse_age, register)
from cxrspark.sources.padchest import cell, findings_option, list_finding, parse_label_list

METADATA_NAME = "COVID19_POSI_v1.0.xlsx"
TEXT_SUFFIXES = (".tsv", ".csv", ".tsv.gz", ".csv.gz")
REQUIRED_COLUMNS = ("Subject", "Session", "File")
LABEL_MODES = ("covid", "report")
_VIEW_TAG = re.compile(r"_vp-([A-Za-z]+)(?=[_.])")
_TRUE = frozenset({"true", "1", "yes", "y"})
_PROVENANCE = {"Type": "type", "Position_DL": "position_dl", "Exclude Reason": "exclude_reason",
               "Patient ID": "dicom_patient_id", "Unnamed: 0": "report_row", "Body Part Examined": "body_part",
               "Photometric Interpretation": "photometric", "Bits Stored": "bits_stored"}


def report_finding(labels: list[str], covid_findings: list[str], pneumonia_findings: list[str]
                   ) -> tuple[str, str]:
    """(finding, rule) of one report's parsed ``Labels`` under ``label: report``."""
    folded = [label.casefold() for label in labels]
    covid = [c for c in covid_findings if c.casefold() in folded]
    pneumonia = [p for p in pneumonia_findings if p.casefold() in folded]
    if covid:
        intended, rule = COVID, f"covid_findings: {'|'.join(covid)}"
    elif pneumonia:
        intended, rule = PNEUMONIA, f"pneumonia_findings: {'|'.join(pneumonia)}"
    elif folded == ["normal"]:
        intended, rule = NORMAL, "normal"
    else:
        intended, rule = None, "other_findings" if labels else "no_labels"
    return list_finding(labels, intended, "bimcv"), rule


def bimcv_view(manual: str, dicom: str, file_name: str) -> str:
    """``Position_Manual``, else the DICOM ``View Position``, else the file name's ``_vp-`` tag."""
    for raw in (manual, dicom, _tag(file_name)):
        view = normalise_view(raw)
        if view != UNKNOWN_VIEW:
            return view
    return UNKNOWN_VIEW


def _tag(file_name: str) -> str:
    m = _VIEW_TAG.search(file_name)
    return m.group(1) if m else ""


@register
class BimcvAdapter(SourceAdapter):
    kind = "bimcv"
    default_options = {"metadata": "auto", "label": "covid", "covid_findings": ["COVID 19", "viral pneumonia"],
                       "pneumonia_findings": ["pneumonia", "atypical pneumonia"], "image_dir": "auto",
                       "encoding": "utf-8"}

    def __init__(self, name: str, root: Any, options: dict[str, Any]):
        super().__init__(name, root, options)
        if self.options["label"] not in LABEL_MODES:
            raise ValueError(f"source {name!r} (bimcv): label must be one of {LABEL_MODES}, "
                             f"got {self.options['label']!r}")
        self.covid_findings = findings_option(name, self.kind, "covid_findings", self.options["covid_findings"])
        self.pneumonia_findings = findings_option(name, self.kind, "pneumonia_findings",
                                                  self.options["pneumonia_findings"])

    # ---- layout -------------------------------------------------------------------------------------
    def metadata_name(self) -> str:
        option = self.options["metadata"]
        if option not in (None, "", "auto"):
            return str(option)
        if (self.root / METADATA_NAME).is_file():
            return METADATA_NAME
        files = sorted(p.name for p in self.root.iterdir() if p.is_file())
        for suffixes in ((".xlsx",), TEXT_SUFFIXES):
            found = [f for f in files if f.lower().endswith(suffixes) and not f.startswith("~$")]
            if found:
                return found[0]
        raise SourceError(f"source {self.name!r}: no image list ({METADATA_NAME}, *.xlsx, *.tsv, *.csv) "
                          f"in {self.root}")

    def image_dirs(self) -> list[str]:
        option = self.options["image_dir"]
        if option not in (None, "auto"):
            folders = [option] if isinstance(option, str) else list(option)
            return [str(f).strip().strip("/\\") for f in folders]
        found = [""]
        for sub in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if sub.name.startswith("sub-"):
                continue
            with os.scandir(sub) as entries:
                if any(e.name.startswith("sub-") and e.is_dir() for e in entries):
                    found.append(sub.name)
        return found

    def rows(self, metadata: str) -> Iterator[tuple[int, dict | None, str | None]]:
        """(sheet row or line, row dict or None, error) of the image list, streamed."""
        if not metadata.lower().endswith((".xlsx", ".xlsm")):
            yield from self.read_csv(metadata, self.options["encoding"], REQUIRED_COLUMNS, delimiter=None, title_line=True)
            return
        path = self.root / metadata
        if not path.is_file():
            raise SourceError(f"source {self.name!r}: metadata file {path} does not exist")
        import openpyxl  # only for this source

        try:
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as exc:  # not a zip, not a workbook
            raise SourceError(f"source {self.name!r}: cannot open {path} as a workbook: {exc}") from exc
        try:
            sheet = book.worksheets[0]
            header: list[str] | None = None
            missing_error = None
            for lineno, values in enumerate(sheet.iter_rows(values_only=True), start=1):
                if header is None:
                    names = ["" if v is None else str(v).strip() for v in values]
                    if REQUIRED_COLUMNS[0] in names or lineno >= 2:
                        header = names
                        missing = [c for c in REQUIRED_COLUMNS if c not in header]
                        if missing:
                            missing_error = f"missing_column: {metadata} has no column(s) {missing}"
                    continue  # the title row, then the header
                if all(v is None or str(v).strip() == "" for v in values):
                    continue
                if missing_error:
                    yield lineno, None, missing_error
                    continue
                yield lineno, dict(zip(header, values)), None
        finally:
            book.close()

    # ---- records --------------------------------------------------------------------------------------
    def records(self) -> Iterator[SourceRecord]:
        self.check_root()
        metadata = self.metadata_name()
        folders = self.image_dirs()
        seen: dict[str, int] = {}  # File -> line
        for lineno, row, error in self.rows(metadata):
            if row is None:
                yield self._bad(lineno, error or "malformed_row: unreadable", metadata)
                continue
            file_name = cell(row.get("File"))
            if not file_name:
                yield self._bad(lineno, f"malformed_row: line {lineno} has an empty File", metadata)
                continue
            if file_name in seen:
                yield self._bad(lineno, f"malformed_row: line {lineno} repeats File {file_name!r} of line "
                                        f"{seen[file_name]}", metadata)
                continue
            seen[file_name] = lineno
            yield self._record(lineno, row, file_name, folders, metadata)

    def _bad(self, lineno: int, error: str, metadata: str) -> SourceRecord:
        return self.record(f"L{lineno}", source_path="", path=None, finding="", patient_id=f"unknown-L{lineno}",
                           provenance={"metadata": metadata, "line": lineno}, error=error)

    def _record(self, lineno: int, row: dict[str, Any], file_name: str, folders: list[str], metadata: str
                ) -> SourceRecord:
        subject, session = cell(row.get("Subject")), cell(row.get("Session"))
        relative = "/".join(p for p in (subject, session, cell(row.get("mod")) or "mod-rx", file_name) if p)
        modality = normalise_modality(cell(row.get("Modality")), default="")
        if not modality:
            kind = cell(row.get("Type")).lower()
            ct = kind.startswith("ct") or file_name.lower().endswith((".nii", ".nii.gz"))
            modality = "CT" if ct else "X-ray"
        candidates = [f"{folder}/{relative}" if folder else relative for folder in folders]
        if modality == "CT":
            path, error = None, None  # a CT volume is out of scope: never looked for
        elif len(candidates) == 1:
            path, error = self.resolve(candidates[0])
        else:
            path, error = self.resolve_any(candidates)

        raw_labels = cell(row.get("Labels"))
        labels = parse_label_list(raw_labels, bracketless=True)
        excluded = cell(row.get("Exclude")).lower() in _TRUE
        if excluded:
            why = cell(row.get("Exclude Reason")) or "no reason given"
            finding, rule = f"excluded by the source: {why.replace('/', '|')}", "exclude"
        elif self.options["label"] == "covid":
            finding, rule = COVID, "covid: BIMCV-COVID19+ positive set"
        elif labels is None:
            finding, rule = raw_labels, "unparseable"
            error = error or f"malformed_row: line {lineno} has an unparseable Labels value {raw_labels[:80]!r}"
        else:
            finding, rule = report_finding(labels, self.covid_findings, self.pneumonia_findings)

        manual, dicom, tag = cell(row.get("Position_Manual")), cell(row.get("View Position")), _tag(file_name)
        age_raw = cell(row.get("Patient's Age"))
        age = parse_age(age_raw)
        provenance: dict[str, Any] = {"metadata": metadata, "line": lineno, "session": session,
                                      "labels_raw": raw_labels, "label_rule": rule}
        if labels is not None:
            provenance["labels"] = labels
        for key, value in (("view_manual", manual), ("view_dicom", dicom), ("view_tag", tag)):
            if value:
                provenance[key] = value
        for column, key in _PROVENANCE.items():
            value = cell(row.get(column))
            if value:
                provenance[key] = value
        if age is None and age_raw:
            provenance["age_raw"] = age_raw
        patient = subject or cell(row.get("PatientID")) or f"unknown-L{lineno}"
        return self.record(
            file_name,
            source_path=candidates[0],
            path=None if error else path,
            finding=finding,
            patient_id=patient,
            view=bimcv_view(manual, dicom, file_name) if modality != "CT" else UNKNOWN_VIEW,
            modality=modality,
            sex=normalise_sex(cell(row.get("Patient's Sex"))),
            age=age,
            provenance=provenance,
            error=error,
        )
