"""RSNA Pneumonia Detection Challenge (stage 2 training set).

Layout: ``stage_2_train_labels.csv`` (patientId,x,y,width,height,Target; one row per box, so several
rows for an image with several boxes, one row with empty box for Target 0), optional
``stage_2_detailed_class_info.csv`` (patientId,class) and ``stage_2_train_images/<patientId>.dcm``.

One record per patientId (= per image), in order of first appearance. Findings:
Target 1 -> 'Lung Opacity' (the pneumonia label); Target 0 -> the detailed class ('Normal', or
'No Lung Opacity / Not Normal', which is unusable); Target 0 without class info -> unusable.
View, sex, age and modality come from the DICOM header, read per file in the executors
(:meth:`RsnaAdapter.file_fields`; pixels are not read there).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from cxrspark.schema import SourceRecord
from cxrspark.sources._common import text, unreadable_row
from cxrspark.sources.base import (SourceAdapter, normalise_modality, normalise_sex,
                                   normalise_view, parse_age, register)

LUNG_OPACITY = "Lung Opacity"
CLASS_MISSING = "No Lung Opacity (class info missing)"
CLASS_CONTRADICTS = "Lung Opacity class with Target 0"


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


@register
class RsnaAdapter(SourceAdapter):
    kind = "rsna"
    default_options = {
        "labels": "stage_2_train_labels.csv",
        "class_info": "stage_2_detailed_class_info.csv",
        "image_dir": "stage_2_train_images",
        "encoding": "utf-8",
        "read_headers": True,
    }

    def file_fields(self, path: str) -> dict[str, Any]:
        """View, sex, age and modality from the DICOM header (read in the executors, once per file)."""
        if not self.options["read_headers"]:
            return {}
        header, header_error = read_header(path)
        provenance: dict[str, Any] = {}
        if header_error:
            provenance["header_error"] = header_error
        if header.get("ViewPosition"):
            provenance["view_raw"] = header["ViewPosition"]
        if header.get("PhotometricInterpretation"):
            provenance["photometric"] = header["PhotometricInterpretation"]
        return {"view": normalise_view(header.get("ViewPosition")), "sex": normalise_sex(header.get("PatientSex")),
                "age": parse_age(header.get("PatientAge")),
                "modality": normalise_modality(header.get("Modality")), "provenance": provenance}

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
        return self.record(
            f"L{entry['line']}",
            source_path=source_path,
            path=path,
            finding=finding,
            patient_id=pid,
            license=None,
            provenance=provenance,
            error=error,
        )

