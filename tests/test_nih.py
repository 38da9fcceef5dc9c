"""NIH ChestX-ray14 adapter: generated layouts (both header variants, both folder layouts) and the real
metadata file (skipped when ../shared/data/meta/nih is absent). No Spark."""
from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from cxrspark.labels import NORMAL, PNEUMONIA, normalise_finding
from cxrspark.schema import SourceRecord
from cxrspark.sources import SourceError, make_adapter
from cxrspark.sources.nih import nih_finding

REPO = Path(__file__).resolve().parents[1]
REAL_NIH = Path(os.environ.get("CXRSPARK_META_DATA", REPO.parent / "shared" / "data" / "meta")) / "nih"
REAL_FILE = REAL_NIH / "Data_Entry_2017_v2020.csv.gz"

HEADER_2020 = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
               "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
# the original file: 'Patient Sex' in some copies, and a trailing comma on the header and every row
HEADER_2017 = HEADER_2020.replace("Patient Gender", "Patient Sex") + ","

# (Image Index, Finding Labels, Follow-up #, Patient ID, age 2020, age 2017, sex, view)
ROWS = [
    ("00000001_000.png", "No Finding", "0", "1", "57", "057Y", "M", "PA"),
    ("00000001_001.png", "Pneumonia", "1", "1", "58", "058Y", "M", "AP"),
    ("00000002_000.png", "Pneumonia|Effusion", "0", "2", "80", "080Y", "F", "PA"),
    ("00000003_000.png", "Effusion", "0", "3", "74", "074Y", "F", "AP"),
    ("00000003_001.png", "Consolidation", "1", "3", "75", "075Y", "F", "PA"),  # image missing
    "MALFORMED",  # line 7: too few fields
    "EMPTY_INDEX",  # line 8: no Image Index
    ("00000005_000.png", "No Finding", "0", "5", "414", "414Y", "F", "PA"),  # impossible age
]
PRESENT = {"00000001_000.png": "images_001", "00000001_001.png": "images_001",
           "00000002_000.png": "images_002", "00000003_000.png": "images_002", "00000005_000.png": "images_002"}


def plain(rec) -> dict:
    """A checked record as a plain dict with its provenance as a dict (whether checked_records() yields
    SourceRecords or to_row() dicts)."""
    row = dataclasses.asdict(rec) if isinstance(rec, SourceRecord) else dict(rec)
    if isinstance(row["provenance"], str):
        row["provenance"] = json.loads(row["provenance"] or "{}")
    return row


def tiny_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), value).save(path, "PNG")


def metadata_text(variant: str) -> str:
    trail = "," if variant == "2017" else ""
    lines = [HEADER_2017 if variant == "2017" else HEADER_2020]
    for row in ROWS:
        if row == "MALFORMED":
            lines.append("00000004_000.png,No Finding,0,4" + trail)
        elif row == "EMPTY_INDEX":
            lines.append(",No Finding,0,6,40,M,PA,2500,2048,0.168,0.168" + trail)
        else:
            image, labels, fu, pid, age20, age17, sex, view = row
            age = age17 if variant == "2017" else age20
            lines.append(f"{image},{labels},{fu},{pid},{age},{sex},{view},2500,2048,0.168,0.168" + trail)
    return "\n".join(lines) + "\n"


def make_tree(root: Path, variant: str, layout: str) -> str:
    """A small NIH copy under ``root``; returns the metadata file name."""
    root.mkdir(parents=True)
    if variant == "2020":  # the 2020 revision, gzipped (as redistributed)
        name = "Data_Entry_2017_v2020.csv.gz"
        (root / name).write_bytes(gzip.compress(metadata_text(variant).encode()))
    else:
        name = "Data_Entry_2017.csv"
        (root / name).write_text(metadata_text(variant))
    for i, (image, archive) in enumerate(sorted(PRESENT.items())):
        folder = root / "images" if layout == "flat" else root / archive / "images"
        tiny_png(folder / image, 10 * i)
    if layout == "archives":
        (root / "images_003" / "images").mkdir(parents=True)  # an archive not (yet) unpacked
        (root / "images_notes").mkdir()  # not an archive folder
    return name


def expected_rows(root: Path, variant: str, layout: str, metadata: str, consolidation: bool) -> list[dict]:
    real = os.path.realpath(root)
    folders = ["images"] if layout == "flat" else ["images_001/images", "images_002/images", "images_003/images"]
    n_header = 12 if variant == "2017" else 11
    sizes = {"original_width": "2500", "original_height": "2048", "pixel_spacing_x": "0.168",
             "pixel_spacing_y": "0.168"}

    def good(line, image, finding, label, rule, patient, view, sex, age, *, missing=False, extra=None):
        rel = f"images/{image}" if layout == "flat" else f"{PRESENT.get(image, 'images_001')}/images/{image}"
        if missing:
            rels = [f"{f}/{image}" for f in folders]
            error = f"missing_file: {rels[0]}" if len(rels) == 1 else f"missing_file: none of {', '.join(rels)}"
        else:
            error = None
        raw = ROWS[line - 2][1]
        provenance = {"metadata": metadata, "line": line, "finding_labels": raw, "label_rule": rule,
                      "view_raw": view, "followup": ROWS[line - 2][2], "nih_followup": image[9:12], **sizes,
                      **(extra or {})}
        return {"record_id": f"nih:{image}", "source": "nih", "source_path": rel,
                "path": None if missing else f"{real}/{rel}", "label": label, "finding": finding,
                "patient_key": f"nih:{patient}", "view": view, "modality": "X-ray", "sex": sex, "age": age,
                "license": None, "provenance": provenance, "error": error}

    def unreadable(line, error):
        return {"record_id": f"nih:L{line}", "source": "nih", "source_path": "", "path": None, "label": None,
                "finding": "", "patient_key": f"nih:unknown-L{line}", "view": "unknown", "modality": "X-ray",
                "sex": None, "age": None, "license": None,
                "provenance": {"metadata": metadata, "line": line}, "error": error}

    if consolidation:
        consolidated = ("Consolidation/Pneumonia", PNEUMONIA, "pneumonia_findings: Consolidation")
    else:
        consolidated = ("Consolidation", None, "other_findings")
    return [
        good(2, "00000001_000.png", "No Finding", NORMAL, "no_finding", "00000001", "PA", "M", 57),
        good(3, "00000001_001.png", "Pneumonia", PNEUMONIA, "pneumonia_findings: Pneumonia", "00000001", "AP", "M",
             58),
        good(4, "00000002_000.png", "Pneumonia|Effusion/Pneumonia", PNEUMONIA, "pneumonia_findings: Pneumonia",
             "00000002", "PA", "F", 80),
        good(5, "00000003_000.png", "Effusion", None, "other_findings", "00000003", "AP", "F", 74),
        good(6, "00000003_001.png", *consolidated, "00000003", "PA", "F", 75, missing=True),
        unreadable(7, f"malformed_row: line 7 has {4 + (variant == '2017')} fields, header has {n_header}"),
        unreadable(8, "malformed_row: line 8 has an empty Image Index"),
        good(9, "00000005_000.png", "No Finding", NORMAL, "no_finding", "00000005", "PA", "F", None,
             extra={"age_raw": "414Y" if variant == "2017" else "414"}),
    ]


@pytest.mark.parametrize("consolidation", [False, True], ids=["default", "consolidation"])
@pytest.mark.parametrize("layout", ["flat", "archives"])
@pytest.mark.parametrize("variant", ["2020", "2017"])
def test_generated_copy_gives_exact_records(tmp_path, variant, layout, consolidation):
    root = tmp_path / "nih"
    metadata = make_tree(root, variant, layout)
    options = {"pneumonia_findings": ["Pneumonia", "Consolidation"]} if consolidation else {}
    adapter = make_adapter("nih", "nih", root, options)
    rows = [plain(r) for r in adapter.checked_records()]
    assert rows == expected_rows(root, variant, layout, metadata, consolidation)
    # the label of every record is labels.py's reading of its finding
    assert all(r["label"] == normalise_finding(r["finding"]) for r in rows)
    # the driver side lists folders only: before the per-file check a record of the archive layout
    # names one candidate per archive folder
    first = next(adapter.records())
    assert len(first.path.split("\0")) == (1 if layout == "flat" else 3)
    assert adapter.image_dirs() == (["images"] if layout == "flat"
                                    else ["images_001/images", "images_002/images", "images_003/images"])


def test_label_rule():
    cases = {
        "No Finding": ("No Finding", NORMAL, "no_finding"),
        "Pneumonia": ("Pneumonia", PNEUMONIA, "pneumonia_findings: Pneumonia"),
        "Infiltration|Pneumonia": ("Infiltration|Pneumonia/Pneumonia", PNEUMONIA, "pneumonia_findings: Pneumonia"),
        "Effusion": ("Effusion", None, "other_findings"),
        "Cardiomegaly|Edema": ("Cardiomegaly|Edema", None, "other_findings"),
        "Consolidation": ("Consolidation", None, "other_findings"),
        "No Finding|Effusion": ("No Finding|Effusion", None, "other_findings"),  # not exactly No Finding
        "": ("", None, "other_findings"),
    }
    for raw, (finding, label, rule) in cases.items():
        assert nih_finding(raw) == (finding, rule), raw
        assert normalise_finding(finding) == label, raw
    # a user's pneumonia_findings: Consolidation counted, or NIH's pneumonia left out
    assert nih_finding("Consolidation|Effusion", ["Pneumonia", "Consolidation"]) == \
        ("Consolidation|Effusion/Pneumonia", "pneumonia_findings: Consolidation")
    finding, rule = nih_finding("Pneumonia", [])
    assert (finding, rule) == ("Pneumonia (not counted by the nih rule)", "other_findings")
    assert normalise_finding(finding) is None
    assert normalise_finding(nih_finding("No Finding", [])[0]) == NORMAL


def test_metadata_choice_and_errors(tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    with pytest.raises(SourceError, match="no metadata file"):
        list(make_adapter("nih", "nih", root).records())
    (root / "Data_Entry_2017.csv.gz").write_bytes(gzip.compress(metadata_text("2017").encode()))
    assert make_adapter("nih", "nih", root).metadata_name() == "Data_Entry_2017.csv.gz"
    (root / "Data_Entry_2017_v2020.csv").write_text(metadata_text("2020"))
    assert make_adapter("nih", "nih", root).metadata_name() == "Data_Entry_2017_v2020.csv"
    explicit = make_adapter("nih", "nih", root, {"metadata": "Data_Entry_2017.csv.gz"})
    assert next(explicit.records()).provenance["metadata"] == "Data_Entry_2017.csv.gz"
    with pytest.raises(SourceError):
        list(make_adapter("nih", "nih", root, {"metadata": "sample_labels.csv"}).records())
    with pytest.raises(ValueError, match="pneumonia_findings"):
        make_adapter("nih", "nih", root, {"pneumonia_findings": 3})
    with pytest.raises(SourceError):
        list(make_adapter("nih", "nih", tmp_path / "absent").records())


def test_missing_column_repeated_index_and_explicit_image_dir(tmp_path):
    root = tmp_path / "nih"
    root.mkdir()
    (root / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Patient Age\na.png,No Finding,3\n")
    recs = list(make_adapter("nih", "nih", root).records())
    assert [r.error for r in recs] == ["missing_column: Data_Entry_2017.csv has no column(s) ['Patient ID']"]
    (root / "Data_Entry_2017.csv").write_text(HEADER_2020 + "\n"
                                              + "00000007_000.png,No Finding,0,7,30,M,PA,1,1,1,1\n"
                                              + "00000007_000.png,Effusion,1,7,30,M,PA,1,1,1,1\n"
                                              + "../../out.png,No Finding,0,8,30,M,PA,1,1,1,1\n")
    tiny_png(root / "pngs" / "00000007_000.png", 1)
    rows = [plain(r) for r in make_adapter("nih", "n2", root, {"image_dir": "pngs"}).checked_records()]
    assert [(r["record_id"], r["source_path"], r["error"]) for r in rows] == [
        ("n2:00000007_000.png", "pngs/00000007_000.png", None),
        ("n2:L3", "", "malformed_row: line 3 repeats Image Index '00000007_000.png' of line 2"),
        ("n2:../../out.png", "pngs/../../out.png",
         f"path_outside_root: 'pngs/../../out.png' resolves outside {root.resolve()}"),
    ]
    assert rows[0]["patient_key"] == "nih:00000007"  # NIH's cross-archive key, whatever the source is named


def test_patient_ids_match_the_darkcovidnet_form(tmp_path):
    """DarkCovidNet re-publishes NIH images under their file names; both sources name the patient alike."""
    dk = tmp_path / "dk"
    tiny_png(dk / "X-Ray Image DataSet" / "No_findings" / "00000001_000.png", 5)
    root = tmp_path / "nih"
    make_tree(root, "2020", "flat")
    dk_ids = {Path(r.source_path).name: r.patient_key.split(":", 1)[1]
              for r in make_adapter("darkcovidnet", "dk", dk).records()}
    nih_ids = {r.record_id.split(":", 1)[1]: r.patient_key.split(":", 1)[1]
               for r in make_adapter("nih", "nih", root).records()}
    assert dk_ids["00000001_000.png"] == nih_ids["00000001_000.png"] == "00000001"


@pytest.mark.skipif(not REAL_FILE.is_file(), reason=f"real NIH metadata not found at {REAL_FILE}")
def test_real_metadata_file():
    # the expected numbers, read independently with the csv module
    with gzip.open(REAL_FILE, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        raw = list(reader)
    col = {name: i for i, name in enumerate(header)}
    assert len(header) == 11 and {len(r) for r in raw} == {11}, "the bracketed names split like the values"
    labels = [r[col["Finding Labels"]] for r in raw]
    expected = Counter()
    for text in labels:
        parts = text.split("|")
        expected[NORMAL if text == "No Finding" else PNEUMONIA if "Pneumonia" in parts else None] += 1
    pids = {r[col["Patient ID"]] for r in raw}

    adapter = make_adapter("nih", "nih", REAL_NIH)  # no images here: records() checks names only
    start = time.perf_counter()
    recs = list(adapter.records())
    elapsed = time.perf_counter() - start
    print(f"\nnih: {len(recs):,} records from {adapter.metadata_name()} in {elapsed:.2f} s")

    assert len(recs) == len(raw) == 112_120
    assert [r.record_id for r in recs] == [f"nih:{r[col['Image Index']]}" for r in raw]
    assert len({r.record_id for r in recs}) == len(recs)
    assert all(r.error is None for r in recs)
    assert Counter(r.label for r in recs) == expected
    assert expected[NORMAL] > 0 and expected[PNEUMONIA] > 0
    assert all(r.label == normalise_finding(r.finding) for r in recs)
    assert len({r.patient_key for r in recs}) == len(pids)
    assert [r.patient_key for r in recs] == [f"nih:{r[col['Patient ID']].zfill(8)}" for r in raw]
    assert {r.view for r in recs} == {"PA", "AP"}
    assert {r.sex for r in recs} == {"M", "F"}
