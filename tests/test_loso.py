"""Leave-one-source-out: source filtering of the training/evaluation streams, and jobs/loso.py end to
end (real horovodrun with two ranks, real MLflow store read back with MlflowClient)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cxrspark.evaluate.loso import LosoError, fold_key, plan_folds, shared_patient_records
from cxrspark.train import data as tdata

REPO = Path(__file__).resolve().parents[1]


def test_plan_folds_leaves_out_big_sources_and_says_why_others_are_not():
    folds, skipped = plan_folds({"a": 100, "b": 60, "c": 3}, [], 50)
    assert folds == ["a", "b"] and skipped == {"c": "3 images < loso.min_images 50"}
    assert plan_folds({"a": 100, "b": 60}, ["b"], 50) == (["b"], {})
    with pytest.raises(LosoError, match="does not have"):
        plan_folds({"a": 100, "b": 60}, ["zz"], 50)


def test_a_new_model_revision_is_a_new_fold_key(monkeypatch):
    """A finished training of an older architecture must not be reused for the current one."""
    import dataclasses

    from cxrspark.config import load_config, to_dict
    from cxrspark.train import models

    cfg = load_config([], ["train.model=darkcovidnet"])
    before = fold_key(cfg, "data")
    spec = models.MODELS["darkcovidnet"]
    monkeypatch.setitem(models.MODELS, "darkcovidnet", dataclasses.replace(spec, revision=spec.revision + 1))
    assert fold_key(cfg, "data") != before
    # a model still at revision 1 keeps the key it had before revisions existed: its trainings stay reusable
    import hashlib

    seed = load_config([], ["train.model=seed_cnn"])
    train = {k: v for k, v in to_dict(seed.train).items() if k != "mlflow"}
    assert fold_key(seed, "data") == hashlib.sha256(json.dumps([train, "data"], sort_keys=True, default=str).encode()).hexdigest()


def test_shared_patient_records_are_those_whose_patient_group_is_also_in_another_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [("a:1", "a", "g1"), ("a:2", "a", "g2"), ("a:3", "a", "g2"), ("b:1", "b", "g2"), ("b:2", "b", "g3"),
            ("c:1", "c", "g4"), ("c:2", "c", "g3")]
    for split, part in (("train", rows[:4]), ("test", rows[4:])):
        (tmp_path / "curated" / split).mkdir(parents=True)
        pq.write_table(pa.table({k: [r[i] for r in part] for i, k in enumerate(("record_id", "source", "split_group"))}),
                       tmp_path / "curated" / split / "part-0.parquet")
    assert shared_patient_records(tmp_path, "a") == {"a:2", "a:3"}
    assert shared_patient_records(tmp_path, "b") == {"b:1", "b:2"}  # g2 with a (other split), g3 with c
    assert shared_patient_records(tmp_path, "c") == {"c:2"}


def test_source_filter_reads_only_the_kept_sources(sample_dataset):
    every = tdata.load_dataset_info(sample_dataset)
    without = tdata.load_dataset_info(sample_dataset, exclude_sources=["kermany", "cohen"])
    only = tdata.load_dataset_info(sample_dataset, include_sources=["kermany"])
    per_source = tdata.sources_of(sample_dataset)
    assert sum(only.size(s) for s in only.counts) == per_source["kermany"]
    for split in every.counts:
        seen = [src for b in tdata.eval_batches(without, split, 0, 1, 8) for src in b["source"]]
        assert len(seen) == without.size(split) and not {"kermany", "cohen"} & set(seen)
        if only.size(split):
            kept = [src for b in tdata.eval_batches(only, split, 0, 1, 8) for src in b["source"]]
            assert set(kept) == {"kermany"} and len(kept) == only.size(split)
    total = sum(every.size(s) for s in every.counts)
    assert sum(without.size(s) for s in every.counts) == total - per_source["kermany"] - per_source["cohen"]
    with pytest.raises(tdata.DatasetError, match="no images of source"):
        tdata.load_dataset_info(sample_dataset, exclude_sources=["nowhere"])


def test_loso_job_trains_without_the_source_and_evaluates_on_it(sample_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    db = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, str(REPO / "jobs/loso.py"), "--config", str(REPO / "conf/train.yaml"),
           "--set", f"train.dataset={sample_dataset}", "--set", f"train.output={tmp_path / 'train'}",
           "--set", f"train.mlflow.tracking_uri={db}", "--set", "loso.sources=[kermany]", "--set", "loso.ranks=2",
           "--set", f"loso.output={tmp_path / 'loso'}", "--set", "train.epochs=1", "--set", "train.batch_size=4",
           "--set", "train.schedule.warmup_epochs=0", "--set", "train.schedule.decay_epochs=[]",
           "--set", "evaluate.bootstrap=50", "--set", "evaluate.gradcam_per_class=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(db)
    exp = client.get_experiment_by_name("cxrspark-loso")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "leave-one-source-out"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert parent.info.status == "FINISHED" and set(children) == {"train without kermany", "evaluate on kermany"}

    train, ev = children["train without kermany"], children["evaluate on kermany"]
    without = tdata.load_dataset_info(sample_dataset, exclude_sources=["kermany"])
    assert train.data.params["n_train"] == str(without.size("train")) and "kermany" not in train.data.tags["dataset.sources"]
    assert train.data.params["exclude_sources"] == "['kermany']"

    def table(run, name):
        t = json.loads(Path(client.download_artifacts(run.info.run_id, name, str(tmp_path))).read_text())
        return pd.DataFrame(t["data"], columns=t["columns"])

    preds = table(ev, "eval/all_predictions.json")
    assert set(preds["source"]) == {"kermany"} and len(preds) == tdata.sources_of(sample_dataset)["kermany"]
    assert ev.data.tags["evaluated.model"].startswith("models:/") and ev.data.tags["evaluated.train_run_id"] == train.info.run_id
    row = table(parent, "loso/table.json").set_index("left_out").loc["kermany"]
    assert row["status"] == "ok" and row["images"] == len(preds)
    assert row["accuracy"] == pytest.approx((preds["label"] == preds["predicted"]).mean())
    for c in ("COVID-19", "Normal", "Pneumonia"):  # how the fold model's predictions spread over the classes
        assert row[f"predicted_{c}"] == pytest.approx((preds["predicted"] == c).mean())
    assert row["constant_macro_f1"] == pytest.approx(max(2 * p / (1 + p) for p in preds["label"].value_counts(normalize=True))
                                                     / preds["label"].nunique())
    assert row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]
    assert row["seen_sources_test_accuracy"] == pytest.approx(train.data.metrics["final_test_accuracy"])
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "loso")}
    assert {"loso/table.json", "loso/LOSO.md", "loso/accuracy.png", "loso/config.yaml"} <= files
    assert parent.data.metrics["accuracy_without_kermany"] == pytest.approx(row["accuracy"])
    assert row["excluded_shared_patients"] == 0 and not bool(row["reused_training"])

    # the same settings again: the finished training is reused (no new training run), a new parent
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert again.returncode == 0 and "reusing training run" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    runs = client.search_runs([exp.experiment_id])
    assert sum(r.info.run_name == "train without kermany" for r in runs) == 1
    parents = sorted((r for r in runs if r.info.run_name == "leave-one-source-out"), key=lambda r: r.info.start_time)
    second = table(parents[-1], "loso/table.json").set_index("left_out").loc["kermany"]
    assert len(parents) == 2 and bool(second["reused_training"]) and second["train_run_id"] == train.info.run_id
    assert client.get_run(train.info.run_id).data.tags["mlflow.parentRunId"] == parents[-1].info.run_id
