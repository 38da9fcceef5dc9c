"""RSNA Pneumonia Detection Challenge (stage 2 training set).

Layout: ``stage_2_train_labels.csv`` (patientId,x,y,width,height,Target; one row per box, so several
rows for an image with several boxes, one row with empty box for Target 0), optional
``stage_2_detailed_class_info.csv`` (patientId,class) and ``stage_2_train_images/<patientId>.dcm``.

One record per patientId (= per image), in order of first appearance. Findings:
Target 1 -> 'Lung Opacity' (the pneumonia label); Target 0 -> the detailed class ('Normal', or
'No Lung Opacity / Not Normal', which is unusable); Target 0 without class info -> unusable.
View, sex, age and modality come from the DICOM header, read per file in the executors
(:meth:`RsnaAdapter.file_fields`; pixels are not read there).

Patient identity: RSNA's ``patientId`` is a per-IMAGE id. The 26,684 images were made from NIH
ChestX-ray14 films of far fewer patients, so splitting by ``patientId`` can put one person's films in
train and test. Option ``nih_map: {matches: PATH, metadata: PATH, max_mse: 10}`` (paths relative to the
working directory) fixes that: ``matches`` is an RSNA -> NIH image map (CSV ``patientId,nih_image_index,mse``,
e.g. torchxrayvision's pixel matching, where MSE <= 10 is a match) and ``metadata`` NIH's
``Data_Entry_2017*.csv`` (optional: without it the NIH patient is the 8-digit prefix of the image name,
which is how NIH names its files). A matched image gets the cross-archive key ``nih:<Patient ID>``
(the key the ``nih`` and ``darkcovidnet`` adapters give the same person); its provenance keeps the RSNA
id, the NIH image, the MSE and the rule (``identity_rule``), and an image the map does not link says why.
Without the map the ingest warns and its summary (``identity``) counts the RSNA images split as their
own patients. The map is read on the driver: one entry per RSNA image, the size of this source's own
metadata, which this adapter holds anyway to merge the per-box rows.
"""
from __future__ import annotations

import csv
import gzip
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxrspark.schema import SourceRecord
from cxrspark.sources._common import text, unreadable_row
from cxrspark.sources.base import (SourceAdapter, SourceError, normalise_modality, normalise_sex,
                                   normalise_view, parse_age, register)
from cxrspark.sources.nih import nih_key, nih_patient_ids

LUNG_OPACITY = "Lung Opacity"
CLASS_MISSING = "No Lung Opacity (class info missing)"
CLASS_CONTRADICTS = "Lung Opacity class with Target 0"
_NIH_NAME = re.compile(r"^(\d{8})_\d{3}\.png$", re.IGNORECASE)
UNLINKED_WARNING = ("RSNA patientId is a per-image id (its images come from NIH ChestX-ray14 patients): "
                    "without options.nih_map every RSNA image is split as its own patient, so one person's "
                    "films can land in different splits")


def read_header(path: str) -> tuple[dict[str, Any], str | None]:
    """(header fields, error) of a DICOM file, without its pixels."""
    import pydicom

    out: dict[str, Any] = {}
    with warnings.catch_warnings():  # e.g. RSNA's PatientAge '051' is not a valid DICOM AS value
        warnings.simplefilter("ignore", UserWarning)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            for tag in ("ViewPosition", "PatientSex", "PatientAge", "Modality", "PhotometricInterpretation",
                        "BodyPartExamined"):
                value = ds.get(tag)
                if value not in (None, ""):
                    out[tag] = str(value)
        except Exception as exc:  # noqa: BLE001 - any unreadable header is reported, the decoder decides
            return {}, f"{type(exc).__name__}: {exc}"
    return out, None


#: raw header values kept in provenance by default: tag -> provenance key
RAW_TAGS = (("ViewPosition", "view_raw"), ("PhotometricInterpretation", "photometric"))


def header_fields(path: str, raw: tuple[tuple[str, str], ...] = RAW_TAGS) -> dict[str, Any]:
    """:meth:`SourceAdapter.file_fields` of a DICOM file: view, sex, age and modality from its header, the
    ``raw`` tags' values and any header error in provenance (pixels are not read)."""
    header, header_error = read_header(path)
    provenance: dict[str, Any] = {"header_error": header_error} if header_error else {}
    provenance.update({key: header[tag] for tag, key in raw if header.get(tag)})
    return {"view": normalise_view(header.get("ViewPosition")), "sex": normalise_sex(header.get("PatientSex")),
            "age": parse_age(header.get("PatientAge")), "modality": normalise_modality(header.get("Modality")),
            "provenance": provenance}


def load_nih_map(spec: Any, source: str) -> dict[str, dict[str, Any]]:
    """RSNA patientId -> {nih_image_index, nih_mse, nih_patient_id or None, rule | why} from an ``nih_map``
    option ``{matches: PATH, metadata: PATH, max_mse: 10}`` (see the module docstring). Used by every
    source that carries RSNA images (rsna, covidx)."""
    if not isinstance(spec, dict) or "matches" not in spec or set(spec) - {"matches", "metadata", "max_mse"}:
        raise SourceError(f"source {source!r}: nih_map needs {{matches: PATH, metadata: PATH, max_mse: N}}")
    matches, max_mse = Path(spec["matches"]), float(spec.get("max_mse", 10.0))
    if not matches.is_file():
        raise SourceError(f"source {source!r}: nih_map matches {matches} does not exist")
    links: dict[str, dict[str, Any]] = {}
    opener = gzip.open if matches.suffix == ".gz" else open
    with opener(matches, "rt", newline="", encoding="utf-8", errors="replace") as fh:
        for row in csv.DictReader(fh):
            rid, image = text(row.get("patientId")), text(row.get("nih_image_index"))
            if not rid or not image:
                continue
            try:
                mse = float(row.get("mse") or "nan")
            except ValueError:
                mse = float("nan")
            link = {"nih_image_index": image, "nih_mse": round(mse, 3) if mse == mse else None,
                    "nih_patient_id": None}
            if not mse <= max_mse:
                link["why"] = f"nih_map: best NIH match has mse above max_mse {max_mse:g}"
            links[rid] = link
    if spec.get("metadata"):
        try:
            patients = nih_patient_ids(spec["metadata"], {v["nih_image_index"] for v in links.values()})
        except SourceError as exc:
            raise SourceError(f"source {source!r}: {exc}") from exc
        rule = f"image in the NIH metadata {Path(spec['metadata']).name}"
    else:
        patients = {v["nih_image_index"]: m.group(1) for v in links.values()
                    if (m := _NIH_NAME.match(v["nih_image_index"]))}
        rule = "the NIH image name's 8-digit patient prefix"
    for link in links.values():
        if "why" in link:
            continue
        pid = patients.get(link["nih_image_index"])
        if pid is None:
            link["why"] = f"nih_map: NIH image {link['nih_image_index']!r} not found ({rule})"
        else:
            link["nih_patient_id"] = pid
            link["rule"] = f"rsna_nih_map: pixels matched (mse <= {max_mse:g}), patient from {rule}"
    return links


@register
class RsnaAdapter(SourceAdapter):
    kind = "rsna"
    default_options = {
        "labels": "stage_2_train_labels.csv",
        "class_info": "stage_2_detailed_class_info.csv",
        "image_dir": "stage_2_train_images",
        "encoding": "utf-8",
        "read_headers": True,
        "nih_map": None,
    }

    def identity_warning(self) -> str | None:
        return None if self.options["nih_map"] else UNLINKED_WARNING

    def nih_links(self) -> dict[str, dict[str, Any]]:
        """RSNA patientId -> {nih_image_index, nih_mse, nih_patient_id or None, rule, why (when not
        linked)}, from ``options.nih_map`` (empty without it)."""
        return load_nih_map(self.options["nih_map"], self.name) if self.options["nih_map"] else {}

    def file_fields(self, path: str) -> dict[str, Any]:
        """View, sex, age and modality from the DICOM header (read in the executors, once per file)."""
        return header_fields(path) if self.options["read_headers"] else {}

    def _class_info(self) -> tuple[dict[str, str], dict[str, set[str]]]:
        name = self.options["class_info"]
        if not name or not (self.root / name).is_file():
            return {}, {}
        first: dict[str, str] = {}
        seen: dict[str, set[str]] = {}
        for _, row, error in self.read_csv(name, self.options["encoding"]):
            if row is None or error:
                continue  # an unreadable class row leaves that patient without class info
            pid, cls = text(row.get("patientId")), text(row.get("class"))
            if pid and cls:
                first.setdefault(pid, cls)
                seen.setdefault(pid, set()).add(cls)
        return first, seen

    def records(self) -> Iterator[SourceRecord]:
        self.check_root()
        labels = self.options["labels"]
        classes, class_sets = self._class_info()
        self._links = self.nih_links()
        # entries in order of first appearance: ("bad", record) or ("patient", patientId)
        order: list[tuple[str, Any]] = []
        patients: dict[str, dict[str, Any]] = {}
        for lineno, row, error in self.read_csv(labels, self.options["encoding"], ("patientId", "Target")):
            if row is None:
                order.append(("bad", unreadable_row(self, lineno, error or "malformed_row: unreadable", labels)))
                continue
            pid = text(row.get("patientId"))
            if not pid:
                order.append(("bad", unreadable_row(self, lineno, f"malformed_row: line {lineno} has no patientId",
                                                    labels)))
                continue
            entry = patients.get(pid)
            if entry is None:
                entry = patients[pid] = {"line": lineno, "lines": [], "targets": [], "boxes": [], "errors": []}
                order.append(("patient", pid))
            entry["lines"].append(lineno)
            target = text(row.get("Target"))
            if target not in ("0", "1"):
                entry["errors"].append(f"malformed_row: line {lineno}: Target {target!r} is not 0 or 1")
                continue
            entry["targets"].append(int(target))
            if target == "1":
                try:
                    entry["boxes"].append([float(row[k]) for k in ("x", "y", "width", "height")])
                except (KeyError, TypeError, ValueError):
                    entry["errors"].append(f"malformed_row: line {lineno}: Target 1 without a valid box")
        for what, item in order:
            yield item if what == "bad" else self._record(item, patients[item], classes, class_sets, labels)

    def _record(self, pid: str, entry: dict[str, Any], classes: dict[str, str],
                class_sets: dict[str, set[str]], labels: str) -> SourceRecord:
        cls = classes.get(pid)
        if 1 in entry["targets"]:
            finding = LUNG_OPACITY
        elif cls is None:
            finding = CLASS_MISSING
        elif cls == LUNG_OPACITY:
            finding = CLASS_CONTRADICTS
        else:
            finding = cls
        source_path = f"{self.options['image_dir']}/{pid}.dcm"
        path, error = self.resolve(source_path)
        if error is None and entry["errors"]:
            path, error = None, entry["errors"][0]
        provenance: dict[str, Any] = {"metadata": labels, "line": entry["line"], "lines": entry["lines"],
                                      "box_count": len(entry["boxes"]), "boxes": entry["boxes"]}
        if cls is not None:
            provenance["class"] = cls
            if len(class_sets.get(pid, ())) > 1:
                provenance["classes"] = sorted(class_sets[pid])
        linked = None
        if self.options["nih_map"]:
            link = self._links.get(pid) or {"why": "nih_map: no NIH image matched"}
            provenance.update({k: v for k, v in link.items() if k not in ("why", "rule", "nih_patient_id")})
            if link.get("nih_patient_id"):
                linked = nih_key(link["nih_patient_id"])
                provenance.update(identity_rule=link["rule"], rsna_patient_id=pid)
            else:
                provenance["identity_rule"] = f"unlinked: {link['why']}"
        if linked is None:
            provenance["per_image_id"] = True  # RSNA's patientId names an image, not a person
        return self.record(
            f"L{entry['line']}",
            source_path=source_path,
            path=path,
            finding=finding,
            patient_id=pid,
            linked_patient_key=linked,
            license=None,
            provenance=provenance,
            error=error,
        )

