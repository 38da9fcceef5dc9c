"""pandas UDFs over cxrspark.images and cxrspark.segmentation, one Arrow batch at a time.

- ``make_prepare_udf``: decode + hash + contrast + resize (+ standardisation when given, the stored
  image of an ingest without segmentation). A bad file never fails the task: its error goes into the
  ``decode_error`` column with a reason code ("corrupt_image: ...") and the pipeline quarantines the row.
- ``make_segment_udf``: lung masks with the U-Net, the stored image built from them (+ standardisation
  over the lung mask when given). The model is loaded once per Python worker (a module-level cache that
  outlives tasks, as Spark reuses its Python workers) and run on batches.
- ``make_verify_udf``: near-duplicate verification of candidate pairs (cxrspark.images.copymatch).
- ``make_classify_udf``: class probabilities of a trained classifier, shipped to the workers as a
  broadcast of its saved bytes and loaded once per Python worker the same way.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Tuple  # pandas_udf type hints need typing.Tuple

import numpy as np
import pandas as pd
from pyspark.sql.functions import pandas_udf

from cxrspark.schema import DECODED_DDL, PREDICTED_DDL, SEGMENTED_DDL


def prepare_one(path: str, *, size: int, resize_mode: str, contrast: str, max_pixels: int,
                max_file_bytes: int, jpeg_draft: bool, min_side: int = 1, keypoints=None, draft_min: int = 0,
                standardize=None) -> dict:
    """Read one file and prepare it; every failure becomes a decode_error (never an exception).
    ``standardize``: a cxrspark.images.standardize.Standardizer applied to the prepared image (over its
    non-padding pixels), or None."""
    from cxrspark.images import DecodeError, prepare

    empty = {c.split()[0]: None for c in DECODED_DDL.split(", ")}
    try:
        import os
        n = os.path.getsize(path)
        if n > max_file_bytes:
            return {**empty, "decode_error": f"file_too_large: {n} bytes > {max_file_bytes}"}
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return {**empty, "decode_error": f"missing_file: {path}"}
    except OSError as exc:
        return {**empty, "decode_error": f"unreadable_file: {exc}"}
    try:
        p = prepare(data, size=size, resize_mode=resize_mode, contrast=contrast,
                    max_pixels=max_pixels, min_side=min_side, jpeg_draft=jpeg_draft, keypoints=keypoints,
                    draft_min=draft_min)
    except DecodeError as exc:
        return {**empty, "decode_error": str(exc)}
    except Exception as exc:  # an unexpected decoder failure is still a per-row outcome
        return {**empty, "decode_error": f"decode_failed: {type(exc).__name__}: {exc}"}
    image = standardize(p.image) if standardize is not None else p.image
    kp = p.keypoints
    return {
        "image": image.tobytes(), "height": int(image.shape[0]), "width": int(image.shape[1]),
        "orig_height": int(p.orig_height), "orig_width": int(p.orig_width),
        "orig_format": p.orig_format, "orig_mode": p.orig_mode,
        "pixel_sha256": p.pixel_sha256, "phash": int(p.phash),
        "kp_image": kp.image.tobytes() if kp else None, "kp_height": int(kp.image.shape[0]) if kp else None,
        "kp_width": int(kp.image.shape[1]) if kp else None, "kp_xy": kp.xy.tobytes() if kp else None,
        "kp_desc": kp.desc.tobytes() if kp else None, "kp_keys": kp.keys.tolist() if kp else None,
        "decode_error": None,
    }


_NULLABLE_INTS = {"int": "Int32", "bigint": "Int64", "long": "Int64"}


def typed_frame(rows: list[dict], ddl: str) -> pd.DataFrame:
    """Rows -> a DataFrame of the DDL's columns whose integer columns stay integers when some rows hold
    None (pandas would make them float64 and round 64-bit hashes: a perceptual hash off by a few bits)."""
    cols = [c.split()[0] for c in ddl.split(", ")]
    out = pd.DataFrame(rows, columns=cols, dtype=object)
    for c, t in (x.split(maxsplit=1) for x in ddl.split(", ")):
        if t in _NULLABLE_INTS:
            out[c] = out[c].astype(_NULLABLE_INTS[t])
    return out


def make_prepare_udf(*, size: int, resize_mode: str, contrast: str, max_pixels: int,
                     max_file_bytes: int, jpeg_draft: bool, min_side: int = 1, keypoints=None, draft_min: int = 0,
                     standardize=None):
    """A pandas UDF: path column -> struct of DECODED_DDL (``keypoints``: a KeypointParams, or None
    to leave the near-duplicate columns null; ``standardize``: a Standardizer for the stored image, or None)."""
    opts = dict(size=size, resize_mode=resize_mode, contrast=contrast, max_pixels=max_pixels,
                max_file_bytes=max_file_bytes, jpeg_draft=jpeg_draft, min_side=min_side, keypoints=keypoints,
                draft_min=draft_min, standardize=standardize)

    @pandas_udf(DECODED_DDL)
    def prepare_images(paths: pd.Series) -> pd.DataFrame:
        return typed_frame([prepare_one(p, **opts) for p in paths], DECODED_DDL)

    return prepare_images


# ---- lung segmentation --------------------------------------------------------------------------
_SEGMENTERS: dict[tuple, Any] = {}
#: how many times this Python process built a segmenter (read by the tests: once per worker)
LOADS = {"count": 0}


def _tf_threads(threads: int):
    """Import TensorFlow in a Python worker, limited to `threads` threads (a Spark task holds one core)."""
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already running in this process: keep its setting
        pass
    return tf


def segmenter(weights: str | None, threads: int, batch_size: int):
    """The process's LungSegmenter for these weights (built on first use, then reused)."""
    key = (weights, threads, batch_size)
    if key not in _SEGMENTERS:
        _tf_threads(threads)
        from cxrspark.segmentation.inference import LungSegmenter

        _SEGMENTERS[key] = LungSegmenter(weights, batch_size=batch_size)
        LOADS["count"] += 1
    return _SEGMENTERS[key]


def segment_batch(seg, images: list[bytes | None], heights: list, *, stored_image: str, crop_margin: float,
                  threshold: float, min_area: float, max_area: float, max_components: int,
                  min_region: float, standardize=None) -> pd.DataFrame:
    """Segment one batch of stored images (raw uint8 bytes, square); rows without an image stay null.

    ``standardize`` (a cxrspark.images.standardize.Standardizer, or None) is applied to the stored image
    once it is built, with the lung mask aligned to it (cut like the image for ``lung_crop``); a
    ``lung_masked`` image keeps its non-lung pixels at 0."""
    from cxrspark.segmentation.masks import analyse, encode_mask, mask_in_stored_frame, mask_outside_lungs

    cols = [c.split()[0] for c in SEGMENTED_DDL.split(", ")]
    rows: list[dict[str, Any]] = [dict.fromkeys(cols) for _ in images]
    by_size: dict[int, list[int]] = {}
    for i, (data, h) in enumerate(zip(images, heights)):
        if data is not None and h is not None and not pd.isna(h):
            by_size.setdefault(int(h), []).append(i)
    for s, idx in by_size.items():
        stack = np.stack([np.frombuffer(images[i], dtype=np.uint8).reshape(s, s) for i in idx])
        probs = seg.probabilities(stack)
        for i, img, prob in zip(idx, stack, probs):
            r = analyse(img, prob, stored_image=stored_image, crop_margin=crop_margin, threshold=threshold,
                        min_area=min_area, max_area=max_area, max_components=max_components,
                        min_region=min_region)
            stored = r.image
            if standardize is not None:
                stored = standardize(stored, mask_in_stored_frame(r.mask, stored_image, crop_margin))
                if stored_image == "lung_masked" and r.mask.any():
                    stored = mask_outside_lungs(stored, r.mask)
            rows[i] = {"image": stored.tobytes(), "lung_mask": encode_mask(r.mask),
                       "lung_area_fraction": r.qc.area_fraction, "lung_components": r.qc.components,
                       "lung_mask_ok": r.qc.ok, "lung_qc": r.qc.reason}
    return typed_frame(rows, SEGMENTED_DDL)


def make_segment_udf(*, weights: str | None, stored_image: str, crop_margin: float, batch_size: int,
                     threads: int, threshold: float, min_area: float, max_area: float, max_components: int,
                     min_region: float, standardize=None):
    """A pandas UDF: (image, height) -> struct of SEGMENTED_DDL (the stored image and the lung columns;
    ``standardize``: a Standardizer for the stored image, or None)."""
    opts = dict(stored_image=stored_image, crop_margin=crop_margin, threshold=threshold, min_area=min_area,
                max_area=max_area, max_components=max_components, min_region=min_region, standardize=standardize)

    @pandas_udf(SEGMENTED_DDL)
    def segment_lungs(batches: Iterator[Tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        seg = segmenter(weights, threads, batch_size)
        for images, heights in batches:
            yield segment_batch(seg, list(images), list(heights), **opts)

    return segment_lungs


# ---- classification (batch prediction) ----------------------------------------------------------
_CLASSIFIERS: dict[str, Any] = {}
#: weights digest -> how many times this Python process loaded that classifier (the tests: once per worker)
CLASSIFIER_LOADS: dict[str, int] = {}


def classifier(digest: str, payload, threads: int):
    """The process's Keras model with this digest; ``payload`` (bytes of a saved .keras file, or a
    Spark broadcast of them) is read only when the model is not loaded yet."""
    if digest not in _CLASSIFIERS:
        import os
        import tempfile

        tf = _tf_threads(threads)
        data = payload.value if hasattr(payload, "value") else payload
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.keras")
            with open(path, "wb") as fh:
                fh.write(data)
            _CLASSIFIERS[digest] = tf.keras.models.load_model(path, compile=False)
        CLASSIFIER_LOADS[digest] = CLASSIFIER_LOADS.get(digest, 0) + 1
    return _CLASSIFIERS[digest]


def classify_batch(model, images: list[bytes | None], heights: list, classes: list[str],
                   batch_size: int) -> pd.DataFrame:
    """Probabilities, predicted class and its probability for stored images (raw uint8, square);
    rows without an image stay null."""
    cols = [c.split()[0] for c in PREDICTED_DDL.split(", ")]
    out = pd.DataFrame({c: pd.Series([None] * len(images), dtype=object) for c in cols})
    by_size: dict[int, list[int]] = {}
    for i, (data, h) in enumerate(zip(images, heights)):
        if data is not None and h is not None and not pd.isna(h):
            by_size.setdefault(int(h), []).append(i)
    for s, idx in by_size.items():
        stack = np.stack([np.frombuffer(images[i], dtype=np.uint8).reshape(s, s, 1) for i in idx]).astype(np.float32)
        probs = np.concatenate([np.asarray(model(stack[k:k + batch_size], training=False))
                                for k in range(0, len(stack), batch_size)])
        best = probs.argmax(1)
        out.loc[idx, "probabilities"] = pd.Series([row.astype(np.float32).tolist() for row in probs], index=idx)
        out.loc[idx, "predicted"] = [classes[k] for k in best]
        out.loc[idx, "confidence"] = probs.max(1).astype(float)
    return out


def make_classify_udf(*, payload, digest: str, classes: list[str], batch_size: int, threads: int):
    """A pandas UDF: (image, height) -> struct of PREDICTED_DDL."""

    @pandas_udf(PREDICTED_DDL)
    def classify(batches: Iterator[Tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        model = classifier(digest, payload, threads)
        for images, heights in batches:
            yield classify_batch(model, list(images), list(heights), classes, batch_size)

    return classify


# ---- near-duplicate verification ----------------------------------------------------------------
VERDICT_DDL = ("copy boolean, inliers int, scale double, rotation double, overlap double, detail double, "
               "why string")


def verify_batch(cols: list[pd.Series], params) -> pd.DataFrame:
    """Verdicts for a batch of candidate pairs; ``cols`` = kp_image, kp_height, kp_width, kp_xy, kp_desc
    of image a, then the same of image b. A pair whose data is missing or unreadable is not a copy."""
    from cxrspark.images.copymatch import verify

    names = [c.split()[0] for c in VERDICT_DDL.split(", ")]
    out = []
    for row in zip(*cols):
        try:
            side = []
            for img, h, w, xy, desc in (row[:5], row[5:]):
                side += [np.frombuffer(img, np.uint8).reshape(int(h), int(w)),
                         np.frombuffer(xy, np.float32).reshape(-1, 2), np.frombuffer(desc, np.uint8).reshape(-1, 128)]
            v = verify(*side, p=params)
            out.append((v.copy, v.inliers, v.scale, v.rotation, v.overlap, v.detail, v.why or None))
        except Exception as exc:  # a broken pair is a non-copy with its reason, never a failed task
            out.append((False, 0, None, None, None, None, f"verify_failed: {type(exc).__name__}: {exc}"))
    return pd.DataFrame(out, columns=names)


def make_verify_udf(params):
    """A pandas UDF: the five kp_* columns of a, then of b -> struct of VERDICT_DDL."""

    @pandas_udf(VERDICT_DDL)
    def verify_pairs(ia: pd.Series, ha: pd.Series, wa: pd.Series, xya: pd.Series, da: pd.Series,
                     ib: pd.Series, hb: pd.Series, wb: pd.Series, xyb: pd.Series, db: pd.Series) -> pd.DataFrame:
        return verify_batch([ia, ha, wa, xya, da, ib, hb, wb, xyb, db], params)

    return verify_pairs
