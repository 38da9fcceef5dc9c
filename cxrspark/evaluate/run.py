"""One evaluation: a model on a split of an ingest output, every number and picture logged to MLflow.

    result = run_evaluation(cfg)          # cfg.evaluate says which model, dataset and split

Predictions are made once (single process, Petastorm reader); the per-class table, the patient
bootstrap CIs, calibration, the per-source table and Grad-CAM are computed from them. The run is a
new MLflow run (experiment ``evaluate.experiment``) tagged with the evaluated model and dataset.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrspark.config import Config, to_dict
from cxrspark.evaluate import report
from cxrspark.evaluate.bootstrap import patient_bootstrap
from cxrspark.evaluate.calibration import expected_calibration_error, reliability_table
from cxrspark.metrics import confusion_matrix, per_class_table, per_source_table
from cxrspark.modelref import ModelRefError, load_model, resolve_model


class EvaluationError(ValueError):
    pass


def splits_of(info, split: str) -> list[str]:
    """``split`` as a list of the dataset's splits ("all": every split)."""
    names = list(info.counts)
    if split == "all":
        return names
    if split not in names:
        raise EvaluationError(f"{info.root} has no split {split!r}; its splits: {', '.join(names)} (or all)")
    return [split]


def probe_splits_of(info, requested: list[str], evaluated: list[str]) -> tuple[list[str], str]:
    """The splits the source probe runs on, and a sentence saying which and why. The requested splits
    the dataset has ("all": every split); a requested split it lacks is skipped and named; when it has
    none of them (a new hospital's data ingested as one split), the evaluated splits. Nothing
    requested: no probe."""
    if not requested:
        return [], "no source probe (evaluate.probe_splits is empty)"
    names = list(info.counts)
    present = sorted({sp for r in requested for sp in (names if r == "all" else [r]) if sp in names})
    missing = [r for r in requested if r != "all" and r not in names]
    lacks = f"; the dataset has no split {', '.join(repr(m) for m in missing)}" if missing else ""
    if not present:
        present = sorted(evaluated)
        return present, f"source probe on the evaluated split(s) {', '.join(present)}{lacks}"
    return present, f"source probe on split(s) {', '.join(present)}{lacks}"


def predict(model, info, splits: list[str], batch_size: int, features: bool = False) -> dict[str, np.ndarray]:
    """Predictions over some splits: probs, label_index, record_id, source, patient_key, split, image
    (uint8) and, with ``features``, the penultimate features (the input of the final layer)."""
    from cxrspark.evaluate.probe import penultimate_model
    from cxrspark.train import data as tdata

    net = penultimate_model(model) if features else model
    keys = ("label_index", "record_id", "source", "patient_key")
    parts: dict[str, list] = {k: [] for k in ("probs", "features", "split", "image", *keys)}
    for split in splits:
        if info.size(split) == 0:
            continue
        for batch in tdata.eval_batches(info, split, 0, 1, batch_size):
            out = net.predict(batch["image"], verbose=0)
            probs, feats = out if features else (out, None)
            parts["probs"].append(probs)
            if features:
                parts["features"].append(feats.reshape(len(probs), -1))
            parts["image"].append(batch["image"].astype(np.uint8))
            parts["split"].append(np.full(len(probs), split, dtype=object))
            for k in keys:
                parts[k].append(batch[k])
    return {k: np.concatenate(v) for k, v in parts.items() if v}


def lung_masks(info, splits: list[str], record_ids: list[str]) -> dict[str, np.ndarray]:
    """The lung masks of some records in the frame of their stored images (empty when the dataset was
    ingested without segmentation)."""
    import pyarrow.dataset as ds

    from cxrspark.segmentation.masks import decode_mask, mask_in_stored_frame

    lungs = json.loads((info.root / "summary.json").read_text())["config"]["ingest"].get("lungs", {})
    stored, margin = lungs.get("stored_image", "full"), float(lungs.get("crop_margin", 0.0))

    masks: dict[str, np.ndarray] = {}
    for split in splits:
        folder = info.root / "curated" / split
        if not folder.is_dir():
            continue
        table = ds.dataset(str(folder), format="parquet")
        if "lung_mask" not in table.schema.names:
            return {}
        rows = table.to_table(columns=["record_id", "lung_mask"],
                              filter=ds.field("record_id").isin(record_ids)).to_pylist()
        masks.update({r["record_id"]: mask_in_stored_frame(decode_mask(r["lung_mask"]), stored, margin)
                      for r in rows if r["lung_mask"] is not None})
    return masks


def gradcam_samples(y: np.ndarray, pred: np.ndarray, per_class: int, n_classes: int, seed: int) -> list[int]:
    """Up to `per_class` correct and `per_class` wrong predictions of every true class."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(n_classes):
        for right in (True, False):
            idx = np.flatnonzero((y == c) & ((pred == c) == right))
            picks += sorted(rng.permutation(idx)[:per_class].tolist())
    return picks


def run_evaluation(cfg: Config, *, parent_run_id: str | None = None, run_name: str | None = None,
                   exclude_records: set[str] | None = None, exclude_reason: str = "") -> dict[str, Any]:
    """Evaluate ``cfg.evaluate.model`` and log one MLflow run (a child of ``parent_run_id`` if given).
    ``exclude_records`` are left out of every number (e.g. images of patients the model trained on);
    how many, and ``exclude_reason``, are recorded."""
    import matplotlib.pyplot as plt
    import mlflow

    from cxrspark import tracking
    from cxrspark.evaluate.gradcam import grad_cam, mass_inside, overlay
    from cxrspark.evaluate.probe import source_probe
    from cxrspark.train import data as tdata

    ev = cfg.evaluate
    try:
        info = tdata.load_dataset_info(ev.dataset or cfg.train.dataset, include_sources=ev.sources or None)
    except tdata.DatasetError as exc:
        raise EvaluationError(str(exc)) from exc
    splits = splits_of(info, ev.split)
    if sum(info.size(sp) for sp in splits) == 0:
        raise EvaluationError(f"split {ev.split!r} of {info.root} has no images"
                              + (f" of sources {ev.sources}" if ev.sources else ""))
    probe_splits, probe_note = probe_splits_of(info, ev.probe_splits, splits)
    print(f"evaluate: {probe_note}", flush=True)
    uri = tracking.tracking_uri(cfg.train.mlflow.tracking_uri, cfg.train.output)
    mlflow.set_tracking_uri(uri)
    try:
        model_uri, train_run = resolve_model(ev.model, cfg.train.mlflow.experiment)
    except ModelRefError as exc:
        raise EvaluationError(f"evaluate.model: {exc}") from exc
    model = load_model(model_uri)
    classes = info.classes
    p = predict(model, info, splits, ev.batch_size, features=True)
    excluded = 0
    if exclude_records:
        keep = ~np.isin(p["record_id"].astype(str), list(exclude_records))
        excluded = int((~keep).sum())
        p = {k: v[keep] for k, v in p.items()}
        if not len(p["record_id"]):
            raise EvaluationError(f"no images left after excluding {excluded} ({exclude_reason})")
    y, probs = p["label_index"], p["probs"]
    pred = probs.argmax(1)
    cm = confusion_matrix(y, pred, len(classes))
    point = per_class_table(cm, classes, y, probs)
    boot = patient_bootstrap(y, probs, p["patient_key"], classes, n_boot=ev.bootstrap, seed=ev.seed, level=ev.level)
    rel = reliability_table(y, probs, ev.calibration_bins)
    ece = expected_calibration_error(y, probs, ev.calibration_bins)
    by_source = per_source_table(y, probs, p["source"], classes)
    probe = None
    if probe_splits:
        q = p if probe_splits == sorted(splits) else predict(model, info, probe_splits, ev.batch_size, features=True)
        probe = source_probe(q["features"], q["source"], q["patient_key"], q["label_index"], classes,
                             folds=ev.probe_folds, seed=ev.seed)

    picks = gradcam_samples(y, pred, ev.gradcam_per_class, len(classes), ev.seed)
    cams = grad_cam(model, p["image"][picks].astype(np.float32), pred[picks]) if picks else np.zeros((0,))
    masks = lung_masks(info, splits, [str(p["record_id"][i]) for i in picks]) if picks else {}
    inside = [mass_inside(cam, masks[str(p["record_id"][i])]) if str(p["record_id"][i]) in masks else np.nan
              for i, cam in zip(picks, cams)]
    lung_mass = None
    if masks:
        area = [float(masks[str(p["record_id"][i])].mean()) if str(p["record_id"][i]) in masks else np.nan
                for i in picks]
        lung_mass = (pd.DataFrame({"class": [classes[y[i]] for i in picks], "mass_in_lungs": inside,
                                   "lung_area": area})
                     .dropna().groupby("class", sort=False)
                     .agg(images=("mass_in_lungs", "size"), mass_in_lungs=("mass_in_lungs", "mean"),
                          lung_area=("lung_area", "mean")).reset_index())

    summary = json.loads((info.root / "summary.json").read_text())
    data_table = pd.DataFrame(summary["curated_table"])[["source", "label", "split", "n"]]
    name = ev.split
    with tracking.start_run(uri, ev.experiment, run_name=run_name or f"evaluate {name}",
                            parent_run_id=parent_run_id) as run:
        mlflow.set_tags({"evaluated.model": model_uri, "evaluated.train_run_id": train_run or "",
                         "dataset.hash": info.dataset_hash, "dataset.path": str(info.root), "split": name,
                         "evaluated.sources": ",".join(info.sources) if info.sources is not None else "all"})
        tracking.log_params({"model": model_uri, "train_run_id": train_run, "dataset": str(info.root),
                             "dataset_hash": info.dataset_hash, "split": name, "images": len(y),
                             "patients": boot.n_patients, "excluded_images": excluded,
                             "excluded_because": exclude_reason if excluded else None,
                             "probe_splits_used": ",".join(probe_splits) or None,
                             **{f"evaluate.{k}": v for k, v in to_dict(ev).items()}})
        tracking.log_classification(name, cm, point, classes)
        mlflow.log_table(boot.table, artifact_file=f"eval/{name}_per_class_ci.json")
        mlflow.log_table(by_source, artifact_file=f"eval/{name}_per_source.json")
        mlflow.log_table(rel, artifact_file=f"eval/{name}_reliability.json")
        mlflow.log_table(pd.DataFrame({"record_id": p["record_id"], "split": p["split"], "source": p["source"],
                                       "patient_key": p["patient_key"], "label": [classes[i] for i in y],
                                       "predicted": [classes[i] for i in pred],
                                       **{f"p_{c}": probs[:, k] for k, c in enumerate(classes)}}),
                         artifact_file=f"eval/{name}_predictions.json")
        ci = boot.table.set_index(["class", "metric"])
        metrics = {f"{name}_ece": ece,
                   **{f"{name}_{m}_{part}": float(ci.loc[(row, m), part])
                      for row, m in (("accuracy", "accuracy"), ("macro avg", "f1"), ("macro avg", "auc"))
                      for part in ("value", "low", "high")
                      if not np.isnan(ci.loc[(row, m), part])}}
        if probe is not None and len(probe):
            mlflow.log_table(probe, artifact_file="eval/source_probe.json")
            metrics.update({f"source_probe_skill_{r.scope.replace(' ', '_')}": r.skill for r in probe.itertuples()})
        mlflow.log_metrics(metrics)
        figures = {f"eval/{name}_roc.png": report.roc_figure(y, probs, classes, f"{name}: ROC"),
                   f"eval/{name}_reliability.png": report.reliability_figure(rel, ece, f"{name}: reliability")}
        if train_run:
            client = mlflow.tracking.MlflowClient()
            history = {k: [(h.step, h.value) for h in client.get_metric_history(train_run, k)]
                       for k in ("loss", "val_loss", "accuracy", "val_accuracy")}
            figures["eval/training_curves.png"] = report.curves_figure(history, f"training run {train_run[:8]}")
        if picks:
            pics = [overlay(p["image"][i][..., 0], cam) for i, cam in zip(picks, cams)]
            titles = [f"{classes[y[i]]} -> {classes[pred[i]]}" + (f"\nin lungs {m:.2f}" if not np.isnan(m) else "")
                      for i, m in zip(picks, inside)]
            figures[f"eval/{name}_gradcam.png"] = report.gallery_figure(
                pics, titles, "Grad-CAM (true -> predicted), correct and wrong per class")
        for fname, fig in figures.items():
            mlflow.log_figure(fig, fname)
            plt.close(fig)
        if lung_mass is not None:
            mlflow.log_table(lung_mass, artifact_file=f"eval/{name}_gradcam_lung_mass.json")
        card = report.model_card({
            "model_name": Path(model_uri).name if not model_uri.startswith(("runs:", "models:")) else model_uri,
            "model_uri": model_uri, "train_run_id": train_run, "dataset": str(info.root),
            "dataset_hash": info.dataset_hash, "split": name, "n_images": len(y),
            "sources": info.sources, "n_patients": boot.n_patients, "excluded": excluded,
            "exclude_reason": exclude_reason, "data_table": data_table,
            "ci_table": boot.table, "classes": classes,
            "level": ev.level, "n_boot": ev.bootstrap, "point_table": point, "per_source": by_source,
            "bins": ev.calibration_bins, "ece": ece, "lung_mass": lung_mass, "probe": probe,
            "probe_splits": probe_splits, "probe_note": probe_note, "probe_folds": ev.probe_folds})
        mlflow.log_text(card, "MODEL_CARD.md")
        run_id = run.info.run_id
    return {"run_id": run_id, "tracking_uri": uri, "model": model_uri, "train_run_id": train_run,
            "confusion": cm, "table": point, "ci": boot.table, "ece": ece, "per_source": by_source,
            "lung_mass": lung_mass, "probe": probe, "probe_splits": probe_splits, "probe_note": probe_note,
            "card": card, "n": len(y), "patients": boot.n_patients,
            "excluded": excluded}
