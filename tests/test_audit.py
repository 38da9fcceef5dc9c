"""The leak audit of a published split (jobs/audit.py, cxrspark/audit.py) and the COVIDx source: planted
identity leaks (a patient in two splits; two RSNA images of one NIH patient, linked by the RSNA -> NIH
map), a planted duplicate leak (one film re-encoded under two patients), and, when the real metadata
is present, COVIDx9A itself, recounted independently."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrspark.config import load_config

REPO = Path(__file__).resolve().parents[1]
META = Path(os.environ.get("CXRSPARK_META_DATA", REPO.parent / "shared" / "data" / "meta"))
NIH_HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"


def _image(rng: np.random.Generator, size: int = 128) -> Image.Image:
    small = (rng.random((12, 12)) * 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), float) + rng.normal(0, 12, (size, size))
    return Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))


# (patient id, file, label, source, split); the planted leaks are commented
ROWS = [
    ("1", "c1a.png", "COVID-19", "cohen", "train"),
    ("1", "c1b.png", "COVID-19", "cohen", "test"),            # identity leak: cohen:1 in train and test
    ("2", "c2.png", "COVID-19", "cohen", "train"),
    ("SIRM 7 a", "s7.png", "COVID-19", "sirm", "test"),       # a patient id with spaces
    ("aaaa-1", "aaaa-1.png", "normal", "rsna", "train"),
    ("bbbb-2", "bbbb-2.png", "pneumonia", "rnsa", "test"),     # identity leak through the NIH map: nih:00000042
    ("cccc-3", "cccc-3.png", "normal", "rsna", "test"),
    ("3", "k3.png", "pneumonia", "actmed", "train"),
    ("4", "k4.jpg", "pneumonia", "fig1", "test"),              # duplicate leak: k3.png re-encoded
]


@pytest.fixture(scope="module")
def covidx_tree(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("covidx")
    rng = np.random.default_rng(3)
    for split in ("train", "test"):
        (root / split).mkdir()
    lines = {"train": [], "test": []}
    pictures = {}
    for pid, name, label, source, split in ROWS:
        img = pictures["k3.png"] if name == "k4.jpg" else _image(rng)
        pictures[name] = img
        if name == "k4.jpg":  # the same film, cropped by 8 px a side and re-encoded as JPEG
            img = img.crop((8, 8, img.width - 8, img.height - 8)).resize((150, 150), Image.BICUBIC)
            img.save(root / split / name, quality=90)
        else:
            img.save(root / split / name)
        lines[split].append(f"{pid} {name} {label} {source}")
    lines["train"].append("broken-line.png normal")  # 2 fields: malformed
    (root / "train_X.txt").write_text("\n".join(lines["train"]) + "\n")
    (root / "test_X.txt").write_text("\n".join(lines["test"]) + "\n")
    with (root / "map.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["patientId", "nih_image_index", "mse", "rsna_class"],
                                  ["aaaa-1", "00000042_000.png", "1.2", "Normal"],
                                  ["bbbb-2", "00000042_003.png", "0.9", "Lung Opacity"],
                                  ["cccc-3", "00000050_000.png", "55.0", "Normal"]])
    (root / "nih.csv").write_text("\n".join([NIH_HEADER, "00000042_000.png,No Finding,0,42,50,M,PA",
                                             "00000042_003.png,Pneumonia,3,42,51,M,PA",
                                             "00000050_000.png,No Finding,0,50,60,F,PA"]) + "\n")
    return {"root": root}


def _cfg(tree: dict, out: Path, *, nih_map: bool = True, pixels: bool = True, tmp: Path):
    import yaml

    options = {"labels": "auto"}
    if nih_map:
        options["nih_map"] = {"matches": str(tree["root"] / "map.csv"), "metadata": str(tree["root"] / "nih.csv")}
    f = tmp / "audit.yaml"
    f.write_text(yaml.safe_dump({"sources": [{"name": "covidx", "kind": "covidx", "root": str(tree["root"]),
                                              "options": options}],
                                 "audit": {"output": str(out), "pixels": pixels},
                                 "train": {"mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db"}}}))
    return load_config([REPO / "conf/ingest.yaml", f], ["ingest.image_size=64"])


def test_covidx_lines_are_parsed_from_the_right_and_keyed_by_origin(covidx_tree):
    from cxrspark.sources import make_adapter

    root = covidx_tree["root"]
    opts = {"nih_map": {"matches": str(root / "map.csv"), "metadata": str(root / "nih.csv")}}
    recs = {r.record_id: r for r in make_adapter("covidx", "covidx", root, opts).checked_records()}
    assert len(recs) == len(ROWS) + 1
    sirm = recs["covidx:test/s7.png"]
    assert sirm.patient_key == "sirm:SIRM 7 a" and sirm.provenance["published_split"] == "test"
    assert recs["covidx:train/c1a.png"].patient_key == "cohen:1" and recs["covidx:test/k4.jpg"].patient_key == "figure1:4"
    assert recs["covidx:train/aaaa-1.png"].patient_key == recs["covidx:test/bbbb-2.png"].patient_key == "nih:00000042"
    far = recs["covidx:test/cccc-3.png"]  # its best NIH match is too far: RSNA's per-image id stays
    assert far.patient_key == "rsna:cccc-3" and far.provenance["per_image_id"] is True
    assert recs["covidx:test/bbbb-2.png"].label == "Pneumonia" and recs["covidx:train/aaaa-1.png"].label == "Normal"
    broken = [r for r in recs.values() if r.error]
    assert len(broken) == 1 and broken[0].error == "malformed_row: line 5 of train_X.txt has fewer than 4 fields"
    assert all(r.path and r.error is None for r in recs.values() if r is not broken[0])
    # the binary variant: positive is COVID-19, negative is not a class of three
    (root / "bin").mkdir(exist_ok=True)
    (root / "bin" / "test_B.txt").write_text("9 x.png positive bimcv\n10 y.png negative bimcv\n")
    labels = [r.label for r in make_adapter("covidx", "b", root / "bin", {}).records()]
    assert labels == ["COVID-19", None]


@pytest.fixture(scope="module")
def audited(spark, covidx_tree, tmp_path_factory) -> dict:
    from cxrspark.audit import run_audit

    out = {}
    for mapped in (True, False):
        tmp = tmp_path_factory.mktemp("audit-mapped" if mapped else "audit-unmapped")
        cfg = _cfg(covidx_tree, tmp / "out", nih_map=mapped, pixels=mapped, tmp=tmp)
        summary = run_audit(spark, cfg, log=lambda _: None)
        out[mapped] = {"cfg": cfg, "summary": summary, "leaks": pd.read_parquet(tmp / "out" / "leaks")}
    return out


@pytest.mark.slow
def test_planted_leaks_are_found_with_their_evidence(audited):
    from mlflow.tracking import MlflowClient

    from cxrspark.audit import LEAK_COLUMNS, log_run

    leaks, summary = audited[True]["leaks"], audited[True]["summary"]
    assert tuple(leaks.columns) == LEAK_COLUMNS
    found = {(r.record_id, r.split, r.other_split, r.kind) for r in leaks.itertuples()}
    assert found == {
        ("covidx:train/c1a.png", "train", "test", "identity"), ("covidx:test/c1b.png", "test", "train", "identity"),
        ("covidx:train/aaaa-1.png", "train", "test", "identity"), ("covidx:test/bbbb-2.png", "test", "train", "identity"),
        ("covidx:train/k3.png", "train", "test", "duplicate"), ("covidx:test/k4.jpg", "test", "train", "duplicate"),
    }
    ev = leaks.set_index(["record_id", "kind"])["evidence"]
    assert "patient nih:00000042 has 1 image(s) in train" in ev[("covidx:test/bbbb-2.png", "identity")]
    assert "rsna_nih_map" in ev[("covidx:test/bbbb-2.png", "identity")]
    dup = ev[("covidx:test/k4.jpg", "duplicate")]
    assert "same image as covidx:train/k3.png" in dup and "inliers" in dup
    assert summary["rows_with_a_published_split"] == len(ROWS) and summary["rows_without_a_split"] == 1
    assert summary["leaking_images"] == 6 and summary["leaks"]["identity"] == {"rows": 4, "images": 4, "patients": 2}
    assert summary["leaks"]["duplicate"]["images"] == 2 and summary["pixels"]["groups_across_splits"] == 1
    pairs = {(r["kind"], r["split"], r["label"]): r["rows"] for r in summary["by_split_pair"]}
    assert pairs[("identity", "test", "Pneumonia")] == 1 and pairs[("duplicate", "train", "Pneumonia")] == 1
    run_id = log_run(summary, audited[True]["cfg"])
    run = MlflowClient(audited[True]["cfg"].train.mlflow.tracking_uri).get_run(run_id)
    assert run.data.metrics["leaking_images"] == 6 and run.data.metrics["identity_leak_patients"] == 2


@pytest.mark.slow
def test_without_identity_linking_the_rsna_leak_is_invisible(audited):
    """The control: RSNA's per-image ids hide the NIH patient; only the Cohen patient leaks."""
    leaks = audited[False]["leaks"]
    assert set(leaks["record_id"]) == {"covidx:train/c1a.png", "covidx:test/c1b.png"}
    assert audited[False]["summary"]["pixels"] == {"searched": False}


@pytest.mark.slow
@pytest.mark.skipif(not all((REPO.parent / "shared" / "data" / "meta" / f).is_file() for f in (
    "covidx/train_COVIDx9A.txt", "rsna/rsna_nih_matches.csv.gz", "nih/Data_Entry_2017_v2020.csv.gz")),
    reason="real metadata absent (conf/audit-covidx9a.yaml reads ../shared/data/meta)")
def test_covidx9a_audit_job_on_the_real_files(tmp_path):
    """`jobs/audit.py --config conf/audit-covidx9a.yaml` as documented, metadata only; its numbers recounted
    from the raw files with pandas."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(["./spark-submit.sh", "jobs/audit.py", "--config", "conf/audit-covidx9a.yaml",
                           "--set", f"audit.output={tmp_path / 'out'}", "--set", "audit.pixels=false",
                           "--set", f"train.mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    leaks = pd.read_parquet(tmp_path / "out" / "leaks")

    def read(name: str, split: str) -> pd.DataFrame:
        rows = [(" ".join(p[:-3]), p[-3], p[-2], p[-1], split)
                for p in (line.split() for line in (META / "covidx" / name).read_text().splitlines()) if len(p) >= 4]
        return pd.DataFrame(rows, columns=["pid", "file", "label", "src", "split"])

    c = pd.concat([read("train_COVIDx9A.txt", "train"), read("test_COVIDx9A.txt", "test")], ignore_index=True)
    m = pd.read_csv(META / "rsna" / "rsna_nih_matches.csv.gz")
    nih = pd.read_csv(META / "nih" / "Data_Entry_2017_v2020.csv.gz", usecols=["Image Index", "Patient ID"])
    m = m[m["mse"] <= 10].merge(nih, left_on="nih_image_index", right_on="Image Index")
    origin = c["src"].replace({"rnsa": "rsna", "fig1": "figure1", "actmed": "actualmed"})
    nih_of = dict(zip(m["patientId"], m["Patient ID"]))
    c["key"] = [f"nih:{int(nih_of[p]):08d}" if o == "rsna" and p in nih_of else f"{o}:{p}" for o, p in zip(origin, c["pid"])]
    spread = c.groupby("key")["split"].nunique()
    leaking = c[c["key"].isin(spread[spread > 1].index)]
    assert summary["splits"] == {"test": 400, "train": 30_130}
    assert summary["leaking_images"] == len(leaking) == 784
    assert summary["leaks"]["identity"]["patients"] == leaking["key"].nunique() == 125
    assert (leaks["split"] == "test").sum() == (leaking["split"] == "test").sum() == 129
    assert set(leaks["patient_key"].str.split(":").str[0]) == {"nih"}  # every leak comes through RSNA's NIH patients
    assert "784 of 30,530 images" in proc.stdout


@pytest.mark.slow
def test_covidx_tree_ingests_end_to_end(spark, covidx_tree, tmp_path):
    """COVIDx as an ordinary source: the ingest splits by (linked) patient, whatever COVIDx's own split
    said, and keeps COVIDx's split in the provenance."""
    from conftest import _ingest

    root = covidx_tree["root"]
    out = _ingest(spark, [{"name": "covidx", "kind": "covidx", "root": str(root),
                           "options": {"nih_map": {"matches": str(root / "map.csv"), "metadata": str(root / "nih.csv")}}}],
                  tmp_path / "out", tmp_path, "ingest.image_size=64")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"curated": 8, "duplicate": 1, "filtered": 0, "quarantined": 1}
    assert summary["reasons"] == {"duplicate/near": 1, "quarantined/malformed_row": 1}
    cur = pd.concat([pd.read_parquet(p) for p in (out / "curated").iterdir()], ignore_index=True)
    assert cur.groupby("split_group")["split"].nunique().max() == 1
    nih42 = cur[cur["patient_key"] == "nih:00000042"]
    assert len(nih42) == 2 and nih42["split"].nunique() == 1  # COVIDx put them in train and test
    published = cur["provenance"].map(lambda p: json.loads(p)["published_split"])
    assert set(published) == {"train", "test"}
    assert summary["identity"]["covidx"]["images_split_as_own_patients"] == 1  # rsna:cccc-3, no NIH match


@pytest.mark.skipif(not (META / "covidx" / "train_COVIDx9A.txt").is_file(), reason="real COVIDx metadata absent")
def test_covidx9a_label_files_parse_completely(tmp_path):
    """Every line of the real COVIDx9A files is one record; labels, splits and origins recounted from the raw
    text (no images needed: records() never opens a file)."""
    from collections import Counter

    from cxrspark.sources import make_adapter

    opts = {"labels": ["covidx/train_COVIDx9A.txt", "covidx/test_COVIDx9A.txt"]}
    recs = list(make_adapter("covidx", "covidx9a", META, opts).records())
    raw = [(p[-2], p[-1], name.split("_")[0]) for name in ("train_COVIDx9A.txt", "test_COVIDx9A.txt")
           for p in (line.split() for line in (META / "covidx" / name).read_text().splitlines() if line.strip())]
    assert len(recs) == len(raw) == 30_530 and not any(r.error for r in recs)
    labels = Counter(r.label for r in recs)
    assert labels == Counter({"normal": "Normal", "pneumonia": "Pneumonia", "COVID-19": "COVID-19"}[lab] for lab, _, _ in raw)
    assert labels == {"Normal": 8_185, "Pneumonia": 5_655, "COVID-19": 16_690}
    assert Counter(r.provenance["published_split"] for r in recs) == {"train": 30_130, "test": 400}
    origins = Counter(r.patient_key.split(":")[0] for r in recs)
    assert origins["rsna"] == Counter(s for _, s, _ in raw if s in ("rsna", "rnsa")).total() == 13_788
    assert len({r.patient_key for r in recs}) == len({(s if s != "rnsa" else "rsna", p) for p, s in
                                                       ((" ".join(line.split()[:-3]), line.split()[-1])
                                                        for name in ("train_COVIDx9A.txt", "test_COVIDx9A.txt")
                                                        for line in (META / "covidx" / name).read_text().splitlines()
                                                        if line.strip())})
