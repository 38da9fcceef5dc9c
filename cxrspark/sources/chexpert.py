"""CheXpert v1.0 (Irvin et al. 2019, stanfordmlgroup.github.io/competitions/chexpert): frontal and lateral
JPEGs, ``train.csv`` 223,414 images of 64,540 patients, ``valid.csv`` 234 images of 200 patients.

Layout: ``train.csv`` and ``valid.csv`` (either may be gzipped), one row per image, whose ``Path`` names
the image relative to the folder that CONTAINS the dataset folder:
``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`` (the downsampled release) or
``CheXpert-v1.0/train/...`` (the full-size one). The root may be either folder:

* the dataset folder itself (``.../CheXpert-v1.0-small/``, metadata at the root): each record carries two
  candidate paths, the ``Path`` without its first part (``train/patient00001/...``) and ``Path`` as written
  (for a root that contains the dataset folder but got the CSVs copied up), and the per-file check in the
  executors takes the one that exists (:meth:`~cxrspark.sources.base.SourceAdapter.resolve_any`; no file is
  listed on the driver);
* the folder containing it (metadata at ``CheXpert-v1.0-small/train.csv``, as the zip unpacks): ``Path``
  as written is the only candidate.

Options:

* ``metadata``: ``auto`` (default) reads ``train.csv`` then ``valid.csv`` (each also ``.csv.gz``), each
  looked for at the root, then in ``CheXpert-v1.0-small/`` and ``CheXpert-v1.0/`` under it; a file name or
  a list of them (relative to the root) is used as given.
* ``uncertainty``: what a -1.0 (uncertain) label of a finding in ``pneumonia_findings`` means:
  ``ignore`` (default: the row is filtered, its finding names the uncertainty, e.g.
  ``unusable_label: finding 'Pneumonia (uncertain)'``), ``ones`` (counted as positive) or ``zeros``
  (counted as negative); the U-Ignore / U-Ones / U-Zeros policies of the CheXpert paper.
* ``pneumonia_findings``: the CheXpert observations counted as Pneumonia (default ``["Pneumonia"]``; e.g.
  add ``Consolidation``, or ``[]`` to take only the normals).
* ``encoding``: of the metadata files (default utf-8).

Traps handled:

* ``Frontal/Lateral`` says frontal or lateral, ``AP/PA`` the projection, blank for laterals. A frontal
  row with blank ``AP/PA`` has view ``unknown`` (kept while ``ingest.keep_unknown_view`` is true, the
  default; none in the real train.csv). 17 frontal rows of the real train.csv have ``AP/PA`` ``LL`` or
  ``RL`` (lateral projections, in a file named ``view*_frontal.jpg``): the metadata contradicts itself, so
  the view is ``Frontal (LL)`` / ``Frontal (RL)``, which the pipeline filters (``non_frontal_view``).
* ``Sex`` is ``Male``/``Female`` and once ``Unknown`` (sex None, ``sex_raw`` kept). ``Age`` is 18-90,
  except 0 for the last three patients of train.csv: CheXpert has adults only, so 0 is read as unknown
  (age None, ``age_raw`` kept).
* Labels are ``1.0``, ``0.0``, ``-1.0`` (uncertain) or blank (not mentioned); ``1``/``0``/``-1`` are read
  too. Any other value makes the row a ``malformed_row`` record, as do an empty ``Path``, a ``Path`` without
  a ``patientNNNNN`` part and a ``Path`` that repeats an earlier row's (it would repeat a record id: one
  64-bit fingerprint per path is kept to see it, not the path).
* A metadata file without ``Path``, ``No Finding`` or a column of ``pneumonia_findings`` makes every one of
  its rows a ``missing_column`` record.
* The record id is the ``Path`` without its first part (``chexpert:train/patient00001/study1/view1_frontal.jpg``),
  the same for the small and the full-size release. Patient = the ``patientNNNNN`` part; ``study`` and
  ``view_file`` (``view1_frontal.jpg``) are in the provenance. A row that cannot be read at all has the record id
  ``chexpert:<metadata file>:L<line>`` (train.csv and valid.csv both have a line 7).

Label rule (:func:`chexpert_finding`, shared with the ``mimic`` adapter, whose label files have the same
14 observations and values):

* a finding of ``pneumonia_findings`` positive (1.0, or -1.0 with ``uncertainty: ones``) and ``No Finding``
  1.0 -> contradiction, filtered (finding ``No Finding|Pneumonia (contradictory labels)``; no such row in the
  real train.csv);
* else a finding of ``pneumonia_findings`` positive -> Pneumonia;
* else (``uncertainty: ignore``) a finding of ``pneumonia_findings`` at -1.0 -> filtered with finding
  ``Pneumonia (uncertain)``, whatever ``No Finding`` says;
* else ``No Finding`` 1.0 -> Normal (``No Finding`` must be exactly 1.0: the policy applies to the
  pneumonia findings only);
* else -> filtered, finding = the positive (1.0) observations joined by ``|`` (``Edema|Pleural Effusion``)
  or ``no positive label``.

As in the ``nih`` adapter the label always comes from :func:`cxrspark.labels.normalise_finding` of the
finding (labels.py is not changed): a Pneumonia finding labels.py does not read as Pneumonia gets
``/Pneumonia`` appended (``Consolidation/Pneumonia``, ``Pneumonia (uncertain)/Pneumonia``), and a filtered
text labels.py would map (``Lung Opacity``, which labels.py reads as Pneumonia for RSNA) gets the suffix
`` (not counted by the chexpert rule)``. ``provenance.labels`` holds every non-blank observation (1, 0,
-1), ``provenance.label_rule`` the rule that decided and ``provenance.uncertainty`` the policy.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

from cxrspark.labels import PNEUMONIA, normalise_finding
from cxrspark.schema import UNKNOWN_VIEW, SourceRecord
from cxrspark.sources._common import text
from cxrspark.sources.base import (SourceAdapter, SourceError, normalise_sex, normalise_view, parse_age,
                                   register)

#: the 14 observations of the CheXpert labeler, as CheXpert and MIMIC-CXR name their columns
OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                "Pleural Other", "Fracture", "Support Devices")
NO_FINDING = "No Finding"
UNCERTAINTY_POLICIES = ("ignore", "ones", "zeros")
UNCERTAIN = " (uncertain)"
CONTRADICTION = " (contradictory labels)"
NO_POSITIVE = "no positive label"
_VALUES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1, "": None}

DATASET_DIRS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
METADATA_FILES = ("train.csv", "valid.csv")
_PATIENT = re.compile(r"^patient\d+$")
_STUDY = re.compile(r"^study\d+$")


# ---- the label policy (shared with mimic.py) ------------------------------------------------------
def check_label_options(source: str, kind: str, options: dict[str, Any]) -> tuple[list[str], str]:
    """(pneumonia_findings, uncertainty) of an adapter's options, checked; ValueError when invalid."""
    findings = options["pneumonia_findings"]
    if isinstance(findings, str):
        findings = [findings]
    if not isinstance(findings, (list, tuple)) or not all(isinstance(f, str) for f in findings):
        raise ValueError(f"source {source!r} ({kind}): pneumonia_findings must be a list of observation "
                         f"names, got {findings!r}")
    findings = [f.strip() for f in findings if f.strip()]
    unknown = [f for f in findings if f not in OBSERVATIONS or f == NO_FINDING]
    if unknown:
        raise ValueError(f"source {source!r} ({kind}): pneumonia_findings {unknown} are not observations; "
                         f"known: {[o for o in OBSERVATIONS if o != NO_FINDING]}")
    policy = str(options["uncertainty"]).strip().lower()
    if policy not in UNCERTAINTY_POLICIES:
        raise ValueError(f"source {source!r} ({kind}): uncertainty must be one of {list(UNCERTAINTY_POLICIES)}, "
                         f"got {options['uncertainty']!r}")
    return findings, policy


def label_values(row: dict[str, Any], lineno: int) -> tuple[dict[str, int], str | None]:
    """({observation: 1 / 0 / -1} of the non-blank observation cells of ``row``, error)."""
    values: dict[str, int] = {}
    for name in OBSERVATIONS:
        cell = text(row.get(name))
        if cell not in _VALUES:
            return {}, f"malformed_row: line {lineno}: {name!r} is {cell!r}, not 1.0, 0.0, -1.0 or blank"
        value = _VALUES[cell]
        if value is not None:
            values[name] = value
    return values, None


def chexpert_finding(values: dict[str, int], pneumonia_findings: list[str] | tuple[str, ...] = ("Pneumonia",),
                     uncertainty: str = "ignore", kind: str = "chexpert") -> tuple[str, str]:
    """(finding, rule) of one row's observations (``{name: 1 / 0 / -1}``, blanks absent) under the label
    rule of the module docstring: the finding is the text :func:`~cxrspark.labels.normalise_finding` maps
    to the rule's class, the rule names what decided. ``kind`` names the rule in a not-counted suffix."""
    definite = [f for f in pneumonia_findings if values.get(f) == 1]
    uncertain = [f for f in pneumonia_findings if values.get(f) == -1]
    counted = definite + (uncertain if uncertainty == "ones" else [])
    normal = values.get(NO_FINDING) == 1
    if counted and normal:
        return (f"{NO_FINDING}|{'|'.join(counted)}{CONTRADICTION}",
                f"contradiction: {NO_FINDING} and {'|'.join(counted)}")
    if counted:
        finding = "|".join(f if f in definite else f + UNCERTAIN for f in pneumonia_findings if f in counted)
        rule = f"pneumonia_findings: {'|'.join(definite)}" if definite else f"uncertainty=ones: {'|'.join(counted)}"
        if normalise_finding(finding) != PNEUMONIA:
            finding = f"{finding}/{PNEUMONIA}"  # labels.py resolves a '/' finding from its last part
        return finding, rule
    if uncertain and uncertainty == "ignore":
        return "|".join(f + UNCERTAIN for f in uncertain), f"uncertain: {'|'.join(uncertain)}"
    if normal:
        return NO_FINDING, "no_finding"
    positives = [name for name in OBSERVATIONS if values.get(name) == 1]
    finding = "|".join(positives) or NO_POSITIVE
    if normalise_finding(finding) is not None:
        finding = f"{finding} (not counted by the {kind} rule)"
    return finding, "other_findings"


class Fingerprints:
    """Which ids were seen, at which line: one 64-bit fingerprint per id (not the id itself), so a
    10^5-10^6-row file costs a few tens of MB at most."""

    def __init__(self) -> None:
        self._lines: dict[int, int] = {}

    def first_line(self, key: str, lineno: int) -> int | None:
        """The line that first had ``key`` (None, and ``lineno`` is remembered, when it is new)."""
        fp = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
        first = self._lines.get(fp)
        if first is None:
            self._lines[fp] = lineno
        return first


def chexpert_view(frontal_lateral: str, ap_pa: str) -> str:
    """The canonical view of ``Frontal/Lateral`` + ``AP/PA`` (see the module docstring)."""
    fl, proj = text(frontal_lateral).lower(), text(ap_pa)
    if fl == "lateral":
        return "Lateral"
    if fl == "frontal":
        if not proj:
            return UNKNOWN_VIEW
        view = normalise_view(proj)
        return view if view in ("AP", "PA") else f"Frontal ({proj})"
    return normalise_view(proj)


@register
class ChexpertAdapter(SourceAdapter):
    kind = "chexpert"
    default_options = {"metadata": "auto", "uncertainty": "ignore", "pneumonia_findings": ["Pneumonia"],
                       "encoding": "utf-8"}

    def __init__(self, name: str, root: Any, options: dict[str, Any]):
        super().__init__(name, root, options)
        self.pneumonia_findings, self.uncertainty = check_label_options(name, self.kind, self.options)

    # ---- layout -------------------------------------------------------------------------------------
    def metadata_names(self) -> list[str]:
        """The metadata files to read, relative to the root, in order."""
        option = self.options["metadata"]
        if option not in (None, "", "auto"):
            return [option] if isinstance(option, str) else [str(f) for f in option]
        found = []
        for base in METADATA_FILES:
            for folder in ("", *(f"{d}/" for d in DATASET_DIRS)):
                hit = next((f"{folder}{base}{gz}" for gz in ("", ".gz")
                            if (self.root / f"{folder}{base}{gz}").is_file()), None)
                if hit:
                    found.append(hit)
                    break
        if not found:
            raise SourceError(f"source {self.name!r}: no metadata file ({' or '.join(METADATA_FILES)}, "
                              f"also .gz, at the root or in {' or '.join(DATASET_DIRS)}/) in {self.root}")
        return found

    def candidates(self, path: str, metadata: str) -> list[str]:
        """The relative names a ``Path`` may have under the root (see the module docstring)."""
        first, _, rest = path.partition("/")
        if first not in DATASET_DIRS or not rest:
            return [path]
        if metadata.partition("/")[0] in DATASET_DIRS:  # the root contains the dataset folder
            return [path]
        return [rest, path]

    # ---- records --------------------------------------------------------------------------------------
    def records(self) -> Iterator[SourceRecord]:
        self.check_root()
        seen = Fingerprints()
        for metadata in self.metadata_names():
            required = ("Path", NO_FINDING, *self.pneumonia_findings)
            for lineno, row, error in self.read_csv(metadata, self.options["encoding"], required):
                if row is None:
                    yield self._unreadable(lineno, error or "malformed_row: unreadable", metadata)
                    continue
                path = text(row.get("Path")).replace("\\", "/")
                if not path:
                    yield self._unreadable(lineno, f"malformed_row: line {lineno} has an empty Path", metadata)
                    continue
                first, _, rest = path.partition("/")
                row_id = rest if first in DATASET_DIRS and rest else path
                earlier = seen.first_line(row_id, lineno)
                if earlier is not None:
                    yield self._unreadable(lineno, f"malformed_row: line {lineno} repeats Path {path!r} "
                                                   f"(line {earlier})", metadata)
                    continue
                yield self._record(lineno, row, path, row_id, metadata)

    def _unreadable(self, lineno: int, error: str, metadata: str) -> SourceRecord:
        """The record of a row that could not be read: like ``_common.unreadable_row``, with the metadata
        file in its id (train.csv and valid.csv both have a line 7)."""
        return self.record(f"{metadata}:L{lineno}", source_path="", path=None, finding="",
                           patient_id=f"unknown-{metadata}:L{lineno}",
                           provenance={"metadata": metadata, "line": lineno}, error=error)

    def _record(self, lineno: int, row: dict[str, Any], path: str, row_id: str, metadata: str) -> SourceRecord:
        parts = row_id.split("/")
        patient = next((p for p in parts[:-1] if _PATIENT.match(p)), None)
        study = next((p for p in parts[:-1] if _STUDY.match(p)), None)
        candidates = self.candidates(path, metadata)
        resolved, error = (self.resolve(candidates[0]) if len(candidates) == 1 else self.resolve_any(candidates))
        values, value_error = label_values(row, lineno)
        finding, rule = chexpert_finding(values, self.pneumonia_findings, self.uncertainty, self.kind)
        if error is None and patient is None:
            error = f"malformed_row: line {lineno}: Path {path!r} has no patientNNNNN part"
        if error is None and value_error:
            error = value_error
        if error:
            resolved = None
        fl, proj = text(row.get("Frontal/Lateral")), text(row.get("AP/PA"))
        provenance: dict[str, Any] = {"metadata": metadata, "line": lineno, "labels": values,
                                      "label_rule": rule, "uncertainty": self.uncertainty,
                                      "view_raw": f"{fl}/{proj}" if proj else fl, "view_file": parts[-1]}
        if study:
            provenance["study"] = study
        sex_raw, age_raw = text(row.get("Sex")), text(row.get("Age"))
        sex = normalise_sex(sex_raw)
        age = parse_age(age_raw)
        if age == 0:
            age = None  # CheXpert is an adult dataset: 0 stands for an unknown age
        if sex is None and sex_raw:
            provenance["sex_raw"] = sex_raw
        if age is None and age_raw:
            provenance["age_raw"] = age_raw
        return self.record(
            row_id,
            source_path=candidates[0],
            path=resolved,
            finding=finding,
            patient_id=patient or f"unknown-{metadata}:L{lineno}",
            view=chexpert_view(fl, proj),
            sex=sex,
            age=age,
            provenance=provenance,
            error=error,
        )
