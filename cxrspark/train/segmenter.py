"""Training the lung U-Net on the V7 lung annotations: Horovod data-parallel, tracked in MLflow.

    horovodrun --gloo -np 2 -H localhost:2 .venv/bin/python jobs/train_segmenter.py --config conf/segmenter.yaml
    python jobs/train_segmenter.py --config conf/segmenter.yaml        # one rank

Every rank loads the (small) annotated set, holds out the same validation PATIENTS, and trains on its
own shard of the training images; gradients are averaged by ``hvd.DistributedOptimizer``. Every rank
scores the whole validation set (a few dozen images) so all see the same Dice and stop together.
Rank 0 logs to MLflow and, with ``segmenter.publish``, writes the best weights with manifest and card.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from cxrspark.config import Config, to_dict
from cxrspark.segmentation.annotated import AnnotatedSet, load_annotated, patient_split, read_annotation_files
from cxrspark.segmentation.masks import clean_mask, dice, iou
from cxrspark.segmentation.unet import bce_dice_loss, build_unet, dice_metric


def annotated_set(cfg: Config) -> AnnotatedSet:
    """The annotations of ``segmenter.annotations`` joined to the Cohen images and patients."""
    from cxrspark.sources import make_adapter

    sg = cfg.segmenter
    images = {}
    for rec in make_adapter("cohen", "cohen", sg.images, {}).checked_records():
        if rec.path:
            images.setdefault(Path(rec.source_path).name, (rec.path, rec.patient_key))
    return load_annotated(read_annotation_files(sg.annotations), images, sg.size, sg.contrasts,
                          cfg.ingest.resize_mode)


# ---- input pipeline -----------------------------------------------------------------------------
def augment_fn(aug, seed: int):
    """A batch function (image (b,s,s,1) float 0..255, mask (b,s,s,1) 0/1) -> the same, randomly
    rotated/shifted/zoomed together, then brightness/contrast changed on the image only."""
    L = tf.keras.layers
    geometric = tf.keras.Sequential([
        L.RandomRotation(aug.rotation / 360.0, fill_mode="constant", seed=seed),
        L.RandomTranslation(aug.shift, aug.shift, fill_mode="constant", seed=seed + 1),
        L.RandomZoom(aug.zoom, fill_mode="constant", seed=seed + 2),
    ])

    def apply(image, mask):
        both = geometric(tf.concat([image, mask * 255.0], axis=-1), training=True)
        image, mask = both[..., :1], tf.cast(both[..., 1:] >= 127.5, tf.float32)
        n = tf.shape(image)[0]
        bright = tf.random.uniform([n, 1, 1, 1], -aug.brightness, aug.brightness) * 255.0
        contrast = tf.random.uniform([n, 1, 1, 1], 1.0 - aug.contrast, 1.0 + aug.contrast)
        mean = tf.reduce_mean(image, axis=[1, 2, 3], keepdims=True)
        image = tf.clip_by_value((image - mean) * contrast + mean + bright, 0.0, 255.0)
        return image, mask

    return apply


def train_stream(data: AnnotatedSet, batch: int, seed: int, aug) -> tf.data.Dataset:
    """Infinite shuffled batches; each example's contrast variant is drawn at random."""
    images = np.ascontiguousarray(np.moveaxis(data.images, 0, 1))  # (n, n_contrasts, s, s)
    n_variants = images.shape[1]
    ds = tf.data.Dataset.from_tensor_slices((images, data.masks))
    ds = ds.shuffle(len(data.masks), seed=seed, reshuffle_each_iteration=True).repeat()

    def pick(variants, mask):
        c = tf.random.uniform([], 0, n_variants, dtype=tf.int32)
        return tf.cast(variants[c], tf.float32)[..., None], tf.cast(mask, tf.float32)[..., None]

    ds = ds.map(pick, num_parallel_calls=tf.data.AUTOTUNE).batch(batch, drop_remainder=True)
    return ds.map(augment_fn(aug, seed), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


# ---- evaluation ---------------------------------------------------------------------------------
def predict_probs(model, images: np.ndarray, batch: int = 16) -> np.ndarray:
    out = model.predict(images[..., None].astype(np.float32), batch_size=batch, verbose=0)
    return out[..., 0]


def score(model, data: AnnotatedSet, threshold: float = 0.5) -> dict[str, Any]:
    """Per contrast variant: mean Dice and IoU over images, of the raw thresholded mask and of the
    cleaned one (two largest regions, holes filled: what ingest stores)."""
    result: dict[str, Any] = {}
    for c, name in enumerate(data.contrasts):
        probs = predict_probs(model, data.images[c])
        raw = [(dice(p >= threshold, t), iou(p >= threshold, t)) for p, t in zip(probs, data.masks)]
        cleaned = [clean_mask(p, threshold)[0] for p in probs]
        clean = [(dice(m, t), iou(m, t)) for m, t in zip(cleaned, data.masks)]
        result[name] = {
            "dice": float(np.mean([d for d, _ in clean])), "iou": float(np.mean([j for _, j in clean])),
            "dice_raw": float(np.mean([d for d, _ in raw])), "iou_raw": float(np.mean([j for _, j in raw])),
            "dice_min": float(np.min([d for d, _ in clean])),
            "per_image": [round(d, 4) for d, _ in clean],
        }
    result["mean_dice"] = float(np.mean([result[n]["dice"] for n in data.contrasts]))
    return result


class Validation(tf.keras.callbacks.Callback):
    """Validation Dice/IoU each epoch (every rank, whole set); the learning rate halves after
    `patience // 3` epochs without improvement; early stopping on mean Dice; the best weights kept."""

    def __init__(self, data: AnnotatedSet, patience: int, min_delta: float, log_mlflow: bool):
        super().__init__()
        self.data, self.patience, self.min_delta, self.log_mlflow = data, patience, min_delta, log_mlflow
        self.best, self.best_epoch, self.best_weights, self.wait = -1.0, -1, None, 0
        self.history: list[dict[str, Any]] = []

    def on_epoch_end(self, epoch, logs=None):
        s = score(self.model, self.data)
        logs = logs if logs is not None else {}
        logs["val_dice"] = s["mean_dice"]
        entry = {"epoch": epoch, "loss": float(logs.get("loss", np.nan)), "val_dice": s["mean_dice"],
                 **{f"val_dice_{c}": s[c]["dice"] for c in self.data.contrasts},
                 **{f"val_iou_{c}": s[c]["iou"] for c in self.data.contrasts}}
        self.history.append(entry)
        if self.log_mlflow:
            import mlflow
            mlflow.log_metrics({k: v for k, v in entry.items() if k != "epoch"}, step=epoch)
        if s["mean_dice"] > self.best + self.min_delta:
            self.best, self.best_epoch, self.wait = s["mean_dice"], epoch, 0
            self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.wait % max(1, self.patience // 3) == 0:
                lr = self.model.optimizer.learning_rate
                lr.assign(lr * 0.5)
            if self.wait >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def _git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return out.stdout.strip() + ("+uncommitted-changes" if dirty else "")
    return "unknown"


# ---- the job ------------------------------------------------------------------------------------
def run_segmenter_training(cfg: Config, command: str = "") -> dict[str, Any]:
    import horovod.tensorflow as hvd_tf
    import horovod.tensorflow.keras as hvd

    from cxrspark.train.loop import _set_threads

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    _set_threads(hvd.local_size())
    sg = cfg.segmenter
    tf.keras.utils.set_random_seed(sg.seed + rank)
    started = time.time()
    commit = _git_commit() if rank == 0 else ""  # the code that trains, taken before training starts
    data = annotated_set(cfg)
    train_idx, val_idx = patient_split(data.patient_keys, sg.val_fraction, sg.seed)
    train, val = data.subset(train_idx), data.subset(val_idx)
    shard = train.subset(np.arange(rank, len(train.names), size))
    steps = max(1, int(np.ceil(len(train.names) / (sg.batch_size * size))))

    model = build_unet(sg.size, sg.base_filters, sg.depth)
    optimizer = hvd.DistributedOptimizer(tf.keras.optimizers.Adam(sg.learning_rate * size))
    model.compile(optimizer, loss=bce_dice_loss, metrics=[dice_metric])
    validation = Validation(val, sg.patience, sg.min_delta, log_mlflow=rank == 0)
    callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0), hvd.callbacks.MetricAverageCallback(),
                 validation]
    counts = {"annotation_files": len(data.names) + len(data.problems), "usable": len(data.names),
              "problems": len(data.problems), "train_images": len(train.names), "val_images": len(val.names),
              "train_patients": len(set(train.patient_keys)), "val_patients": len(set(val.patient_keys))}
    run_id = None
    if rank == 0:
        import mlflow
        from cxrspark import tracking

        out = Path(sg.output).resolve()
        uri = tracking.tracking_uri(sg.mlflow.tracking_uri, out)
        run_id = tracking.start_run(uri, sg.mlflow.experiment, run_name=sg.mlflow.run_name).info.run_id
        tracking.log_params({**to_dict(sg), "ranks": size, "steps_per_epoch": steps,
                             "model_parameters": model.count_params(), **counts})
        mlflow.log_dict({"problems": data.problems, "val_patients": sorted(set(val.patient_keys))},
                        "data/annotations.json")
        print(f"lung U-Net: {counts}; {size} rank(s), {steps} steps/epoch; MLflow run {run_id} at {uri}",
              flush=True)
        for entry, why in data.problems:
            print(f"  annotation not used: {entry}: {why}", flush=True)
    try:
        model.fit(train_stream(shard, sg.batch_size, sg.seed + rank, sg.augment), epochs=sg.epochs,
                  steps_per_epoch=steps, callbacks=callbacks,
                  verbose=(1 if sys.stdout.isatty() else 2) if rank == 0 else 0)
        hvd_tf.broadcast_variables(model.variables, root_rank=0)
        final = score(model, val)
        result = {"rank": rank, "size": size, "best_epoch": validation.best_epoch, "counts": counts,
                  "history": validation.history, "validation": final, "mlflow_run_id": run_id,
                  "seconds": round(time.time() - started, 1)}
        if rank == 0:
            _report(model, val, final, result, cfg, command, commit)
    except BaseException:
        if rank == 0:
            import mlflow
            if mlflow.active_run():
                mlflow.end_run("FAILED")
        raise
    return result


def _report(model, val: AnnotatedSet, final: dict[str, Any], result: dict[str, Any], cfg: Config,
            command: str, commit: str) -> None:
    import mlflow
    import pandas as pd

    from cxrspark.segmentation import weights as sw
    from cxrspark.tracking import mask_overlay_figure

    sg = cfg.segmenter
    metrics = {f"final_val_{k}_{c}": final[c][k] for c in val.contrasts for k in ("dice", "iou", "dice_raw",
                                                                                "iou_raw", "dice_min")}
    metrics["final_val_mean_dice"] = final["mean_dice"]
    mlflow.log_metrics(metrics)
    rows = [{"image": n, "patient_key": p, **{f"dice_{c}": final[c]["per_image"][i] for c in val.contrasts}}
            for i, (n, p) in enumerate(zip(val.names, val.patient_keys))]
    mlflow.log_table(pd.DataFrame(rows), artifact_file="eval/val_per_image.json")
    c0 = val.contrasts.index("none") if "none" in val.contrasts else 0
    pick = np.argsort(final[val.contrasts[c0]]["per_image"])  # worst first
    show = list(pick[:4]) + list(pick[-4:])
    probs = predict_probs(model, val.images[c0][show])
    fig = mask_overlay_figure(val.images[c0][show], val.masks[show], [clean_mask(p)[0] for p in probs],
                              [f"{val.names[i][:28]}\nDice {final[val.contrasts[c0]]['per_image'][i]:.3f}"
                               for i in show])
    mlflow.log_figure(fig, "eval/val_worst_and_best.png")
    manifest = {
        "architecture": {"size": sg.size, "base_filters": sg.base_filters, "depth": sg.depth},
        "input": "greyscale image 0..255 (ingest's stored image), resized to the input size; pad geometry",
        "validation": {c: {k: round(final[c][k], 4) for k in ("dice", "iou", "dice_raw", "iou_raw", "dice_min")}
                       for c in val.contrasts},
        "counts": result["counts"], "best_epoch": result["best_epoch"],
        "trained": {"command": command, "commit": commit, "ranks": result["size"],
                    "seconds": result["seconds"], "mlflow_run_id": result["mlflow_run_id"],
                    "annotations": sg.annotations, "images": sg.images, "config": to_dict(sg)},
    }
    if sg.publish:
        folder = sw.publish(model, sg.publish, manifest, model_card(manifest))
        mlflow.log_artifacts(str(folder), artifact_path="lung_unet")
        print(f"published weights, manifest and card to {folder}", flush=True)
    else:
        out = Path(sg.output)
        out.mkdir(parents=True, exist_ok=True)
        folder = sw.publish(model, out / "lung_unet", manifest, model_card(manifest))
        mlflow.log_artifacts(str(folder), artifact_path="lung_unet")
    mlflow.end_run("FINISHED")
    print(json.dumps(manifest["validation"], indent=1), flush=True)


def model_card(m: dict[str, Any]) -> str:
    v, c, t, a = m["validation"], m["counts"], m["trained"], m["architecture"]
    rows = "\n".join(f"| {name} | {x['dice']:.4f} | {x['iou']:.4f} | {x['dice_raw']:.4f} | {x['dice_min']:.4f} |"
                     for name, x in v.items())
    return f"""# Lung U-Net (cxrspark)

A U-Net ({a['depth']} pooling levels, {a['base_filters']} filters in the first level, input
{a['size']}x{a['size']} greyscale 0..255) that outputs a per-pixel lung probability. Used by ingest with
`ingest.segmentation: unet`. Not a medical device; not for clinical use.

## Data
- Lung polygons: V7 Labs COVID-19 X-ray annotations (Darwin JSON, CC BY 4.0): `{t['annotations']}`.
- Images: the Cohen COVID-19 image data collection: `{t['images']}` (patients from its metadata.csv).
- {c['annotation_files']} annotation files: {c['usable']} usable, {c['problems']} without lung polygons or
  image (reported in the MLflow run, `data/annotations.json`).
- Split by PATIENT: {c['train_images']} training images of {c['train_patients']} patients,
  {c['val_images']} validation images of {c['val_patients']} patients.
- Each image is prepared with each ingest contrast method (none, equalize, clahe); training draws one at
  random, so the model fits whatever `ingest.contrast` is. Augmentation: rotation, shift, zoom (image and
  mask together), brightness and contrast.

## Validation (held-out patients, {a['size']} px, mean over images)
"Dice"/"IoU": the cleaned mask that ingest stores (two largest regions, holes filled);
"raw": the thresholded output.

| contrast | Dice | IoU | Dice raw | worst image Dice |
| --- | ---: | ---: | ---: | ---: |
{rows}

## How it was made
- Command: `{t['command']}`
- Commit: `{t['commit']}`
- Ranks: {t['ranks']}; best epoch {m['best_epoch']}; {t['seconds']} s; MLflow run `{t['mlflow_run_id']}`.

## Limits
The annotated images are adult COVID-19 / pneumonia CXRs of one collection; pediatric images, other
hospitals and devices are not in the annotations. Ingest's QC flag (`lung_mask_ok`) marks masks whose
area or number of regions is implausible; check those before trusting a lung-cropped dataset.
"""
