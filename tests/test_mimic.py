"""MIMIC-CXR-JPG adapter: a generated copy in the documented format (no real sample is public): the per-study
label join, both labelers, the uncertainty policies, the traps; the image metadata streamed; one end-to-end
ingest of a generated image tree (slow)."""
from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrspark.labels import NORMAL, PNEUMONIA, normalise_finding
from cxrspark.schema import SourceRecord
from cxrspark.sources import SourceError, chexpert, make_adapter, mimic
from cxrspark.sources.mimic import mimic_view

META_HEADER = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
               "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
               "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
LABEL_HEADER = ["subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity", "No Finding",
                "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"]
PROC = "CHEST (PA AND LAT)"
VIEW_CODES = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}


def dicom_id(n: int) -> str:
    return f"{n:08x}-bde0afdd-112c0b34-7bc16630-4e384014"


# (n, subject, study, ViewPosition, ViewCodeSequence_CodeMeaning or None for the usual one)
IMAGES = [
    (1, "10000001", "50000001", "PA", None),
    (2, "10000001", "50000001", "LATERAL", None),
    (3, "10000001", "50000002", "AP", None),
    (4, "10000001", "50000002", "LL", None),
    (5, "10000001", "50000002", "", "postero-anterior"),  # blank ViewPosition: the view code decides
    (6, "10000002", "50000003", "AP", None),
    (7, "10000002", "50000004", "AP AXIAL", "antero-posterior"),
    (8, "10000002", "50000004", "", ""),  # no view at all: unknown
    (9, "10000003", "50000005", "PA", None),  # study not in the chexpert label file
    (10, "10000003", "50000006", "PA", None),  # label row names another subject
    (11, "10000004", "50000007", "PA", None),  # two differing label rows
    (12, "10000004", "50000008", "PA", None),  # a label value that is not a label
    (13, "abc", "50000009", "PA", None),  # line 14: subject id not a number
    "EMPTY_ID",  # line 15
    (1, "10000001", "50000001", "PA", None),  # line 16: repeats dicom 1
    "MALFORMED",  # line 17
    (14, "10000001", "50000001", "XTABLE LATERAL", "lateral"),
    (15, "10000001", "50000002", "AP", None),  # image file missing
]
MISSING = {15}


def labels_row(subject, study, **values) -> list[str]:
    cells = {k: "" for k in LABEL_HEADER[2:]}
    cells.update({k.replace("_", " "): v for k, v in values.items()})
    return [subject, study, *(cells[k] for k in LABEL_HEADER[2:])]


CHEXPERT_LABELS = [
    labels_row("10000001", "50000001", No_Finding="1.0"),
    labels_row("10000001", "50000002", Pneumonia="1.0", Consolidation="-1.0", Lung_Opacity="1.0"),
    labels_row("10000002", "50000003", Pneumonia="-1.0"),
    "MALFORMED",  # line 5
    labels_row("10000002", "50000004", Edema="1.0", Pneumonia="0.0", Support_Devices="1.0"),
    labels_row("10000099", "50000006", No_Finding="1.0"),
    labels_row("10000004", "50000007", No_Finding="1.0"),
    labels_row("10000004", "50000007", Pneumonia="1.0"),  # line 9: contradicts line 8
    labels_row("10000004", "50000008", Pneumonia="yes"),
    labels_row("10000001", "50000001", No_Finding="1.0"),  # line 11: the same row again: harmless
]
NEGBIO_LABELS = [
    labels_row("10000001", "50000001", No_Finding="1.0"),
    labels_row("10000001", "50000002", Pneumonia="1.0", Consolidation="-1.0", Lung_Opacity="1.0"),
    labels_row("10000002", "50000003", Pneumonia="1.0"),
    labels_row("10000002", "50000004", Edema="1.0", Pneumonia="0.0", Support_Devices="1.0"),
    labels_row("10000003", "50000005", Pneumonia="-1.0", Lung_Opacity="1.0"),
]


def write_csv(path: Path, header, rows, malformed: str, gz: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        if r == "MALFORMED":
            buf.write(malformed + "\n")
        elif r == "EMPTY_ID":
            writer.writerow(["", "10000005", "50000010", PROC, "PA", "3056", "2544", "21800506", "213014.531", PROC,
                             "postero-anterior", "Erect"])
        else:
            writer.writerow(r)
    name = path.name + (".gz" if gz else "")
    data = buf.getvalue().encode()
    (path.parent / name).write_bytes(gzip.compress(data) if gz else data)
    return name


def meta_rows(images) -> list:
    out = []
    for item in images:
        if isinstance(item, str):
            out.append(item)
            continue
        n, subject, study, view, code = item
        out.append([dicom_id(n), subject, study, PROC, view, "3056", "2544", "21800506", "213014.531", PROC,
                    VIEW_CODES.get(view, "") if code is None else code, "Erect"])
    return out


def image(rng: np.random.Generator, size: int = 96) -> Image.Image:
    small = rng.random((12, 12))
    big = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), float)
    big += rng.normal(0, 12, big.shape)
    return Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))


def make_tree(root: Path, gz: bool, images=IMAGES, labels=CHEXPERT_LABELS, negbio=NEGBIO_LABELS, missing=MISSING,
              seed: int = 0) -> dict:
    root.mkdir(parents=True)
    names = {
        "metadata": write_csv(root / "mimic-cxr-2.0.0-metadata.csv", META_HEADER, meta_rows(images),
                              "deadbeef,10000001,50000001", gz),
        "chexpert": write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", LABEL_HEADER, labels, "10000002,50000003", gz),
        "negbio": write_csv(root / "mimic-cxr-2.0.0-negbio.csv", LABEL_HEADER, negbio, "", gz),
    }
    rng = np.random.default_rng(seed)
    for item in images:
        if isinstance(item, str) or item[0] in missing or not item[1].isdigit():
            continue
        n, subject, study = item[:3]
        target = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id(n)}.jpg"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            image(rng).save(target, "JPEG", quality=95)
    return names


def plain(rec) -> dict:
    out = dataclasses.asdict(rec) if isinstance(rec, SourceRecord) else dict(rec)
    if isinstance(out["provenance"], str):
        out["provenance"] = json.loads(out["provenance"] or "{}")
    return out


def expected_rows(root: Path, names: dict, labeler: str, uncertainty: str) -> list[dict]:
    real = os.path.realpath(root)
    meta, lab = names["metadata"], names[labeler]
    label_lines = {"chexpert": {"50000001": 2, "50000002": 3, "50000003": 4, "50000004": 6, "50000006": 7,
                                "50000007": 8, "50000008": 10},
                   "negbio": {"50000001": 2, "50000002": 3, "50000003": 4, "50000004": 5, "50000005": 6}}[labeler]

    def good(line, n, view, finding=None, label=None, rule=None, labels=None, *, error=None, missing=False):
        _, subject, study, view_raw, code = IMAGES[line - 2]
        code = VIEW_CODES.get(view_raw, "") if code is None else code
        rel = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id(n)}.jpg"
        if missing:
            error = f"missing_file: {rel}"
        provenance = {"metadata": meta, "line": line, "dicom_id": dicom_id(n), "subject_id": subject,
                      "study_id": study, "label_file": lab, "uncertainty": uncertainty, "orientation": "Erect",
                      "study_date": "21800506", "procedure": PROC, "rows": "3056", "columns": "2544"}
        if view_raw:
            provenance["view_raw"] = view_raw
        if code:
            provenance["view_code"] = code
        if study in label_lines:
            provenance["label_line"] = label_lines[study]
        if labels is not None:
            provenance.update(labels=labels, label_rule=rule)
        return {"record_id": f"mimic:{dicom_id(n)}", "source": "mimic", "source_path": rel,
                "path": None if error else f"{real}/{rel}", "label": label, "finding": finding or "",
                "patient_key": f"mimic:{subject}", "view": view, "modality": "X-ray", "sex": None, "age": None,
                "license": None, "provenance": provenance, "error": error}

    def unreadable(line, error):
        return {"record_id": f"mimic:L{line}", "source": "mimic", "source_path": "", "path": None, "label": None,
                "finding": "", "patient_key": f"mimic:unknown-L{line}", "view": "unknown", "modality": "X-ray",
                "sex": None, "age": None, "license": None, "provenance": {"metadata": meta, "line": line},
                "error": error}

    normal = ("No Finding", NORMAL, "no_finding", {"No Finding": 1})
    pneumonia = ("Pneumonia", PNEUMONIA, "pneumonia_findings: Pneumonia",
                 {"Consolidation": -1, "Lung Opacity": 1, "Pneumonia": 1})
    if labeler == "negbio":
        s3 = ("Pneumonia", PNEUMONIA, "pneumonia_findings: Pneumonia", {"Pneumonia": 1})
    else:
        s3 = {"ignore": ("Pneumonia (uncertain)", None, "uncertain: Pneumonia"),
              "ones": ("Pneumonia (uncertain)/Pneumonia", PNEUMONIA, "uncertainty=ones: Pneumonia"),
              "zeros": ("no positive label", None, "other_findings")}[uncertainty] + ({"Pneumonia": -1},)
    s4 = ("Edema|Support Devices", None, "other_findings", {"Edema": 1, "Pneumonia": 0, "Support Devices": 1})
    if labeler == "negbio":
        s5 = {"ignore": ("Pneumonia (uncertain)", None, "uncertain: Pneumonia"),
              "ones": ("Pneumonia (uncertain)/Pneumonia", PNEUMONIA, "uncertainty=ones: Pneumonia"),
              "zeros": ("Lung Opacity (not counted by the mimic rule)", None, "other_findings")}[uncertainty]
        row9 = good(10, 9, "PA", *s5, {"Lung Opacity": 1, "Pneumonia": -1})
        rows_10_12 = [good(11, 10, "PA", error=f"missing_label: study s50000006 (subject 10000003) is not in {lab}"),
                      good(12, 11, "PA", error=f"missing_label: study s50000007 (subject 10000004) is not in {lab}"),
                      good(13, 12, "PA", error=f"missing_label: study s50000008 (subject 10000004) is not in {lab}")]
    else:
        row9 = good(10, 9, "PA", error=f"missing_label: study s50000005 (subject 10000003) is not in {lab} "
                                       f"(1 line(s) of it unreadable)")
        rows_10_12 = [
            good(11, 10, "PA", error=f"label_conflict: study s50000006 is subject 10000099 in {lab} (line 7), "
                                     f"subject 10000003 in {meta}"),
            good(12, 11, "PA", error=f"label_conflict: study s50000007 has differing rows in {lab} (lines 8 and 9)"),
            good(13, 12, "PA", error=f"malformed_row: study s50000008: a label of line 10 of {lab} is not 1.0, 0.0, "
                                     f"-1.0 or blank"),
        ]
    bad_subject = good(14, 13, "PA", error="malformed_row: line 14: subject_id 'abc' and study_id '50000009' must be "
                                           "whole numbers")
    bad_subject.update(source_path="", patient_key="mimic:abc")
    return [
        good(2, 1, "PA", *normal),
        good(3, 2, "Lateral", *normal),
        good(4, 3, "AP", *pneumonia),
        good(5, 4, "Lateral", *pneumonia),
        good(6, 5, "PA", *pneumonia),
        good(7, 6, "AP", *s3),
        good(8, 7, "AP AXIAL", *s4),
        good(9, 8, "unknown", *s4),
        row9,
        *rows_10_12,
        bad_subject,
        unreadable(15, "malformed_row: line 15 has an empty dicom_id"),
        unreadable(16, f"malformed_row: line 16 repeats dicom_id {dicom_id(1)!r} (line 2)"),
        unreadable(17, "malformed_row: line 17 has 3 fields, header has 12"),
        good(18, 14, "Lateral", *normal),
        good(19, 15, "AP", *pneumonia, missing=True),
    ]


@pytest.mark.parametrize("uncertainty", ["ignore", "ones", "zeros"])
@pytest.mark.parametrize("labeler", ["chexpert", "negbio"])
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "csv"])
def test_generated_copy_gives_exact_records(tmp_path, gz, labeler, uncertainty):
    root = tmp_path / "mimic-cxr-jpg" / "2.0.0"
    names = make_tree(root, gz)
    options = {"labels": labeler} if labeler != "chexpert" else {}
    if uncertainty != "ignore":
        options["uncertainty"] = uncertainty
    adapter = make_adapter("mimic", "mimic", root, options)
    rows = [plain(r) for r in adapter.checked_records()]
    expected = expected_rows(root, names, labeler, uncertainty)
    assert [r["record_id"] for r in rows] == [e["record_id"] for e in expected]
    for got, want in zip(rows, expected):
        assert got == want, got["record_id"]
    assert all(r["label"] == normalise_finding(r["finding"]) for r in rows)


def test_pneumonia_findings_option(tmp_path):
    root = tmp_path / "mimic"
    make_tree(root, True)
    recs = {r.record_id: r for r in make_adapter("mimic", "mimic", root,
                                                 {"pneumonia_findings": ["Pneumonia", "Consolidation"],
                                                  "uncertainty": "ones"}).records()}
    rec = recs[f"mimic:{dicom_id(3)}"]
    assert (rec.finding, rec.label, rec.provenance["label_rule"]) == (
        "Pneumonia|Consolidation (uncertain)/Pneumonia", PNEUMONIA, "pneumonia_findings: Pneumonia")


def test_the_label_policy_is_the_chexpert_one():
    # one implementation, imported
    assert mimic.chexpert_finding is chexpert.chexpert_finding
    assert mimic.check_label_options is chexpert.check_label_options


def test_views():
    assert [mimic_view(v, c) for v, c in [("PA", ""), ("AP", ""), ("LATERAL", ""), ("LL", ""), ("RL", ""),
                                          ("XTABLE LATERAL", ""), ("AP AXIAL", ""), ("PA LLD", ""),
                                          ("SWIMMERS", ""), ("", "postero-anterior"), ("", "antero-posterior"),
                                          ("", "left lateral"), ("", "Recumbent"), ("", "")]] == [
        "PA", "AP", "Lateral", "Lateral", "Lateral", "Lateral", "AP AXIAL", "PA LLD", "SWIMMERS", "PA", "AP",
        "Lateral", "unknown", "unknown"]


def test_options_and_missing_files(tmp_path):
    root = tmp_path / "mimic"
    root.mkdir()
    with pytest.raises(SourceError, match="mimic-cxr-2.0.0-metadata.csv"):
        list(make_adapter("mimic", "mimic", root).records())
    with pytest.raises(SourceError):
        list(make_adapter("mimic", "mimic", tmp_path / "absent").records())
    with pytest.raises(ValueError, match="labels"):
        make_adapter("mimic", "mimic", root, {"labels": "radiologist"})
    with pytest.raises(ValueError, match="uncertainty"):
        make_adapter("mimic", "mimic", root, {"uncertainty": "half"})
    with pytest.raises(ValueError, match="pneumonia_findings"):
        make_adapter("mimic", "mimic", root, {"pneumonia_findings": ["No Finding"]})
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text(",".join(META_HEADER) + "\n")
    with pytest.raises(SourceError, match="mimic-cxr-2.0.0-negbio.csv"):
        list(make_adapter("mimic", "mimic", root, {"labels": "negbio"}).records())
    # a label file without the Pneumonia column: every image row says so; so does a metadata file
    # without study_id
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", META_HEADER, meta_rows(IMAGES[:2]), "", False)
    (root / "mimic-cxr-2.0.0-chexpert.csv").write_text("subject_id,study_id,No Finding\n10000001,50000001,1.0\n")
    recs = list(make_adapter("mimic", "mimic", root).records())
    assert [r.error for r in recs] == ["missing_column: mimic-cxr-2.0.0-chexpert.csv has no column(s) "
                                       "['Pneumonia']"] * 2
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text("dicom_id,subject_id\nx,10000001\n")
    [rec] = make_adapter("mimic", "mimic", root, {"image_dir": "jpg"}).records()
    assert rec.error == "missing_column: mimic-cxr-2.0.0-metadata.csv has no column(s) ['study_id']"


def test_image_metadata_is_streamed(tmp_path, monkeypatch):
    """The label file is read whole (per study); the image metadata is consumed one row per record."""
    root = tmp_path / "mimic"
    names = make_tree(root, True)
    adapter = make_adapter("mimic", "mimic", root)
    consumed = Counter()
    real_read = adapter.read_csv

    def counting(filename, *args, **kwargs):
        for item in real_read(filename, *args, **kwargs):
            consumed[filename] += 1
            yield item

    monkeypatch.setattr(adapter, "read_csv", counting)
    records = adapter.records()
    first = next(records)
    assert first.record_id == f"mimic:{dicom_id(1)}"
    assert consumed == {names["chexpert"]: len(CHEXPERT_LABELS), names["metadata"]: 1}
    next(records)
    assert consumed[names["metadata"]] == 2


@pytest.mark.slow
def test_end_to_end_ingest(spark, tmp_path):
    import pyarrow.parquet as pq

    from conftest import _ingest

    images, labels, n = [], [], 0
    for p in range(12):  # 12 patients, two studies each, a PA and a lateral per study
        subject = f"1{p + 1:07d}"
        for s in range(2):
            study = f"5{p * 2 + s:07d}"
            kind = ("normal", "pneumonia", "uncertain")[p % 3]
            values = {"normal": {"No_Finding": "1.0"}, "pneumonia": {"Pneumonia": "1.0", "Edema": "1.0"},
                      "uncertain": {"Pneumonia": "-1.0"}}[kind]
            labels.append(labels_row(subject, study, **values))
            for view in ("PA" if s == 0 else "AP", "LATERAL"):
                n += 1
                images.append((n, subject, study, view, None))
    images.append((n + 1, "10000001", "59999999", "PA", None))  # study without labels
    images.append((n + 2, "10000002", "50000002", "AP", None))  # its file is missing
    out = tmp_path / "out"
    root = tmp_path / "raw" / "mimic"
    make_tree(root, True, images=images, labels=labels, negbio=labels, missing={n + 2}, seed=3)
    out = _ingest(spark, [{"name": "mimic", "kind": "mimic", "root": str(root)}], out, tmp_path, "ingest.image_size=64")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_rows"] == len(images) == 50
    assert summary["counts"] == {"curated": 16, "filtered": 32, "duplicate": 0, "quarantined": 2}, summary["counts"]
    assert summary["reasons"] == {"filtered/lateral_view": 24, "filtered/unusable_label": 8,
                                  "quarantined/missing_file": 1, "quarantined/missing_label": 1}
    curated = pd.concat([pq.read_table(out / "curated" / s).to_pandas() for s in ("train", "val", "test")
                         if (out / "curated" / s).exists()])
    assert Counter(curated["label"]) == {NORMAL: 8, PNEUMONIA: 8}
    assert curated["patient_key"].nunique() == 8
    assert (curated.groupby("patient_key")["split"].nunique() == 1).all()
    assert set(curated["view"]) == {"PA", "AP"}
    quarantine = pq.read_table(out / "quarantine").to_pandas()
    assert sorted(quarantine["reason"]) == [
        "missing_file: files/p10/p10000002/s50000002/" + dicom_id(n + 2) + ".jpg",
        "missing_label: study s59999999 (subject 10000001) is not in mimic-cxr-2.0.0-chexpert.csv.gz"]
    filtered = pq.read_table(out / "filtered").to_pandas()
    assert Counter(filtered["reason"]) == {"lateral_view: Lateral": 24,
                                           "unusable_label: finding 'Pneumonia (uncertain)'": 8}
