"""Real patient identity across archives: one NIH patient whose films arrive through NIH ChestX-ray14,
RSNA (per-image ids, linked by the RSNA -> NIH image map) and DarkCovidNet (NIH file names, linked by
the NIH metadata) is ONE split unit. Generated trees of the three layouts, a real Spark ingest; the
RSNA adapter's map and the NIH key space are also checked on the real metadata files when present."""
from __future__ import annotations

import csv
import json
import os
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import _ingest
from cxrspark.sample import dicom_bytes

REPO = Path(__file__).resolve().parents[1]
META = Path(os.environ.get("CXRSPARK_META_DATA", REPO.parent / "shared" / "data" / "meta"))
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
PATIENTS = 24


def _image(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """Smooth random structure: every image distinct (no two are near duplicates)."""
    small = (rng.random((12, 12)) * 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), float) + rng.normal(0, 12, (size, size))
    return np.clip(big, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict:
    """Per patient p (NIH Patient ID p): NIH films p_000 (No Finding) and p_001 (Pneumonia or No Finding),
    an RSNA DICOM made from p_002 (per-image id, in the map), a DarkCovidNet No_findings/ copy of p_003."""
    base = tmp_path_factory.mktemp("identity")
    rng = np.random.default_rng(7)
    nih, rsna, dcn = base / "nih", base / "rsna", base / "dcn" / "X-Ray Image DataSet"
    for d in (nih / "images", rsna / "stage_2_train_images", dcn / "No_findings", dcn / "Pneumonia"):
        d.mkdir(parents=True)
    nih_rows, labels, classes, matches = [NIH_HEADER], [["patientId", "x", "y", "width", "height", "Target"]], \
        [["patientId", "class"]], [["patientId", "nih_image_index", "mse", "rsna_class"]]
    full_nih = [NIH_HEADER]  # NIH's full metadata lists every NIH film, also those only RSNA re-published
    rsna_of = {}
    for p in range(1, PATIENTS + 1):
        pid = f"{p:08d}"
        second = "Pneumonia" if p % 3 == 0 else "No Finding"
        for k, finding in ((0, "No Finding"), (1, second)):
            name = f"{pid}_{k:03d}.png"
            Image.fromarray(_image(rng)).save(nih / "images" / name)
            nih_rows.append(f"{name},{finding},{k},{p},{30 + p},M,PA,1024,1024,0.14,0.14")
        for k in range(4):
            full_nih.append(f"{pid}_{k:03d}.png,No Finding,{k},{p},{30 + p},M,PA,1024,1024,0.14,0.14")
        rid = str(uuid.UUID(int=p))
        rsna_of[pid] = rid
        (rsna / "stage_2_train_images" / f"{rid}.dcm").write_bytes(
            dicom_bytes(_image(rng), rid, view="PA", sex="M", age=f"{30 + p:03d}"))
        labels.append([rid, "", "", "", "", "0"])
        classes.append([rid, "Normal"])
        matches.append([rid, f"{pid}_002.png", f"{0.5 + p / 100:.3f}", "Normal"])
        Image.fromarray(_image(rng)).save(dcn / ("Pneumonia" if p % 4 == 0 else "No_findings") / f"{pid}_003.png")
    # an RSNA image whose best NIH match is too far (mse 42 > 10): stays its own patient
    far = str(uuid.UUID(int=10_000))
    (rsna / "stage_2_train_images" / f"{far}.dcm").write_bytes(dicom_bytes(_image(rng), far, view="AP", sex="F", age="050"))
    labels.append([far, "10", "10", "20", "20", "1"])
    classes.append([far, "Lung Opacity"])
    matches.append([far, "00000001_002.png", "42.0", "Lung Opacity"])
    (nih / "Data_Entry_2017_v2020.csv").write_text("\n".join(nih_rows) + "\n")
    (base / "Data_Entry_full.csv").write_text("\n".join(full_nih) + "\n")
    for path, rows in ((rsna / "stage_2_train_labels.csv", labels), (rsna / "stage_2_detailed_class_info.csv", classes),
                       (base / "rsna_nih_matches.csv", matches)):
        with path.open("w", newline="") as fh:
            csv.writer(fh).writerows(rows)
    return {"base": base, "nih": nih, "rsna": rsna, "dcn": base / "dcn", "rsna_of": rsna_of, "far": far}


def _sources(t: dict, *, rsna_map: bool) -> list[dict]:
    rsna = {"name": "rsna", "kind": "rsna", "root": str(t["rsna"])}
    if rsna_map:
        rsna["options"] = {"nih_map": {"matches": str(t["base"] / "rsna_nih_matches.csv"),
                                       "metadata": str(t["base"] / "Data_Entry_full.csv")}}
    return [{"name": "nih", "kind": "nih", "root": str(t["nih"])}, rsna,
            {"name": "darkcovidnet", "kind": "darkcovidnet", "root": str(t["dcn"]),
             "options": {"nih_metadata": str(t["base"] / "Data_Entry_full.csv")}}]


def _curated(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p, columns=["record_id", "source", "patient_key", "split_group", "split",
                                                  "provenance"])
                      for p in sorted((out / "curated").iterdir())], ignore_index=True)


@pytest.fixture(scope="module")
def ingests(spark, trees, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("identity-runs")
    out = {}
    for mapped in (True, False):
        d = tmp / ("mapped" if mapped else "unmapped")
        d.mkdir()
        _ingest(spark, _sources(trees, rsna_map=mapped), d / "out", d, "ingest.image_size=64")
        out[mapped] = {"curated": _curated(d / "out"), "summary": json.loads((d / "out" / "summary.json").read_text())}
    return out


@pytest.mark.slow
def test_every_nih_patient_is_one_split_unit_whichever_archive_its_films_came_through(ingests, trees):
    cur, summary = ingests[True]["curated"], ingests[True]["summary"]
    assert summary["counts"]["curated"] == 4 * PATIENTS + 1 and summary["counts"]["duplicate"] == 0
    by_patient = defaultdict(set)
    for row in cur.itertuples():
        if row.patient_key.startswith("nih:"):
            by_patient[row.patient_key].add((row.source, row.split))
    assert len(by_patient) == PATIENTS
    for key, seen in by_patient.items():
        assert {s for s, _ in seen} == {"nih", "rsna", "darkcovidnet"}, (key, seen)
        assert len({sp for _, sp in seen}) == 1, (key, seen)  # one person, one split
    rsna = cur[cur["source"] == "rsna"].set_index("record_id")
    far = rsna[~rsna["patient_key"].str.startswith("nih:")]
    assert list(far["patient_key"]) == [f"rsna:{trees['far']}"]  # mse 42: not the same image, not linked
    assert json.loads(far["provenance"].iloc[0])["identity_rule"] == \
        "unlinked: nih_map: best NIH match has mse above max_mse 10"
    prov = json.loads(rsna[rsna["patient_key"] == "nih:00000005"]["provenance"].iloc[0])
    assert prov["rsna_patient_id"] == trees["rsna_of"]["00000005"] and prov["nih_image_index"] == "00000005_002.png"
    assert prov["identity_rule"].startswith("rsna_nih_map: pixels matched (mse <= 10)")
    ident = summary["identity"]
    assert ident["rsna"] == {"curated_images": PATIENTS + 1, "own_patient_keys": 1, "linked_patient_keys": PATIENTS,
                             "images_split_as_own_patients": 1}  # the one the map could not link
    assert ident["darkcovidnet"]["linked_patient_keys"] == PATIENTS and ident["nih"]["own_patient_keys"] == 2 * PATIENTS


@pytest.mark.slow
def test_without_the_rsna_map_the_job_warns_counts_and_splits_a_person(ingests, trees):
    """The control that makes the test above meaningful: with the map ignored, RSNA films are their own
    patients and some land in another split than the same person's NIH films."""
    cur, summary = ingests[False]["curated"], ingests[False]["summary"]
    rsna = summary["identity"]["rsna"]
    assert rsna["images_split_as_own_patients"] == PATIENTS + 1 and "per-image id" in rsna["warning"]
    split_of_nih = {k: set(g["split"]) for k, g in cur[cur["source"] == "nih"].groupby("patient_key")}
    moved = 0
    for row in cur[cur["source"] == "rsna"].itertuples():
        pid = next((p for p, r in trees["rsna_of"].items() if r in row.patient_key), None)
        if pid is not None and row.split not in split_of_nih[f"nih:{pid}"]:
            moved += 1
    assert moved >= 3, "ignoring the map should put some RSNA films in another split than their patient's"


@pytest.mark.skipif(not (META / "rsna" / "rsna_nih_matches.csv.gz").is_file(), reason="real metadata absent")
def test_real_rsna_map_links_almost_every_rsna_image_to_an_nih_patient(tmp_path):
    import shutil
    from collections import Counter

    from cxrspark.sources import make_adapter

    shutil.copy(META / "rsna" / "stage_2_train_labels.csv.gz", tmp_path)
    options = {"labels": "stage_2_train_labels.csv.gz", "class_info": None,
               "nih_map": {"matches": str(META / "rsna" / "rsna_nih_matches.csv.gz"),
                           "metadata": str(META / "nih" / "Data_Entry_2017_v2020.csv.gz")}}
    recs = list(make_adapter("rsna", "rsna", tmp_path, options).records())
    keys = Counter(r.patient_key.split(":")[0] for r in recs)
    # recount from the raw files: a match with mse <= 10 whose NIH image is in NIH's metadata
    m = pd.read_csv(META / "rsna" / "rsna_nih_matches.csv.gz")
    nih = pd.read_csv(META / "nih" / "Data_Entry_2017_v2020.csv.gz", usecols=["Image Index", "Patient ID"])
    linked = m[(m["mse"] <= 10) & m["nih_image_index"].isin(nih["Image Index"])]
    assert len(recs) == 26_684 and keys == {"nih": len(linked), "rsna": 26_684 - len(linked)}
    assert keys["nih"] == 26_586
    patients = {r.patient_key for r in recs if r.patient_key.startswith("nih:")}
    expected = nih.set_index("Image Index").loc[linked["nih_image_index"], "Patient ID"].nunique()
    assert len(patients) == expected  # 26,586 RSNA images are films of this many NIH patients
    # the label file parsed completely: one record per image, Target 1 -> Lung Opacity (Pneumonia); without
    # the detailed class file every Target 0 image is unusable (Normal needs the class info)
    targets = pd.read_csv(META / "rsna" / "stage_2_train_labels.csv.gz").groupby("patientId")["Target"].max()
    findings = Counter(r.finding for r in recs)
    assert findings == {"Lung Opacity": int((targets == 1).sum()), "No Lung Opacity (class info missing)":
                        int((targets == 0).sum())} == {"Lung Opacity": 6_012, "No Lung Opacity (class info missing)": 20_672}
    assert Counter(r.label for r in recs) == {"Pneumonia": 6_012, None: 20_672} and not any(r.error for r in recs)
    assert not make_adapter("rsna", "rsna", tmp_path, options).identity_warning()
    assert "per-image id" in make_adapter("rsna", "rsna", tmp_path, {}).identity_warning()
