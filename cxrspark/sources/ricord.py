"""MIDRC-RICORD-1c (RSNA International COVID-19 Open Radiology Database, release 1c, on TCIA): about a
thousand chest radiographs of 361 adult patients, every one COVID-19 positive.

Layout: the TCIA download tree, DICOM files ``<root>/MIDRC-RICORD-1C/<PatientID>/<study folder>/<series
folder>/<n>.dcm`` (the root may also be the ``MIDRC-RICORD-1C`` folder itself). The study and series
folder names are free text made by the download tool (date, description, UID fragments): nothing is read
from them but the first folder, which is the patient. Beside it, optionally, the clinical sheet
``MIDRC-RICORD-1C-Clinical-Data-Jan-13-2021.xlsx`` (or a CSV export of it): one row per study with a
patient id column.

There is no label file: the adapter lists the ``.dcm`` files under the collection folder on the driver (a
sorted walk, one record per file as it is found; a few thousand files, so a per-file listing is
acceptable here, unlike a 10^5-image archive) and reads nothing from them there.

Options:

* ``collection_dir``: ``auto`` (default) is ``MIDRC-RICORD-1C`` when that folder exists under the root,
  else the root itself; any other value is a folder under the root.
* ``clinical``: ``auto`` (default) takes the first ``*Clinical*.xlsx`` / ``*Clinical*.csv`` (any case) in
  the root or the collection folder, and goes on without one when there is none; a file name is used
  as given (missing = the source is unreadable); ``none`` ignores the sheet.
* ``patient_column``: the sheet's column that holds the TCIA PatientID (the folder name). ``auto``
  (default) takes the first of ``PatientID``, ``Patient ID``, ``patient_id``, ``dicom_patient_id``,
  ``Anon MRN``, ``anon_mrn``, ``Subject ID`` (matched ignoring case, spaces and underscores) that the header
  has. The header of the released sheet could not be checked here: name the column when it is another.
* ``sheet``: the worksheet of an ``.xlsx`` (default: the first); ``encoding`` of a CSV (default utf-8).

What the clinical sheet gives: per patient, the number of its rows (``clinical_rows``) and the non-empty
cells of its first row (``clinical``) in provenance; a patient the sheet does not list gets
``clinical_rows: 0``. The sheet never changes a label, a patient or an outcome. It is read on the driver
into a dict keyed by patient (a few hundred entries).

Per file, in the executors (:meth:`RicordAdapter.file_fields`, DICOM header only, no pixels):

* modality from ``Modality``: CR and DX are X-ray; anything else (``CT`` of a series in the same tree,
  ``SR``/``PR`` objects, ``OT`` secondary captures) keeps its name and the pipeline filters it
  (``modality: CT``);
* view from ``ViewPosition``, else from the words of ``SeriesDescription``, then ``ProtocolName``:
  ``PA`` -> PA, ``AP`` -> AP, ``LAT``/``LATERAL``/``LL``/``RL`` -> Lateral (whole words: ``PORTABLE`` is not
  PA); a text naming two views (``PA AND LAT``) or none leaves the view unknown (kept by
  ``ingest.keep_unknown_view``). ``provenance.view_from`` names the tag that decided;
* sex and age from ``PatientSex``/``PatientAge``; the header's ``PatientID`` in
  ``provenance.dicom_patient_id``, and ``patient_id_mismatch: true`` when it differs from the folder.

Traps: the patient is the folder (= the TCIA PatientID), never a study or series folder: one patient has
several studies; a ``.dcm`` lying directly in the collection folder has no patient folder and is
quarantined (``missing_patient_folder``); names are compared as the tree spells them.

Label rule: every image of RICORD-1c is COVID-19 (the collection's definition: patients with a positive
RT-PCR test): finding ``COVID-19``, ``provenance.label_rule = "collection: RT-PCR positive"``. The
collection's own study-level annotations (typical / indeterminate / atypical appearance, negative for
pneumonia) are not in this tree and are not used.
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxrspark.labels import COVID
from cxrspark.schema import UNKNOWN_VIEW, SourceRecord
from cxrspark.sources._common import text
from cxrspark.sources.base import (SourceAdapter, SourceError, normalise_modality, normalise_sex,
                                   normalise_view, parse_age, register)

COLLECTION = "MIDRC-RICORD-1C"
LABEL_RULE = "collection: RT-PCR positive"
PATIENT_COLUMNS = ("PatientID", "Patient ID", "patient_id", "dicom_patient_id", "Anon MRN", "anon_mrn",
                   "Subject ID")
HEADER_TAGS = ("PatientID", "Modality", "ViewPosition", "SeriesDescription", "ProtocolName", "PatientSex",
               "PatientAge", "PhotometricInterpretation", "BodyPartExamined")
_VIEW_WORDS = {"PA": "PA", "AP": "AP", "LAT": "Lateral", "LATERAL": "Lateral", "LL": "Lateral", "RL": "Lateral"}
_WORD = re.compile(r"[A-Z]+")


def _folded(name: str) -> str:
    return re.sub(r"[\s_]+", "", str(name)).lower()


def view_from_text(description: str | None) -> str | None:
    """The one view a series description or protocol name names as a whole word, or None (none, or two)."""
    words = {_VIEW_WORDS[w] for w in _WORD.findall(str(description or "").upper()) if w in _VIEW_WORDS}
    return words.pop() if len(words) == 1 else None


def read_tags(path: str) -> tuple[dict[str, str], str | None]:
    """(header fields, error) of a DICOM file, without its pixels."""
    import pydicom

    out: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            for tag in HEADER_TAGS:
                value = ds.get(tag)
                if value not in (None, ""):
                    out[tag] = str(value).strip()
        except Exception as exc:  # noqa: BLE001 - any unreadable header is reported, the decoder decides
            return {}, f"{type(exc).__name__}: {exc}"
    return out, None


@register
class RicordAdapter(SourceAdapter):
    kind = "ricord"
    default_options = {"collection_dir": "auto", "clinical": "auto", "patient_column": "auto", "sheet": None,
                       "encoding": "utf-8"}

    # ---- layout -------------------------------------------------------------------------------------
    def collection(self) -> str:
        """The collection folder relative to the root ('' = the root itself)."""
        option = self.options["collection_dir"]
        if option not in (None, "", "auto"):
            return str(option).strip().strip("/\\")
        return COLLECTION if (self.root / COLLECTION).is_dir() else ""

    def clinical_name(self) -> str | None:
        option = self.options["clinical"]
        if option in (None, "", "none"):
            return None
        if option != "auto":
            return str(option)
        for folder in ("", self.collection()):
            base = self.root / folder
            if not base.is_dir():
                continue
            for p in sorted(base.iterdir(), key=lambda p: p.name):
                if (p.is_file() and "clinical" in p.name.lower()
                        and p.name.lower().endswith((".xlsx", ".csv", ".csv.gz"))):
                    return p.relative_to(self.root).as_posix()
        return None

    # ---- the clinical sheet -----------------------------------------------------------------------------
    def _sheet_rows(self, name: str) -> Iterator[tuple[list[str], dict[str, Any] | None]]:
        """(header, row) pairs of the clinical sheet (rows that cannot be read are skipped: the sheet is
        extra information, never a record)."""
        path = self.root / name
        if not path.is_file():
            raise SourceError(f"source {self.name!r}: clinical sheet {path} does not exist")
        if name.lower().endswith(".xlsx"):
            import openpyxl

            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
            try:
                ws = book[self.options["sheet"]] if self.options["sheet"] else book.worksheets[0]
                rows = ws.iter_rows(values_only=True)
                header = [text(h) for h in next(rows, ())]
                for values in rows:
                    if values is None or all(v in (None, "") for v in values):
                        continue
                    yield header, {h: v for h, v in zip(header, values) if h}
            finally:
                book.close()
        else:
            header: list[str] = []
            rows = self._csv_rows(name, self.options["encoding"])
            header = [h.strip() for h in next(rows)]
            for _, row, error in rows:
                if row is not None and not error:
                    yield header, row

    def clinical(self) -> tuple[str | None, dict[str, dict[str, Any]]]:
        """(sheet name, patient id -> {"rows": n, "first": non-empty cells of its first row})."""
        name = self.clinical_name()
        if name is None:
            return None, {}
        wanted = self.options["patient_column"]
        out: dict[str, dict[str, Any]] = {}
        column = None
        for header, row in self._sheet_rows(name):
            if column is None:
                if wanted not in (None, "", "auto"):
                    if wanted not in header:
                        raise SourceError(f"source {self.name!r}: clinical sheet {name} has no column {wanted!r}; "
                                          f"its columns: {header}")
                    column = wanted
                else:
                    by_fold = {_folded(h): h for h in header if h}
                    found = [by_fold[_folded(c)] for c in PATIENT_COLUMNS if _folded(c) in by_fold]
                    if not found:
                        raise SourceError(f"source {self.name!r}: clinical sheet {name} has none of the patient "
                                          f"columns {list(PATIENT_COLUMNS)}; name it with the patient_column option "
                                          f"(its columns: {header})")
                    column = found[0]
            pid = text(row.get(column))
            if not pid:
                continue
            entry = out.get(pid)
            if entry is None:
                cells = {str(k): (v if isinstance(v, (int, float, bool)) else text(v)) for k, v in row.items()
                         if text(v)}
                entry = out[pid] = {"rows": 0, "first": cells}
            entry["rows"] += 1
        return name, out

    # ---- records --------------------------------------------------------------------------------------
    def dicom_files(self) -> Iterator[str]:
        """The ``.dcm`` files under the collection folder, relative to the root, in sorted walk order."""
        base = self.root / self.collection()
        if not base.is_dir():
            raise SourceError(f"source {self.name!r}: collection folder {base} does not exist")
        for folder, dirs, files in os.walk(base):
            dirs.sort()
            for f in sorted(files):
                if f.lower().endswith(".dcm"):
                    yield Path(os.path.relpath(os.path.join(folder, f), self.root)).as_posix()

    def records(self) -> Iterator[SourceRecord]:
        self.check_root()
        collection = self.collection()
        sheet, clinical = self.clinical()
        for rel in self.dicom_files():
            inner = rel[len(collection) + 1:] if collection else rel
            parts = inner.split("/")
            path, error = self.resolve(rel)
            provenance: dict[str, Any] = {"label_rule": LABEL_RULE}
            if len(parts) < 2:
                patient = f"unknown-{rel}"
                path, error = None, f"missing_patient_folder: {rel} is not in a <PatientID> folder"
            else:
                patient = parts[0]
                if len(parts) >= 4:
                    provenance["study_folder"], provenance["series_folder"] = parts[1], parts[-2]
            if sheet is not None:
                provenance["clinical_sheet"] = sheet
                entry = clinical.get(patient)
                provenance["clinical_rows"] = entry["rows"] if entry else 0
                if entry:
                    provenance["clinical"] = entry["first"]
            yield self.record(rel, source_path=rel, path=path, finding=COVID, patient_id=patient,
                              provenance=provenance, error=error)

    # ---- executors ----------------------------------------------------------------------------------
    def file_fields(self, path: str) -> dict[str, Any]:
        """Modality, view, sex and age from the DICOM header (read in the executors, once per file)."""
        header, header_error = read_tags(path)
        provenance: dict[str, Any] = {}
        if header_error:
            provenance["header_error"] = header_error
        view, view_from = UNKNOWN_VIEW, None
        if header.get("ViewPosition"):
            view, view_from = normalise_view(header["ViewPosition"]), "ViewPosition"
        else:
            for tag in ("SeriesDescription", "ProtocolName"):
                found = view_from_text(header.get(tag))
                if found:
                    view, view_from = found, tag
                    break
        if view_from:
            provenance["view_from"] = view_from
        for tag, key in (("ViewPosition", "view_raw"), ("SeriesDescription", "series_description"),
                         ("ProtocolName", "protocol_name"), ("Modality", "modality_raw"),
                         ("PhotometricInterpretation", "photometric"), ("PatientID", "dicom_patient_id")):
            if header.get(tag):
                provenance[key] = header[tag]
        folder = self._patient_of(path)
        if header.get("PatientID") and folder and header["PatientID"] != folder:
            provenance["patient_id_mismatch"] = True
        return {"view": view, "modality": normalise_modality(header.get("Modality")),
                "sex": normalise_sex(header.get("PatientSex")), "age": parse_age(header.get("PatientAge")),
                "provenance": provenance}

    def _patient_of(self, path: str) -> str | None:
        base = os.path.realpath(self.root / self.collection())
        rel = os.path.relpath(os.path.realpath(path), base).split(os.sep)
        return rel[0] if len(rel) >= 2 and rel[0] != ".." else None
