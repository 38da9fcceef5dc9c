"""The leaky audit protocol (ingest.split.unit: image): refused without leaky_audit, image-level and
deterministic with it, duplicates kept with dedup off, and said loudly in the log, summary.json, the
model card and the MLflow tag. Real SparkSession, real files, real Parquet."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cxrspark.ingest.output import LEAKY_PROTOCOL, PATIENT_PROTOCOL, protocol_of
from cxrspark.sample import COHEN_HEADER, csv_text, synthetic_cxr

REPO = Path(__file__).resolve().parents[1]
PATIENTS, IMAGES_PER_PATIENT = 10, 3
FINDINGS = {"COVID-19": "COVID-19", "Normal": "No Finding", "Pneumonia": "Pneumonia"}


def _cohen_tree(root: Path) -> tuple[Path, int]:
    """Ten patients with three pictures each (a class per patient), two metadata rows that use a
    picture of their patient a second time, and one byte-identical copy under another patient.
    Returns the source root and the number of duplicate rows."""
    images = root / "cohen" / "images"
    images.mkdir(parents=True)
    rows = []
    for p in range(PATIENTS):
        label = list(FINDINGS)[p % 3]
        for k in range(IMAGES_PER_PATIENT):
            name = f"p{p}-{k}.png"
            pic = synthetic_cxr(np.random.default_rng(1000 + 10 * p + k), label, 100, 90)
            Image.fromarray(pic).save(images / name)
            rows.append((f"P{p}", label, name))
    rows += [("P0", "COVID-19", "p0-1.png"), ("P4", "Normal", "p4-2.png")]  # the same file used again
    (images / "copy-of-p1-0.png").write_bytes((images / "p1-0.png").read_bytes())  # republished copy
    rows.append(("P7", "Normal", "copy-of-p1-0.png"))
    cells = []
    for pid, label, name in rows:
        c = dict.fromkeys(COHEN_HEADER, "")
        c.update(patientid=pid, finding=FINDINGS[label], view="PA", modality="X-ray", folder="images", filename=name)
        cells.append([c[k] for k in COHEN_HEADER])
    (root / "cohen" / "metadata.csv").write_text(csv_text(COHEN_HEADER, cells))
    return root / "cohen", 3


def _config(tmp: Path, cohen: Path, output: Path, *overrides: str):
    from cxrspark.config import load_config

    f = tmp / "sources.yaml"
    f.write_text(yaml.safe_dump({"sources": [{"name": "cohen", "kind": "cohen", "root": str(cohen)}]}))
    return load_config([REPO / "conf/ingest.yaml", f], [f"ingest.output={output}", "ingest.image_size=32", *overrides])


LEAKY = ("ingest.split.unit=image", "ingest.split.leaky_audit=true", "ingest.dedup.exact=false",
         "ingest.dedup.near=false")


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    from cxrspark.ingest.pipeline import run_ingest

    tmp = tmp_path_factory.mktemp("leaky")
    cohen, n_dups = _cohen_tree(tmp / "raw")
    out = {"tmp": tmp, "dups": n_dups, "logs": {}}
    # the patient protocol: exact duplicates removed (near search off: no near copies planted, and faster)
    for name, extra in (("leaky", LEAKY), ("patient", ("ingest.dedup.near=false",))):
        lines: list[str] = []
        out["cfg_" + name] = _config(tmp, cohen, tmp / name, *extra)
        out[name] = run_ingest(spark, out["cfg_" + name], log=lines.append)
        out["logs"][name] = lines
    return out


def _curated(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((out / "curated").iterdir())], ignore_index=True)


def test_image_unit_without_leaky_audit_is_refused_by_the_ingest_job(tmp_path):
    proc = subprocess.run([sys.executable, "jobs/ingest.py", "--config", "conf/ingest.yaml",
                           "--set", "ingest.split.unit=image", "--set", f"ingest.output={tmp_path / 'x'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "config error" in proc.stderr and "ingest.split" in proc.stderr
    assert "ingest.split.leaky_audit=true" in proc.stderr and "not results" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_the_image_split_straddles_patients_and_keeps_duplicates_the_patient_split_does_not(runs):
    leaky, patient = _curated(runs["tmp"] / "leaky"), _curated(runs["tmp"] / "patient")
    rows = PATIENTS * IMAGES_PER_PATIENT + runs["dups"]
    # dedup off: every row is curated, the duplicates included
    assert runs["leaky"]["counts"] == {"curated": rows, "filtered": 0, "duplicate": 0, "quarantined": 0}
    assert len(leaky) == rows and not leaky["pixel_sha256"].is_unique
    assert runs["leaky"]["dedup"]["exact_pairs"] == 0
    # a patient's images land in several splits
    per_patient = leaky.groupby("patient_key")["split"].nunique()
    assert (per_patient > 1).sum() >= 3, per_patient
    # the patient protocol on the same files: exact duplicates removed, no patient in two splits
    assert runs["patient"]["counts"]["duplicate"] == runs["dups"] and patient["pixel_sha256"].is_unique
    assert patient.groupby("patient_key")["split"].nunique().max() == 1
    assert patient.groupby("split_group")["split"].nunique().max() == 1
    # stratified: every label's images split by the ratios, within rounding
    ratios = runs["cfg_leaky"].ingest.split.ratios
    for label, part in leaky.groupby("label"):
        counts = part["split"].value_counts()
        for name, r in ratios.items():
            assert abs(counts.get(name, 0) - r * len(part)) <= 1, (label, dict(counts))


def test_the_image_split_is_deterministic_and_seeded(runs, spark):
    from cxrspark.ingest.pipeline import image_split

    stored = _curated(runs["tmp"] / "leaky")[["record_id", "label", "split"]]
    ratios, seed = runs["cfg_leaky"].ingest.split.ratios, runs["cfg_leaky"].ingest.split.seed
    # the same split again from the same images, whatever their order and partitioning
    df = spark.createDataFrame(stored[["record_id", "label"]].iloc[::-1].reset_index(drop=True)).repartition(3)
    again = {r["record_id"]: r["split"] for r in df.withColumn("split", image_split(df, ratios, seed)).collect()}
    assert again == dict(zip(stored["record_id"], stored["split"]))
    other = {r["record_id"]: r["split"] for r in df.withColumn("split", image_split(df, ratios, seed + 1)).collect()}
    assert other != again  # the seed decides


def test_the_leaky_protocol_is_said_in_the_log_the_summary_and_the_mlflow_tag(runs):
    warnings = [line for line in runs["logs"]["leaky"] if "WARNING: leaky audit protocol" in line]
    assert len(warnings) == 2 and "not results" in warnings[0] and "dedup.exact=false" in warnings[0]
    assert not any("leaky" in line for line in runs["logs"]["patient"])
    summary = json.loads((runs["tmp"] / "leaky" / "summary.json").read_text())
    assert summary["protocol"] == {"split_unit": "image", "leaky_audit": True, "dedup_exact": False,
                                   "dedup_near": False, "leaky": True}
    normal = json.loads((runs["tmp"] / "patient" / "summary.json").read_text())
    assert normal["protocol"] == {"split_unit": "patient", "leaky_audit": False, "dedup_exact": True,
                                  "dedup_near": False, "leaky": False}
    assert protocol_of(summary) == LEAKY_PROTOCOL == "leaky-image-split"
    assert protocol_of(normal) == PATIENT_PROTOCOL == "patient-split"
    # a summary written before the protocol object existed: its recorded split unit decides
    assert protocol_of({"config": {"ingest": {"split": {"ratios": {}}}}}) == PATIENT_PROTOCOL
    assert protocol_of({"config": {"ingest": {"split": {"unit": "image"}}}}) == LEAKY_PROTOCOL
    assert summary["dataset_hash"] != normal["dataset_hash"]


def _card(dataset: Path) -> str:
    from cxrspark.evaluate.report import model_card

    classes = ["COVID-19", "Normal", "Pneumonia"]
    rows = [*classes, "macro avg", "weighted avg"]
    return model_card({
        "model_name": "m.keras", "model_uri": "m.keras", "train_run_id": None, "dataset": str(dataset),
        "dataset_hash": "0" * 64, "split": "test", "n_images": 3, "n_patients": 3, "sources": None,
        "data_table": pd.DataFrame({"source": ["cohen"], "label": ["Normal"], "split": ["test"], "n": [3]}),
        "ci_table": pd.DataFrame(columns=["class", "metric", "value", "low", "high"]), "classes": classes,
        "level": 0.95, "n_boot": 10, "point_table": pd.DataFrame({"class": rows, "support": [1] * len(rows)}),
        "per_source": pd.DataFrame({"source": ["cohen"], "n": [3]}), "bins": 10, "ece": 0.1,
        "lung_mass": None, "probe": None, "probe_splits": []})


def test_the_model_card_states_the_leaky_protocol_in_its_first_lines(runs):
    from cxrspark.evaluate.report import protocol_header

    card = _card(runs["tmp"] / "leaky").splitlines()
    top = "\n".join(card[:6])
    assert "leaky image-level split: metrics are not results" in card[0]
    assert "LEAKY AUDIT PROTOCOL: THE METRICS BELOW ARE NOT RESULTS" in top and "ingest.split.unit: image" in top
    normal = _card(runs["tmp"] / "patient")
    assert "LEAKY" not in normal and "not results" not in normal and normal.splitlines()[0] == "# Model card: m.keras"
    assert protocol_header(json.loads((runs["tmp"] / "patient" / "summary.json").read_text())) == []
