"""VinDr-CXR adapter: generated PhysioNet and Kaggle label files (every trap and consensus rule, exact
records), the real Kaggle label file (skipped when ../shared/data/meta/vindr is absent) and one ingest of a
generated DICOM tree through the real Spark pipeline."""
from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrspark.labels import NORMAL, PNEUMONIA, normalise_finding
from cxrspark.schema import SourceRecord
from cxrspark.sources import SourceError, make_adapter
from cxrspark.sources.vindr import holds, vindr_finding

REPO = Path(__file__).resolve().parents[1]
REAL_VINDR = Path(os.environ.get("CXRSPARK_META_DATA", REPO.parent / "shared" / "data" / "meta")) / "vindr"
REAL_FILE = REAL_VINDR / "vinbigdata-train.csv.gz"

# the PhysioNet v1.0.0 label columns (22 local findings, 6 global diagnoses, No finding)
FINDINGS = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
            "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
            "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
            "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion",
            "Pneumonia", "Tuberculosis", "Other diseases", "COPD", "Lung tumor", "No finding"]
NF = "No finding"
SUFFIX = " (not counted by the vindr rule)"


def plain(rec) -> dict:
    row = dataclasses.asdict(rec) if isinstance(rec, SourceRecord) else dict(rec)
    if isinstance(row["provenance"], str):
        row["provenance"] = json.loads(row["provenance"] or "{}")
    return row


def physionet_line(image: str, rad: str | None, positives: set[str], columns=FINDINGS, blank=False) -> str:
    cells = [("1" if f in positives else ("" if blank else "0")) for f in columns]
    return ",".join(([image] if rad is None else [image, rad]) + cells)


def with_first_cell(line: str, value: str) -> str:
    """``line`` with its first finding cell (Aortic enlargement) set to ``value``."""
    cells = line.split(",")
    cells[2] = value
    return ",".join(cells)


# training rows: (image, rad, findings); images interleaved like the real files (not sorted by image)
TRAIN_ROWS = [
    ("a1", "R1", {NF}), ("b2", "R1", {"Pneumonia", "Consolidation"}), ("a1", "R2", {NF}),
    ("c3", "R1", {"Lung Opacity"}), ("b2", "R2", {"Pneumonia"}), ("a1", "R3", {NF}),
    ("b2", "R3", {NF}), ("c3", "R2", {"Lung Opacity"}), ("c3", "R3", {NF}),
    ("d4", "R1", {NF}), ("d4", "R2", {NF}), ("d4", "R3", {"Nodule/Mass"}),
    ("e5", "R1", {NF}),  # line 15: e5 R2 with a 2 in a cell, then an empty image_id, a short row
    "BAD_CELL", "EMPTY_ID", "SHORT",
    ("g7", "R1", {NF}), ("g7", "R2", {NF}), ("g7", "R3", {NF}),  # no image file for g7
]


def train_csv() -> str:
    lines = [",".join(["image_id", "rad_id", *FINDINGS])]
    for row in TRAIN_ROWS:
        if row == "BAD_CELL":
            lines.append(with_first_cell(physionet_line("e5", "R2", {NF}), "2"))
        elif row == "EMPTY_ID":
            lines.append(physionet_line("", "R1", {NF}))
        elif row == "SHORT":
            lines.append("f6,R1,0,1")
        else:
            lines.append(physionet_line(*row))
    return "\n".join(lines) + "\n"


# the test file: one consensus row per image, no rad_id, 'Other disease', empty cells
TEST_COLUMNS = [("Other disease" if f == "Other diseases" else f) for f in FINDINGS]


def labels_test_csv() -> str:
    lines = [",".join(["image_id", *TEST_COLUMNS]),
             physionet_line("t1", None, {NF}, TEST_COLUMNS, blank=True),
             physionet_line("t2", None, {"Pneumonia", "Other disease"}, TEST_COLUMNS, blank=True),
             physionet_line("a1", None, {NF}, TEST_COLUMNS, blank=True)]  # repeats a training image
    return "\n".join(lines) + "\n"


def make_physionet(root: Path, images=("a1", "b2", "c3", "d4", "e5"), test_images=("t1", "t2")) -> None:
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "image_labels_train.csv").write_text(train_csv())
    (root / "annotations" / "image_labels_test.csv").write_text(labels_test_csv())
    for folder, ids in (("train", images), ("test", test_images)):
        (root / folder).mkdir()
        for i in ids:
            (root / folder / f"{i}.dicom").write_bytes(b"not read by records()")


def expected_physionet(root: Path, rule: str) -> list[dict]:
    real = os.path.realpath(root)
    train, test = "annotations/image_labels_train.csv", "annotations/image_labels_test.csv"

    def rec(image, line, rows, readers, votes, consensus, finding, label, label_rule, *, metadata=train,
            folder="train", error=None, missing=False):
        rel = f"{folder}/{image}.dicom"
        path = None if (missing or error) else f"{real}/{rel}"
        if missing:
            error = f"missing_file: {rel}"
        return {"record_id": f"vindr:{image}", "source": "vindr", "source_path": rel, "path": path,
                "label": label, "finding": finding, "patient_key": f"vindr:{image}", "view": "unknown",
                "modality": "X-ray", "sex": None, "age": None, "license": None, "error": error,
                "provenance": {"metadata": metadata, "line": line, "rows": rows, "format": "physionet",
                               "consensus": rule, "readers": readers, "votes": votes,
                               "consensus_findings": consensus, "label_rule": label_rule, "per_image_id": True}}

    def bad(line, error, metadata=train):
        tag = f"{Path(metadata).name}:L{line}"
        return {"record_id": f"vindr:{tag}", "source": "vindr", "source_path": "", "path": None, "label": None,
                "finding": "", "patient_key": f"vindr:unknown-{tag}", "view": "unknown", "modality": "X-ray",
                "sex": None, "age": None, "license": None, "provenance": {"metadata": metadata, "line": line},
                "error": error}

    r3 = ["R1", "R2", "R3"]
    nf3 = {NF: 3}
    normal = (NF, NORMAL, "no_finding")
    no_agreed = ("no agreed finding", None, "no_agreed_finding")
    b_votes = {"Consolidation": 1, "Pneumonia": 2, NF: 1}
    c_votes = {"Lung Opacity": 2, NF: 1}
    d_votes = {"Nodule/Mass": 1, NF: 2}
    if rule == "majority":
        b = (["Pneumonia"], "Pneumonia", PNEUMONIA, "pneumonia")
        c = (["Lung Opacity"], "Lung Opacity" + SUFFIX, None, "other_findings")
        d = ([NF], *normal)
    elif rule == "any":
        b = ([NF, "Consolidation", "Pneumonia"], f"{NF}|Consolidation|Pneumonia", None, "no_finding_with_findings")
        c = ([NF, "Lung Opacity"], f"{NF}|Lung Opacity", None, "no_finding_with_findings")
        d = ([NF, "Nodule/Mass"], f"{NF}|Nodule/Mass", None, "no_finding_with_findings")
    else:  # all
        b = c = d = ([], *no_agreed)
    return [
        bad(16, "malformed_row: line 16 has an empty image_id"),
        bad(17, f"malformed_row: line 17 has 4 fields, header has {2 + len(FINDINGS)}"),
        rec("a1", 2, 3, r3, nf3, [NF], *normal),
        rec("b2", 3, 3, r3, b_votes, *b),
        rec("c3", 5, 3, r3, c_votes, *c),
        rec("d4", 11, 3, r3, d_votes, *d),
        rec("e5", 14, 2, ["R1"], {NF: 1}, [NF], *normal,
            error="malformed_row: line 15: 'Aortic enlargement' is '2', not 0 or 1"),
        rec("g7", 18, 3, r3, nf3, [NF], *normal, missing=True),
        rec("t1", 2, 1, ["L2"], {NF: 1}, [NF], *normal, metadata=test, folder="test"),
        rec("t2", 3, 1, ["L3"], {"Pneumonia": 1, "Other diseases": 1}, ["Pneumonia", "Other diseases"],
            "Pneumonia|Other diseases/Pneumonia", PNEUMONIA, "pneumonia", metadata=test, folder="test"),
        # the repeat of a1 in the test file: quarantined under its own id (record ids stay unique)
        bad(4, f"malformed_row: image_id 'a1' of {test} is already in {train}", metadata=test),
    ]


@pytest.mark.parametrize("rule", ["majority", "any", "all"])
def test_physionet_files_give_exact_records(tmp_path, rule):
    root = tmp_path / "vindr"
    make_physionet(root)
    options = {"read_headers": False} if rule == "majority" else {"consensus": rule, "read_headers": False}
    adapter = make_adapter("vindr", "vindr", root, options)
    assert adapter.metadata_names() == ["annotations/image_labels_train.csv", "annotations/image_labels_test.csv"]
    rows = [plain(r) for r in adapter.checked_records()]
    want = expected_physionet(root, rule)
    assert [r["record_id"] for r in rows] == [w["record_id"] for w in want]
    assert len({r["record_id"] for r in rows}) == len(rows)  # unique ids: the ingest refuses a repeated one
    for got, exp in zip(rows, want):
        assert got == exp, got["record_id"]
    assert all(r["label"] == normalise_finding(r["finding"]) for r in rows)


def kaggle_csv(extra_columns: bool = False) -> str:
    head = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max" + (",width,height" if extra_columns else "")
    box = "10.0,20.0,30.0,40.0" + (",2000,2500" if extra_columns else "")
    empty = ",,," + (",2000,2500" if extra_columns else "")
    rows = [
        f"k1,No finding,14,R8,{empty}",
        f"k2,Cardiomegaly,3,R8,{box}",
        f"k3,Cardiomegaly,3,R8,{box}",
        f"k1,No finding,14,R9,{empty}",
        f"k2,Cardiomegaly,3,R8,{box}",  # a second box of the same reader: still one vote
        f"k3,Cardiomegaly,3,R8,{box}",
        f"k3,Cardiomegaly,3,R8,{box}",
        f"k2,Cardiomegaly,3,R9,{box}",
        f"k3,No finding,14,R9,{empty}",
        f"k1,No finding,14,R10,{empty}",
        f"k2,No finding,14,R10,{empty}",
        f"k3,No finding,14,R10,{empty}",
        f"k4,Lung Opacity,7,R8,{box}",
        f"k4,Lung Opacity,7,R9,{box}",
        f"k4,Nodule/Mass,8,R9,{box}",
        f"k4,No finding,14,R10,{empty}",
        f"k5,,14,R8,{empty}",  # line 18: no class_name
        f"k5,No finding,14,R9,{empty}",
        f"k6,No finding,14,,{empty}",  # line 20: no rad_id
    ]
    return head + "\n" + "\n".join(rows) + "\n"


@pytest.mark.parametrize("rule", ["majority", "any", "all"])
def test_kaggle_file_gives_exact_records(tmp_path, rule):
    root = tmp_path / "vinbig"
    root.mkdir()
    (root / "vinbigdata-train.csv.gz").write_bytes(gzip.compress(kaggle_csv(extra_columns=True).encode()))
    adapter = make_adapter("vindr", "vb", root, {"consensus": rule})
    recs = list(adapter.records())
    got = [(r.record_id, r.finding, r.label, r.provenance["label_rule"], r.provenance["rows"],
            r.provenance["votes"], r.error) for r in recs]
    votes = {"k1": {NF: 3}, "k2": {"Cardiomegaly": 2, NF: 1}, "k3": {"Cardiomegaly": 1, NF: 2},
             "k4": {"Lung Opacity": 2, "Nodule/Mass": 1, NF: 1}, "k5": {NF: 1}, "k6": {}}
    if rule == "majority":
        k2 = ("Cardiomegaly", None, "other_findings")
        k3 = (NF, NORMAL, "no_finding")  # three boxes of one reader are one vote of three
        k4 = ("Lung Opacity" + SUFFIX, None, "other_findings")
    elif rule == "any":
        k2 = k3 = (f"{NF}|Cardiomegaly", None, "no_finding_with_findings")
        k4 = (f"{NF}|Lung Opacity|Nodule/Mass", None, "no_finding_with_findings")
    else:
        k2 = k3 = k4 = ("no agreed finding", None, "no_agreed_finding")
    assert got == [
        ("vb:k1", NF, NORMAL, "no_finding", 3, votes["k1"], None),
        ("vb:k2", *k2, 4, votes["k2"], None),
        ("vb:k3", *k3, 5, votes["k3"], None),
        ("vb:k4", *k4, 4, votes["k4"], None),
        ("vb:k5", NF, NORMAL, "no_finding", 2, votes["k5"], "malformed_row: line 18 has an empty class_name"),
        ("vb:k6", "no agreed finding", None, "no_agreed_finding", 1, votes["k6"],
         "malformed_row: line 20 has an empty rad_id"),
    ]
    assert recs[0].source_path == "train/k1.dicom" and recs[0].patient_key == "vb:k1"
    assert recs[0].provenance["format"] == "kaggle" and recs[1].provenance["readers"] == ["R10", "R8", "R9"]
    assert all(r.label == normalise_finding(r.finding) for r in recs)
    # a Kaggle file never gives Pneumonia: it has no such label (a 'Pneumonia' class text is filtered)
    assert vindr_finding(["Pneumonia"], pneumonia_known=False)[1:] == (None, "other_findings")
    assert normalise_finding(vindr_finding(["Pneumonia"], pneumonia_known=False)[0]) is None


def test_label_rule_and_consensus():
    assert [holds(v, 3, "majority") for v in range(4)] == [False, False, True, True]
    assert [holds(v, 3, "any") for v in range(4)] == [False, True, True, True]
    assert [holds(v, 3, "all") for v in range(4)] == [False, False, False, True]
    assert holds(2, 4, "majority") is False and holds(3, 4, "majority") is True
    assert holds(1, 1, "majority") and holds(0, 0, "any") is False
    cases = {
        (NF,): (NF, NORMAL), ("Pneumonia",): ("Pneumonia", PNEUMONIA),
        ("Consolidation", "Pneumonia"): ("Consolidation|Pneumonia/Pneumonia", PNEUMONIA),
        ("Nodule/Mass", "Pneumonia"): ("Nodule/Mass|Pneumonia/Pneumonia", PNEUMONIA),
        ("Lung Opacity",): ("Lung Opacity" + SUFFIX, None),
        ("Nodule/Mass",): ("Nodule/Mass", None),
        (NF, "Pneumonia"): (f"{NF}|Pneumonia", None),
        (): ("no agreed finding", None),
    }
    for consensus, (finding, label) in cases.items():
        got, intended, _ = vindr_finding(list(consensus), pneumonia_known=True)
        assert (got, intended) == (finding, label), consensus
        assert normalise_finding(got) == label, consensus


def test_options_metadata_choice_and_errors(tmp_path):
    root = tmp_path / "vindr"
    root.mkdir()
    with pytest.raises(SourceError, match="no VinDr label file"):
        list(make_adapter("vindr", "vindr", root).records())
    with pytest.raises(ValueError, match="consensus"):
        make_adapter("vindr", "vindr", root, {"consensus": "most"})
    (root / "train.csv").write_text(kaggle_csv())
    assert make_adapter("vindr", "vindr", root).metadata_names() == ["train.csv"]
    (root / "image_labels_test.csv").write_text(labels_test_csv())
    assert make_adapter("vindr", "vindr", root).metadata_names() == ["image_labels_test.csv"]  # PhysioNet first
    recs = list(make_adapter("vindr", "vindr", root, {"metadata": "train.csv", "image_dir": "dicom"}).records())
    assert recs[0].source_path == "dicom/k1.dicom"
    # a header of neither format: every row is quarantined with missing_column
    (root / "other.csv").write_text("image_id,label\nx,1\ny,0\n")
    recs = list(make_adapter("vindr", "vindr", root, {"metadata": ["other.csv"]}).records())
    assert [r.record_id for r in recs] == ["vindr:other.csv:L2", "vindr:other.csv:L3"]
    assert all(r.error.startswith("missing_column: other.csv has no column(s)") for r in recs)
    with pytest.raises(SourceError):
        list(make_adapter("vindr", "vindr", tmp_path / "absent").records())


@pytest.mark.skipif(not REAL_FILE.is_file(), reason=f"real VinDr metadata not found at {REAL_FILE}")
def test_real_kaggle_file():
    # the expected numbers, counted independently with pandas from the raw rows
    df = pd.read_csv(REAL_FILE)
    assert len(df) == 67_914 and df["image_id"].nunique() == 15_000
    ids = df["image_id"].tolist()
    runs = 1 + sum(a != b for a, b in zip(ids, ids[1:]))
    assert runs == 67_907, "the file is not sorted by image: records need the whole file"
    readers = df.groupby("image_id")["rad_id"].nunique()
    assert set(readers) == {3}
    votes = (df.drop_duplicates(["image_id", "rad_id", "class_name"])
             .groupby(["image_id", "class_name"]).size().unstack(fill_value=0))
    expected = {}
    for rule, need in (("majority", 2), ("any", 1), ("all", 3)):
        held = votes >= need
        normal = held[NF] & ~held.drop(columns=NF).any(axis=1)
        none = ~held.any(axis=1)
        expected[rule] = (int(normal.sum()), int(none.sum()), int((~normal & ~none).sum()))
    assert expected == {"majority": (10_606, 42, 4_352), "any": (10_606, 0, 4_394), "all": (10_606, 722, 3_672)}

    for rule in ("majority", "any", "all"):
        adapter = make_adapter("vindr", "vindr", REAL_VINDR, {"consensus": rule})  # no images: names only
        start = time.perf_counter()
        recs = list(adapter.records())
        elapsed = time.perf_counter() - start
        print(f"\nvindr ({rule}): {len(recs):,} records in {elapsed:.2f} s")
        assert len(recs) == 15_000 and len({r.record_id for r in recs}) == 15_000
        assert all(r.error is None for r in recs)
        assert len({r.patient_key for r in recs}) == 15_000  # patient = image
        assert {r.record_id for r in recs} == {f"vindr:{i}" for i in votes.index}
        assert Counter(r.label for r in recs) == {NORMAL: expected[rule][0], None: sum(expected[rule][1:])}
        rules = Counter(r.provenance["label_rule"] for r in recs)
        assert rules["no_finding"] == expected[rule][0]
        assert rules["no_agreed_finding"] == expected[rule][1]
        assert rules["other_findings"] + rules["no_finding_with_findings"] == expected[rule][2]
        assert all(r.label == normalise_finding(r.finding) for r in recs)
        assert sum(r.provenance["rows"] for r in recs) == 67_914
    # majority: 'Lung Opacity' alone is filtered, never Pneumonia; no 'No finding' ever splits readers here
    maj = list(make_adapter("vindr", "vindr", REAL_VINDR).records())
    lung_only = [r for r in maj if r.provenance["consensus_findings"] == ["Lung Opacity"]]
    assert len(lung_only) == int(((votes >= 2).sum(axis=1).eq(1) & (votes["Lung Opacity"] >= 2)).sum()) > 0
    assert all(r.finding == "Lung Opacity" + SUFFIX and r.label is None for r in lung_only)
    assert set(votes[NF]) == {0, 3}

    # the per-image state on the driver while the file streams
    tracemalloc.start()
    try:
        n = sum(1 for _ in make_adapter("vindr", "vindr", REAL_VINDR).records())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"vindr: per-image state peak {peak / 2**20:.1f} MiB for {n:,} images")
    assert n == 15_000 and peak < 24 * 2**20


# ---- end to end ----------------------------------------------------------------------------------
def picture12(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """Smooth random structure in 12 bits: every image distinct, with keypoints of its own."""
    from PIL import Image

    small = Image.fromarray((rng.random((12, 12)) * 255).astype(np.uint8))
    big = np.asarray(small.resize((size, size), Image.BICUBIC), float) + rng.normal(0, 12, (size, size))
    return (np.clip(big, 0, 255) * 16).astype(np.uint16)


def dicom_file(path: Path, rng: np.random.Generator, patient: str, *, view: str | None = "PA",
               monochrome1: bool = False) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    grey = picture12(rng)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient
    ds.Modality = "DX"
    if view:
        ds.ViewPosition = view
    ds.PatientSex = "F"
    ds.PatientAge = "045Y"
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.PixelData = ((4095 - grey) if monochrome1 else grey).astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())


@pytest.mark.slow
def test_ingest_of_a_generated_physionet_tree(spark, tmp_path):
    from conftest import _ingest

    rng = np.random.default_rng(7)
    root = tmp_path / "vindr"
    (root / "annotations").mkdir(parents=True)
    lines = [",".join(["image_id", "rad_id", *FINDINGS])]
    plan = {}  # image -> outcome
    for i in range(12):  # normal: 3 of 3 readers
        plan[f"n{i:02d}"] = "Normal"
        lines += [physionet_line(f"n{i:02d}", r, {NF}) for r in ("R1", "R2", "R3")]
    for i in range(8):  # pneumonia by 2 of 3
        plan[f"p{i:02d}"] = "Pneumonia"
        lines += [physionet_line(f"p{i:02d}", "R1", {"Pneumonia", "Consolidation"}),
                  physionet_line(f"p{i:02d}", "R2", {"Pneumonia"}), physionet_line(f"p{i:02d}", "R3", {NF})]
    for i in range(4):  # cardiomegaly by 3 of 3: filtered
        plan[f"c{i:02d}"] = "filtered"
        lines += [physionet_line(f"c{i:02d}", r, {"Cardiomegaly"}) for r in ("R1", "R2", "R3")]
    plan["x00"] = "no agreed"
    lines += [physionet_line("x00", "R1", {NF}), physionet_line("x00", "R2", {"ILD"}),
              physionet_line("x00", "R3", {"Lung Opacity"})]
    plan["m00"] = "missing_file"
    lines += [physionet_line("m00", r, {NF}) for r in ("R1", "R2", "R3")]
    lines.append(with_first_cell(physionet_line("q00", "R1", {NF}), "yes"))
    plan["q00"] = "malformed_row"
    (root / "annotations" / "image_labels_train.csv").write_text("\n".join(lines) + "\n")
    tests = [("t00", {NF}), ("t01", {NF}), ("t02", {"Pneumonia"}), ("t03", {"Tuberculosis"})]
    (root / "annotations" / "image_labels_test.csv").write_text(
        "\n".join([",".join(["image_id", *TEST_COLUMNS])]
                  + [physionet_line(i, None, f, TEST_COLUMNS) for i, f in tests]) + "\n")
    for k, (image, outcome) in enumerate(plan.items()):
        if outcome != "missing_file":
            dicom_file(root / "train" / f"{image}.dicom", rng, image, view=None if image == "n00" else "PA",
                       monochrome1=k % 3 == 0)
    for image, _ in tests:
        dicom_file(root / "test" / f"{image}.dicom", rng, image)

    out = _ingest(spark, [{"name": "vindr", "kind": "vindr", "root": str(root)}], tmp_path / "out", tmp_path,
                  "ingest.image_size=64")
    summary = json.loads((out / "summary.json").read_text())
    n_input = len(plan) + len(tests)
    assert summary["input_rows"] == n_input == 31
    assert summary["counts"] == {"curated": 14 + 9, "filtered": 4 + 1 + 1, "duplicate": 0, "quarantined": 2}
    assert summary["reasons"] == {"filtered/unusable_label": 6, "quarantined/malformed_row": 1,
                                  "quarantined/missing_file": 1}
    cur = pd.concat([pd.read_parquet(out / "curated" / s) for s in ("train", "val", "test")], ignore_index=True)
    assert Counter(cur["label"]) == {NORMAL: 12 + 2, PNEUMONIA: 8 + 1}
    assert cur.groupby("patient_key")["split"].nunique().max() == 1
    assert cur["patient_key"].nunique() == len(cur)
    assert set(cur["view"]) == {"PA", "unknown"} and set(cur["modality"]) == {"X-ray"}
    assert set(cur["sex"]) == {"F"} and set(cur["age"]) == {45}
    filtered = pd.read_parquet(out / "filtered")
    assert sorted(filtered["reason"]) == sorted(
        ["unusable_label: finding 'Cardiomegaly'"] * 4
        + ["unusable_label: finding 'no agreed finding'", "unusable_label: finding 'Tuberculosis'"])
    quarantine = pd.read_parquet(out / "quarantine")
    assert sorted(quarantine["reason"]) == [
        f"malformed_row: line {len(lines)}: 'Aortic enlargement' is 'yes', not 0 or 1",
        "missing_file: train/m00.dicom"]
    prov = json.loads(cur.set_index("record_id").loc["vindr:p00", "provenance"])
    assert prov["votes"] == {"Consolidation": 1, "Pneumonia": 2, NF: 1} and prov["consensus"] == "majority"


def test_per_image_ids_are_announced(tmp_path):
    from cxrspark.sources import make_adapter

    warning = make_adapter("vindr", "vindr", tmp_path, {}).identity_warning()
    assert warning and "own patient" in warning
