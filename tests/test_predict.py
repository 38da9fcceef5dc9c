"""Batch prediction: jobs/predict.py's pipeline on a real local SparkSession, a real saved Keras model,
real image files (generated here, and the real snapshot when present) and the ingest's own preprocessing."""
from __future__ import annotations

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
from cxrspark.predict import column_name, list_files, preprocessing_config, preprocessing_differences, run_predict

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["COVID-19", "Normal", "Pneumonia"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    import tensorflow as tf

    from cxrspark.train.models import build_model

    tf.keras.utils.set_random_seed(1)
    model = build_model("seed_cnn", 3, 64, input_size=64)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


def _image_folder(root: Path) -> dict[str, str | None]:
    """Readable images of several formats and sizes plus planted bad files; name -> expected reason."""
    rng = np.random.default_rng(0)
    expected: dict[str, str | None] = {}
    (root / "sub" / "deeper").mkdir(parents=True)
    for i, (name, mode, size, fmt) in enumerate([
            ("a.png", "L", (80, 66), "PNG"), ("b.jpg", "RGB", (70, 90), "JPEG"), ("sub/c.png", "RGBA", (64, 64), "PNG"),
            ("sub/deeper/d.bmp", "L", (120, 100), "BMP"), ("e.jpeg", "L", (70, 70), "JPEG"),
            ("mislabelled.jpg", "L", (66, 77), "PNG")]):
        pixels = rng.integers(0, 255, (size[1], size[0], {"L": 1, "RGB": 3, "RGBA": 4}[mode]), dtype=np.uint8)
        Image.fromarray(pixels.squeeze() if mode == "L" else pixels, mode).save(root / name, fmt)
        expected[name] = None
    good = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(good, "PNG")
    (root / "truncated.png").write_bytes(good.getvalue()[:200])
    (root / "empty.jpg").write_bytes(b"")
    Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / "icon.png")  # below ingest.min_side
    (root / "notes.txt").write_text("not an image\n")
    (root / "sub" / "metadata.csv").write_text("patient,finding\n1,COVID-19\n")
    expected.update({"truncated.png": "corrupt_image", "empty.jpg": "empty_file", "notes.txt": "not_an_image",
                     "sub/metadata.csv": "not_an_image", "icon.png": "too_small"})
    (root / ".hidden.png").write_bytes(good.getvalue())  # skipped, like every hidden file
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(good.getvalue())
    return expected


def _cfg(tmp_path: Path, *overrides: str):
    return load_config([REPO / "conf/ingest.yaml", REPO / "conf/train.yaml"],
                       [f"train.mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "ingest.image_size=64", *overrides])


def test_predict_over_a_folder_gives_one_row_per_file_and_a_reason_per_unreadable_one(spark, tmp_path, model_file):
    import tensorflow as tf

    from cxrspark.images import prepare
    from cxrspark.modelref import weights_digest
    from cxrspark.spark import udfs

    expected = _image_folder(tmp_path / "images")
    cfg = _cfg(tmp_path, f"predict.model={model_file}", f"predict.input={tmp_path / 'images'}",
               f"predict.output={tmp_path / 'out'}", "predict.batch_size=2")
    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "2")  # several Arrow batches per task
    try:
        summary = run_predict(spark, cfg, log=lambda _: None)
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
    got = pd.read_parquet(tmp_path / "out" / "predictions").set_index("record_id").sort_index()
    assert sorted(got.index) == sorted(expected)  # every file once, hidden ones not at all
    assert summary["rows"] == summary["files"] == len(expected)
    for name, reason in expected.items():
        row = got.loc[name]
        if reason is None:
            assert row["error"] is None and row["predicted"] in CLASSES
        else:
            assert row["error"].startswith(reason + ":") and row["predicted"] is None and np.isnan(row["p_Normal"])
    assert summary["unreadable"] == 5 and summary["reasons"] == {"corrupt_image": 1, "empty_file": 1, "not_an_image": 2,
                                                                 "too_small": 1}
    assert sum(summary["predicted"].values()) == len(expected) - 5

    # the same numbers as the model called directly on the ingest's preparation of each file
    model = tf.keras.models.load_model(model_file)
    readable = [n for n, r in expected.items() if r is None]
    images = np.stack([prepare((tmp_path / "images" / n).read_bytes(), size=64).image for n in readable])
    direct = model.predict(images[..., None].astype(np.float32), verbose=0)
    probs = got.loc[readable, [column_name(c) for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs, direct, atol=1e-5)
    assert list(got.loc[readable, "predicted"]) == [CLASSES[k] for k in direct.argmax(1)]
    np.testing.assert_allclose(got.loc[readable, "confidence"], direct.max(1), atol=1e-5)
    assert set(got["model"]) == {str(model_file)} and set(got["model_digest"]) == {weights_digest(model)}
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["model_digest"] == weights_digest(model)

    # the model was loaded once per Python worker, not once per task or batch
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("pid int, loads int")
    def loads(i: pd.Series) -> pd.DataFrame:
        n = udfs.CLASSIFIER_LOADS.get(weights_digest(model), 0)
        return pd.DataFrame({"pid": [os.getpid()] * len(i), "loads": [n] * len(i)})

    seen = {tuple(r) for r in spark.range(64).repartition(8).select(loads("id").alias("l")).select("l.*").collect()}
    assert {n for _, n in seen} <= {0, 1} and 1 in {n for _, n in seen}


def test_predict_over_an_ingest_output_keeps_the_records_and_matches_the_model(spark, sample_dataset, tmp_path):
    import tensorflow as tf

    from cxrspark.train import data as tdata
    from cxrspark.train.models import build_model

    info = tdata.load_dataset_info(sample_dataset)
    tf.keras.utils.set_random_seed(2)
    model = build_model("seed_cnn", 3, info.image_size, input_size=64)
    model.save(tmp_path / "m.keras")
    cfg = _cfg(tmp_path, f"predict.model={tmp_path / 'm.keras'}", f"predict.input={sample_dataset}",
               "predict.split=val", f"predict.output={tmp_path / 'out'}")
    summary = run_predict(spark, cfg, log=lambda _: None)
    got = pd.read_parquet(tmp_path / "out" / "predictions").set_index("record_id")
    assert summary["input_kind"] == "dataset" and summary["rows"] == len(got) == info.size("val")
    assert got["error"].isna().all() and set(got["split"]) == {"val"} and got["label"].isin(CLASSES).all()
    batches = list(tdata.eval_batches(info, "val", 0, 1, 64))
    ids = np.concatenate([b["record_id"] for b in batches])
    direct = model.predict(np.concatenate([b["image"] for b in batches]), verbose=0)
    np.testing.assert_allclose(got.loc[ids, [column_name(c) for c in CLASSES]].to_numpy(), direct, atol=1e-5)
    assert list(got.loc[ids, "source"]) == list(np.concatenate([b["source"] for b in batches]))


def test_predict_job_refuses_a_model_of_another_size_with_a_clear_error(tmp_path, model_file):
    _image_folder(tmp_path / "images")
    proc = subprocess.run([sys.executable, str(REPO / "jobs/predict.py"), "--set", f"predict.model={model_file}",
                           "--set", f"predict.input={tmp_path / 'images'}", "--set", f"predict.output={tmp_path / 'o'}",
                           "--set", f"train.mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "the model takes 64 px images but ingest.image_size is 224" in proc.stderr
    assert not (tmp_path / "o" / "predictions").exists()


@pytest.mark.realdata
def test_predict_over_the_real_images_reads_every_image_file(spark, real_data, tmp_path, model_file):
    root = real_data / "cohen"
    files = [str(p.relative_to(root)) for p in list_files(root, "**/*")]
    cfg = _cfg(tmp_path, f"predict.model={model_file}", f"predict.input={root}", f"predict.output={tmp_path / 'out'}")
    summary = run_predict(spark, cfg, log=lambda _: None)
    got = pd.read_parquet(tmp_path / "out" / "predictions").set_index("record_id")
    assert sorted(got.index) == sorted(files) and summary["rows"] == len(files)
    images = [f for f in files if f.startswith("images/")]
    assert got.loc[images, "error"].isna().all() and got.loc[images, "predicted"].isin(CLASSES).all()
    others = [f for f in files if f not in images]  # metadata.csv and the like
    assert others and got.loc[others, "error"].str.startswith("not_an_image:").all()
    assert summary["unreadable"] == len(others)


def test_preprocessing_differences_name_the_settings_that_change_the_stored_image(tmp_path):
    def dataset(name: str, **ingest) -> Path:
        (tmp_path / name).mkdir()
        base = {"resize_mode": "pad", "contrast": "none", "segmentation": "none",
                "lungs": {"stored_image": "full", "crop_margin": 0.05}, "image_size": 224}
        base.update(ingest)
        (tmp_path / name / "summary.json").write_text(json.dumps({"config": {"ingest": base}}))
        return tmp_path / name

    train = dataset("train")
    assert preprocessing_differences(dataset("same", image_size=224), train) == []
    other = dataset("other", contrast="clahe", lungs={"stored_image": "lung_crop", "crop_margin": 0.05})
    assert preprocessing_differences(other, train) == ["contrast: 'clahe' here, 'none' in training",
                                                       "lungs.stored_image: 'lung_crop' here, 'full' in training"]
    assert preprocessing_differences(other, None) == []


def test_a_training_dataset_of_an_earlier_version_still_gives_its_preprocessing(tmp_path):
    """Its dedup section (pHash keys that no longer exist) must not stop prediction; its image settings
    are used, and JPEGs are drafted as that ingest drafted them."""
    cfg = _cfg(tmp_path)
    from cxrspark.config import to_dict

    recorded = to_dict(cfg)["ingest"]
    old = {**recorded, "image_size": 96, "contrast": "clahe",
           "dedup": {"near": True, "phash_threshold": 8, "min_correlation": 0.95}}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text(json.dumps({"config": {"ingest": old}}))
    prep, where = preprocessing_config(cfg, tmp_path / "old")
    assert (prep.ingest.image_size, prep.ingest.contrast, where) == (96, "clahe", str(tmp_path / "old"))
    assert prep.ingest.dedup.near is False  # that version's JPEG drafts did not depend on the keypoints
    new = {**recorded, "dedup": {**recorded["dedup"], "work_size": 384}}
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "summary.json").write_text(json.dumps({"config": {"ingest": new}}))
    prep, _ = preprocessing_config(cfg, tmp_path / "new")
    assert prep.ingest.dedup.near is True and prep.ingest.dedup.work_size == 384
