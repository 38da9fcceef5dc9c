"""Batch prediction with Spark: a trained classifier over an ingest output or a folder of image files.

    summary = run_predict(spark, cfg)      # cfg.predict says which model, input and output

- The model is resolved and loaded once on the driver (to check it and compute its identity), saved
  to bytes and broadcast; the classifier pandas UDF loads it once per Python worker.
- An ingest output (a folder with summary.json): the stored images of ``predict.split`` are classified
  as they are; the rows keep record_id, source, patient, split and the true label.
- A folder: every file matching ``predict.pattern`` (hidden files skipped) is decoded and prepared with
  the ingest's own stages (decode, contrast, resize and, if the model's training data was segmented,
  the lung U-Net, then the standardisation ``ingest.standardize``, exactly where the ingest applies it),
  using the ingest settings of the dataset the model was trained on when the training run names it, else
  the config's ``ingest`` section. A histmatch reference image must still have the sha256 that dataset
  recorded. A file that cannot be read or decoded gets a row
  with its reason in ``error`` and null probabilities: nothing is dropped.

Output: ``<output>/predictions`` (Parquet: one row per input image or file; ``p_<class>`` columns,
``predicted``, ``confidence``, ``error`` and the model identity ``model``, ``model_digest``,
``train_run_id``) and ``<output>/summary.json`` (counts by predicted class and by error reason).
"""
from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cxrspark.config import Config, StandardizeConfig, config_from_dict, to_dict


class PredictError(ValueError):
    pass


def column_name(cls: str) -> str:
    """``p_<class>`` with anything but letters and digits as ``_``: COVID-19 -> p_COVID_19."""
    return "p_" + re.sub(r"[^0-9A-Za-z]+", "_", cls).strip("_")


def list_files(root: Path, pattern: str) -> list[Path]:
    """Files under ``root`` matching ``pattern``, sorted; hidden files and folders are skipped."""
    return sorted(p for p in root.glob(pattern)
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def preprocessing_config(cfg: Config, train_dataset: Path | None) -> tuple[Config, str]:
    """The config whose ``ingest`` section prepares raw files: the training dataset's, when known (its
    standardisation included: a reference image must be the one that dataset recorded)."""
    if train_dataset is not None:
        summary = json.loads((train_dataset / "summary.json").read_text())
        recorded = summary["config"]["ingest"]
        _check_reference(summary, train_dataset)
        # the dedup settings of a dataset written by an earlier version may no longer parse; only the
        # working size matters here (JPEG draft), and it is kept where it is recorded
        dedup = to_dict(cfg)["ingest"]["dedup"]
        old = recorded.get("dedup") or {}
        dedup.update({"near": bool(old.get("near")), "work_size": old["work_size"]} if "work_size" in old
                     else {"near": False})  # before keypoints, JPEG drafts did not depend on dedup
        return config_from_dict({**to_dict(cfg), "ingest": {**recorded, "dedup": dedup}}), str(train_dataset)
    return cfg, "config ingest section"


def _check_reference(summary: dict, train_dataset: Path) -> None:
    from cxrspark.images.standardize import file_sha256

    st = summary.get("standardize") or {}
    if not st.get("reference_sha256"):
        return
    ref = Path(st["reference"])
    got = file_sha256(ref) if ref.is_file() else None
    if got != st["reference_sha256"]:
        raise PredictError(f"ingest.standardize.reference {ref}: {'missing' if got is None else 'changed'} since "
                           f"{train_dataset} was ingested (recorded sha256 {st['reference_sha256'][:12]}"
                           + (f", now {got[:12]})" if got else ")"))


def preprocessing_differences(dataset: Path, train_dataset: Path | None) -> list[str]:
    """Ingest settings that shape the stored image and differ between an input dataset and the one
    the model was trained on (empty when they agree or the training data is unknown)."""
    if train_dataset is None:
        return []
    a, b = (json.loads((d / "summary.json").read_text())["config"]["ingest"] for d in (dataset, train_dataset))
    # a dataset written before standardisation existed was not standardised
    a, b = ({"standardize": StandardizeConfig().model_dump(), **x} for x in (a, b))
    keys = [("resize_mode",), ("contrast",), ("segmentation",), ("lungs", "stored_image"), ("lungs", "crop_margin"),
            ("standardize", "method"), ("standardize", "scale"), ("standardize", "reference")]

    def get(cfg: dict, key: tuple) -> Any:
        for k in key:
            cfg = cfg.get(k, {}) if isinstance(cfg, dict) else None
        return cfg
    return [f"{'.'.join(k)}: {get(a, k)!r} here, {get(b, k)!r} in training" for k in keys if get(a, k) != get(b, k)]


def _dataset_frame(spark: SparkSession, root: Path, split: str, classes: list[str], size: int) -> DataFrame:
    summary = json.loads((root / "summary.json").read_text())
    if summary["classes"] != classes:
        raise PredictError(f"{root} has classes {summary['classes']}, the model {classes}")
    stored = int(summary["config"]["ingest"]["image_size"])
    if stored != size:
        raise PredictError(f"{root} stores {stored} px images but the model takes {size} px")
    splits = list(summary["splits"]) if split == "all" else [split]
    missing = [s for s in splits if not (root / "curated" / s).is_dir()]
    if missing:
        raise PredictError(f"{root} has no curated split(s) {missing}; its splits: {summary['splits']} (or all)")
    df = spark.read.parquet(*[str(root / "curated" / s) for s in splits])
    return df.select("record_id", F.lit(None).cast("string").alias("path"), "source", "patient_key", "split",
                     "label", "image", "height", F.lit(None).cast("string").alias("decode_error"))


def _folder_frame(spark: SparkSession, root: Path, pattern: str, prep: Config) -> tuple[DataFrame, int]:
    from cxrspark.ingest.stages import decode, segment

    files = list_files(root, pattern)
    if not files:
        raise PredictError(f"no files match {pattern!r} under {root}")
    rows = [(str(p.relative_to(root)), str(p)) for p in files]
    df = spark.createDataFrame(rows, "record_id string, path string")
    df = segment(decode(spark, df, prep, keypoints=False), prep)
    return df.select("record_id", "path", F.lit(None).cast("string").alias("source"),
                     F.lit(None).cast("string").alias("patient_key"), F.lit(None).cast("string").alias("split"),
                     F.lit(None).cast("string").alias("label"), "image", "height", "decode_error"), len(files)


def run_predict(spark: SparkSession, cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    import mlflow

    from cxrspark import tracking
    from cxrspark.modelref import ModelRefError, load_model, resolve_model, training_dataset, weights_digest
    from cxrspark.spark.udfs import make_classify_udf

    started = time.time()
    pc = cfg.predict
    root = Path(pc.input).resolve()
    if not root.is_dir():
        raise PredictError(f"predict.input {root} is not a folder")
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg.train.mlflow.tracking_uri, cfg.train.output))
    try:
        model_uri, train_run = resolve_model(pc.model, cfg.train.mlflow.experiment)
    except ModelRefError as exc:
        raise PredictError(f"predict.model: {exc}") from exc
    model = load_model(model_uri)
    digest = weights_digest(model)
    size = int(model.input_shape[1])
    train_data = training_dataset(train_run)
    classes = (json.loads((train_data / "summary.json").read_text())["classes"] if train_data
               else list(cfg.ingest.classes))
    if int(model.output_shape[-1]) != len(classes):
        raise PredictError(f"the model has {model.output_shape[-1]} outputs but the classes are {classes}")
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model.keras")
        payload = (Path(tmp) / "model.keras").read_bytes()

    is_dataset = (root / "summary.json").is_file()
    differences: list[str] = []
    if is_dataset:
        df, n_inputs, prepared_by = _dataset_frame(spark, root, pc.split, classes, size), None, "ingest output (stored images)"
        differences = preprocessing_differences(root, train_data)
        for d in differences:
            log(f"predict: WARNING the input was prepared differently from the model's training data: {d}")
    else:
        prep, prepared_by = preprocessing_config(cfg, train_data)
        if prep.ingest.image_size != size:
            raise PredictError(f"the model takes {size} px images but ingest.image_size is "
                               f"{prep.ingest.image_size} ({prepared_by})")
        df, n_inputs = _folder_frame(spark, root, pc.pattern, prep)
    log(f"predict: {model_uri} (weights sha256 {digest[:12]}) over {root}"
        + (f" ({n_inputs} files; preprocessing from {prepared_by})" if n_inputs is not None else ""))

    classify = make_classify_udf(payload=spark.sparkContext.broadcast(payload), digest=digest, classes=classes,
                                 batch_size=pc.batch_size, threads=pc.threads)
    scored = df.withColumn("_p", classify(F.col("image"), F.col("height")))
    out = Path(pc.output).resolve()
    result = scored.select(
        "record_id", "path", "source", "patient_key", "split", "label",
        *[F.col("_p.probabilities")[k].alias(column_name(c)) for k, c in enumerate(classes)],
        F.col("_p.predicted").alias("predicted"), F.col("_p.confidence").alias("confidence"),
        F.when(F.col("image").isNull(), F.coalesce("decode_error", F.lit("no_image"))).alias("error"),
        F.lit(model_uri).alias("model"), F.lit(digest).alias("model_digest"),
        F.lit(train_run).cast("string").alias("train_run_id"))
    result.write.mode("overwrite").parquet(str(out / "predictions"))

    written = spark.read.parquet(str(out / "predictions"))
    predicted = {r["predicted"]: r["count"] for r in written.where("error IS NULL").groupBy("predicted").count().collect()}
    reasons = {r["reason"]: r["count"] for r in written.where("error IS NOT NULL")
               .select(F.split("error", ":")[0].alias("reason")).groupBy("reason").count().collect()}
    rows = written.count()
    summary = {
        "input": str(root), "input_kind": "dataset" if is_dataset else "folder",
        "split": pc.split if is_dataset else None, "pattern": None if is_dataset else pc.pattern,
        "files": n_inputs, "rows": rows, "predicted": {c: int(predicted.get(c, 0)) for c in classes},
        "unreadable": int(sum(reasons.values())), "reasons": dict(sorted(reasons.items())),
        "model": model_uri, "model_digest": digest, "train_run_id": train_run, "classes": classes,
        "image_size": size, "preprocessing": prepared_by, "preprocessing_differences": differences,
        "output": str(out / "predictions"),
        "seconds": round(time.time() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
