"""NIH ChestX-ray14 (Wang et al. 2017, nihcc.app.box.com/v/ChestXray-NIHCC): 112,120 frontal PNGs.

Layout: ``Data_Entry_2017_v2020.csv`` (the 2020 revision) or the original ``Data_Entry_2017.csv``
(either may be gzipped), one row per image, and the images named by ``Image Index``
(``<8-digit patient id>_<3-digit number>.png``) either in one ``images/`` folder (the official
``images_001.tar.gz`` ... ``images_012.tar.gz`` all unpack into it) or kept apart as
``images_001/images/`` ... ``images_012/images/`` (e.g. the Kaggle copy).

Options:

* ``metadata``: ``auto`` (default) takes the first of ``Data_Entry_2017_v2020.csv``,
  ``Data_Entry_2017_v2020.csv.gz``, ``Data_Entry_2017.csv``, ``Data_Entry_2017.csv.gz`` that exists;
  any other value is used as given.
* ``image_dir``: ``auto`` (default) uses ``images/`` when it exists, else every ``images_NNN/images/``
  (or ``images_NNN/`` itself when it has no ``images/`` inside), else ``images/`` (every row then reports
  its missing file). A folder name, or a list of them, is used as given. Only these few folders are
  looked at on the driver, never the 112,120 files: with several folders each record carries one candidate
  path per folder (:meth:`~cxrspark.sources.base.SourceAdapter.resolve_any`) and the per-file check in the
  executors takes the one that exists.
* ``pneumonia_findings``: the NIH findings counted as Pneumonia (default ``["Pneumonia"]``; e.g. add
  ``Consolidation``, or ``[]`` to take only the normals of NIH).
* ``encoding``: of the metadata file (default utf-8).

Traps handled:

* The bracketed column names hold commas, and the header is not quoted: ``csv`` splits
  ``OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]`` into the four names
  ``OriginalImage[Width``, ``Height]``, ``OriginalImagePixelSpacing[x``, ``y]``, one per value of the rows
  (11 names for 11 values in the 2020 file). The original 2017 file ends the header and every row with a
  comma (a 12th, empty, column); both parse because rows are matched against the header's own count.
  A row whose field count differs from the header's is a ``malformed_row`` record, never dropped.
* ``Patient Gender`` is ``Patient Sex`` in some copies; ``Patient Age`` is ``58`` or ``058Y``; a few ages
  are impossible (e.g. 148, 414: the age is then None, ``age_raw`` keeps the text).
* ``Patient ID`` is written ``1`` while file names carry ``00000001``: the patient id is zero-padded to
  the 8 digits of the file names. The patient key is ``nih:<8 digits>`` whatever the source is named
  (:func:`nih_key`): the cross-archive key that the ``rsna`` adapter (with its NIH map) and the
  ``darkcovidnet`` adapter (with ``nih_metadata``) give the NIH images they re-publish, so one NIH patient
  is one split unit through every collection. In the 2020 file ``Follow-up #`` is not the number
  in the file name for 24,106 rows (both are kept: ``followup``, ``nih_followup``).
* An empty ``Image Index``, or one that repeats an earlier row's (it would repeat a record id), makes the
  row a ``malformed_row`` record.

Label rule (NIH's 14 findings are ``|``-joined NLP labels; none is COVID-19):

* exactly ``No Finding`` -> Normal;
* any finding in ``pneumonia_findings`` (default ``Pneumonia``, alone or with others) -> Pneumonia;
* anything else (``Effusion``, ``Cardiomegaly|Edema``, ...) -> unusable (filtered).

The label itself always comes from :func:`cxrspark.labels.normalise_finding` of the record's finding
(labels.py is not changed): the finding is ``Finding Labels`` verbatim when labels.py already maps that
text to the rule's class (``No Finding``, ``Pneumonia``, and every unusable text such as ``Effusion``,
so the filter reason reads ``unusable_label: finding 'Effusion'``), else the verbatim text with the rule's
class appended as the most specific part of a hierarchical finding, which labels.py resolves:
``Pneumonia|Effusion/Pneumonia``, ``Consolidation/Pneumonia``. A text labels.py would map although the
rule does not count it (``Pneumonia`` when ``pneumonia_findings`` leaves it out) gets the suffix
`` (not counted by the nih rule)``. ``provenance.finding_labels`` always holds the verbatim text and
``provenance.label_rule`` names the rule that decided.
"""
from __future__ import annotations

import csv
import gzip
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxrspark.labels import NORMAL, PNEUMONIA, normalise_finding
from cxrspark.schema import SourceRecord
from cxrspark.sources._common import text, under, unreadable_row
from cxrspark.sources.base import (SourceAdapter, SourceError, normalise_sex, normalise_view, parse_age,
                                   register)

METADATA_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv",
                  "Data_Entry_2017.csv.gz")
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
NO_FINDING = "No Finding"
NOT_COUNTED = " (not counted by the nih rule)"
_ARCHIVE_DIR = re.compile(r"^images_\d{3}$")
_IMAGE_NAME = re.compile(r"^(\d{8})_(\d{3})\.png$", re.IGNORECASE)
# column -> provenance key (kept when non-empty); the bracketed names as csv splits them
_SIZE_COLUMNS = {"OriginalImage[Width": "original_width", "Height]": "original_height",
                 "OriginalImagePixelSpacing[x": "pixel_spacing_x", "y]": "pixel_spacing_y"}


def nih_finding(finding_labels: str, pneumonia_findings: list[str] | tuple[str, ...] = ("Pneumonia",)
                ) -> tuple[str, str]:
    """(finding, rule) of one ``Finding Labels`` text: the finding that
    :func:`~cxrspark.labels.normalise_finding` maps to the class of the NIH rule (see the module
    docstring), and the name of the rule that decided."""
    raw = text(finding_labels)
    labels = [part.strip() for part in raw.split("|") if part.strip()]
    folded = {label.casefold() for label in labels}
    counted = [p for p in pneumonia_findings if str(p).strip().casefold() in folded]
    if [label.casefold() for label in labels] == [NO_FINDING.casefold()]:
        intended, rule = NORMAL, "no_finding"
    elif counted:
        intended, rule = PNEUMONIA, f"pneumonia_findings: {'|'.join(counted)}"
    else:
        intended, rule = None, "other_findings"
    if normalise_finding(raw) == intended:
        return raw, rule
    if intended is not None:
        return f"{raw}/{intended}", rule  # labels.py resolves a '/' finding from its last part
    return f"{raw.replace('/', '|')}{NOT_COUNTED}", rule


#: the cross-archive patient key space of NIH ChestX-ray14: ``nih:<8-digit Patient ID>``, whatever the source
#: is named and whichever collection an NIH image arrives through (nih, rsna with its NIH map, darkcovidnet
#: with the NIH metadata), so one person is one split unit
NIH_KEY_SPACE = "nih"


def nih_key(patient_id: str) -> str:
    pid = text(patient_id)
    return f"{NIH_KEY_SPACE}:{pid.zfill(8) if pid.isdigit() else pid}"


def nih_patient_ids(path: str | Path, wanted: set[str] | None = None) -> dict[str, str]:
    """``Image Index`` -> 8-digit ``Patient ID`` from an NIH ``Data_Entry_2017*.csv`` (gzipped or not),
    read line by line; with ``wanted``, only those images are kept (a collection that re-publishes a few
    NIH images holds state of its own size, not NIH's 112,120 rows)."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"NIH metadata {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    out: dict[str, str] = {}
    with opener(path, "rt", newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if "Image Index" not in header or "Patient ID" not in header:
            raise SourceError(f"NIH metadata {path} has no 'Image Index' and 'Patient ID' columns")
        i_image, i_patient = header.index("Image Index"), header.index("Patient ID")
        for row in reader:
            if len(row) <= max(i_image, i_patient):
                continue
            image, pid = row[i_image].strip(), row[i_patient].strip()
            if image and pid and (wanted is None or image in wanted):
                out[image] = pid.zfill(8) if pid.isdigit() else pid
    return out


@register
class NihAdapter(SourceAdapter):
    kind = "nih"
    default_options = {"metadata": "auto", "image_dir": "auto", "pneumonia_findings": ["Pneumonia"],
                       "encoding": "utf-8"}

    def __init__(self, name: str, root: Any, options: dict[str, Any]):
        super().__init__(name, root, options)
        findings = self.options["pneumonia_findings"]
        if isinstance(findings, str):
            findings = [findings]
        if not isinstance(findings, (list, tuple)) or not all(isinstance(f, str) for f in findings):
            raise ValueError(f"source {name!r} (nih): pneumonia_findings must be a list of finding names, "
                             f"got {findings!r}")
        self.pneumonia_findings = [f.strip() for f in findings if f.strip()]

    def key(self, patient_id: str) -> str:
        """``nih:<Patient ID>`` whatever this source is named: the key space other collections of NIH
        images link to."""
        return nih_key(patient_id)

    # ---- layout -------------------------------------------------------------------------------------
    def metadata_name(self) -> str:
        name = self.options["metadata"]
        if name not in (None, "", "auto"):
            return str(name)
        for candidate in METADATA_NAMES:
            if (self.root / candidate).is_file():
                return candidate
        raise SourceError(f"source {self.name!r}: no metadata file ({', '.join(METADATA_NAMES)}) in {self.root}")

    def image_dirs(self) -> list[str]:
        """The folders (relative to the root) an image may lie in, in the order they are tried."""
        option = self.options["image_dir"]
        if option not in (None, "", "auto"):
            folders = [option] if isinstance(option, str) else list(option)
            return [str(f).strip().rstrip("/\\") for f in folders]
        if (self.root / "images").is_dir():
            return ["images"]
        found = []
        for sub in sorted((p for p in self.root.iterdir() if p.is_dir() and _ARCHIVE_DIR.match(p.name)),
                          key=lambda p: p.name):
            found.append(f"{sub.name}/images" if (sub / "images").is_dir() else sub.name)
        return found or ["images"]

    # ---- records --------------------------------------------------------------------------------------
    def records(self) -> Iterator[SourceRecord]:
        self.check_root()
        metadata = self.metadata_name()
        folders = self.image_dirs()
        seen: dict[str, int] = {}  # Image Index -> line (a repeated one would repeat a record id)
        for lineno, row, error in self.read_csv(metadata, self.options["encoding"], REQUIRED_COLUMNS):
            if row is None:
                yield unreadable_row(self, lineno, error or "malformed_row: unreadable", metadata)
                continue
            image = text(row.get("Image Index"))
            if not image:
                yield unreadable_row(self, lineno, f"malformed_row: line {lineno} has an empty Image Index",
                                     metadata)
                continue
            if image in seen:
                yield unreadable_row(self, lineno, f"malformed_row: line {lineno} repeats Image Index "
                                                   f"{image!r} of line {seen[image]}", metadata)
                continue
            seen[image] = lineno
            yield self._record(lineno, row, image, folders, metadata)

    def _record(self, lineno: int, row: dict[str, Any], image: str, folders: list[str], metadata: str
                ) -> SourceRecord:
        candidates = [under(folder, image) for folder in folders]
        if len(candidates) == 1:
            path, error = self.resolve(candidates[0])
        else:
            path, error = self.resolve_any(candidates)
        raw_labels = text(row.get("Finding Labels"))
        finding, rule = nih_finding(raw_labels, self.pneumonia_findings)
        name = _IMAGE_NAME.match(image)
        pid = text(row.get("Patient ID"))
        patient = pid.zfill(8) if pid.isdigit() else pid
        if not patient:
            patient = name.group(1) if name else f"unknown-L{lineno}"
        sex_raw = row.get("Patient Gender", row.get("Patient Sex"))
        age_raw = text(row.get("Patient Age"))
        age = parse_age(age_raw)
        provenance: dict[str, Any] = {"metadata": metadata, "line": lineno, "finding_labels": raw_labels,
                                      "label_rule": rule, "view_raw": text(row.get("View Position"))}
        followup = text(row.get("Follow-up #"))
        if followup:
            provenance["followup"] = followup
        if name:
            provenance["nih_followup"] = name.group(2)
            if name.group(1) != patient:
                provenance["name_patient_id"] = name.group(1)
        if age is None and age_raw:
            provenance["age_raw"] = age_raw
        for column, key in _SIZE_COLUMNS.items():
            value = text(row.get(column))
            if value:
                provenance[key] = value
        return self.record(
            image,
            source_path=candidates[0],
            path=path,
            finding=finding,
            patient_id=patient,
            view=normalise_view(row.get("View Position")),
            sex=normalise_sex(sex_raw),
            age=age,
            provenance=provenance,
            error=error,
        )
