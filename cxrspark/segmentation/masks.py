"""Lung masks as numpy arrays: V7 polygon annotations -> binary masks, post-processing, QC, crops.

Pure numpy/Pillow/scikit-image (no Spark, no TensorFlow). Masks are 2-D uint8 arrays of 0 (background)
and 1 (lung). Conventions:

- V7 ("Darwin JSON") polygons are in pixel coordinates of the ORIGINAL image, whose size the JSON
  records (``image.width`` / ``image.height``). A point (x, y) names the pixel centre at column x,
  row y. Rasterising into an image written at another size scales each centre:
  ``x' = (x + 0.5) * w / W - 0.5`` (same for y), and a pixel is lung when its centre lies inside a
  polygon or on its edge (scikit-image's ``draw.polygon`` rule).
- Every lung polygon of an annotation is filled; both lungs are one class.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.draw import polygon as fill_polygon

from cxrspark.images.transforms import resize

#: annotation names that mean "lung" (V7 uses "Lung"; compared case-insensitively)
LUNG_NAMES = ("lung", "left lung", "right lung")


class AnnotationError(ValueError):
    """An annotation that cannot give a lung mask; the message starts with a reason code."""


@dataclass
class LungAnnotation:
    original_filename: str
    width: int  # the original image's size, the polygons' coordinate frame
    height: int
    polygons: list[np.ndarray] = field(default_factory=list)  # each (n, 2) float: x, y


def parse_v7(doc: dict | str | bytes) -> LungAnnotation:
    """One V7 Darwin JSON document -> its lung polygons; raises AnnotationError with a reason code."""
    if isinstance(doc, (str, bytes)):
        try:
            doc = json.loads(doc)
        except ValueError as exc:
            raise AnnotationError(f"bad_json: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("image"), dict):
        raise AnnotationError("bad_annotation: no 'image' object")
    image = doc["image"]
    name = image.get("original_filename")
    try:
        width, height = int(image["width"]), int(image["height"])
    except (KeyError, TypeError, ValueError):
        raise AnnotationError(f"bad_image_size: width={image.get('width')!r} height={image.get('height')!r}") from None
    if not name or width < 1 or height < 1:
        raise AnnotationError(f"bad_image_size: {name!r} {width}x{height}")
    polygons = []
    for ann in doc.get("annotations") or []:
        if str(ann.get("name", "")).strip().lower() not in LUNG_NAMES or "polygon" not in ann:
            continue
        try:
            pts = np.array([[float(p["x"]), float(p["y"])] for p in ann["polygon"]["path"]], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise AnnotationError(f"bad_polygon: {name}: {exc!r}") from None
        if len(pts) < 3 or not np.isfinite(pts).all():
            raise AnnotationError(f"bad_polygon: {name}: {len(pts)} points")
        polygons.append(pts)
    if not polygons:
        tags = sorted(str(a.get("name")) for a in doc.get("annotations") or [])
        raise AnnotationError(f"no_lung_polygon: {name} (annotations: {', '.join(tags[:4]) or 'none'})")
    return LungAnnotation(name, width, height, polygons)


def rasterise(polygons: list[np.ndarray], original_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Fill `polygons` (x, y in the original (width, height)) into a mask of `size` (width, height)."""
    (ow, oh), (w, h) = original_size, size
    mask = np.zeros((h, w), dtype=np.uint8)
    for pts in polygons:
        x = (pts[:, 0] + 0.5) * w / ow - 0.5
        y = (pts[:, 1] + 0.5) * h / oh - 0.5
        rr, cc = fill_polygon(y, x, shape=mask.shape)
        mask[rr, cc] = 1
    return mask


def resize_mask(mask: np.ndarray, size: int, mode: str = "pad") -> np.ndarray:
    """The geometry of cxrspark.images.transforms.resize (so mask and image stay aligned); a pixel is
    lung when most of the area it covers is."""
    return (resize(mask.astype(np.uint8) * 255, size, mode, resample="box") >= 128).astype(np.uint8)


# ---- metrics ------------------------------------------------------------------------------------
def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2|A∩B| / (|A|+|B|); 1.0 when both are empty."""
    p, t = pred.astype(bool), truth.astype(bool)
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(p, t).sum() / total)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """|A∩B| / |A∪B|; 1.0 when both are empty."""
    p, t = pred.astype(bool), truth.astype(bool)
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


# ---- post-processing and QC ---------------------------------------------------------------------
@dataclass
class LungQC:
    area_fraction: float  # lung pixels / image pixels, after cleaning
    components: int  # connected regions of the raw thresholded mask larger than `min_component`
    ok: bool
    reason: str | None  # why the mask is implausible (None when ok)


def clean_mask(prob: np.ndarray, threshold: float = 0.5, min_component: float = 0.005,
               keep: int = 2) -> tuple[np.ndarray, int]:
    """Threshold a probability map, keep the `keep` largest regions, fill their holes.

    Returns (mask, n) where n counts the raw mask's regions covering at least `min_component` of the
    image (the QC signal: two lungs give 1 or 2, a scattered prediction gives more).
    """
    raw = prob >= threshold
    labels, n = ndimage.label(raw)
    if n == 0:
        return np.zeros(prob.shape, dtype=np.uint8), 0
    sizes = ndimage.sum_labels(raw, labels, index=np.arange(1, n + 1))
    significant = int((sizes >= min_component * raw.size).sum())
    order = np.argsort(sizes)[::-1][:keep] + 1
    kept = np.isin(labels, order[sizes[order - 1] >= min_component * raw.size])
    return ndimage.binary_fill_holes(kept).astype(np.uint8), significant


def lung_qc(mask: np.ndarray, components: int, *, min_area: float, max_area: float,
            max_components: int) -> LungQC:
    """Is this a plausible pair of lungs? Area within [min_area, max_area], 1..max_components regions."""
    area = float(mask.mean()) if mask.size else 0.0
    reason = None
    if components == 0 or area == 0.0:
        reason = "no_lungs_found"
    elif area < min_area:
        reason = f"lung_area_too_small: {area:.3f} < {min_area}"
    elif area > max_area:
        reason = f"lung_area_too_large: {area:.3f} > {max_area}"
    elif components > max_components:
        reason = f"too_many_regions: {components} > {max_components}"
    return LungQC(round(area, 4), components, reason is None, reason)


def lung_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right), exclusive ends, of the mask grown by `margin` x the box's size."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dy, dx = round((bottom - top) * margin), round((right - left) * margin)
    h, w = mask.shape
    return max(0, top - dy), max(0, left - dx), min(h, bottom + dy), min(w, right + dx)


def crop_to_lungs(image: np.ndarray, mask: np.ndarray, margin: float) -> np.ndarray:
    """The image cut to the lung box (with margin), resized back to the image's size, aspect kept
    (padded). No lungs -> the image unchanged."""
    box = lung_box(mask, margin)
    if box is None:
        return image
    top, left, bottom, right = box
    return resize(image[top:bottom, left:right], image.shape[0], "pad")


def mask_in_stored_frame(mask: np.ndarray, stored_image: str, crop_margin: float) -> np.ndarray:
    """The stored mask (always in the full image's frame) aligned with the stored image: for
    ``lung_crop`` cut and resized exactly like the image, else unchanged."""
    if stored_image != "lung_crop":
        return mask
    return (crop_to_lungs(mask.astype(np.uint8) * 255, mask, crop_margin) >= 128).astype(np.uint8)


def mask_outside_lungs(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Non-lung pixels set to 0."""
    return np.where(mask.astype(bool), image, 0).astype(np.uint8)


# ---- compact storage ----------------------------------------------------------------------------
def encode_mask(mask: np.ndarray) -> bytes:
    """A binary mask as a 1-bit PNG (typically a few hundred bytes for a 224 px lung mask)."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(bool)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)).convert("1"), dtype=np.uint8)


# ---- one image's segmentation result ------------------------------------------------------------
STORED_IMAGES = ("full", "lung_crop", "lung_masked")


@dataclass
class LungResult:
    image: np.ndarray  # the image to store for training (full, lung-cropped or lung-masked)
    mask: np.ndarray  # the cleaned lung mask, in the FULL image's frame
    qc: LungQC


def analyse(image: np.ndarray, prob: np.ndarray, *, stored_image: str = "full", crop_margin: float = 0.05,
            threshold: float = 0.5, min_area: float = 0.08, max_area: float = 0.65,
            max_components: int = 2, min_region: float = 0.01) -> LungResult:
    """Probability map -> cleaned mask, QC, and the stored image. An implausible mask still gives
    a result (flagged in ``qc``); with no lungs at all a crop or mask falls back to the full image."""
    if stored_image not in STORED_IMAGES:
        raise ValueError(f"stored_image must be one of {STORED_IMAGES}, not {stored_image!r}")
    mask, components = clean_mask(prob, threshold, min_component=min_region)
    qc = lung_qc(mask, components, min_area=min_area, max_area=max_area, max_components=max_components)
    if stored_image == "lung_crop":
        stored = crop_to_lungs(image, mask, crop_margin)
    elif stored_image == "lung_masked" and mask.any():
        stored = mask_outside_lungs(image, mask)
    else:
        stored = image
    return LungResult(stored, mask, qc)
