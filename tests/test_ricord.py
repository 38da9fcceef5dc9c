"""MIDRC-RICORD-1c adapter: a generated TCIA download tree (DICOM written here with pydicom: CR/DX/CT,
ViewPosition or only a series description, MONOCHROME1/2, 12 bits stored), the clinical sheet as CSV and
xlsx, exact records, and one ingest through the real Spark pipeline. No real RICORD metadata is in
../shared/data/meta, so there is no real-file test."""
from __future__ import annotations

import dataclasses
import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrspark.labels import COVID, normalise_finding
from cxrspark.schema import SourceRecord
from cxrspark.sources import SourceError, make_adapter
from cxrspark.sources.ricord import LABEL_RULE, view_from_text

C = "MIDRC-RICORD-1C"


def plain(rec) -> dict:
    row = dataclasses.asdict(rec) if isinstance(rec, SourceRecord) else dict(rec)
    if isinstance(row["provenance"], str):
        row["provenance"] = json.loads(row["provenance"] or "{}")
    return row


def picture12(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """Smooth random structure in 12 bits: every image distinct, with keypoints of its own."""
    from PIL import Image

    small = Image.fromarray((rng.random((12, 12)) * 255).astype(np.uint8))
    big = np.asarray(small.resize((size, size), Image.BICUBIC), float) + rng.normal(0, 12, (size, size))
    return (np.clip(big, 0, 255) * 16).astype(np.uint16)


def dicom_file(path: Path, rng: np.random.Generator, patient: str, *, modality: str = "CR", view: str | None = None,
               series: str | None = None, protocol: str | None = None, monochrome1: bool = False,
               sex: str = "M", age: str = "061Y") -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    grey = picture12(rng)
    sop = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1",
           "CT": "1.2.840.10008.5.1.4.1.1.2"}[modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient
    ds.Modality = modality
    if view is not None:
        ds.ViewPosition = view
    if series is not None:
        ds.SeriesDescription = series
    if protocol is not None:
        ds.ProtocolName = protocol
    ds.PatientSex, ds.PatientAge = sex, age
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.PixelData = ((4095 - grey) if monochrome1 else grey).astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())


# (relative path under the collection folder, DICOM fields); folder names as the TCIA tool writes them
FILES = [
    ("419639-000082/01-23-2020-NA-XR CHEST AP PORTABLE-13546/1.000000-AP-29961/1-1.dcm",
     {"patient": "419639-000082", "modality": "CR", "view": "AP"}),
    ("419639-000082/01-25-2020-NA-XR CHEST 2V-41250/1.000000-PA-66302/1-1.dcm",
     {"patient": "419639-000082", "modality": "DX", "series": "PA", "monochrome1": True}),
    ("419639-000082/01-25-2020-NA-XR CHEST 2V-41250/2.000000-LAT-21733/1-1.dcm",
     {"patient": "419639-000082", "modality": "DX", "series": "LATERAL", "sex": "F"}),
    ("419639-000082/01-26-2020-NA-CT CHEST-90211/2.000000-AXIAL-55555/1-001.dcm",
     {"patient": "419639-000082", "modality": "CT", "series": "AXIAL 2.5"}),
    ("419639-001234/03-02-2020-NA-CHEST PORTABLE-22222/1.000000-NA-77777/1-1.dcm",
     {"patient": "419639-001234", "modality": "CR", "series": "CHEST PORTABLE", "protocol": "CHEST AP"}),
    ("419639-001234/03-03-2020-NA-CHEST-33333/1.000000-NA-88888/1-1.dcm",
     {"patient": "419639-001234", "modality": "DX", "series": "CHEST PA AND LAT"}),
    ("419639-005555/04-04-2020-NA-CHEST-44444/1.000000-NA-99999/1-1.dcm",
     {"patient": "something-else", "modality": "DX", "view": "PA", "age": "045Y"}),  # header id differs
]


def make_tree(root: Path, rng: np.random.Generator, sheet: str | None = "csv") -> None:
    for rel, fields in FILES:
        f = dict(fields)
        dicom_file(root / C / rel, rng, f.pop("patient"), **f)
    (root / C / "stray.dcm").write_bytes(b"no patient folder")  # directly in the collection folder
    (root / C / "419639-000082" / "notes.txt").write_text("not an image")
    (root / "LICENSE.txt").write_text("CC BY 4.0")
    header = "Anon MRN,Anon Study Date,Anon Exam Description,Age,Sex,COVID Status"
    rows = ["419639-000082,01-23-2020,XR CHEST AP PORTABLE,61,M,Positive",
            "419639-000082,01-25-2020,XR CHEST 2V,61,M,Positive",
            "419639-005555,04-04-2020,XR CHEST,45,,Positive",
            "419639-999999,05-05-2020,XR CHEST,50,F,Positive"]  # a patient not in the tree
    if sheet == "csv":
        (root / f"{C}-Clinical-Data-Jan-13-2021.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    elif sheet == "xlsx":
        import openpyxl

        wb = openpyxl.Workbook()
        ws = wb.active
        ws.title = "Clinical"
        ws.append(header.split(","))
        for r in rows:
            ws.append([int(v) if v.isdigit() else (v or None) for v in r.split(",")])
        wb.save(root / f"{C}-Clinical-Data-Jan-13-2021.xlsx")


def expected(root: Path, sheet: str | None, name: str = "ricord") -> list[dict]:
    real = os.path.realpath(root)
    sheet_name = f"{C}-Clinical-Data-Jan-13-2021.{sheet}" if sheet else None
    first_82 = {"Anon MRN": "419639-000082", "Anon Study Date": "01-23-2020",
                "Anon Exam Description": "XR CHEST AP PORTABLE", "Age": "61", "Sex": "M", "COVID Status": "Positive"}
    first_55 = {"Anon MRN": "419639-005555", "Anon Study Date": "04-04-2020", "Anon Exam Description": "XR CHEST",
                "Age": "45", "COVID Status": "Positive"}
    if sheet == "xlsx":
        first_82["Age"], first_55["Age"] = 61, 45
    clinical = {"419639-000082": (2, first_82), "419639-001234": (0, None), "419639-005555": (1, first_55)}
    # (view, view_from, modality, sex, age, extra provenance)
    fields = [
        ("AP", "ViewPosition", "X-ray", "M", 61, {"view_raw": "AP", "modality_raw": "CR"}),
        ("PA", "SeriesDescription", "X-ray", "M", 61, {"series_description": "PA", "modality_raw": "DX",
                                                       "photometric": "MONOCHROME1"}),
        ("Lateral", "SeriesDescription", "X-ray", "F", 61, {"series_description": "LATERAL", "modality_raw": "DX"}),
        ("unknown", None, "CT", "M", 61, {"series_description": "AXIAL 2.5", "modality_raw": "CT"}),
        ("AP", "ProtocolName", "X-ray", "M", 61, {"series_description": "CHEST PORTABLE", "protocol_name": "CHEST AP",
                                                  "modality_raw": "CR"}),
        ("unknown", None, "X-ray", "M", 61, {"series_description": "CHEST PA AND LAT", "modality_raw": "DX"}),
        ("PA", "ViewPosition", "X-ray", "M", 45, {"view_raw": "PA", "modality_raw": "DX",
                                                  "patient_id_mismatch": True}),
    ]
    out = []
    for (rel, f), (view, view_from, modality, sex, age, extra) in zip(FILES, fields):
        parts = rel.split("/")
        patient = parts[0]
        prov = {"label_rule": LABEL_RULE, "study_folder": parts[1], "series_folder": parts[2],
                "photometric": "MONOCHROME2", "dicom_patient_id": f["patient"], **extra}
        if view_from:
            prov["view_from"] = view_from
        if sheet_name:
            rows, first = clinical[patient]
            prov["clinical_sheet"], prov["clinical_rows"] = sheet_name, rows
            if first:
                prov["clinical"] = first
        out.append({"record_id": f"{name}:{C}/{rel}", "source": name, "source_path": f"{C}/{rel}",
                    "path": f"{real}/{C}/{rel}", "label": COVID, "finding": "COVID-19",
                    "patient_key": f"{name}:{patient}", "view": view, "modality": modality, "sex": sex, "age": age,
                    "license": None, "provenance": prov, "error": None})
    stray = {"label_rule": LABEL_RULE}
    if sheet_name:
        stray.update(clinical_sheet=sheet_name, clinical_rows=0)
    out.append({"record_id": f"{name}:{C}/stray.dcm", "source": name, "source_path": f"{C}/stray.dcm", "path": None,
                "label": COVID, "finding": "COVID-19", "patient_key": f"{name}:unknown-{C}/stray.dcm",
                "view": "unknown", "modality": "X-ray", "sex": None, "age": None, "license": None, "provenance": stray,
                "error": f"missing_patient_folder: {C}/stray.dcm is not in a <PatientID> folder"})
    # the walk is sorted: the patient folders, then the stray file (files of a folder come before its subfolders)
    return [out[-1]] + out[:-1]


@pytest.mark.parametrize("sheet", ["csv", "xlsx", None])
def test_generated_tree_gives_exact_records(tmp_path, sheet):
    root = tmp_path / "ricord"
    make_tree(root, np.random.default_rng(1), sheet)
    adapter = make_adapter("ricord", "ricord", root)
    assert adapter.collection() == C
    rows = [plain(r) for r in adapter.checked_records()]
    want = expected(root, sheet)
    assert [r["record_id"] for r in rows] == [w["record_id"] for w in want]
    for got, exp in zip(rows, want):
        assert got == exp, got["record_id"]
    assert all(r["label"] == normalise_finding(r["finding"]) == COVID for r in rows)


def test_options_and_errors(tmp_path):
    root = tmp_path / "ricord"
    make_tree(root, np.random.default_rng(2), "csv")
    # the root may be the collection folder itself; record ids are then relative to it
    inner = make_adapter("ricord", "r", root / C, {"clinical": "none"})
    assert inner.collection() == "" and inner.clinical_name() is None
    recs = list(inner.records())
    assert recs[1].patient_key == "r:419639-000082" and recs[1].source_path == FILES[0][0]
    assert recs[0].error == "missing_patient_folder: stray.dcm is not in a <PatientID> folder"
    # a named patient column, and one the sheet lacks
    named = make_adapter("ricord", "r", root, {"patient_column": "Anon MRN"})
    assert next(r for r in named.records() if r.error is None).provenance["clinical_rows"] == 2
    with pytest.raises(SourceError, match="no column 'PatientID'"):
        list(make_adapter("ricord", "r", root, {"patient_column": "PatientID"}).records())
    # a sheet without any known patient column: the source is unreadable, with a hint
    (root / "other-clinical.csv").write_text("Case,Age\n1,40\n")
    with pytest.raises(SourceError, match="patient_column option"):
        list(make_adapter("ricord", "r", root, {"clinical": "other-clinical.csv"}).records())
    with pytest.raises(SourceError, match="does not exist"):
        list(make_adapter("ricord", "r", root, {"clinical": "absent.xlsx"}).records())
    with pytest.raises(SourceError, match="collection folder"):
        list(make_adapter("ricord", "r", root, {"collection_dir": "MIDRC-RICORD-1B"}).records())
    with pytest.raises(ValueError, match="unknown option"):
        make_adapter("ricord", "r", root, {"label": "x"})
    # records() opens no DICOM: a tree of unreadable files still lists every one
    assert len(list(make_adapter("ricord", "r", root).records())) == len(FILES) + 1


def test_view_words():
    assert view_from_text("PA") == "PA" and view_from_text("chest ap portable") == "AP"
    assert view_from_text("XR CHEST LAT") == "Lateral" and view_from_text("LATERAL") == "Lateral"
    assert view_from_text("PORTABLE CHEST") is None  # whole words only
    assert view_from_text("CHEST PA AND LAT") is None  # two views: undecided
    assert view_from_text("AP_PORTABLE") == "AP" and view_from_text("") is None and view_from_text(None) is None


@pytest.mark.slow
def test_ingest_of_a_generated_tcia_tree(spark, tmp_path):
    from conftest import _ingest

    rng = np.random.default_rng(11)
    root = tmp_path / "ricord"
    expected_curated = 0
    for p in range(6):
        patient = f"419639-{p:06d}"
        for s in range(3):  # three studies of each patient, one frontal radiograph each
            kind = [{"modality": "CR", "view": "AP"}, {"modality": "DX", "series": "PA"},
                    {"modality": "DX", "view": "PA", "monochrome1": True}][s]
            dicom_file(root / C / patient / f"0{s + 1}-0{p + 1}-2020-NA-XR CHEST-{p}{s}" / "1.000000-NA-1" / "1-1.dcm",
                       rng, patient, **kind)
            expected_curated += 1
    # patient 0 also has a lateral and a CT series of two slices in its tree
    dicom_file(root / C / "419639-000000" / "01-05-2020-NA-XR CHEST 2V-9" / "2.000000-LAT-2" / "1-1.dcm", rng,
               "419639-000000", modality="DX", series="LAT")
    for k in (1, 2):
        dicom_file(root / C / "419639-000000" / "01-06-2020-NA-CT CHEST-8" / "3.000000-AXIAL-3" / f"1-{k:02d}.dcm",
                   rng, "419639-000000", modality="CT", series="AXIAL")
    (root / C / "419639-000003" / "broken").mkdir()
    (root / C / "419639-000003" / "broken" / "1-1.dcm").write_bytes(b"DICM but not really")  # no preamble: not an image
    (root / C / "loose.dcm").write_bytes(b"no patient folder")
    (root / f"{C}-Clinical-Data-Jan-13-2021.csv").write_text(
        "Anon MRN,Age\n" + "\n".join(f"419639-{p:06d},{40 + p}" for p in range(6)) + "\n")

    out = _ingest(spark, [{"name": "ricord", "kind": "ricord", "root": str(root)}], tmp_path / "out", tmp_path,
                  "ingest.image_size=64")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_rows"] == 18 + 1 + 2 + 1 + 1
    assert summary["counts"] == {"curated": 18, "filtered": 3, "duplicate": 0, "quarantined": 2}
    assert summary["reasons"] == {"filtered/lateral_view": 1, "filtered/modality": 2,
                                  "quarantined/missing_patient_folder": 1, "quarantined/not_an_image": 1}
    cur = pd.concat([pd.read_parquet(out / "curated" / s) for s in ("train", "val", "test")], ignore_index=True)
    assert expected_curated == len(cur) == 18
    assert set(cur["label"]) == {COVID} and set(cur["modality"]) == {"X-ray"}
    assert Counter(cur["view"]) == {"AP": 6, "PA": 12}
    assert cur["patient_key"].nunique() == 6
    assert cur.groupby("patient_key")["split"].nunique().max() == 1, "a patient's studies stay in one split"
    filtered = pd.read_parquet(out / "filtered")
    assert sorted(filtered["reason"]) == ["lateral_view: Lateral", "modality: CT", "modality: CT"]
    quarantine = pd.read_parquet(out / "quarantine")
    assert sorted(quarantine["reason"].str.split(":").str[0]) == ["missing_patient_folder", "not_an_image"]
    prov = json.loads(cur["provenance"].iloc[0])
    assert prov["label_rule"] == LABEL_RULE and prov["clinical_rows"] == 1 and "Age" in prov["clinical"]
