"""BIMCV-COVID19+ adapter: a generated spreadsheet (and its TSV export) in the real format, both label
modes, the real COVID19_POSI_v1.0.xlsx (skipped when ../shared/data/meta/bimcv is absent) and one
end-to-end ingest of a generated BIDS-like tree."""
from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrspark.labels import COVID, NORMAL, PNEUMONIA, normalise_finding
from cxrspark.schema import FRONTAL_VIEWS, LATERAL_VIEWS, SourceRecord
from cxrspark.sources import SourceError, make_adapter
from cxrspark.sources.bimcv import bimcv_view, report_finding

REPO = Path(__file__).resolve().parents[1]
REAL_DIR = Path(os.environ.get("CXRSPARK_META_DATA", REPO.parent / "shared" / "data" / "meta")) / "bimcv"
REAL_FILE = REAL_DIR / "COVID19_POSI_v1.0.xlsx"

# a subset of the real header, in the real order
HEADER = ["Subject", "Session", "mod", "File", "Type", "Position_Manual", "Exclude", "Exclude Reason", "Labels",
          "Report", "Patient's Age", "Patient's Sex", "Position_DL", "Unnamed: 0", "Patient ID", "PatientID",
          "View Position", "Modality"]
DEFAULT_COVID = ["COVID 19", "viral pneumonia"]
DEFAULT_PNEUMONIA = ["pneumonia", "atypical pneumonia"]


def row(subject, session, name, kind, manual, labels, *, exclude="False", reason=None, age="075Y", sex="M",
        dicom=None, modality=None, report_row=1):
    modality = modality or {"dx": "DX", "cr": "CR", "ct.nii.gz": "CT"}[kind]
    return {"Subject": subject, "Session": session, "mod": "mod-rx", "File": name, "Type": kind,
            "Position_Manual": manual, "Exclude": exclude, "Exclude Reason": reason, "Labels": labels,
            "Report": "informe radiologico .", "Patient's Age": age, "Patient's Sex": sex, "Position_DL": manual,
            "Unnamed: 0": report_row, "Patient ID": "000384", "PatientID": subject, "View Position": dicom,
            "Modality": modality}


ROWS = [
    # two images of one study, both tagged vp-ll with DICOM LL: the manual check says which is PA
    row("sub-S1", "ses-E1", "sub-S1_ses-E1_acq-2_run-1_bp-chest_vp-ll_dx.png", "dx", "L", "normal", dicom="LL"),
    row("sub-S1", "ses-E1", "sub-S1_ses-E1_acq-1_run-1_bp-chest_vp-ll_dx.png", "dx", "PA", "normal", dicom="LL"),
    row("sub-S2", "ses-E2", "sub-S2_ses-E2_run-1_bp-chest_vp-pa_cr.png", "cr", "PA",
        "COVID 19', ' pneumonia', 'infiltrates", age=None, sex="F", report_row=7),
    row("sub-S2", "ses-E3", "sub-S2_ses-E3_run-1_bp-chest_vp-ap_cr.png", "cr", None, "pneumonia', 'consolidation",
        sex="F", dicom="AP"),
    row("sub-S3", "ses-E4", "sub-S3_ses-E4_run-1_bp-chest_vp-ap_dx.png", "dx", None, "', 'aortic elongation",
        age="045Y"),
    row("sub-S3", "ses-E4", "sub-S3_ses-E4_run-2_bp-chest_dx.png", "dx", "PA", "normal", exclude="True",
        reason="burned in information", age="045Y"),
    row("sub-S3", "ses-E5", "sub-S3_ses-E5_run-1_bp-chest_ct.nii.gz", "ct.nii.gz", None, "COVID 19", age="045Y"),
    # the same image again (another report row)
    row("sub-S2", "ses-E2", "sub-S2_ses-E2_run-1_bp-chest_vp-pa_cr.png", "cr", "PA",
        "COVID 19', ' pneumonia', 'infiltrates", age=None, sex="F", report_row=8),
    row("sub-S4", "ses-E6", "sub-S4_ses-E6_run-1_bp-chest_vp-pa_dx.png", "dx", "PA", None, age="X"),
    row("sub-S4", "ses-E6", "sub-S4_ses-E6_run-2_bp-chest_vp-pa_dx.png", "dx", "PA", "viral pneumonia"),  # missing
    row("sub-S5", "ses-E7", "sub-S5_ses-E7_run-1_bp-chest_vp-pa_dx.png", "dx", "PA", "['COVID 19'"),
]
MISSING = {"sub-S4_ses-E6_run-2_bp-chest_vp-pa_dx.png", "sub-S3_ses-E5_run-1_bp-chest_ct.nii.gz"}


def plain(rec) -> dict:
    out = dataclasses.asdict(rec) if isinstance(rec, SourceRecord) else dict(rec)
    if isinstance(out["provenance"], str):
        out["provenance"] = json.loads(out["provenance"] or "{}")
    return out


def write_xlsx(path: Path, rows: list[dict], header: list[str] = HEADER) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Hoja 1 - COVID19_POSI_v1.0"
    sheet.append(["COVID19_POSI_v1.0"])
    sheet.append(header)
    for r in rows:
        sheet.append([r.get(h) for h in header])
    sheet.append([None] * len(header))  # an empty trailing row
    book.save(path)


def write_tsv(path: Path, rows: list[dict], title: bool) -> None:
    lines = (["COVID19_POSI_v1.0"] if title else []) + ["\t".join(HEADER)]
    lines += ["\t".join("" if r.get(h) is None else str(r.get(h)) for h in HEADER) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def image_path(root: Path, r: dict, folder: str = "") -> Path:
    return (root / folder if folder else root) / r["Subject"] / r["Session"] / r["mod"] / r["File"]


def make_tree(root: Path, images: bool = True) -> None:
    root.mkdir(parents=True)
    write_xlsx(root / "COVID19_POSI_v1.0.xlsx", ROWS)
    if not images:
        return
    for i, r in enumerate(ROWS):
        if r["File"] in MISSING:
            continue
        path = image_path(root, r, "part-2" if r["Subject"] == "sub-S3" else "")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (4, 4), 10 * i).save(path)
        path.with_suffix(".json").write_text(json.dumps({"00185101": {"vr": "CS", "Value": ["PA"]}}))


def summary(rows: list[dict]) -> list[tuple]:
    return [(r["record_id"], r["source_path"], r["path"] is not None, r["label"], r["finding"], r["patient_key"],
             r["view"], r["modality"], r["sex"], r["age"], r["provenance"].get("label_rule"), r["error"])
            for r in rows]


def expected(mode: str) -> list[tuple]:
    covid = mode == "covid"
    c = "covid: BIMCV-COVID19+ positive set"

    def lab(label, finding, rule):
        return (COVID, "COVID-19", c) if covid else (label, finding, rule)

    f = [r["File"] for r in ROWS]
    return [
        (f"bimcv:{f[0]}", f"sub-S1/ses-E1/mod-rx/{f[0]}", True, *lab(NORMAL, "normal", "normal")[:2], "bimcv:sub-S1",
         "Lateral", "X-ray", "M", 75, lab(NORMAL, "normal", "normal")[2], None),
        (f"bimcv:{f[1]}", f"sub-S1/ses-E1/mod-rx/{f[1]}", True, *lab(NORMAL, "normal", "normal")[:2], "bimcv:sub-S1",
         "PA", "X-ray", "M", 75, lab(NORMAL, "normal", "normal")[2], None),
        (f"bimcv:{f[2]}", f"sub-S2/ses-E2/mod-rx/{f[2]}", True,
         *lab(COVID, "COVID 19|pneumonia|infiltrates/COVID-19", "covid_findings: COVID 19")[:2], "bimcv:sub-S2",
         "PA", "X-ray", "F", None, lab(COVID, "", "covid_findings: COVID 19")[2], None),
        (f"bimcv:{f[3]}", f"sub-S2/ses-E3/mod-rx/{f[3]}", True,
         *lab(PNEUMONIA, "pneumonia|consolidation/Pneumonia", "")[:2], "bimcv:sub-S2", "AP", "X-ray", "F", 75,
         lab(PNEUMONIA, "", "pneumonia_findings: pneumonia")[2], None),
        # no manual check, no DICOM view: the file name's vp-ap tag
        (f"bimcv:{f[4]}", f"part-2/sub-S3/ses-E4/mod-rx/{f[4]}", True, *lab(None, "aortic elongation", "")[:2],
         "bimcv:sub-S3", "AP", "X-ray", "M", 45, lab(None, "", "other_findings")[2], None),
        (f"bimcv:{f[5]}", f"part-2/sub-S3/ses-E4/mod-rx/{f[5]}", True, None,
         "excluded by the source: burned in information", "bimcv:sub-S3", "PA", "X-ray", "M", 45, "exclude", None),
        # a CT volume: never looked for
        (f"bimcv:{f[6]}", f"sub-S3/ses-E5/mod-rx/{f[6]}", False, *lab(COVID, "COVID 19/COVID-19", "")[:2],
         "bimcv:sub-S3", "unknown", "CT", "M", 45, lab(COVID, "", "covid_findings: COVID 19")[2], None),
        ("bimcv:L10", "", False, None, "", "bimcv:unknown-L10", "unknown", "X-ray", None, None, None,
         f"malformed_row: line 10 repeats File '{f[2]}' of line 5"),
        (f"bimcv:{f[8]}", f"sub-S4/ses-E6/mod-rx/{f[8]}", True, *lab(None, "(no labels)", "")[:2], "bimcv:sub-S4",
         "PA", "X-ray", "M", None, lab(None, "", "no_labels")[2], None),
        (f"bimcv:{f[9]}", f"sub-S4/ses-E6/mod-rx/{f[9]}", False,
         *lab(COVID, "viral pneumonia/COVID-19", "")[:2], "bimcv:sub-S4", "PA", "X-ray", "M", 75,
         lab(COVID, "", "covid_findings: viral pneumonia")[2],
         f"missing_file: none of sub-S4/ses-E6/mod-rx/{f[9]}, part-2/sub-S4/ses-E6/mod-rx/{f[9]}"),
        (f"bimcv:{f[10]}", f"sub-S5/ses-E7/mod-rx/{f[10]}", covid,
         *((COVID, "COVID-19") if covid else (None, "['COVID 19'")), "bimcv:sub-S5", "PA", "X-ray", "M", 75,
         c if covid else "unparseable",
         None if covid else "malformed_row: line 13 has an unparseable Labels value \"['COVID 19'\""),
    ]


@pytest.mark.parametrize("mode", ["covid", "report"])
def test_generated_sheet_gives_exact_records(tmp_path, mode):
    root = tmp_path / "bimcv"
    make_tree(root)
    adapter = make_adapter("bimcv", "bimcv", root, {"label": mode})
    assert adapter.metadata_name() == "COVID19_POSI_v1.0.xlsx"
    assert adapter.image_dirs() == ["", "part-2"]
    rows = [plain(r) for r in adapter.checked_records()]
    # the unparseable Labels do not matter to the covid rule: the file is then looked for
    assert summary(rows) == expected(mode)
    assert all(r["label"] == normalise_finding(r["finding"]) for r in rows if r["error"] is None)
    found = [r for r in rows if r["path"]]
    assert all(Path(r["path"]).is_file() and r["path"].endswith(r["source_path"]) for r in found)
    assert rows[0]["provenance"] == {
        "metadata": "COVID19_POSI_v1.0.xlsx", "line": 3, "session": "ses-E1", "labels_raw": "normal",
        "labels": ["normal"], "label_rule": rows[0]["provenance"]["label_rule"], "view_manual": "L",
        "view_dicom": "LL", "view_tag": "ll", "type": "dx", "position_dl": "L", "dicom_patient_id": "000384",
        "report_row": "1"}
    assert rows[8]["provenance"]["age_raw"] == "X"
    assert rows[5]["provenance"]["exclude_reason"] == "burned in information"


@pytest.mark.parametrize("title", [True, False])
def test_tsv_export_reads_like_the_sheet(tmp_path, title):
    root = tmp_path / "bimcv"
    make_tree(root, images=False)
    write_tsv(root / "export.tsv", ROWS, title)
    sheet = [plain(r) for r in make_adapter("bimcv", "b", root, {"label": "report"}).records()]
    export = [plain(r) for r in make_adapter("bimcv", "b", root, {"label": "report", "metadata": "export.tsv"}
                                             ).records()]
    shift = 0 if title else 1  # without the title line every line number is one less
    assert [r["provenance"]["line"] + shift for r in export] == [r["provenance"]["line"] for r in sheet]
    assert [r["record_id"] for r in export] == [r["record_id"].replace("L10", f"L{10 - shift}") for r in sheet]
    assert [(r["label"], r["finding"], r["view"], r["age"], r["sex"]) for r in export] == \
        [(r["label"], r["finding"], r["view"], r["age"], r["sex"]) for r in sheet]


def test_label_and_view_rules():
    cases = {
        ("normal",): ("normal", NORMAL, "normal"),
        ("COVID 19",): ("COVID 19/COVID-19", COVID, "covid_findings: COVID 19"),
        ("pneumonia", "COVID 19"): ("pneumonia|COVID 19/COVID-19", COVID, "covid_findings: COVID 19"),
        ("viral pneumonia",): ("viral pneumonia/COVID-19", COVID, "covid_findings: viral pneumonia"),
        ("atypical pneumonia",): ("atypical pneumonia/Pneumonia", PNEUMONIA,
                                  "pneumonia_findings: atypical pneumonia"),
        ("COVID 19 uncertain", "normal"): ("COVID 19 uncertain|normal", None, "other_findings"),
        ("exclude",): ("exclude", None, "other_findings"),
        (): ("(no labels)", None, "no_labels"),
    }
    for labels, (finding, label, rule) in cases.items():
        assert report_finding(list(labels), DEFAULT_COVID, DEFAULT_PNEUMONIA) == (finding, rule), labels
        assert normalise_finding(finding) == label, labels
    finding, rule = report_finding(["COVID 19 uncertain"], ["COVID 19", "COVID 19 uncertain"], [])
    assert (normalise_finding(finding), rule) == (COVID, "covid_findings: COVID 19 uncertain")
    assert bimcv_view("PA", "LL", "x_vp-ll_dx.png") == "PA"
    assert bimcv_view("L", "PA", "x_vp-pa_dx.png") == "Lateral"
    assert bimcv_view("", "LATERAL", "x_vp-pa_dx.png") == "Lateral"
    assert bimcv_view("", "", "x_run-1_bp-chest_vp-ap_cr.png") == "AP"
    assert bimcv_view("", "", "x_run-1_bp-chest_cr.png") == "unknown"


def test_options_and_errors(tmp_path):
    root = tmp_path / "b"
    root.mkdir()
    with pytest.raises(SourceError, match="no image list"):
        list(make_adapter("bimcv", "b", root).records())
    with pytest.raises(ValueError, match="label must be"):
        make_adapter("bimcv", "b", root, {"label": "all"})
    with pytest.raises(ValueError, match="covid_findings"):
        make_adapter("bimcv", "b", root, {"covid_findings": {"a": 1}})
    (root / "broken.xlsx").write_bytes(b"not a workbook")
    with pytest.raises(SourceError, match="cannot open"):
        list(make_adapter("bimcv", "b", root).records())
    (root / "broken.xlsx").unlink()
    write_xlsx(root / "list.xlsx", ROWS[:2], header=[h for h in HEADER if h != "Session"])
    recs = list(make_adapter("bimcv", "b", root).records())
    assert [r.error for r in recs] == ["missing_column: list.xlsx has no column(s) ['Session']"] * 2
    # explicit image folders, and the report rule with other findings lists
    write_xlsx(root / "list.xlsx", ROWS)
    adapter = make_adapter("bimcv", "b", root, {"image_dir": ["a", "b"], "label": "report",
                                                 "covid_findings": ["COVID 19"], "pneumonia_findings": []})
    assert adapter.image_dirs() == ["a", "b"]
    recs = list(adapter.records())
    assert recs[0].path.split("\0") == [f"{root.resolve()}/{d}/sub-S1/ses-E1/mod-rx/{ROWS[0]['File']}" for d in "ab"]
    by_file = {r.record_id: r for r in recs}
    assert by_file[f"b:{ROWS[3]['File']}"].label is None  # pneumonia not counted
    assert by_file[f"b:{ROWS[9]['File']}"].label is None  # viral pneumonia not counted


# ---- the real file ----------------------------------------------------------------------------------------
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


@pytest.mark.skipif(not REAL_FILE.is_file(), reason=f"real BIMCV sheet not found at {REAL_FILE}")
def test_real_sheet():
    import pandas as pd

    # the expected numbers, read independently with pandas
    cols = ["Subject", "Session", "File", "Type", "Position_Manual", "Exclude", "Labels", "Modality",
            "Patient's Sex"]
    raw = pd.read_excel(REAL_FILE, header=1, usecols=cols, dtype=str)
    assert len(raw) == 5_525
    first = raw.drop_duplicates("File")
    assert len(raw) - len(first) == 145
    xray = first[first["Modality"] != "CT"]
    lateral = xray[xray["Position_Manual"] == "L"]
    frontal = xray[xray["Position_Manual"] == "PA"]
    excluded = frontal[frontal["Exclude"] == "True"]
    assert len(first[first["Modality"] == "CT"]) == 2_239 and len(lateral) == 792 and len(frontal) == 2_349
    assert set(xray["Position_Manual"]) == {"PA", "L"}
    # report labels, by plain substring tests on the cell text
    labels = frontal["Labels"].fillna("")
    tokens = labels.map(lambda s: {t.strip(" '") for t in s.split("',")} - {""})
    kept = frontal["Exclude"] != "True"
    is_covid = tokens.map(lambda t: bool(t & {"COVID 19", "viral pneumonia"})) & kept
    is_pneu = tokens.map(lambda t: bool(t & {"pneumonia", "atypical pneumonia"})) & kept & ~is_covid
    is_normal = tokens.map(lambda t: t == {"normal"}) & kept & ~is_covid & ~is_pneu

    covid = list(make_adapter("bimcv", "bimcv", REAL_DIR).records())  # no images here: names only
    assert len(covid) == 5_525
    assert [r.record_id for r in covid if not r.error] == [f"bimcv:{f}" for f in first["File"]]
    assert Counter(_outcome(r) for r in covid) == {
        "quarantined/malformed_row": 145, "filtered/modality": 2_239, "filtered/lateral_view": 792,
        "filtered/unusable_label": len(excluded), "kept/COVID-19": len(frontal) - len(excluded)}
    assert len(excluded) == 12 and len(frontal) - len(excluded) == 2_337
    assert len({r.patient_key for r in covid if not r.error}) == first["Subject"].nunique() == 1_310
    kept_patients = {r.patient_key for r in covid if _outcome(r).startswith("kept/")}
    assert len(kept_patients) == frontal[kept]["Subject"].nunique() == 1_261
    assert Counter(r.sex for r in covid if _outcome(r).startswith("kept/")) == \
        Counter(frontal[kept]["Patient's Sex"])
    assert all(r.error.startswith("malformed_row: line") and "repeats File" in r.error for r in covid if r.error)

    report = list(make_adapter("bimcv", "bimcv", REAL_DIR, {"label": "report"}).records())
    outcomes = Counter(_outcome(r) for r in report)
    assert outcomes == {
        "quarantined/malformed_row": 145, "filtered/modality": 2_239, "filtered/lateral_view": 792,
        "kept/COVID-19": int(is_covid.sum()), "kept/Pneumonia": int(is_pneu.sum()),
        "kept/Normal": int(is_normal.sum()),
        "filtered/unusable_label": len(frontal) - int(is_covid.sum() + is_pneu.sum() + is_normal.sum())}
    assert (outcomes["kept/COVID-19"], outcomes["kept/Pneumonia"], outcomes["kept/Normal"],
            outcomes["filtered/unusable_label"]) == (771, 154, 219, 1_205)
    assert all(r.label == normalise_finding(r.finding) for r in report if not r.error)


# ---- end to end ---------------------------------------------------------------------------------------------
def _image(rng: np.random.Generator, wide: bool, size: int = 96) -> Image.Image:
    small = rng.random((12, 12))
    big = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), float)
    big = np.clip(big + rng.normal(0, 12, big.shape), 0, 255)
    return Image.fromarray((big * 16).astype(np.uint16)) if wide else Image.fromarray(big.astype(np.uint8))


@pytest.mark.slow
def test_end_to_end_ingest(spark, tmp_path):
    import pandas as pd

    from conftest import _ingest

    root = tmp_path / "bimcv"
    root.mkdir()
    rng = np.random.default_rng(5)
    rows = []
    for s in range(10):
        sub, ses = f"sub-S{s:05d}", f"ses-E{s:05d}"
        rows.append(row(sub, ses, f"{sub}_{ses}_run-1_bp-chest_vp-pa_cr.png", "cr", "PA", "COVID 19"))
        rows.append(row(sub, ses, f"{sub}_{ses}_run-2_bp-chest_vp-ll_cr.png", "cr", "L", "COVID 19"))
        if s % 3 == 0:  # a second study, frontal, DICOM AP but checked PA
            ses2 = f"ses-F{s:05d}"
            rows.append(row(sub, ses2, f"{sub}_{ses2}_run-1_bp-chest_vp-ap_dx.png", "dx", "PA", "normal",
                            dicom="AP"))
    frontal = sum(1 for r in rows if r["Position_Manual"] == "PA")
    lateral = len(rows) - frontal
    rows += [
        row("sub-S00001", "ses-E00001", "sub-S00001_ses-E00001_run-1_bp-chest_ct.nii.gz", "ct.nii.gz", None,
            "COVID 19"),
        row("sub-S00002", "ses-E00002", "sub-S00002_ses-E00002_run-3_bp-chest_dx.png", "dx", "PA", "normal",
            exclude="True", reason="inverted"),
        rows[0],  # the same image on a second report row
        row("sub-S00011", "ses-E00011", "sub-S00011_ses-E00011_run-1_bp-chest_vp-pa_dx.png", "dx", "PA", "normal"),
    ]
    write_xlsx(root / "COVID19_POSI_v1.0.xlsx", rows)
    for i, r in enumerate(rows):
        path = image_path(root, r)
        if r["Type"] == "ct.nii.gz" or r["Subject"] == "sub-S00011" or path.exists():
            continue  # no CT volume, one missing image
        path.parent.mkdir(parents=True, exist_ok=True)
        _image(rng, wide=i % 2 == 0).save(path)
        path.with_suffix(".json").write_text("{}")
    out = _ingest(spark, [{"name": "bimcv", "kind": "bimcv", "root": str(root)}], tmp_path / "out", tmp_path,
                  "ingest.image_size=64")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_rows"] == len(rows)
    assert summary["reconciliation"].endswith("(exact)")
    assert summary["counts"] == {"curated": frontal, "filtered": lateral + 2, "duplicate": 0, "quarantined": 2}
    assert summary["reasons"] == {"filtered/lateral_view": lateral, "filtered/modality": 1,
                                  "filtered/unusable_label": 1, "quarantined/malformed_row": 1,
                                  "quarantined/missing_file": 1}
    filtered = pd.read_parquet(out / "filtered")
    assert set(filtered["reason"]) == {"lateral_view: Lateral", "modality: CT",
                                       "unusable_label: finding 'excluded by the source: inverted'"}
    quarantine = pd.read_parquet(out / "quarantine")
    assert sorted(quarantine["reason"]) == [
        "malformed_row: line 29 repeats File 'sub-S00000_ses-E00000_run-1_bp-chest_vp-pa_cr.png' of line 3",
        "missing_file: sub-S00011/ses-E00011/mod-rx/sub-S00011_ses-E00011_run-1_bp-chest_vp-pa_dx.png"]
    cur = pd.concat([pd.read_parquet(out / "curated" / s) for s in summary["splits"]])
    assert len(cur) == frontal and set(cur["label"]) == {COVID} and set(cur["view"]) == {"PA"}
    assert cur["patient_key"].nunique() == 10
    assert (cur.groupby("patient_key")["split"].nunique() == 1).all()
