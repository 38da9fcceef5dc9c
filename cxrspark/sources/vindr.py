"""VinDr-CXR (Nguyen et al. 2022, physionet.org/content/vindr-cxr, and Kaggle's "VinBigData" copy):
18,000 de-identified frontal chest radiographs (DICOM), each read by several radiologists.

Layout, in one of two label formats (told apart by the header, so either can be named by ``metadata``):

* **PhysioNet** (v1.0.0): ``annotations/image_labels_train.csv`` and ``annotations/image_labels_test.csv``
  (or both at the root), one row per image PER RADIOLOGIST (``image_id, rad_id, Aortic enlargement, ...,
  Pneumonia, Tuberculosis, Other diseases, No finding``: one 0/1 column per finding or diagnosis; the
  15,000 training images have three readers each); the test file holds one consensus row per image (of
  five radiologists). Images ``train/<image_id>.dicom`` and ``test/<image_id>.dicom``.
* **Kaggle** (``vinbigdata-train.csv`` as redistributed, or the competition's ``train.csv``; either may be
  gzipped): one row per FINDING per radiologist (``image_id,class_name,class_id,rad_id,x_min,y_min,x_max,
  y_max``, some copies add ``width,height``): a radiologist who saw two nodules gives two rows, one who
  saw nothing gives one ``No finding`` row. There is no Pneumonia label in this version (its 14 findings
  are local lesions). Images ``train/<image_id>.dicom``.

Options:

* ``metadata``: ``auto`` (default) takes every PhysioNet label file that exists (train, then test;
  in ``annotations/`` or at the root, ``.gz`` too), else the first of ``vinbigdata-train.csv(.gz)``,
  ``train.csv(.gz)``; a file name or a list of them is used as given.
* ``image_dir``: ``auto`` (default) is ``test`` for a metadata file whose name holds ``test``, else
  ``train``; any other value is the image folder of every metadata file.
* ``consensus``: how the radiologists of one image are combined (default ``majority``): a finding holds
  when MORE THAN HALF of the image's radiologists give it (2 of 3); ``any``: when one does; ``all``: when
  every one does. A radiologist counts once per finding, however many boxes they drew.
* ``encoding`` (default utf-8), ``read_headers`` (default true: view, sex, age, modality from the DICOM
  header, read per file in the executors by :meth:`VindrAdapter.file_fields`; pixels are not read there).

Per-image aggregation: rows are per radiologist (and, in the Kaggle file, per box), and the real Kaggle
file is NOT sorted by image (67,914 rows in 67,907 runs of one image id), so a record can only be made
once the whole file has been read. The driver keeps one small entry per image while it streams the
file: ``image_id -> [first line, row count, {rad_id: bit mask of the findings that reader gave}, first
error]``; the rows themselves are never kept. On the real Kaggle file (15,000 images) that state peaks at
about 9 MB (measured with tracemalloc in ``tests/test_vindr.py``): per-image state like the per-patient
state the ingest already holds, not a per-row list. Records are yielded per metadata file in the order
of each image's first row; an unreadable row is yielded as soon as it is read.

Traps handled:

* The Kaggle file is per finding and per box, not per image: votes are counted per distinct
  radiologist, so three boxes of one reader are one vote.
* The PhysioNet test file spells ``Other disease`` (train: ``Other diseases``; read as one name), may
  lack ``rad_id`` (each row is then one reader) and leaves cells empty (= 0). A cell that is not 0/1
  (``1.0`` and ``0.0`` are read as 1 and 0) makes the image's record a ``malformed_row``.
* ``Lung Opacity`` is one of VinDr's local findings; labels.py maps that text to Pneumonia (RSNA's
  target), so a VinDr finding text that labels.py would map against the rule gets the suffix
  `` (not counted by the vindr rule)`` (its ``/``, as in ``Nodule/Mass``, written ``|`` so that no part of
  it is read as a hierarchy).
* A row without ``image_id``, or (Kaggle) without ``class_name`` or ``rad_id``, is a ``malformed_row``
  record; an image id that an earlier metadata file of the same source already gave is one too.
* VinDr has NO patient ids (each image was de-identified on its own): the patient is the image id, so
  two films of one person may land in different splits; nothing in the release can link them.

Label rule (``consensus`` decides which findings hold for an image):

* Normal: ``No finding`` holds and no other finding does;
* Pneumonia (PhysioNet format only): ``Pneumonia`` holds and ``No finding`` does not;
* anything else is unusable (filtered) with the findings that hold as its text (``Aortic enlargement|
  Cardiomegaly``), or ``no agreed finding`` when none holds (the readers disagree).

``provenance`` keeps the votes (``votes``: finding -> readers who gave it, ``readers``: the rad ids), the
findings that hold (``consensus_findings``), the rule (``consensus``, ``label_rule``) and the format.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxrspark.labels import NORMAL, PNEUMONIA, normalise_finding
from cxrspark.schema import SourceRecord
from cxrspark.sources._common import text
from cxrspark.sources.base import SourceAdapter, SourceError, register
from cxrspark.sources.rsna import RAW_TAGS, header_fields

PHYSIONET_NAMES = ("annotations/image_labels_train.csv", "annotations/image_labels_train.csv.gz",
                   "image_labels_train.csv", "image_labels_train.csv.gz",
                   "annotations/image_labels_test.csv", "annotations/image_labels_test.csv.gz",
                   "image_labels_test.csv", "image_labels_test.csv.gz")
KAGGLE_NAMES = ("vinbigdata-train.csv", "vinbigdata-train.csv.gz", "train.csv", "train.csv.gz")
CONSENSUS_RULES = ("majority", "any", "all")
NO_FINDING = "No finding"
PNEUMONIA_COLUMN = "Pneumonia"
NO_AGREED_FINDING = "no agreed finding"
NOT_COUNTED = " (not counted by the vindr rule)"
#: the PhysioNet columns that are not findings (``Other disease``: the test file's spelling)
_ID_COLUMNS = ("image_id", "rad_id")
_RENAMED = {"Other disease": "Other diseases"}
_KAGGLE = "kaggle"
_PHYSIONET = "physionet"
_CELL = {"": 0, "0": 0, "1": 1, "0.0": 0, "1.0": 1}


def holds(votes: int, readers: int, rule: str) -> bool:
    """Whether a finding given by ``votes`` of ``readers`` radiologists holds under ``rule``."""
    if readers <= 0 or votes <= 0:
        return False
    if rule == "majority":
        return 2 * votes > readers
    if rule == "all":
        return votes == readers
    return True  # any


def vindr_finding(consensus: list[str], pneumonia_known: bool) -> tuple[str, str | None, str]:
    """(finding text, intended class, rule name) of the findings that hold for one image."""
    if consensus == [NO_FINDING]:
        intended, rule = NORMAL, "no_finding"
    elif pneumonia_known and PNEUMONIA_COLUMN in consensus and NO_FINDING not in consensus:
        intended, rule = PNEUMONIA, "pneumonia"
    elif not consensus:
        intended, rule = None, "no_agreed_finding"
    elif NO_FINDING in consensus:
        intended, rule = None, "no_finding_with_findings"
    else:
        intended, rule = None, "other_findings"
    raw = "|".join(consensus) if consensus else NO_AGREED_FINDING
    if intended == NORMAL:
        return NO_FINDING, intended, rule
    if normalise_finding(raw) == intended:
        return raw, intended, rule
    if intended is not None:
        return f"{raw}/{intended}", intended, rule  # labels.py resolves a '/' finding from its last part
    return f"{raw.replace('/', '|')}{NOT_COUNTED}", intended, rule


@register
class VindrAdapter(SourceAdapter):
    kind = "vindr"
    default_options = {"metadata": "auto", "image_dir": "auto", "consensus": "majority", "encoding": "utf-8",
                       "read_headers": True}

    def __init__(self, name: str, root: Any, options: dict[str, Any]):
        super().__init__(name, root, options)
        if self.options["consensus"] not in CONSENSUS_RULES:
            raise ValueError(f"source {name!r} (vindr): consensus must be one of {list(CONSENSUS_RULES)}, "
                             f"got {self.options['consensus']!r}")

    def identity_warning(self) -> str | None:
        return ("VinDr-CXR images are de-identified one by one (no patient ids): each image is split as its own "
                "patient, so two films of one person can land in different splits")

    # ---- layout -------------------------------------------------------------------------------------
    def metadata_names(self) -> list[str]:
        option = self.options["metadata"]
        if option not in (None, "", "auto"):
            return [option] if isinstance(option, str) else [str(n) for n in option]
        found, stems = [], set()
        for candidate in PHYSIONET_NAMES:  # train before test; one of each (.csv before .csv.gz)
            stem = Path(candidate).name.split(".")[0]
            if stem not in stems and (self.root / candidate).is_file():
                found.append(candidate)
                stems.add(stem)
        if found:
            return found
        for candidate in KAGGLE_NAMES:
            if (self.root / candidate).is_file():
                return [candidate]
        raise SourceError(f"source {self.name!r}: no VinDr label file ({', '.join(PHYSIONET_NAMES + KAGGLE_NAMES)}) "
                          f"in {self.root}")

    def image_dir(self, metadata: str) -> str:
        option = self.options["image_dir"]
        if option not in (None, "", "auto"):
            return str(option).strip().rstrip("/\\")
        return "test" if "test" in Path(metadata).name.lower() else "train"

    # ---- executors ----------------------------------------------------------------------------------
    def file_fields(self, path: str) -> dict[str, Any]:
        """View, sex, age and modality from the DICOM header (read in the executors, once per file)."""
        return header_fields(path, (*RAW_TAGS, ("Modality", "modality_raw"))) if self.options["read_headers"] else {}

    # ---- records --------------------------------------------------------------------------------------
    def records(self) -> Iterator[SourceRecord]:
        self.check_root()
        earlier: dict[str, str] = {}  # image id -> the metadata file that gave it (several files only)
        names = self.metadata_names()
        for metadata in names:
            yield from self._file_records(metadata, earlier if len(names) > 1 else None)

    def _bad(self, metadata: str, lineno: int, error: str) -> SourceRecord:
        """A row that cannot be read (its record id names the file: two label files may share line numbers)."""
        tag = f"{Path(metadata).name}:L{lineno}"
        return self.record(tag, source_path="", path=None, finding="", patient_id=f"unknown-{tag}",
                           provenance={"metadata": metadata, "line": lineno}, error=error)

    def _file_records(self, metadata: str, earlier: dict[str, str] | None) -> Iterator[SourceRecord]:
        rows = self._csv_rows(metadata, self.options["encoding"])
        header = [_RENAMED.get(h.strip(), h.strip()) for h in next(rows)]
        if "class_name" in header:
            fmt = _KAGGLE
            missing = [c for c in ("image_id", "class_name", "rad_id") if c not in header]
            findings: list[str] = []
        elif NO_FINDING in header:
            fmt = _PHYSIONET
            missing = [c for c in ("image_id",) if c not in header]
            findings = [h for h in header if h not in _ID_COLUMNS]
        else:
            fmt, findings = None, []
            missing = ["class_name (Kaggle format) or 'No finding' (PhysioNet format)"]
        bits: dict[str, int] = {f: i for i, f in enumerate(findings)}  # finding -> bit of a reader's mask
        images: dict[str, list[Any]] = {}  # image id -> [first line, rows, {rad: mask}, first error]
        for lineno, row, error in rows:
            if missing:
                yield self._bad(metadata, lineno, f"missing_column: {metadata} has no column(s) {missing}")
                continue
            if row is None:
                yield self._bad(metadata, lineno, error or "malformed_row: unreadable")
                continue
            row = {_RENAMED.get(k.strip(), k.strip()): v for k, v in row.items()}
            image = text(row.get("image_id"))
            if not image:
                yield self._bad(metadata, lineno, f"malformed_row: line {lineno} has an empty image_id")
                continue
            entry = images.get(image)
            if entry is None:
                entry = images[image] = [lineno, 0, {}, None]
            entry[1] += 1
            rad = text(row.get("rad_id")) or (f"L{lineno}" if fmt == _PHYSIONET and "rad_id" not in header else "")
            mask, row_error = 0, None
            if not rad:
                row_error = f"malformed_row: line {lineno} has an empty rad_id"
            elif fmt == _KAGGLE:
                finding = text(row.get("class_name"))
                if not finding:
                    row_error = f"malformed_row: line {lineno} has an empty class_name"
                else:
                    if finding not in bits:
                        bits[finding] = len(bits)
                        findings.append(finding)
                    mask = 1 << bits[finding]
            else:
                for finding, bit in bits.items():
                    cell = text(row.get(finding))
                    if cell not in _CELL:
                        row_error = f"malformed_row: line {lineno}: {finding!r} is {cell!r}, not 0 or 1"
                        break
                    if _CELL[cell]:
                        mask |= 1 << bit
            if row_error:
                entry[3] = entry[3] or row_error
                continue
            entry[2][rad] = entry[2].get(rad, 0) | mask
        for image, entry in images.items():
            duplicate = None
            if earlier is not None:
                if image in earlier:
                    duplicate = f"malformed_row: image_id {image!r} of {metadata} is already in {earlier[image]}"
                    # its own record id (the first file's record holds image_id's): ids stay unique
                    yield self._bad(metadata, entry[0], duplicate)
                    continue
                earlier[image] = metadata
            yield self._record(image, entry, findings, fmt or "", metadata, None)

    def _record(self, image: str, entry: list[Any], findings: list[str], fmt: str, metadata: str,
                duplicate: str | None) -> SourceRecord:
        first_line, n_rows, masks, error = entry
        rule = self.options["consensus"]
        readers = len(masks)
        votes = {f: sum(1 for m in masks.values() if m >> i & 1) for i, f in enumerate(findings)}
        consensus = [f for f in findings if holds(votes[f], readers, rule)]
        if NO_FINDING in consensus:  # 'No finding' first, then the findings in column (first-seen) order
            consensus = [NO_FINDING] + [f for f in consensus if f != NO_FINDING]
        finding, _, label_rule = vindr_finding(consensus, fmt == _PHYSIONET)
        source_path = f"{self.image_dir(metadata)}/{image}.dicom"
        path, path_error = self.resolve(source_path)
        error = duplicate or error or path_error
        if error and path_error is None:
            path = None
        provenance: dict[str, Any] = {
            "metadata": metadata, "line": first_line, "rows": n_rows, "format": fmt, "consensus": rule,
            "readers": sorted(masks), "votes": {f: n for f, n in votes.items() if n},
            "consensus_findings": consensus, "label_rule": label_rule,
            "per_image_id": True,  # VinDr has no patient ids: the image is its own patient
        }
        return self.record(image, source_path=source_path, path=path, finding=finding, patient_id=image,
                           provenance=provenance, error=error)
