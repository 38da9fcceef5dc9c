"""PadChest (Bustos et al. 2020, bimcv.cipf.es/bimcv-projects/padchest): 160,868 CXRs of 67,000 patients
(San Juan hospital, Alicante, 2009-2017) with report labels.

Layout: one metadata file, ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (gzipped or not;
comma-separated, 36 columns incl. ``ImageID, ImageDir, StudyDate_DICOM, StudyID, PatientID, PatientBirth,
PatientSex_DICOM, ViewPosition_DICOM, Projection, MethodProjection, Pediatric, Modality_DICOM,
BitsStored_DICOM, ..., Report, MethodLabel, Labels, Localizations, ...``), or subsets of it such as the
``neumo_pneumonia_{f,m}.tsv`` files of the BIMCV-COVID-19 repository (tab-separated, written by pandas:
empty cells read ``nan`` or ``None``, a subset of the columns, no ``ImageDir``). Images are PNGs named by
``ImageID`` in the numbered folders ``0/`` ... ``54/`` of the release (``ImageDir``); some copies keep
every image in one folder (the root).

Options:

* ``metadata``: ``auto`` (default) takes the full file (``..._160K_01.02.19.csv``, or its ``.gz``) when it
  is at the root, else EVERY ``*.csv``/``*.tsv`` (``.gz`` too) at the root, in name order (a folder of
  subsets: ``neumo_pneumonia_f.tsv`` + ``neumo_pneumonia_m.tsv``). A name, or a list of names, is used as
  given. The separator is taken from each file's header line: a tab in it means tab-separated, else
  comma-separated (the file name does not matter).
* ``pneumonia_findings``: the PadChest labels counted as Pneumonia (default ``["pneumonia",
  "atypical pneumonia"]``: in the real pneumonia subsets 5,712 of 5,921 rows carry ``pneumonia`` and 228
  ``atypical pneumonia``, 209 of them without ``pneumonia``; PadChest predates COVID-19, so an atypical
  (mycoplasma, viral...) pneumonia is a non-COVID pneumonia. PadChest has no ``viral pneumonia`` label.
  Give ``["pneumonia"]`` to take the typical ones only).
* ``encoding``: of the metadata files (default utf-8).

Traps handled:

* ``Labels`` is a Python-list string whose tokens can carry a leading space (``[' pneumonia']``) and repeat
  (``'pneumonia'`` and ``' pneumonia'`` from two sentences). It is read with :func:`ast.literal_eval`
  (never ``eval``), falling back to splitting on the quotes for a list Python cannot read (a stray
  apostrophe: ``['crohn's disease']``); tokens are stripped, empty ones and repeats dropped. An empty cell,
  ``nan``, ``None`` or ``[]`` is a row without labels (filtered, ``no_labels``); anything else that is not a
  list of strings (``['pneumonia'`` cut short, ``[1, 2]``, ``pneumonia`` without brackets) is a quarantined
  record (``malformed_row: ... unparseable Labels ...``).
* ``Projection`` (the manually reviewed, or resnet-classified, projection; ``MethodProjection`` says which)
  is the view: ``PA``, ``AP``, ``AP_horizontal`` (AP taken lying down) -> ``AP Supine``, ``L`` -> Lateral
  (filtered as ``lateral_view``), ``COSTAL`` (rib views) -> ``Costal`` (filtered as ``non_frontal_view``);
  any other value stays visible (e.g. ``EXCLUDE``: filtered as ``non_frontal_view: EXCLUDE``). When ``Projection``
  is empty or ``UNK`` the DICOM ``ViewPosition_DICOM`` decides (``POSTEROANTERIOR`` -> PA, ``LL`` ->
  Lateral...); the raw values are kept in ``provenance``.
* Images are 16-bit PNGs whose values use only ``BitsStored_DICOM`` bits (10 or 12). Nothing to do here:
  :mod:`cxrspark.images.decode` scales a 16-bit PNG by its OWN minimum and maximum (``_minmax_uint8``), not
  by 65535, so a 12-bit-valued image fills 0..255 (tests/test_padchest.py decodes one and compares it with
  the same picture stored in 8 bits).
* ``ImageDir`` present: the file is ``<ImageDir>/<ImageID>``, else ``<ImageID>`` at the root (both are
  candidates, :meth:`~cxrspark.sources.base.SourceAdapter.resolve_any`; the executors take the one that
  exists). Without an ``ImageDir`` column (the subsets) the candidates are the root and every numbered
  folder found at the root (only the root is listed on the driver).
* ``PatientBirth`` is a year written as a float (``1948.0``); the age is the ``StudyDate_DICOM`` year minus
  it (None when either is missing or the difference is outside 0..120). ``Pediatric`` (``PED``),
  ``BitsStored_DICOM`` and the study id go to ``provenance``.
* An empty ``ImageID``, or one repeated (in the same or an earlier metadata file), makes the row a
  ``malformed_row`` record, never dropped.

Label rule (PadChest's labels are ~190 report findings; COVID-19 is not among them):

* any label in ``pneumonia_findings`` (alone or with others, even with ``normal``: in PadChest ``normal``
  is tagged per sentence, e.g. ``[' normal', 'alveolar pattern', ' pneumonia', ' tuberculosis']``) ->
  Pneumonia;
* exactly ``normal`` -> Normal;
* no labels -> filtered (``no_labels``); anything else -> filtered with its text (``other_findings``).

As in nih.py the label comes from :func:`cxrspark.labels.normalise_finding` of the finding, which is the
stripped labels joined by ``|`` (a ``/`` inside a label becomes ``|``) when labels.py already maps that text
to the rule's class (``pneumonia``, ``normal``, ``interstitial pattern|pleural effusion``), else with the
rule's class appended as the most specific part (``consolidation|pneumonia/Pneumonia``,
``atypical pneumonia/Pneumonia``); ``(no labels)`` for a row without labels. ``provenance.labels`` keeps
the parsed list, ``provenance.label_rule`` the rule that decided.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cxrspark.labels import NORMAL, PNEUMONIA, normalise_finding
from cxrspark.schema import UNKNOWN_VIEW, SourceRecord
from cxrspark.sources._common import text
from cxrspark.sources.base import (SourceAdapter, SourceError, normalise_modality, normalise_sex,
                                   normalise_view, register)

FULL_NAMES = ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
              "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
METADATA_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")
REQUIRED_COLUMNS = ("ImageID", "PatientID", "Labels")
NO_LABELS = "(no labels)"
#: cells pandas writes for a missing value
_EMPTY = frozenset({"", "nan", "none", "nat", "null"})
_NUMBERED_DIR = re.compile(r"^\d{1,3}$")
_PROJECTIONS = {"PA": "PA", "AP": "AP", "AP_HORIZONTAL": "AP Supine", "L": "Lateral", "COSTAL": "Costal"}
_PROVENANCE = {"StudyID": "study_id", "ImageDir": "image_dir", "MethodProjection": "method_projection",
               "Pediatric": "pediatric", "Modality_DICOM": "modality_raw", "BitsStored_DICOM": "bits_stored",
               "PhotometricInterpretation_DICOM": "photometric", "Manufacturer_DICOM": "manufacturer",
               "StudyDate_DICOM": "study_date", "MethodLabel": "method_label"}


# ---- shared with bimcv.py (the BIMCV releases write their labels the PadChest way) ---------------------
def cell(value: Any) -> str:
    """A metadata cell as stripped text, '' for pandas' missing-value spellings (nan, None)."""
    out = text(value)
    return "" if out.lower() in _EMPTY else out


def parse_label_list(raw: Any, bracketless: bool = False) -> list[str] | None:
    """The labels of a Python-list string (``"['normal', ' pneumonia']"``): stripped, empty ones and
    repeats dropped, in order; ``[]`` for an empty cell; None when it is not a list of strings.

    ``bracketless`` also accepts the list with its outer ``['`` and ``']`` cut off (``normal', 'pneumonia``),
    the form of the BIMCV-COVID19+ spreadsheet. Never evaluates code: :func:`ast.literal_eval` reads
    literals only, and a list it cannot read (an apostrophe inside a label) is split on its quotes.
    """
    s = cell(raw)
    if not s:
        return []
    if not (s.startswith("[") and s.endswith("]")):
        if not bracketless:
            return None
        s = "['" + s + "']"
    try:
        value = ast.literal_eval(s)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        value = _split_quoted(s)
        if value is None:
            return None
    out: list[str] = []
    for token in value:
        token = token.strip()
        if token and token not in out:
            out.append(token)
    return out


def _split_quoted(s: str) -> list[str] | None:
    """``['a', "b's"]`` read by its quotes: the fallback for a list literal_eval refuses (None when a token
    would hold a bracket: no label name does)."""
    inner = s[1:-1].strip()
    if not inner:
        return []
    if len(inner) < 2 or inner[0] not in "'\"" or inner[-1] not in "'\"":
        return None
    tokens = re.split(r"""['"]\s*,\s*['"]""", inner[1:-1])
    return None if any("[" in t or "]" in t for t in tokens) else tokens


def list_finding(labels: list[str], intended: str | None, kind: str) -> str:
    """The finding text of a label list that :func:`~cxrspark.labels.normalise_finding` maps to
    ``intended`` (see the module docstring)."""
    joined = "|".join(label.replace("/", "|") for label in labels) or NO_LABELS
    if normalise_finding(joined) == intended:
        return joined
    if intended is not None:
        return f"{joined}/{intended}"  # labels.py resolves a '/' finding from its last part
    return f"{joined} (not counted by the {kind} rule)"


def padchest_finding(labels: list[str], pneumonia_findings: Iterable[str]) -> tuple[str, str]:
    """(finding, rule) of one parsed ``Labels`` list under the PadChest rule."""
    folded = [label.casefold() for label in labels]
    counted = [p for p in pneumonia_findings if p.casefold() in folded]
    if counted:
        intended, rule = PNEUMONIA, f"pneumonia_findings: {'|'.join(counted)}"
    elif folded == ["normal"]:
        intended, rule = NORMAL, "normal"
    else:
        intended, rule = None, "other_findings" if labels else "no_labels"
    return list_finding(labels, intended, "padchest"), rule


def findings_option(name: str, kind: str, option: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(f, str) for f in value):
        raise ValueError(f"source {name!r} ({kind}): {option} must be a list of label names, got {value!r}")
    return [f.strip() for f in value if f.strip()]


def study_age(birth: str, study_date: str) -> int | None:
    """Whole years between a birth year (``1948.0``) and a study date (``20140827``); None when unknown or
    outside 0..120 (the year difference: at most one year more than the exact age)."""
    try:
        age = int(study_date[:4]) - int(float(birth))
    except (ValueError, OverflowError):
        return None
    return age if 0 <= age <= 120 else None


def padchest_view(projection: str, view_dicom: str) -> str:
    """The canonical view of a ``Projection`` value, the DICOM ``ViewPosition`` when it is empty or UNK."""
    key = projection.strip().upper()
    if key and key not in ("UNK", "UNKNOWN"):
        return _PROJECTIONS.get(key) or normalise_view(projection)
    view = normalise_view(view_dicom)
    return view if view else UNKNOWN_VIEW


@register
class PadChestAdapter(SourceAdapter):
    kind = "padchest"
    default_options = {"metadata": "auto", "pneumonia_findings": ["pneumonia", "atypical pneumonia"],
                       "encoding": "utf-8"}

    def __init__(self, name: str, root: Any, options: dict[str, Any]):
        super().__init__(name, root, options)
        self.pneumonia_findings = findings_option(name, self.kind, "pneumonia_findings",
                                                  self.options["pneumonia_findings"])

    # ---- layout -------------------------------------------------------------------------------------
    def metadata_names(self) -> list[str]:
        option = self.options["metadata"]
        if option not in (None, "", "auto"):
            return [str(option)] if isinstance(option, str) else [str(o) for o in option]
        for name in FULL_NAMES:
            if (self.root / name).is_file():
                return [name]
        found = sorted(p.name for p in self.root.iterdir()
                       if p.is_file() and p.name.lower().endswith(METADATA_SUFFIXES))
        if not found:
            raise SourceError(f"source {self.name!r}: no metadata file ({FULL_NAMES[0]} or any *.csv/*.tsv) "
                              f"in {self.root}")
        return found

    def numbered_dirs(self) -> list[str]:
        """The release's numbered image folders (0 ... 54) present at the root, in numeric order."""
        return sorted((p.name for p in self.root.iterdir() if p.is_dir() and _NUMBERED_DIR.match(p.name)),
                      key=int)

    # ---- records --------------------------------------------------------------------------------------
    def records(self) -> Iterator[SourceRecord]:
        self.check_root()
        names = self.metadata_names()
        folders: list[str] | None = None  # listed once, only when a file has no ImageDir column
        seen: dict[str, str] = {}  # ImageID -> "file line N"
        for metadata in names:
            for lineno, row, error in self.read_csv(metadata, self.options["encoding"], REQUIRED_COLUMNS, delimiter=None):
                if row is None:
                    yield self._bad(lineno, error or "malformed_row: unreadable", metadata)
                    continue
                image = cell(row.get("ImageID"))
                if not image:
                    yield self._bad(lineno, f"malformed_row: line {lineno} has an empty ImageID", metadata)
                    continue
                if image in seen:
                    yield self._bad(lineno, f"malformed_row: line {lineno} repeats ImageID {image!r} of "
                                            f"{seen[image]}", metadata)
                    continue
                seen[image] = f"{metadata} line {lineno}"
                image_dir = cell(row.get("ImageDir"))
                if image_dir:
                    image_dir = image_dir.split(".")[0] if re.fullmatch(r"\d+\.0", image_dir) else image_dir
                    candidates = [f"{image_dir}/{image}", image]
                else:
                    if folders is None:
                        folders = self.numbered_dirs()
                    candidates = [image, *(f"{d}/{image}" for d in folders)]
                yield self._record(lineno, row, image, candidates, metadata)

    def _bad(self, lineno: int, error: str, metadata: str) -> SourceRecord:
        """An unusable row of one of several metadata files: the line alone is not unique."""
        stem = re.sub(r"(\.(csv|tsv|txt))?(\.gz)?$", "", Path(metadata).name, flags=re.IGNORECASE)
        return self.record(f"{stem}:L{lineno}", source_path="", path=None, finding="",
                           patient_id=f"unknown-{stem}-L{lineno}",
                           provenance={"metadata": metadata, "line": lineno}, error=error)

    def _record(self, lineno: int, row: dict[str, Any], image: str, candidates: list[str], metadata: str
                ) -> SourceRecord:
        path, error = self.resolve_any(candidates)
        raw_labels = text(row.get("Labels"))
        labels = parse_label_list(raw_labels)
        if labels is None:
            error = error or f"malformed_row: line {lineno} has an unparseable Labels value {raw_labels[:80]!r}"
            finding, rule = raw_labels, "unparseable"
        else:
            finding, rule = padchest_finding(labels, self.pneumonia_findings)
        projection, view_dicom = cell(row.get("Projection")), cell(row.get("ViewPosition_DICOM"))
        patient = cell(row.get("PatientID")) or f"unknown-L{lineno}"
        birth, study_date = cell(row.get("PatientBirth")), cell(row.get("StudyDate_DICOM"))
        provenance: dict[str, Any] = {"metadata": metadata, "line": lineno, "labels_raw": raw_labels,
                                      "label_rule": rule, "projection": projection}
        if labels is not None:
            provenance["labels"] = labels
        if view_dicom:
            provenance["view_dicom"] = view_dicom
        if birth:
            provenance["birth_year"] = birth.split(".")[0] if re.fullmatch(r"\d+\.0", birth) else birth
        for column, key in _PROVENANCE.items():
            value = cell(row.get(column))
            if value:
                provenance[key] = value
        return self.record(
            image,
            source_path=candidates[0],
            path=None if error else path,
            finding=finding,
            patient_id=patient,
            view=padchest_view(projection, view_dicom),
            modality=normalise_modality(cell(row.get("Modality_DICOM"))),
            sex=normalise_sex(cell(row.get("PatientSex_DICOM"))),
            age=study_age(birth, study_date),
            provenance=provenance,
            error=error,
        )
