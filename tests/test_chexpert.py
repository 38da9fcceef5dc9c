"""CheXpert adapter: generated copies (both root layouts, gzipped and plain metadata, the three uncertainty
policies, pneumonia_findings), the label rule, the real train.csv (skipped when ../shared/data/meta/chexpert
is absent) and one end-to-end ingest of a generated image tree (slow)."""
from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrspark.labels import NORMAL, PNEUMONIA, normalise_finding
from cxrspark.schema import SourceRecord
from cxrspark.sources import SourceError, make_adapter
from cxrspark.sources.chexpert import OBSERVATIONS, chexpert_finding, chexpert_view

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = Path(os.environ.get("CXRSPARK_META_DATA", REPO.parent / "shared" / "data" / "meta")) / "chexpert"
REAL_FILE = REAL_DIR / "train.csv.gz"

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
SMALL = "CheXpert-v1.0-small"


def row(path, sex="Female", age="60", fl="Frontal", ap="AP", **labels) -> list[str]:
    cells = {name: "" for name in OBSERVATIONS}
    cells.update({k.replace("_", " "): v for k, v in labels.items()})
    return [path, sex, age, fl, ap, *(cells[name] for name in OBSERVATIONS)]


P = f"{SMALL}/train"
TRAIN = [
    row(f"{P}/patient00001/study1/view1_frontal.jpg", "Female", "68", No_Finding="1.0", Support_Devices="1.0"),
    row(f"{P}/patient00002/study2/view1_frontal.jpg", "Female", "87", Pneumonia="-1.0", Lung_Opacity="1.0"),
    row(f"{P}/patient00002/study1/view1_frontal.jpg", "Female", "83", ap="PA", Pneumonia="1.0",
        Consolidation="-1.0"),
    row(f"{P}/patient00002/study1/view2_lateral.jpg", "Female", "83", fl="Lateral", ap="", Pneumonia="1.0"),
    row(f"{P}/patient00003/study1/view1_frontal.jpg", "Male", "0", ap="", Edema="1.0", Pleural_Effusion="1.0",
        Pneumonia="0.0"),
    row(f"{P}/patient00004/study1/view1_frontal.jpg", "Unknown", "45", ap="LL", No_Finding="1.0",
        Consolidation="1"),
    "MALFORMED",  # line 8
    row(f"{P}/patient00005/study1/view1_frontal.jpg", "Male", "50", Pneumonia="2.0"),  # line 9: bad value
    row(f"{P}/patient00001/study1/view1_frontal.jpg", "Female", "68", No_Finding="1.0"),  # line 10: repeat
    row(f"{P}/study1/view1_frontal.jpg", "Male", "40", No_Finding="1.0"),  # line 11: no patient part
    row("", "Male", "40", No_Finding="1.0"),  # line 12: empty Path
]
VALID = [
    row(f"{SMALL}/valid/patient64541/study1/view1_frontal.jpg", "Male", "55",
        **{name.replace(" ", "_"): "0.0" for name in OBSERVATIONS if name != "No Finding"}),
    "MALFORMED",  # line 3
]
MISSING = {"train/patient00002/study1/view2_lateral.jpg"}  # never written


def csv_text(rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    for r in rows:
        if r == "MALFORMED":
            buf.write("CheXpert-v1.0-small/train/patient00009/study1/view1_frontal.jpg,Male,33\n")
        else:
            writer.writerow(r)
    return buf.getvalue()


def image(rng: np.random.Generator, size: int = 96) -> Image.Image:
    """Smooth random structure: every image distinct, with keypoints of its own."""
    small = rng.random((12, 12))
    big = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), float)
    big += rng.normal(0, 12, big.shape)
    return Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))


def make_tree(tmp: Path, layout: str, rows=TRAIN, valid=VALID, seed: int = 0) -> Path:
    """A small CheXpert copy; returns the adapter root. ``inside``: the root is the dataset folder
    (train.csv.gz, valid.csv, train/, valid/); ``parent``: the root contains the dataset folder, metadata
    in it (as the zip unpacks); ``copied_up``: the root contains the dataset folder, metadata at the root."""
    data = tmp / "data"
    dataset = data / SMALL
    root = dataset if layout == "inside" else data
    meta = data if layout == "copied_up" else dataset
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "train.csv.gz").write_bytes(gzip.compress(csv_text(rows).encode()))
    (meta / "valid.csv").write_text(csv_text(valid))
    rng = np.random.default_rng(seed)
    for r in [*rows, *valid]:
        if r == "MALFORMED" or not r[0].startswith(SMALL + "/"):
            continue
        rel = r[0][len(SMALL) + 1:]
        if rel in MISSING or (dataset / rel).exists():
            continue
        (dataset / rel).parent.mkdir(parents=True, exist_ok=True)
        image(rng).save(dataset / rel, "JPEG", quality=95)
    return root


def plain(rec) -> dict:
    out = dataclasses.asdict(rec) if isinstance(rec, SourceRecord) else dict(rec)
    if isinstance(out["provenance"], str):
        out["provenance"] = json.loads(out["provenance"] or "{}")
    return out


def expected_rows(root: Path, layout: str, uncertainty: str, consolidation: bool) -> list[dict]:
    real = os.path.realpath(root)
    gz, txt = ("train.csv.gz", "valid.csv") if layout != "parent" else (f"{SMALL}/train.csv.gz",
                                                                          f"{SMALL}/valid.csv")

    def good(meta, line, rel, finding, label, rule, patient, view, sex, age, labels, *, error=None,
             missing=False, extra=None):
        cands = [f"{SMALL}/{rel}"] if layout == "parent" else [rel, f"{SMALL}/{rel}"]
        found = f"{SMALL}/{rel}" if layout != "inside" else rel
        if missing:
            error = (f"missing_file: none of {', '.join(cands)}" if len(cands) > 1 else f"missing_file: {cands[0]}")
        source_path = cands[0] if (missing or error) else found
        raw = (TRAIN if meta == gz else VALID)[line - 2]
        view_raw = f"{raw[3]}/{raw[4]}" if raw[4] else raw[3]
        provenance = {"metadata": meta, "line": line, "labels": labels, "label_rule": rule,
                      "uncertainty": uncertainty, "view_raw": view_raw, "view_file": rel.rsplit("/", 1)[1],
                      "study": rel.split("/")[2], **(extra or {})}
        return {"record_id": f"chexpert:{rel}", "source": "chexpert", "source_path": source_path,
                "path": None if error else f"{real}/{found}", "label": label, "finding": finding,
                "patient_key": f"chexpert:{patient}", "view": view, "modality": "X-ray", "sex": sex, "age": age,
                "license": None, "provenance": provenance, "error": error}

    def unreadable(meta, line, error):
        return {"record_id": f"chexpert:{meta}:L{line}", "source": "chexpert", "source_path": "", "path": None,
                "label": None, "finding": "", "patient_key": f"chexpert:unknown-{meta}:L{line}", "view": "unknown",
                "modality": "X-ray", "sex": None, "age": None, "license": None,
                "provenance": {"metadata": meta, "line": line}, "error": error}

    # line 3: Pneumonia -1.0, Lung Opacity 1.0
    line3 = {"ignore": ("Pneumonia (uncertain)", None, "uncertain: Pneumonia"),
             "ones": ("Pneumonia (uncertain)/Pneumonia", PNEUMONIA, "uncertainty=ones: Pneumonia"),
             "zeros": ("Lung Opacity (not counted by the chexpert rule)", None, "other_findings")}[uncertainty]
    # line 4: Pneumonia 1.0, Consolidation -1.0
    line4 = ("Pneumonia", PNEUMONIA, "pneumonia_findings: Pneumonia")
    if consolidation and uncertainty == "ones":
        line4 = ("Pneumonia|Consolidation (uncertain)/Pneumonia", PNEUMONIA, "pneumonia_findings: Pneumonia")
    # line 7: No Finding 1.0, Consolidation 1
    line7 = (("No Finding|Consolidation (contradictory labels)", None, "contradiction: No Finding and Consolidation")
             if consolidation else ("No Finding", NORMAL, "no_finding"))
    return [
        good(gz, 2, "train/patient00001/study1/view1_frontal.jpg", "No Finding", NORMAL, "no_finding",
             "patient00001", "AP", "F", 68, {"No Finding": 1, "Support Devices": 1}),
        good(gz, 3, "train/patient00002/study2/view1_frontal.jpg", *line3, "patient00002", "AP", "F", 87,
             {"Lung Opacity": 1, "Pneumonia": -1}),
        good(gz, 4, "train/patient00002/study1/view1_frontal.jpg", *line4, "patient00002", "PA", "F", 83,
             {"Consolidation": -1, "Pneumonia": 1}),
        good(gz, 5, "train/patient00002/study1/view2_lateral.jpg", "Pneumonia", PNEUMONIA,
             "pneumonia_findings: Pneumonia", "patient00002", "Lateral", "F", 83, {"Pneumonia": 1}, missing=True),
        good(gz, 6, "train/patient00003/study1/view1_frontal.jpg", "Edema|Pleural Effusion", None, "other_findings",
             "patient00003", "unknown", "M", None, {"Edema": 1, "Pleural Effusion": 1, "Pneumonia": 0},
             extra={"age_raw": "0"}),
        good(gz, 7, "train/patient00004/study1/view1_frontal.jpg", *line7, "patient00004", "Frontal (LL)", None, 45,
             {"No Finding": 1, "Consolidation": 1}, extra={"sex_raw": "Unknown"}),
        unreadable(gz, 8, "malformed_row: line 8 has 3 fields, header has 19"),
        good(gz, 9, "train/patient00005/study1/view1_frontal.jpg", "no positive label", None, "other_findings",
             "patient00005", "AP", "M", 50, {},
             error="malformed_row: line 9: 'Pneumonia' is '2.0', not 1.0, 0.0, -1.0 or blank"),
        unreadable(gz, 10, "malformed_row: line 10 repeats Path "
                           "'CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg' (line 2)"),
        {**good(gz, 11, "train/study1/view1_frontal.jpg", "No Finding", NORMAL, "no_finding", "?", "AP", "M", 40,
                {"No Finding": 1},
                error=f"malformed_row: line 11: Path '{SMALL}/train/study1/view1_frontal.jpg' has no "
                      f"patientNNNNN part"),
         "patient_key": f"chexpert:unknown-{gz}:L11"},
        unreadable(gz, 12, "malformed_row: line 12 has an empty Path"),
        good(txt, 2, "valid/patient64541/study1/view1_frontal.jpg", "no positive label", None, "other_findings",
             "patient64541", "AP", "M", 55, {name: 0 for name in OBSERVATIONS if name != "No Finding"}),
        unreadable(txt, 3, "malformed_row: line 3 has 3 fields, header has 19"),
    ]


def fix_study(rows: list[dict]) -> list[dict]:
    # the Path without a patient part has study 'study1' as its second part, not its third
    for r in rows:
        if r["record_id"] == "chexpert:train/study1/view1_frontal.jpg":
            r["provenance"]["study"] = "study1"
    return rows


@pytest.mark.parametrize("consolidation", [False, True], ids=["default", "consolidation"])
@pytest.mark.parametrize("uncertainty", ["ignore", "ones", "zeros"])
@pytest.mark.parametrize("layout", ["inside", "parent", "copied_up"])
def test_generated_copy_gives_exact_records(tmp_path, layout, uncertainty, consolidation):
    root = make_tree(tmp_path, layout)
    options = {"uncertainty": uncertainty} if uncertainty != "ignore" else {}
    if consolidation:
        options["pneumonia_findings"] = ["Pneumonia", "Consolidation"]
    adapter = make_adapter("chexpert", "chexpert", root, options)
    rows = [plain(r) for r in adapter.checked_records()]
    expected = fix_study(expected_rows(root, layout, uncertainty, consolidation))
    assert [r["record_id"] for r in rows] == [e["record_id"] for e in expected]
    for got, want in zip(rows, expected):
        assert got == want, got["record_id"]
    assert all(r["label"] == normalise_finding(r["finding"]) for r in rows)
    # driver side: with the metadata at the root two candidates per image, in the dataset folder one
    first = next(adapter.records())
    assert len(first.path.split("\0")) == (1 if layout == "parent" else 2)


def test_label_rule():
    cases = [  # (values, findings, policy) -> (finding, label, rule)
        ({"No Finding": 1}, ["Pneumonia"], "ignore", ("No Finding", NORMAL, "no_finding")),
        ({"Pneumonia": 1}, ["Pneumonia"], "ignore", ("Pneumonia", PNEUMONIA, "pneumonia_findings: Pneumonia")),
        ({"Pneumonia": -1}, ["Pneumonia"], "ignore", ("Pneumonia (uncertain)", None, "uncertain: Pneumonia")),
        ({"Pneumonia": -1, "No Finding": 1}, ["Pneumonia"], "ignore",
         ("Pneumonia (uncertain)", None, "uncertain: Pneumonia")),
        ({"Pneumonia": -1, "No Finding": 1}, ["Pneumonia"], "zeros", ("No Finding", NORMAL, "no_finding")),
        ({"Pneumonia": -1}, ["Pneumonia"], "zeros", ("no positive label", None, "other_findings")),
        ({"Pneumonia": -1}, ["Pneumonia"], "ones",
         ("Pneumonia (uncertain)/Pneumonia", PNEUMONIA, "uncertainty=ones: Pneumonia")),
        ({"Pneumonia": 1, "No Finding": 1}, ["Pneumonia"], "ignore",
         ("No Finding|Pneumonia (contradictory labels)", None, "contradiction: No Finding and Pneumonia")),
        ({"Consolidation": 1, "Edema": 1}, ["Pneumonia", "Consolidation"], "ignore",
         ("Consolidation/Pneumonia", PNEUMONIA, "pneumonia_findings: Consolidation")),
        ({"Consolidation": -1, "Pneumonia": -1}, ["Pneumonia", "Consolidation"], "ignore",
         ("Pneumonia (uncertain)|Consolidation (uncertain)", None, "uncertain: Pneumonia|Consolidation")),
        ({"Consolidation": 1, "Pneumonia": -1}, ["Pneumonia", "Consolidation"], "ignore",
         ("Consolidation/Pneumonia", PNEUMONIA, "pneumonia_findings: Consolidation")),
        ({"Lung Opacity": 1}, ["Pneumonia"], "ignore",
         ("Lung Opacity (not counted by the chexpert rule)", None, "other_findings")),
        ({"Lung Opacity": 1, "Edema": 1, "Pneumonia": 0}, ["Pneumonia"], "ignore",
         ("Lung Opacity|Edema", None, "other_findings")),
        ({"Pneumonia": 1}, [], "ignore", ("Pneumonia (not counted by the chexpert rule)", None, "other_findings")),
        ({"No Finding": -1}, ["Pneumonia"], "ones", ("no positive label", None, "other_findings")),
        ({}, ["Pneumonia"], "ignore", ("no positive label", None, "other_findings")),
    ]
    for values, findings, policy, (finding, label, rule) in cases:
        assert chexpert_finding(values, findings, policy) == (finding, rule), (values, findings, policy)
        assert normalise_finding(finding) == label, (values, findings, policy)
    assert chexpert_finding({"Pneumonia": 1}, [], "ignore", "mimic")[0] == \
        "Pneumonia (not counted by the mimic rule)"


def test_views():
    assert chexpert_view("Frontal", "AP") == "AP"
    assert chexpert_view("Frontal", "PA") == "PA"
    assert chexpert_view("Frontal", "") == "unknown"
    assert chexpert_view("Frontal", "LL") == "Frontal (LL)"
    assert chexpert_view("Frontal", "RL") == "Frontal (RL)"
    assert chexpert_view("Lateral", "") == "Lateral"
    assert chexpert_view("", "PA") == "PA"


def test_options_and_errors(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(SourceError, match="no metadata file"):
        list(make_adapter("chexpert", "chexpert", root).records())
    with pytest.raises(SourceError):
        list(make_adapter("chexpert", "chexpert", tmp_path / "absent").records())
    with pytest.raises(ValueError, match="uncertainty"):
        make_adapter("chexpert", "chexpert", root, {"uncertainty": "maybe"})
    with pytest.raises(ValueError, match="pneumonia_findings"):
        make_adapter("chexpert", "chexpert", root, {"pneumonia_findings": ["Pneumonitis"]})
    with pytest.raises(ValueError, match="pneumonia_findings"):
        make_adapter("chexpert", "chexpert", root, {"pneumonia_findings": 3})
    with pytest.raises(ValueError, match="unknown option"):
        make_adapter("chexpert", "chexpert", root, {"labels": "negbio"})
    # only valid.csv, full-size prefix, explicit metadata, a missing column
    (root / "CheXpert-v1.0").mkdir()
    full = row("CheXpert-v1.0/valid/patient1/study1/view1_frontal.jpg", No_Finding="1.0")
    (root / "CheXpert-v1.0" / "valid.csv").write_text(csv_text([full]))
    adapter = make_adapter("chexpert", "chexpert", root)
    assert adapter.metadata_names() == ["CheXpert-v1.0/valid.csv"]
    [rec] = adapter.records()
    assert (rec.record_id, rec.source_path, rec.patient_key) == (
        "chexpert:valid/patient1/study1/view1_frontal.jpg", "CheXpert-v1.0/valid/patient1/study1/view1_frontal.jpg",
        "chexpert:patient1")
    (root / "mine.csv").write_text("Path,Sex\nx/patient1/study1/view1_frontal.jpg,Male\n")
    [rec] = make_adapter("chexpert", "c2", root, {"metadata": "mine.csv"}).records()
    assert rec.error == "missing_column: mine.csv has no column(s) ['No Finding', 'Pneumonia']"
    assert make_adapter("chexpert", "c3", root, {"metadata": ["mine.csv", "CheXpert-v1.0/valid.csv"]}
                        ).metadata_names() == ["mine.csv", "CheXpert-v1.0/valid.csv"]


def pipeline_reason(view: str, label, error) -> str:
    """The outcome the ingest's metadata rules give a record (cxrspark.ingest.stages.metadata_outcome)."""
    if error:
        return "quarantined/" + error.split(":")[0]
    if view == "Lateral":
        return "filtered/lateral_view"
    if view not in ("PA", "AP", "AP Supine", "AP Erect", "AP Semi Erect", "unknown"):
        return "filtered/non_frontal_view"
    return f"kept/{label}" if label else "filtered/unusable_label"


@pytest.mark.skipif(not REAL_FILE.is_file(), reason=f"real CheXpert metadata not found at {REAL_FILE}")
def test_real_metadata_file():
    # the expected numbers, read independently with pandas
    df = pd.read_csv(REAL_FILE, dtype=str, keep_default_na=False)
    assert len(df) == 223_414
    patients = df["Path"].str.split("/").str[2]
    nf, pn = df["No Finding"], df["Pneumonia"]
    assert not ((nf == "1.0") & (pn == "1.0")).any(), "no row is both No Finding and Pneumonia"
    assert not ((nf == "1.0") & (pn == "-1.0")).any()
    normal = (nf == "1.0") & (pn != "1.0") & (pn != "-1.0")
    expect_label = {"ignore": {NORMAL: int(normal.sum()), PNEUMONIA: int((pn == "1.0").sum())},
                    "ones": {NORMAL: int(normal.sum()), PNEUMONIA: int(pn.isin(["1.0", "-1.0"]).sum())}}
    view = np.where(df["Frontal/Lateral"] == "Lateral", "Lateral",
                    np.where(df["AP/PA"].isin(["AP", "PA"]), df["AP/PA"], "Frontal (" + df["AP/PA"] + ")"))

    adapter = make_adapter("chexpert", "chexpert", REAL_DIR)  # no images here: records() checks names only
    start = time.perf_counter()
    recs = list(adapter.records())
    print(f"\nchexpert: {len(recs):,} records in {time.perf_counter() - start:.1f} s")
    assert len(recs) == len(df)
    assert [r.record_id for r in recs] == ["chexpert:" + p.split("/", 1)[1] for p in df["Path"]]
    assert all(r.error is None for r in recs)
    assert all(r.label == normalise_finding(r.finding) for r in recs)
    labels = Counter(r.label for r in recs)
    assert labels == {NORMAL: 22_381, PNEUMONIA: 6_039, None: 194_994}
    assert {k: labels[k] for k in (NORMAL, PNEUMONIA)} == expect_label["ignore"]
    assert Counter(r.provenance["label_rule"].split(":")[0] for r in recs) == {
        "other_findings": 176_224, "no_finding": 22_381, "uncertain": 18_770, "pneumonia_findings": 6_039}
    assert Counter(r.finding for r in recs)["Pneumonia (uncertain)"] == int((pn == "-1.0").sum()) == 18_770
    assert Counter(r.view for r in recs) == Counter(view) == {
        "AP": 161_590, "Lateral": 32_387, "PA": 29_420, "Frontal (LL)": 16, "Frontal (RL)": 1}
    assert len({r.patient_key for r in recs}) == patients.nunique() == 64_540
    assert [r.patient_key for r in recs] == ["chexpert:" + p for p in patients]
    assert Counter(r.sex for r in recs) == {"M": 132_636, "F": 90_777, None: 1}
    assert Counter(r.age is None for r in recs)[True] == int((df["Age"] == "0").sum()) == 3
    # what the ingest's metadata rules make of them (all files missing here, so not quarantined by name)
    outcomes = Counter(pipeline_reason(r.view, r.label, r.error) for r in recs)
    frontal = df["Frontal/Lateral"] == "Frontal"
    frontal_ap_pa = frontal & df["AP/PA"].isin(["AP", "PA"])
    assert outcomes == {
        "filtered/lateral_view": int((~frontal).sum()),
        "filtered/non_frontal_view": int((frontal & ~df["AP/PA"].isin(["AP", "PA"])).sum()),
        "kept/Normal": int((frontal_ap_pa & normal).sum()),
        "kept/Pneumonia": int((frontal_ap_pa & (pn == "1.0")).sum()),
        "filtered/unusable_label": int((frontal_ap_pa & ~normal & (pn != "1.0")).sum()),
    }
    assert outcomes == {"filtered/lateral_view": 32_387, "filtered/non_frontal_view": 17, "kept/Normal": 16_970,
                        "kept/Pneumonia": 4_674, "filtered/unusable_label": 169_366}

    # U-Ones: every uncertain pneumonia counts
    ones = Counter(r.label for r in make_adapter("chexpert", "chexpert", REAL_DIR, {"uncertainty": "ones"}).records())
    assert {k: ones[k] for k in (NORMAL, PNEUMONIA)} == expect_label["ones"] == {NORMAL: 22_381, PNEUMONIA: 24_809}


@pytest.mark.slow
def test_end_to_end_ingest(spark, tmp_path):
    import pyarrow.parquet as pq

    from conftest import _ingest

    def fr(pid, study, n, **labels):
        return row(f"{P}/patient{pid:05d}/study{study}/view{n}_frontal.jpg", "Male" if pid % 2 else "Female",
                   str(30 + pid), ap="PA" if n % 2 else "AP", **labels)

    rows = []
    for pid in range(1, 9):  # Normal patients, two frontal images each (two studies)
        rows += [fr(pid, 1, 1, No_Finding="1.0"), fr(pid, 2, 1, No_Finding="1.0")]
    for pid in range(9, 15):  # Pneumonia patients: two frontals + one lateral
        rows += [fr(pid, 1, 1, Pneumonia="1.0", Edema="1.0"), fr(pid, 2, 1, Pneumonia="1.0"),
                 row(f"{P}/patient{pid:05d}/study1/view2_lateral.jpg", fl="Lateral", ap="", Pneumonia="1.0")]
    rows += [fr(15, 1, 1, Pneumonia="-1.0"), fr(15, 1, 3, Pneumonia="-1.0"),  # uncertain: filtered
             fr(16, 1, 1, Edema="1.0"),  # other finding: filtered
             row(f"{P}/patient00017/study1/view1_frontal.jpg", ap="LL", No_Finding="1.0"),  # Frontal (LL)
             fr(18, 1, 1, No_Finding="1.0"),  # its image is missing
             "MALFORMED"]
    missing = {"train/patient00018/study1/view1_frontal.jpg"}
    data = tmp_path / "raw"
    dataset = data / SMALL
    dataset.mkdir(parents=True)
    (dataset / "train.csv").write_text(csv_text(rows))
    (dataset / "valid.csv").write_text(csv_text([]))
    rng = np.random.default_rng(7)
    for r in rows:
        if r != "MALFORMED" and r[0][len(SMALL) + 1:] not in missing:
            target = dataset / r[0][len(SMALL) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            image(rng).save(target, "JPEG", quality=95)
    out = _ingest(spark, [{"name": "chexpert", "kind": "chexpert", "root": str(data)}], tmp_path / "out", tmp_path,
                  "ingest.image_size=64")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_rows"] == len(rows) == 40
    assert summary["counts"] == {"curated": 28, "filtered": 10, "duplicate": 0, "quarantined": 2}
    assert summary["reasons"] == {"filtered/lateral_view": 6, "filtered/non_frontal_view": 1,
                                  "filtered/unusable_label": 3, "quarantined/missing_file": 1,
                                  "quarantined/malformed_row": 1}, summary["reasons"]
    curated = pd.concat([pq.read_table(out / "curated" / s).to_pandas() for s in ("train", "val", "test")
                         if (out / "curated" / s).exists()])
    assert Counter(curated["label"]) == {NORMAL: 16, PNEUMONIA: 12}
    assert (curated.groupby("patient_key")["split"].nunique() == 1).all()
    assert curated["patient_key"].nunique() == 14
    filtered = pq.read_table(out / "filtered").to_pandas()
    assert sorted(filtered["reason"]) == sorted(
        ["lateral_view: Lateral"] * 6 + ["non_frontal_view: Frontal (LL)"]
        + ["unusable_label: finding 'Pneumonia (uncertain)'"] * 2 + ["unusable_label: finding 'Edema'"])
    quarantine = pq.read_table(out / "quarantine").to_pandas()
    assert sorted(quarantine["reason"]) == [
        "malformed_row: line 41 has 3 fields, header has 19",
        f"missing_file: {SMALL}/train/patient00018/study1/view1_frontal.jpg"]
