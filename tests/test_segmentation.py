"""Lung segmentation: rasterising V7 polygons, mask post-processing and QC, verified weights, the
U-Net's training job (real horovodrun, real MLflow store) and the Spark UDF in ingest."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrspark.segmentation import masks as M
from cxrspark.segmentation.annotated import load_annotated, patient_split, read_annotation_files

REPO = Path(__file__).resolve().parents[1]


# ---- rasterisation ------------------------------------------------------------------------------
def test_rasterise_square_scaled_from_the_original_frame():
    # original 20x10 px, written 10x5: centres scale as x' = (x + 0.5) * 0.5 - 0.5.
    # x in [1.5, 9.5] -> [0.5, 4.5] (columns 1..4), y in [1.5, 5.5] -> [0.5, 2.5] (rows 1..2)
    square = np.array([[1.5, 1.5], [9.5, 1.5], [9.5, 5.5], [1.5, 5.5]])
    expected = np.zeros((5, 10), dtype=np.uint8)
    expected[1:3, 1:5] = 1
    np.testing.assert_array_equal(M.rasterise([square], (20, 10), (10, 5)), expected)


def test_rasterise_triangle_and_two_lungs_hand_computed():
    # pixel (r, c) is inside when its centre satisfies c > 0.5, r > 0.5, c + r < 7.5 (no centre lies
    # on an edge): rows 1..6 hold 6+5+4+3+2+1 pixels
    tri = np.array([[0.5, 0.5], [7.0, 0.5], [0.5, 7.0]])
    expected = np.zeros((8, 8), dtype=np.uint8)
    for r in range(1, 7):
        expected[r, 1:8 - r] = 1
    got = M.rasterise([tri], (8, 8), (8, 8))
    np.testing.assert_array_equal(got, expected)
    assert got.sum() == 21
    # a second polygon fills into the same class
    other = np.array([[6.6, 5.6], [7.4, 5.6], [7.4, 7.4], [6.6, 7.4]])
    both = M.rasterise([tri, other], (8, 8), (8, 8))
    assert both.sum() == 21 + 2 and both[6:8, 7].all()


def test_parse_v7_reports_bad_annotations():
    good = {"image": {"width": 100, "height": 80, "original_filename": "a.png"},
            "annotations": [{"name": "Lung", "polygon": {"path": [{"x": 1, "y": 1}, {"x": 9, "y": 1},
                                                                  {"x": 9, "y": 9}]}},
                            {"name": "PatientID:3", "tag": {}}]}
    ann = M.parse_v7(json.dumps(good))
    assert (ann.original_filename, ann.width, ann.height, len(ann.polygons)) == ("a.png", 100, 80, 1)
    cases = {
        "no_lung_polygon": {**good, "annotations": [{"name": "View/L", "tag": {}}]},
        "bad_image_size": {**good, "image": {"width": 0, "height": 80, "original_filename": "a.png"}},
        "bad_polygon": {**good, "annotations": [{"name": "Lung", "polygon": {"path": [{"x": 1, "y": 1}]}}]},
        "bad_annotation": {"annotations": []},
    }
    for code, doc in cases.items():
        with pytest.raises(M.AnnotationError, match=f"^{code}"):
            M.parse_v7(doc)
    with pytest.raises(M.AnnotationError, match="^bad_json"):
        M.parse_v7(b"{not json")


def test_generated_annotation_set_matches_its_true_masks_and_reports_problems(tmp_path):
    from cxrspark.sample import make_lung_sample

    sample = make_lung_sample(tmp_path, patients=4, images_per_patient=2)
    entries = list(read_annotation_files(sample["annotations"]))
    images = {p.name: (str(p), f"cohen:{p.name.split('-')[1]}") for p in Path(sample["images"]).glob("images/*")}
    for _, data in entries:
        try:
            ann = M.parse_v7(data)
        except M.AnnotationError:
            continue
        if ann.original_filename in sample["masks"]:
            truth = sample["masks"][ann.original_filename]
            got = M.rasterise(ann.polygons, (ann.width, ann.height), truth.shape[::-1])
            assert M.dice(got, truth) > 0.99
    data = load_annotated(iter(entries), images, 64, ["none", "equalize"])
    assert data.images.shape == (2, 8, 64, 64) and data.masks.shape == (8, 64, 64)
    assert sorted(code.split(":")[0] for _, code in data.problems) == ["no_lung_polygon", "unknown_image"]
    assert 0.1 < data.masks.mean() < 0.5  # two lungs, padded into a square


def test_patient_split_keeps_patients_whole_and_is_deterministic():
    keys = [f"p{i // 3}" for i in range(60)]
    train, val = patient_split(keys, 0.25, seed=7)
    assert sorted(np.concatenate([train, val])) == list(range(60))
    assert not {keys[i] for i in train} & {keys[i] for i in val}
    assert len({keys[i] for i in val}) == 5
    again = patient_split(keys, 0.25, seed=7)
    assert np.array_equal(again[1], val) and not np.array_equal(patient_split(keys, 0.25, seed=8)[1], val)


# ---- post-processing, QC, crops, storage ----------------------------------------------------------
def _two_lungs(size=100):
    prob = np.zeros((size, size), dtype=np.float32)
    prob[20:80, 15:45] = 0.9  # left lung, 1800 px
    prob[20:80, 55:85] = 0.8  # right lung, 1800 px
    prob[40:45, 25:30] = 0.1  # a hole in the left lung
    prob[2:4, 2:4] = 0.9  # a speck (4 px < 0.5% of 10000)
    return prob


def test_clean_mask_keeps_two_largest_regions_and_fills_holes():
    mask, components = M.clean_mask(_two_lungs())
    assert components == 2  # the speck is below min_component
    assert mask.sum() == 3600 and mask[2, 2] == 0 and mask[42, 27] == 1
    prob = _two_lungs()
    prob[85:95, 40:60] = 0.9  # a third region (200 px = 2%)
    mask3, n3 = M.clean_mask(prob)
    assert n3 == 3 and mask3.sum() == 3600  # counted, but only the two largest kept


def test_lung_qc_flags_implausible_masks():
    mask, n = M.clean_mask(_two_lungs())
    ok = M.lung_qc(mask, n, min_area=0.08, max_area=0.65, max_components=2)
    assert ok.ok and ok.reason is None and ok.area_fraction == 0.36
    small = M.lung_qc(mask[:, :] * (np.arange(100) < 20)[None, :], 1, min_area=0.08, max_area=0.65,
                      max_components=2)
    assert not small.ok and small.reason.startswith("lung_area_too_small")
    big = M.lung_qc(np.ones((10, 10), np.uint8), 1, min_area=0.08, max_area=0.65, max_components=2)
    assert big.reason.startswith("lung_area_too_large")
    many = M.lung_qc(mask, 4, min_area=0.08, max_area=0.65, max_components=2)
    assert many.reason == "too_many_regions: 4 > 2"
    assert M.lung_qc(np.zeros((10, 10), np.uint8), 0, min_area=0.08, max_area=0.65,
                     max_components=2).reason == "no_lungs_found"


def test_lung_box_crop_and_masking():
    mask, _ = M.clean_mask(_two_lungs())
    # box rows 20..80, cols 15..85 (exclusive); margin 10% of 60 and 70 -> 6 and 7 px
    assert M.lung_box(mask, 0.0) == (20, 15, 80, 85)
    assert M.lung_box(mask, 0.1) == (14, 8, 86, 92)
    assert M.lung_box(np.zeros((5, 5), np.uint8), 0.1) is None
    image = np.arange(100 * 100, dtype=np.uint32).reshape(100, 100).astype(np.uint8)
    crop = M.crop_to_lungs(image, mask, 0.0)
    assert crop.shape == (100, 100)
    # a 60x70 box padded into a square: the top and bottom 7 rows are padding
    assert crop[:7].max() == 0 and crop[8:92].mean() > 0
    masked = M.mask_outside_lungs(np.full((100, 100), 200, np.uint8), mask)
    assert masked.sum() == 200 * 3600 and masked[50, 50] == 0


def test_mask_in_stored_frame_follows_the_lung_crop():
    """Grad-CAM's lung mass needs the mask aligned with the STORED image; for lung_crop the stored
    mask (full frame) must be cut and resized like the image."""
    prob = np.zeros((100, 100), np.float32)  # two small "lungs" in the top-left quarter
    prob[10:40, 8:22] = prob[10:40, 26:40] = 1.0
    mask, _ = M.clean_mask(prob)
    image = np.where(mask.astype(bool), 200, 40).astype(np.uint8)  # bright lungs, dark elsewhere
    for margin in (0.0, 0.1):
        stored = M.analyse(image, prob, stored_image="lung_crop", crop_margin=margin)
        aligned = M.mask_in_stored_frame(stored.mask, "lung_crop", margin)
        assert aligned.shape == stored.image.shape
        assert stored.image[aligned == 1].mean() > 190  # the aligned mask lies on the lungs of the crop
        lungs = stored.image > 120
        assert aligned[lungs].mean() > 0.95  # ... and covers them
        assert stored.mask[lungs].mean() < 0.5  # the full-frame mask does not
    assert M.mask_in_stored_frame(mask, "full", 0.1) is mask and M.mask_in_stored_frame(mask, "lung_masked", 0.1) is mask


def test_mask_storage_roundtrip_is_exact_and_compact():
    mask, _ = M.clean_mask(_two_lungs(224))
    data = M.encode_mask(mask)
    np.testing.assert_array_equal(M.decode_mask(data), mask)
    assert len(data) < 1000  # vs 50176 bytes raw


def test_analyse_stores_the_chosen_image():
    image = np.full((100, 100), 120, np.uint8)
    prob = _two_lungs()
    full = M.analyse(image, prob, stored_image="full")
    assert full.image is image and full.qc.ok
    masked = M.analyse(image, prob, stored_image="lung_masked")
    assert masked.image[50, 50] == 0 and masked.image[50, 30] == 120
    cropped = M.analyse(image, prob, stored_image="lung_crop", crop_margin=0.0)
    assert cropped.image.shape == (100, 100) and cropped.image[0].max() == 0  # padding of the 60x70 box
    none = M.analyse(image, np.zeros((100, 100), np.float32), stored_image="lung_crop")
    assert none.image is image and not none.qc.ok and none.qc.reason == "no_lungs_found"


# ---- verified weights -----------------------------------------------------------------------------
def _tiny_published(folder: Path, base_filters: int = 2) -> Path:
    from cxrspark.segmentation.unet import build_unet
    from cxrspark.segmentation.weights import publish

    model = build_unet(32, base_filters, 1)
    return publish(model, folder, {"architecture": {"size": 32, "base_filters": base_filters, "depth": 1}},
                   "# tiny\n")


def test_published_weights_load_and_verify(tmp_path):
    from cxrspark.segmentation.weights import load_unet, resolve

    folder = _tiny_published(tmp_path / "w")
    weights, manifest = resolve(folder)
    assert weights.name == "lung_unet.h5" and manifest["bytes"] == weights.stat().st_size
    model, _ = load_unet(folder / "lung_unet.h5")  # the file itself works too
    assert model.input_shape == (None, 32, 32, 1)


def test_weights_errors_are_clear(tmp_path):
    from cxrspark.segmentation.weights import SegmenterError, load_unet, sha256_file

    with pytest.raises(SegmenterError, match="no manifest.json in .*nowhere.*train_segmenter"):
        load_unet(tmp_path / "nowhere")
    folder = _tiny_published(tmp_path / "w")
    h5 = folder / "lung_unet.h5"
    data = h5.read_bytes()
    h5.unlink()
    with pytest.raises(SegmenterError, match="lung_unet.h5 is missing"):
        load_unet(folder)
    h5.write_bytes(data[:-100])
    with pytest.raises(SegmenterError, match=r"has \d+ bytes, the manifest says \d+ \(truncated"):
        load_unet(folder)
    h5.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(SegmenterError, match="sha256 .* does not match"):
        load_unet(folder)
    # the right file for ANOTHER architecture than the manifest says
    other = _tiny_published(tmp_path / "other", base_filters=4)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "lung_unet.h5").write_bytes((other / "lung_unet.h5").read_bytes())
    manifest.update(bytes=(folder / "lung_unet.h5").stat().st_size, sha256=sha256_file(folder / "lung_unet.h5"))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SegmenterError, match="does not fit the architecture"):
        load_unet(folder)
    (folder / "manifest.json").write_text("{}")
    with pytest.raises(SegmenterError, match="not a valid manifest"):
        load_unet(folder)


def test_bundled_weights_are_verified_and_carry_their_card():
    from cxrspark.segmentation.weights import BUNDLED, load_unet

    model, manifest = load_unet()
    card = (BUNDLED / "CARD.md").read_text()
    assert manifest["validation"]["none"]["dice"] >= 0.90
    assert f"{manifest['validation']['none']['dice']:.4f}" in card and manifest["trained"]["commit"] in card
    assert model.input_shape[1] == manifest["architecture"]["size"]


# ---- training job: real horovodrun, real MLflow store ---------------------------------------------
@pytest.mark.slow
def test_train_segmenter_with_horovodrun_logs_and_publishes(tmp_path):
    from mlflow.tracking import MlflowClient

    from cxrspark.sample import make_lung_sample
    from cxrspark.segmentation.weights import load_unet

    sample = make_lung_sample(tmp_path / "raw", patients=10, images_per_patient=2)
    db = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = ["horovodrun", "--gloo", "-np", "2", "-H", "localhost:2", sys.executable,
           str(REPO / "jobs/train_segmenter.py"), "--config", str(REPO / "conf/segmenter.yaml"),
           "--set", f"segmenter.annotations={sample['annotations']}", "--set", f"segmenter.images={sample['images']}",
           "--set", f"segmenter.output={tmp_path / 'seg'}", "--set", f"segmenter.publish={tmp_path / 'published'}",
           "--set", "segmenter.size=64", "--set", "segmenter.base_filters=4", "--set", "segmenter.depth=2",
           "--set", "segmenter.epochs=3", "--set", "segmenter.batch_size=4",
           "--set", f"segmenter.mlflow.tracking_uri={db}"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # both problems of the generated set are reported, by rank 0 only
    assert proc.stdout.count("annotation not used:") == 2
    model, manifest = load_unet(tmp_path / "published")
    assert manifest["counts"]["usable"] == 20 and manifest["counts"]["problems"] == 2
    assert manifest["counts"]["val_patients"] == 2 and manifest["trained"]["ranks"] == 2
    client = MlflowClient(db)
    run = client.get_run(manifest["trained"]["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["ranks"] == "2"
    assert abs(run.data.metrics["final_val_dice_none"] - manifest["validation"]["none"]["dice"]) < 1e-3
    assert len(client.get_metric_history(run.info.run_id, "val_dice")) == 3
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/val_per_image.json", "eval/val_worst_and_best.png"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "lung_unet")} >= {"lung_unet/lung_unet.h5",
                                                                                        "lung_unet/CARD.md"}


# ---- the Spark UDF ----------------------------------------------------------------------------------
def test_segment_udf_loads_the_model_once_per_python_worker(spark, tmp_path):
    from pyspark.sql.functions import pandas_udf

    from cxrspark.spark import udfs

    weights = str(_tiny_published(tmp_path / "w"))
    rng = np.random.default_rng(0)
    rows = [(i, rng.integers(0, 255, (48, 48), dtype=np.uint8).tobytes(), 48) for i in range(64)]
    df = spark.createDataFrame(rows, "i int, image binary, height int").repartition(8)
    seg = udfs.make_segment_udf(weights=weights, stored_image="lung_masked", crop_margin=0.05, batch_size=4,
                                threads=1, threshold=0.5, min_area=0.08, max_area=0.65, max_components=2,
                                min_region=0.01)

    @pandas_udf("pid int, loads int")
    def probe(i: pd.Series) -> pd.DataFrame:
        udfs.segmenter(weights, 1, 4)  # the same cache key as the UDF above: no new load
        return pd.DataFrame({"pid": [os.getpid()] * len(i), "loads": [udfs.LOADS["count"]] * len(i)})

    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "3")  # many batches per task
    try:
        out = df.withColumn("s", seg("image", "height")).select("i", "s.*").cache()
        assert out.count() == 64
        workers = {(r["pid"], r["loads"]) for r in out.select(probe("i").alias("p")).select("p.*").collect()}
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
    assert len({pid for pid, _ in workers}) < 8  # 8 tasks ran in reused Python workers
    assert {loads for _, loads in workers} == {1}  # ... each of which built the model once
    got = out.orderBy("i").collect()
    assert all(r["lung_mask"] is not None and r["lung_mask_ok"] is not None for r in got)
    for r in got[:8]:  # lung_masked: zero outside the stored mask (an empty mask keeps the full image)
        mask = M.decode_mask(r["lung_mask"])
        image = np.frombuffer(r["image"], np.uint8).reshape(48, 48)
        assert mask.shape == (48, 48)
        if mask.any():
            assert not image[mask == 0].any()
        else:
            assert image.tobytes() == rows[r["i"]][1] and not r["lung_mask_ok"]


def test_ingest_with_unet_fills_the_lung_columns(spark, tmp_path):
    import yaml
    from pyspark.sql import functions as F

    from cxrspark.config import load_config
    from cxrspark.ingest.pipeline import run_ingest
    from cxrspark.sample import make_sample_tree, sources_config

    manifest = make_sample_tree(tmp_path / "raw", seed=0)
    f = tmp_path / "sources.yaml"
    f.write_text(yaml.safe_dump({"sources": sources_config(manifest)}))
    cfg = load_config([REPO / "conf/ingest.yaml", f], [f"ingest.output={tmp_path / 'ds'}", "ingest.segmentation=unet",
                                                     "ingest.lungs.stored_image=lung_crop"])
    summary = run_ingest(spark, cfg, log=lambda _: None)
    exp = manifest["expected"]  # segmentation changes no outcome
    assert summary["counts"] == {"curated": exp["curated"], "filtered": exp["filtered"],
                                 "duplicate": exp["duplicates"], "quarantined": exp["quarantined"]}
    curated = spark.read.parquet(str(tmp_path / "ds" / "curated" / "*"))
    n = curated.count()
    filled = curated.where(F.col("lung_mask").isNotNull() & F.col("lung_area_fraction").isNotNull()
                           & F.col("lung_components").isNotNull() & F.col("lung_mask_ok").isNotNull()).count()
    assert filled == n == summary["lungs"]["segmented"]
    flagged = curated.where(~F.col("lung_mask_ok")).count()
    assert summary["lungs"]["flagged"] == flagged
    assert sum(r["lung_flagged"] for r in summary["curated_table"]) == flagged
    assert curated.where(F.col("lung_mask_ok") == F.col("lung_qc").isNotNull()).count() == 0  # reason iff flagged
    assert summary["lungs"]["stored_image"] == "lung_crop" and len(summary["lungs"]["weights_sha256"]) == 64

    from cxrspark.train.data import DatasetError, load_dataset_info
    info = load_dataset_info(tmp_path / "ds", exclude_lung_flagged=True)
    train_flagged = curated.where((F.col("split") == "train") & ~F.col("lung_mask_ok")).count()
    assert info.size("train") == load_dataset_info(tmp_path / "ds").size("train") - train_flagged
    assert info.size("val") == load_dataset_info(tmp_path / "ds").size("val")  # evaluation keeps everything

    # the training stream really leaves the flagged images out (and keeps every other one)
    import contextlib
    from cxrspark.train.data import train_dataset
    rows = curated.where(F.col("split") == "train").select("image", "lung_mask_ok").collect()
    flagged_images = {bytes(r["image"]) for r in rows if not r["lung_mask_ok"]}
    kept_images = {bytes(r["image"]) for r in rows if r["lung_mask_ok"]}
    assert flagged_images and kept_images and not flagged_images & kept_images
    tcfg = load_config([], [f"train.dataset={tmp_path / 'ds'}", "train.augment.preset=none", "train.batch_size=1",
                            "train.shuffle_buffer=4", "train.exclude_lung_flagged=true"]).train
    with contextlib.ExitStack() as stack:
        seen = {x.numpy().astype(np.uint8).tobytes()
                for x, _ in train_dataset(info, tcfg, 0, 1, stack).take(6 * len(kept_images))}
    assert seen == kept_images

    # evaluation on a segmented dataset: Grad-CAM mass inside the lungs, per class, in the card
    import tensorflow as tf

    from cxrspark.evaluate.run import run_evaluation
    from cxrspark.train.models import build_model
    tf.keras.utils.set_random_seed(0)
    build_model("seed_cnn", 3, info.image_size, input_size=64).save(tmp_path / "m.keras")
    ev = run_evaluation(load_config([REPO / "conf/train.yaml"], [
        f"train.dataset={tmp_path / 'ds'}", f"train.mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"evaluate.model={tmp_path / 'm.keras'}", "evaluate.split=all", "evaluate.bootstrap=20",
        "evaluate.gradcam_per_class=2", "evaluate.probe_splits=[]"]))
    lung_mass = ev["lung_mass"]
    assert lung_mass is not None and set(lung_mass["class"]) <= set(info.classes) and len(lung_mass)
    assert lung_mass["mass_in_lungs"].between(0, 1).all() and (lung_mass["images"] >= 1).all()
    assert lung_mass["lung_area"].between(0.05, 0.95).all()
    assert "Fraction of Grad-CAM mass inside the lung mask" in ev["card"] and ev["probe"] is None


def test_segmentation_config_and_missing_weights_fail_before_any_work(spark, tmp_path, sample_dataset):
    from cxrspark.config import ConfigError, load_config
    from cxrspark.ingest.pipeline import run_ingest
    from cxrspark.segmentation.weights import SegmenterError
    from cxrspark.train.data import DatasetError, load_dataset_info

    with pytest.raises(ConfigError, match="ingest.lungs.stored_image"):
        load_config([REPO / "conf/ingest.yaml"], ["ingest.lungs.stored_image=cropped"])
    with pytest.raises(ConfigError, match="'ingest.segmentation' must be one of none, unet"):
        load_config([REPO / "conf/ingest.yaml"], ["ingest.segmentation=lungfinder"])
    with pytest.raises(DatasetError, match="ingested without segmentation"):
        load_dataset_info(sample_dataset, exclude_lung_flagged=True)
    from cxrspark.sample import make_sample_tree, sources_config
    import yaml
    manifest = make_sample_tree(tmp_path / "raw", seed=1)
    f = tmp_path / "sources.yaml"
    f.write_text(yaml.safe_dump({"sources": sources_config(manifest)}))
    cfg = load_config([REPO / "conf/ingest.yaml", f], [f"ingest.output={tmp_path / 'ds'}", "ingest.segmentation=unet",
                                                     f"ingest.lungs.weights={tmp_path / 'missing'}"])
    with pytest.raises(SegmenterError, match="no manifest.json"):
        run_ingest(spark, cfg, log=lambda _: None)
    assert not (tmp_path / "ds").exists()


@pytest.mark.realdata
def test_udf_on_real_images_gives_plausible_lungs_and_matches_direct_inference(spark, real_data):
    from pyspark.sql import functions as F

    from cxrspark.segmentation.inference import LungSegmenter
    from cxrspark.spark import udfs

    files = (sorted((real_data / "cohen" / "images").glob("*"))[:16]
             + sorted((real_data / "darkcovidnet").rglob("No_findings/*.png"))[:12]
             + sorted((real_data / "darkcovidnet").rglob("Pneumonia/*.png"))[:12]
             + sorted((real_data / "kermany").rglob("*.jpeg"))[:12])
    prep = udfs.make_prepare_udf(size=224, resize_mode="pad", contrast="none", max_pixels=50_000_000,
                                 max_file_bytes=2**26, jpeg_draft=True)
    seg = udfs.make_segment_udf(weights=None, stored_image="full", crop_margin=0.05, batch_size=8, threads=1,
                                threshold=0.5, min_area=0.08, max_area=0.65, max_components=2,
                                min_region=0.01)
    df = (spark.createDataFrame([(str(p),) for p in files], "path string").repartition(4)
          .withColumn("d", prep("path")).select("path", "d.*").where(F.col("decode_error").isNull())
          .withColumn("s", seg("image", "height")).select("path", "s.*"))
    rows = sorted(df.collect(), key=lambda r: r["path"])
    assert len(rows) >= 48  # a few cohen files are CT or lateral; all decode
    areas = np.array([r["lung_area_fraction"] for r in rows])
    ok = np.array([r["lung_mask_ok"] for r in rows])
    assert ok.mean() >= 0.85, [(r["path"], r["lung_qc"]) for r in rows if not r["lung_mask_ok"]]
    assert 0.15 < float(np.median(areas)) < 0.5
    # Spark gives the masks one process gives for the same images
    direct = LungSegmenter()
    images = np.stack([np.frombuffer(r["image"], np.uint8).reshape(224, 224) for r in rows[:16]])
    for r, prob in zip(rows[:16], direct.probabilities(images)):
        expected, _ = M.clean_mask(prob)
        assert (M.decode_mask(r["lung_mask"]) == expected).mean() > 0.999


def test_bundled_weights_load_when_cxrspark_is_imported_from_a_zip(tmp_path):
    """Cluster executors import cxrspark from spark-submit.sh's --py-files zip."""
    import zipfile

    archive = tmp_path / "cxrspark.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted((REPO / "cxrspark").rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                z.write(p, p.relative_to(REPO).as_posix())
    # as on an executor, where the shipped environment has no cxrspark of its own (spark-submit.sh
    # excludes it from the pack): drop this checkout's editable-install finder
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in "
            "getattr(f, '__module__', '')]; "
            "import cxrspark.segmentation.weights as w; f, m = w.resolve(None); "
            "print(w.__file__); print(f); print(m['sha256'])")
    env = {**os.environ, "PYTHONPATH": str(archive), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    module, weights, sha = proc.stdout.split()
    assert module.startswith(str(archive)) and weights.startswith(str(tmp_path / "tmp"))
    assert sha == json.loads((REPO / "cxrspark/segmentation/lung_unet/manifest.json").read_text())["sha256"]
