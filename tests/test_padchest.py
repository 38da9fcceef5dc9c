"""PadChest adapter: a generated copy in both metadata formats (the full comma-separated file with
``ImageDir``, and pandas-written tab-separated subsets without it), 16-bit PNG decoding, the real
pneumonia subsets (skipped when ../shared/data/meta/padchest is absent) and one end-to-end ingest."""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrspark.images.decode import decode_image
from cxrspark.labels import NORMAL, PNEUMONIA, normalise_finding
from cxrspark.schema import FRONTAL_VIEWS, LATERAL_VIEWS, SourceRecord
from cxrspark.sources import SourceError, make_adapter
from cxrspark.sources.padchest import padchest_finding, parse_label_list, study_age

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = Path(os.environ.get("CXRSPARK_META_DATA", REPO.parent / "shared" / "data" / "meta")) / "padchest"
REAL_FILES = [REAL_DIR / "neumo_pneumonia_f.tsv", REAL_DIR / "neumo_pneumonia_m.tsv"]

FULL = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
FULL_COLUMNS = ["", "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
                "PatientSex_DICOM", "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric",
                "Modality_DICOM", "BitsStored_DICOM", "Report", "Labels"]
SUBSET_COLUMNS = ["ImageID", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
                  "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM",
                  "BitsStored_DICOM", "Labels"]

# (ImageID, ImageDir, date, study, patient, birth, sex, dicom view, Projection, labels)
FULL_ROWS = [
    ("a1_pa.png", "0", "20150622", "s1", "p1", "1950.0", "F", "", "PA", "['normal']"),
    ("a1_l.png", "0", "20150622", "s1", "p1", "1950.0", "F", "", "L", "['normal']"),
    ("b1_ap.png", "1", "20160101", "s2", "p2", "1930.0", "M", "AP", "AP_horizontal",
     "['consolidation', ' pneumonia']"),
    ("b2_ap.png", "1", "20160102", "s3", "p2", "1930.0", "M", "", "AP", "['atypical pneumonia']"),
    ("c1_costal.png", "1", "20170101", "s4", "p3", "1960.0", "M", "", "COSTAL", "['rib fracture']"),
    ("c2_pa.png", "0", "20170101", "s4", "p3", "1960.0", "M", "POSTEROANTERIOR", "UNK",
     "['pleural effusion', ' normal']"),
    ("d1_pa.png", "0", "20120505", "s5", "p4", "", "F", "", "PA", ""),  # no labels, no birth year
    ("d2_pa.png", "0", "20120505", "s5", "p4", "1980.0", "F", "", "PA", "['pneumonia'"),  # cut short
    ("e1_pa.png", "1", "20140101", "s6", "p5", "1940.0", "M", "", "PA", "[\"crohn's disease\", 'pneumonia']"),
    ("a1_pa.png", "0", "20150622", "s1", "p1", "1950.0", "F", "", "PA", "['normal']"),  # repeated ImageID
    ("f1_pa.png", "7", "20150101", "s7", "p6", "1970.0", "F", "", "PA", "['normal']"),  # image missing
]
PRESENT_FULL = {"a1_pa.png": "0", "a1_l.png": "0", "b1_ap.png": "1", "b2_ap.png": "1", "c1_costal.png": "1",
                "c2_pa.png": "0", "d1_pa.png": "0", "d2_pa.png": "0", "e1_pa.png": "1"}


def plain(rec) -> dict:
    row = dataclasses.asdict(rec) if isinstance(rec, SourceRecord) else dict(rec)
    if isinstance(row["provenance"], str):
        row["provenance"] = json.loads(row["provenance"] or "{}")
    return row


def tiny_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), value).save(path, "PNG")


def full_text(rows=FULL_ROWS) -> str:
    """The full file as the release writes it: comma-separated, an unnamed index column, quoted fields."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FULL_COLUMNS)
    for i, (image, folder, date, study, pid, birth, sex, dview, proj, labels) in enumerate(rows):
        writer.writerow([i, image, folder, date, study, pid, birth, sex, dview, proj,
                         "Manual review of DICOM fields", "No", "CR", "12", "sin hallazgos, \"normal\".\nfin",
                         labels])
    return out.getvalue()


def subset_text(rows) -> str:
    """A subset as pandas writes it with sep='\\t': no ImageDir, missing cells as nan/None."""
    lines = ["\t".join(SUBSET_COLUMNS)]
    for image, _, date, study, pid, birth, sex, dview, proj, labels in rows:
        lines.append("\t".join([image, date, study, pid, birth or "nan", sex, dview or "nan", proj,
                                "Manual review of DICOM fields", "No", "DX", "10", labels or "nan"]))
    return "\n".join(lines) + "\n"


def make_full_tree(root: Path) -> None:
    root.mkdir(parents=True)
    (root / (FULL + ".gz")).write_bytes(gzip.compress(full_text().encode()))
    for i, (image, folder) in enumerate(sorted(PRESENT_FULL.items())):
        tiny_png(root / folder / image, 10 * i)


def test_generated_full_file_gives_exact_records(tmp_path):
    root = tmp_path / "padchest"
    make_full_tree(root)
    adapter = make_adapter("padchest", "padchest", root)
    assert adapter.metadata_names() == [FULL + ".gz"]
    rows = [plain(r) for r in adapter.checked_records()]
    real = os.path.realpath(root)
    summary = [(r["record_id"], r["source_path"], r["path"], r["label"], r["finding"], r["patient_key"], r["view"],
                r["sex"], r["age"], r["provenance"].get("label_rule"), r["error"]) for r in rows]
    meta = FULL + ".gz"
    assert summary == [
        ("padchest:a1_pa.png", "0/a1_pa.png", f"{real}/0/a1_pa.png", NORMAL, "normal", "padchest:p1", "PA", "F", 65,
         "normal", None),
        ("padchest:a1_l.png", "0/a1_l.png", f"{real}/0/a1_l.png", NORMAL, "normal", "padchest:p1", "Lateral", "F",
         65, "normal", None),
        ("padchest:b1_ap.png", "1/b1_ap.png", f"{real}/1/b1_ap.png", PNEUMONIA, "consolidation|pneumonia/Pneumonia",
         "padchest:p2", "AP Supine", "M", 86, "pneumonia_findings: pneumonia", None),
        ("padchest:b2_ap.png", "1/b2_ap.png", f"{real}/1/b2_ap.png", PNEUMONIA, "atypical pneumonia/Pneumonia",
         "padchest:p2", "AP", "M", 86, "pneumonia_findings: atypical pneumonia", None),
        ("padchest:c1_costal.png", "1/c1_costal.png", f"{real}/1/c1_costal.png", None, "rib fracture",
         "padchest:p3", "Costal", "M", 57, "other_findings", None),
        # Projection UNK: the DICOM view decides; 'normal' with a finding is not Normal
        ("padchest:c2_pa.png", "0/c2_pa.png", f"{real}/0/c2_pa.png", None, "pleural effusion|normal",
         "padchest:p3", "PA", "M", 57, "other_findings", None),
        ("padchest:d1_pa.png", "0/d1_pa.png", f"{real}/0/d1_pa.png", None, "(no labels)", "padchest:p4", "PA", "F",
         None, "no_labels", None),
        ("padchest:d2_pa.png", "0/d2_pa.png", None, None, "['pneumonia'", "padchest:p4", "PA", "F", 32,
         "unparseable", "malformed_row: line 16 has an unparseable Labels value \"['pneumonia'\""),
        # a label with an apostrophe: literal_eval reads the double-quoted token
        ("padchest:e1_pa.png", "1/e1_pa.png", f"{real}/1/e1_pa.png", PNEUMONIA,
         "crohn's disease|pneumonia/Pneumonia",
         "padchest:p5", "PA", "M", 74, "pneumonia_findings: pneumonia", None),
        (f"padchest:{FULL[:-4]}:L20", "", None, None, "", f"padchest:unknown-{FULL[:-4]}-L20",
         "unknown", None, None, None,
         f"malformed_row: line 20 repeats ImageID 'a1_pa.png' of {meta} line 2"),
        ("padchest:f1_pa.png", "7/f1_pa.png", None, NORMAL, "normal", "padchest:p6", "PA", "F", 45, "normal",
         "missing_file: none of 7/f1_pa.png, f1_pa.png"),
    ]
    # the quoted Report spans two lines: line numbers count file lines
    assert [r["provenance"].get("line") for r in rows] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]
    assert rows[2]["provenance"] == {
        "metadata": meta, "line": 6, "labels_raw": "['consolidation', ' pneumonia']",
        "labels": ["consolidation", "pneumonia"], "label_rule": "pneumonia_findings: pneumonia",
        "projection": "AP_horizontal", "view_dicom": "AP", "birth_year": "1930", "study_id": "s2",
        "image_dir": "1", "method_projection": "Manual review of DICOM fields", "pediatric": "No",
        "modality_raw": "CR", "bits_stored": "12", "study_date": "20160101"}
    assert all(r["label"] == normalise_finding(r["finding"]) for r in rows if r["error"] is None)
    assert all(r["modality"] == "X-ray" for r in rows)


def test_subsets_flat_and_numbered_copies(tmp_path):
    """Tab-separated subsets (no ImageDir): every *.tsv at the root is read; an image is looked for at the
    root and in every numbered folder; the option pneumonia_findings narrows the rule."""
    root = tmp_path / "sub"
    root.mkdir()
    (root / "neumo_pneumonia_f.tsv").write_text(subset_text([r for r in FULL_ROWS[:9] if r[6] == "F"]))
    (root / "neumo_pneumonia_m.tsv").write_text(subset_text([r for r in FULL_ROWS[:9] if r[6] == "M"]))
    (root / "notes.txt").write_text("not metadata")
    tiny_png(root / "a1_pa.png", 1)  # flat copy
    tiny_png(root / "12" / "b1_ap.png", 2)  # numbered folder
    (root / "3").mkdir()
    (root / "misc").mkdir()
    adapter = make_adapter("padchest", "pc", root, {"pneumonia_findings": "pneumonia"})
    assert adapter.metadata_names() == ["neumo_pneumonia_f.tsv", "neumo_pneumonia_m.tsv"]
    assert adapter.numbered_dirs() == ["3", "12"]
    recs = list(adapter.records())
    assert recs[0].path.split("\0") == [f"{root.resolve()}/a1_pa.png", f"{root.resolve()}/3/a1_pa.png",
                                        f"{root.resolve()}/12/a1_pa.png"]
    rows = {r["record_id"]: r for r in map(plain, adapter.checked_records())}
    assert [k for k in rows] == ["pc:a1_pa.png", "pc:a1_l.png", "pc:d1_pa.png", "pc:d2_pa.png", "pc:b1_ap.png",
                                 "pc:b2_ap.png", "pc:c1_costal.png", "pc:c2_pa.png", "pc:e1_pa.png"]
    assert rows["pc:a1_pa.png"]["path"] == f"{os.path.realpath(root)}/a1_pa.png"
    assert rows["pc:a1_pa.png"]["source_path"] == "a1_pa.png"
    assert rows["pc:b1_ap.png"]["source_path"] == "12/b1_ap.png"
    assert rows["pc:a1_l.png"]["error"] == "missing_file: none of a1_l.png, 3/a1_l.png, 12/a1_l.png"
    # nan cells: no birth year, no DICOM view, no labels
    d1 = rows["pc:d1_pa.png"]
    assert (d1["age"], d1["finding"], d1["provenance"]["label_rule"]) == (None, "(no labels)", "no_labels")
    assert "birth_year" not in d1["provenance"] and "view_dicom" not in d1["provenance"]
    assert rows["pc:d2_pa.png"]["error"].startswith("malformed_row: line 5 has an unparseable Labels")
    # atypical pneumonia is not counted under pneumonia_findings: [pneumonia]
    b2 = rows["pc:b2_ap.png"]
    assert (b2["label"], b2["finding"], b2["provenance"]["label_rule"]) == \
        (None, "atypical pneumonia", "other_findings")
    assert rows["pc:b1_ap.png"]["label"] == PNEUMONIA
    assert rows["pc:c2_pa.png"]["view"] == "PA"  # UNK projection, POSTEROANTERIOR DICOM view
    assert rows["pc:a1_pa.png"]["provenance"]["metadata"] == "neumo_pneumonia_f.tsv"
    assert rows["pc:b1_ap.png"]["provenance"]["line"] == 2


def test_label_parsing_and_rule():
    assert parse_label_list("[' pneumonia']") == ["pneumonia"]
    assert parse_label_list("['pneumonia', ' pneumonia', '', 'unchanged']") == ["pneumonia", "unchanged"]
    assert parse_label_list("['crohn's disease', 'x']") == ["crohn's disease", "x"]  # the quote fallback
    for empty in ("", "nan", "None", "[]", None):
        assert parse_label_list(empty) == [], empty
    for bad in ("['pneumonia'", "pneumonia", "[1, 2]", "[__import__('os').system('true')]", "{'a'}"):
        assert parse_label_list(bad) is None, bad
    # the BIMCV form, outer brackets cut off
    assert parse_label_list("', 'aortic elongation", bracketless=True) == ["aortic elongation"]
    assert parse_label_list("COVID 19', ' pneumonia", bracketless=True) == ["COVID 19", "pneumonia"]

    default = ["pneumonia", "atypical pneumonia"]
    cases = {
        ("normal",): ("normal", NORMAL, "normal"),
        ("pneumonia",): ("pneumonia", PNEUMONIA, "pneumonia_findings: pneumonia"),
        ("normal", "pneumonia"): ("normal|pneumonia/Pneumonia", PNEUMONIA, "pneumonia_findings: pneumonia"),
        ("atypical pneumonia", "pneumonia"): ("atypical pneumonia|pneumonia/Pneumonia", PNEUMONIA,
                                              "pneumonia_findings: pneumonia|atypical pneumonia"),
        ("cardiomegaly",): ("cardiomegaly", None, "other_findings"),
        ("exclude",): ("exclude", None, "other_findings"),
        ("normal", "exclude"): ("normal|exclude", None, "other_findings"),
        (): ("(no labels)", None, "no_labels"),
    }
    for labels, (finding, label, rule) in cases.items():
        assert padchest_finding(list(labels), default) == (finding, rule), labels
        assert normalise_finding(finding) == label, labels
    finding, rule = padchest_finding(["pneumonia"], [])
    assert (finding, rule, normalise_finding(finding)) == (
        "pneumonia (not counted by the padchest rule)", "other_findings", None)
    assert study_age("1948.0", "20140827") == 66
    assert study_age("", "20140827") is None and study_age("1800.0", "20140827") is None


def test_options_and_errors(tmp_path):
    root = tmp_path / "pc"
    root.mkdir()
    with pytest.raises(SourceError, match="no metadata file"):
        list(make_adapter("padchest", "pc", root).records())
    with pytest.raises(SourceError):
        list(make_adapter("padchest", "pc", tmp_path / "absent").records())
    with pytest.raises(ValueError, match="pneumonia_findings"):
        make_adapter("padchest", "pc", root, {"pneumonia_findings": 3})
    with pytest.raises(ValueError, match="unknown option"):
        make_adapter("padchest", "pc", root, {"image_dirs": "x"})
    (root / "a.tsv").write_text("ImageID\tLabels\nx.png\t['normal']\n")
    (root / "b.csv").write_text(subset_text(FULL_ROWS[:1]).replace("\t", ","))
    recs = list(make_adapter("padchest", "pc", root).records())
    assert [r.error for r in recs] == ["missing_column: a.tsv has no column(s) ['PatientID']", None]
    assert recs[0].record_id == "pc:a:L2"
    explicit = make_adapter("padchest", "pc", root, {"metadata": ["b.csv"]})
    assert [r.record_id for r in explicit.records()] == ["pc:a1_pa.png"]
    with pytest.raises(SourceError):
        list(make_adapter("padchest", "pc", root, {"metadata": "absent.csv"}).records())


def test_sixteen_bit_png_is_scaled_by_its_own_range(tmp_path):
    """PadChest PNGs are 16-bit with 12 (or 10) significant bits: decode.py min-max scales them, so the
    12-bit picture fills 0..255 and equals the same picture stored in 8 bits."""
    rng = np.random.default_rng(3)
    eight = rng.integers(0, 256, (80, 96), dtype=np.int64)
    eight[0, 0], eight[0, 1] = 0, 255
    for bits, offset in ((12, 0), (12, 37), (10, 5)):
        wide = (eight * ((1 << bits) - 1 - offset) // 255 + offset).astype(np.uint16)
        assert wide.max() < (1 << bits)
        path = tmp_path / f"w{bits}_{offset}.png"
        Image.fromarray(wide).save(path)
        assert Image.open(path).mode in ("I;16", "I")  # really stored as a 16-bit PNG
        decoded = decode_image(path.read_bytes()).pixels
        assert decoded.dtype == np.uint8 and decoded.min() == 0 and decoded.max() == 255
        assert np.abs(decoded.astype(int) - eight.astype(int)).max() <= 1, (bits, offset)
    path8 = tmp_path / "e.png"
    Image.fromarray(eight.astype(np.uint8)).save(path8)
    assert np.array_equal(decode_image(path8.read_bytes()).pixels, eight.astype(np.uint8))


# ---- the real files -----------------------------------------------------------------------------------
def _outcome(rec) -> str:
    """What ingest's metadata rules (cxrspark.ingest.stages.metadata_outcome) make of a record."""
    if rec.error:
        return "quarantined/" + rec.error.split(":")[0]
    if rec.modality != "X-ray":
        return "filtered/modality"
    if rec.view in LATERAL_VIEWS:
        return "filtered/lateral_view"
    if rec.view not in FRONTAL_VIEWS and rec.view != "unknown":
        return "filtered/non_frontal_view"
    return "filtered/unusable_label" if rec.label is None else f"kept/{rec.label}"


@pytest.mark.skipif(not all(f.is_file() for f in REAL_FILES),
                    reason=f"real PadChest subsets not found in {REAL_DIR}")
def test_real_metadata_files():
    import pandas as pd

    # the expected numbers, read independently with pandas and regular expressions
    raw = pd.concat([pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False) for f in REAL_FILES])
    assert len(raw) == 2_584 + 3_337
    tokens = raw["Labels"].map(lambda s: {t.strip() for t in re.findall(r"'([^']*)'", s)})
    typical = tokens.map(lambda t: "pneumonia" in t)
    atypical = tokens.map(lambda t: "atypical pneumonia" in t)
    views = {"PA": "PA", "AP": "AP", "AP_horizontal": "AP Supine", "L": "Lateral", "COSTAL": "Costal"}

    adapter = make_adapter("padchest", "padchest", REAL_DIR)  # no images here: records() checks names only
    assert adapter.metadata_names() == ["neumo_pneumonia_f.tsv", "neumo_pneumonia_m.tsv"]
    recs = list(adapter.records())
    assert len(recs) == 5_921
    assert [r.record_id for r in recs] == [f"padchest:{i}" for i in raw["ImageID"]]
    assert all(r.error is None for r in recs)
    assert all(r.label == normalise_finding(r.finding) for r in recs)
    # every row of the pneumonia subsets is Pneumonia: 5,693 'pneumonia', 209 only 'atypical pneumonia', 19 both
    assert Counter(r.provenance["label_rule"] for r in recs) == {
        "pneumonia_findings: pneumonia": 5_693, "pneumonia_findings: atypical pneumonia": 209,
        "pneumonia_findings: pneumonia|atypical pneumonia": 19}
    assert (typical | atypical).all() and int((atypical & ~typical).sum()) == 209
    assert int((atypical & typical).sum()) == 19
    assert Counter(r.view for r in recs) == Counter(raw["Projection"].map(views)) == {
        "PA": 2_397, "Lateral": 2_049, "AP Supine": 1_090, "AP": 370, "Costal": 15}
    assert Counter(_outcome(r) for r in recs) == {
        "kept/Pneumonia": 3_857, "filtered/lateral_view": 2_049, "filtered/non_frontal_view": 15}
    assert len({r.patient_key for r in recs}) == raw["PatientID"].nunique() == 1_408 + 1_752 == 3_160
    frontal = raw[raw["Projection"].isin(["PA", "AP", "AP_horizontal"])]
    assert len({r.patient_key for r in recs if r.view in FRONTAL_VIEWS}) == frontal["PatientID"].nunique()
    assert Counter(r.sex for r in recs) == {"M": 3_337, "F": 2_584}
    ages = raw["StudyDate_DICOM"].str[:4].astype(int) - raw["PatientBirth"].astype(float).astype(int)
    assert [r.age for r in recs] == ages.tolist()
    assert Counter(r.provenance["bits_stored"] for r in recs) == {"12": 5_266, "10": 655}
    # the typical-only rule: the 209 atypical-only rows are filtered with their text
    narrow = list(make_adapter("padchest", "padchest", REAL_DIR, {"pneumonia_findings": ["pneumonia"]}).records())
    assert Counter(_outcome(r) for r in narrow) == {
        "kept/Pneumonia": 3_857 - int((atypical & ~typical & raw["Projection"].isin(
            ["PA", "AP", "AP_horizontal"])).sum()),
        "filtered/unusable_label": int((atypical & ~typical & raw["Projection"].isin(
            ["PA", "AP", "AP_horizontal"])).sum()),
        "filtered/lateral_view": 2_049, "filtered/non_frontal_view": 15}


# ---- end to end -----------------------------------------------------------------------------------------
def _wide_image(rng: np.random.Generator, bits: int, size: int = 96) -> Image.Image:
    """Smooth random structure stored as a 16-bit PNG using ``bits`` bits: every image distinct."""
    small = rng.random((12, 12))
    big = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), float)
    big = np.clip(big + rng.normal(0, 12, big.shape), 0, 255) / 255.0
    return Image.fromarray((big * ((1 << bits) - 1)).astype(np.uint16))


@pytest.mark.slow
def test_end_to_end_ingest(spark, tmp_path):
    import pandas as pd

    from conftest import _ingest

    root = tmp_path / "padchest"
    root.mkdir()
    rng = np.random.default_rng(11)
    rows = []
    # 12 patients with a frontal image (6 Normal, 6 Pneumonia) and a lateral one, 2 studies for some
    for p in range(12):
        pneumonia = p % 2 == 1
        labels = "['alveolar pattern', ' pneumonia']" if pneumonia else "['normal']"
        for k, proj in enumerate(("PA", "L") if p % 3 else ("AP_horizontal", "PA", "L")):
            rows.append((f"p{p}_{k}.png", str(p % 3), f"2015010{k + 1}", f"s{p}_{k}", f"P{p}", "1950.0",
                         "MF"[p % 2], "", proj, labels))
    rows += [
        ("x_costal.png", "0", "20150101", "sx", "PX", "1950.0", "M", "", "COSTAL", "['normal']"),
        ("x_other.png", "0", "20150101", "sy", "PY", "1950.0", "M", "", "PA", "['cardiomegaly']"),
        ("x_bad.png", "0", "20150101", "sz", "PZ", "1950.0", "M", "", "PA", "['normal'"),
        ("x_missing.png", "0", "20150101", "sw", "PW", "1950.0", "F", "", "PA", "['normal']"),
        ("p0_0.png", "0", "20150101", "s0_0", "P0", "1950.0", "M", "", "AP_horizontal", "['normal']"),  # repeat
    ]
    (root / FULL).write_text(full_text(rows))
    for image, folder, *_ in rows:
        if image == "x_missing.png" or (root / folder / image).exists():
            continue
        path = root / folder / image
        path.parent.mkdir(exist_ok=True)
        _wide_image(rng, 12 if image < "p5" else 10).save(path)
    out = _ingest(spark, [{"name": "padchest", "kind": "padchest", "root": str(root)}], tmp_path / "out", tmp_path,
                  "ingest.image_size=64")
    summary = json.loads((out / "summary.json").read_text())
    frontal = sum(1 for r in rows[:-5] if r[8] != "L")
    lateral = sum(1 for r in rows[:-5] if r[8] == "L")
    assert summary["input_rows"] == len(rows)
    assert summary["reconciliation"].endswith("(exact)")
    assert summary["counts"] == {"curated": frontal, "filtered": lateral + 2, "duplicate": 0, "quarantined": 3}
    assert summary["reasons"] == {"filtered/lateral_view": lateral, "filtered/non_frontal_view": 1,
                                  "filtered/unusable_label": 1, "quarantined/malformed_row": 2,
                                  "quarantined/missing_file": 1}
    quarantine = pd.read_parquet(out / "quarantine")
    assert sorted(quarantine["reason"].str.split(":").str[0]) == ["malformed_row", "malformed_row", "missing_file"]
    filtered = pd.read_parquet(out / "filtered")
    assert set(filtered["reason"]) == {"lateral_view: Lateral", "non_frontal_view: Costal",
                                       "unusable_label: finding 'cardiomegaly'"}
    cur = pd.concat([pd.read_parquet(out / "curated" / s) for s in summary["splits"]])
    assert len(cur) == frontal and set(cur["source"]) == {"padchest"}
    assert Counter(cur["label"]) == {NORMAL: sum(1 for r in rows[:-5] if r[8] != "L" and r[9] == "['normal']"),
                                     PNEUMONIA: sum(1 for r in rows[:-5] if r[8] != "L" and "pneumonia" in r[9])}
    assert set(cur["view"]) == {"PA", "AP Supine"}
    # the 12- and 10-bit images fill the 8-bit range
    assert all(np.frombuffer(img, np.uint8).max() >= 250 for img in cur["image"])
    assert (cur.groupby("patient_key")["split"].nunique() == 1).all()
    assert cur["patient_key"].nunique() == 12
