"""Local keypoint descriptors of a chest X-ray, bucketed for near-duplicate search (numpy + OpenCV only).

Public CXR collections re-publish each other's images re-cropped, re-windowed, re-encoded and with
burnt-in labels removed. A global hash of the whole picture moves with every crop; local descriptors of
the anatomy do not. Per image:

1. the decoded greyscale pixels, flat borders (padding, black bars) trimmed, resized so the longer side
   is ``WORK_SIZE`` px: the *working image*, also kept for verification;
2. OpenCV SIFT (contrast threshold ``contrast_threshold``, 0.01), upright (every keypoint's angle set
   to 0: copies are not rotated by more than a few degrees, and an orientation per keypoint would only
   add look-alike matches), the ``n_keypoints`` strongest, one per location, described as RootSIFT
   (L1-normalised, square root). All of them are bucketed; verification uses those that reach
   ``verify_contrast`` (0.02), the keypoints its thresholds were measured with;
3. a fixed projection (centring + PCA to ``PROJ_DIMS`` dimensions, :data:`PROJECTION`), then
   ``tables`` SimHash tables of ``bits`` random hyperplanes each: every keypoint gets one bucket key per
   table. Two images that share at least ``min_shared`` keypoints landing in a common bucket are a
   candidate pair.

The PCA (``dedup_projection.npz`` beside this module) was fitted with :func:`fit_projection` on 100,000
RootSIFT descriptors drawn (numpy seed 0) from the 442,229 of the 1,928 real images of the development
snapshot; the hyperplanes come from a fixed seed. :func:`lsh_digest` names the exact matrices, and the
ingest puts it in the dataset hash, so changing them changes the hash.
"""
from __future__ import annotations

import hashlib
import io
import pkgutil
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: longer side of the working image (px)
WORK_SIZE = 256
#: dimensions kept by the PCA before SimHash
PROJ_DIMS = 64
#: SIFT's contrast threshold of the BUCKETED keypoints: 0.01 keeps enough keypoints on smooth, low-contrast
#: films and their shrunken copies, which at 0.02 had as few as 14-70 (benchmarks/README.md)
CONTRAST_THRESHOLD = 0.01
#: the contrast threshold of the keypoints VERIFICATION uses (a subset: the bucketed keypoints whose
#: response reaches it). More, weaker keypoints align one patient's serial films well enough to raise their
#: detail score into the copies' range; these keep the verification measured before (copies vs serial films)
VERIFY_CONTRAST = 0.02
#: OpenCV's SIFT keeps a keypoint when its response reaches contrastThreshold / nOctaveLayers (3)
_OCTAVE_LAYERS = 3
#: RootSIFT descriptors are stored as uint8: round(value * DESC_SCALE), clipped to 255
DESC_SCALE = 512.0
#: a border row/column whose pixels vary by at most this much (std, grey levels) is "flat" and trimmed
FLAT_STD = 2.0
#: bits of a bucket key reserved for the table number (key = table << TABLE_SHIFT | hash bits)
TABLE_SHIFT = 56
#: the PCA of RootSIFT descriptors, package data (read with pkgutil: works from a --py-files zip too)
PROJECTION_FILE = "dedup_projection.npz"
_HYPERPLANE_SEED = 20261201


@dataclass(frozen=True)
class KeypointParams:
    """How many keypoints per image and how they are bucketed (ingest.dedup)."""

    n_keypoints: int = 300
    tables: int = 8
    bits: int = 40
    work_size: int = WORK_SIZE
    contrast_threshold: float = CONTRAST_THRESHOLD
    verify_contrast: float = VERIFY_CONTRAST


@dataclass
class Keypoints:
    """What the dedup stage stores per image."""

    image: np.ndarray        # working image, uint8 (h, w), longer side WORK_SIZE (smaller images: unscaled)
    xy: np.ndarray           # float32 (m, 2): positions (x, y) of the verification keypoints in the working image
    desc: np.ndarray         # uint8 (m, 128): their RootSIFT * DESC_SCALE
    keys: np.ndarray         # int64 (n * tables,): bucket keys of all n >= m keypoints, keypoint-major
                             # (keypoint i: keys[i*T:(i+1)*T]); the first m are the verification keypoints


def trim_flat_borders(pixels: np.ndarray, flat_std: float = FLAT_STD) -> np.ndarray:
    """Drop border rows and columns that carry no picture (constant padding, black or white bars)."""
    img = pixels.astype(np.float32)
    rows = img.std(axis=1) > flat_std
    cols = img.std(axis=0) > flat_std
    if rows.sum() < 16 or cols.sum() < 16:  # (almost) flat image: keep as is
        return pixels
    r0, r1 = int(np.argmax(rows)), len(rows) - int(np.argmax(rows[::-1]))
    c0, c1 = int(np.argmax(cols)), len(cols) - int(np.argmax(cols[::-1]))
    return pixels[r0:r1, c0:c1]


def working_image(pixels: np.ndarray, size: int = WORK_SIZE) -> np.ndarray:
    """Trimmed, resized (longer side ``size``, area interpolation when shrinking) uint8 image."""
    import cv2

    img = np.ascontiguousarray(trim_flat_borders(pixels), dtype=np.uint8)
    h, w = img.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(img, (nw, nh), interpolation=interp)


def sift_keypoints(img: np.ndarray, n_keypoints: int, contrast_threshold: float = CONTRAST_THRESHOLD,
                   verify_contrast: float = VERIFY_CONTRAST) -> tuple[np.ndarray, np.ndarray, int]:
    """Upright SIFT on ``img``: the ``n_keypoints`` strongest locations, as (xy float32, RootSIFT float32,
    m), strongest first; the first m reach ``verify_contrast`` (they are what SIFT at that threshold
    finds: its keypoints are exactly those of a lower threshold whose response reaches it)."""
    import cv2

    cv2.setNumThreads(1)  # a Spark task holds one core
    sift = cv2.SIFT_create(contrastThreshold=contrast_threshold)
    kps = sift.detect(img, None)
    # one keypoint per location and scale (SIFT repeats a location once per dominant orientation)
    best: dict[tuple, cv2.KeyPoint] = {}
    for k in kps:
        key = (round(k.pt[0], 1), round(k.pt[1], 1), round(k.size, 1))
        if key not in best or k.response > best[key].response:
            best[key] = k
    chosen = sorted(best.values(), key=lambda k: (-k.response, k.pt[1], k.pt[0], k.size))[:n_keypoints]
    upright = [cv2.KeyPoint(k.pt[0], k.pt[1], k.size, 0.0, k.response, k.octave) for k in chosen]
    strong = [k for k in upright if k.response >= verify_contrast / _OCTAVE_LAYERS]
    weak = [k for k in upright if k.response < verify_contrast / _OCTAVE_LAYERS]
    # described apart: SIFT builds its pyramid from the octaves of the keypoints it is given, so the strong
    # ones get exactly the descriptors SIFT at verify_contrast gives them, whatever the weak ones are
    xy_s, rs_s = _rootsift(sift, img, strong)
    xy_w, rs_w = _rootsift(sift, img, weak)
    return np.concatenate([xy_s, xy_w]), np.concatenate([rs_s, rs_w]), len(xy_s)


def _rootsift(sift, img: np.ndarray, kps: list) -> tuple[np.ndarray, np.ndarray]:
    """(xy, RootSIFT) of upright keypoints (those SIFT cannot describe, at the border, are dropped)."""
    empty = np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    if not kps:
        return empty
    kps, desc = sift.compute(img, kps)
    if desc is None or not len(kps):
        return empty
    desc = desc.astype(np.float32)
    desc /= desc.sum(axis=1, keepdims=True) + 1e-7
    return np.array([k.pt for k in kps], dtype=np.float32), np.sqrt(desc)


@dataclass(frozen=True)
class Projection:
    mean: np.ndarray         # (128,)
    components: np.ndarray   # (128, PROJ_DIMS)
    planes: np.ndarray       # (tables, bits, PROJ_DIMS)

    @property
    def tables(self) -> int:
        return self.planes.shape[0]

    @property
    def bits(self) -> int:
        return self.planes.shape[1]


def fit_projection(rootsift: np.ndarray, dims: int = PROJ_DIMS) -> dict[str, np.ndarray]:
    """Mean and the top ``dims`` principal axes (whitened) of a sample of RootSIFT descriptors."""
    x = rootsift.astype(np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    scale = s[:dims] / np.sqrt(len(x))
    comps = vt[:dims].T / scale
    # a deterministic sign per axis (SVD's sign is arbitrary)
    comps *= np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(dims)])
    return {"mean": mean.astype(np.float32), "components": comps.astype(np.float32)}


@lru_cache(maxsize=8)
def projection(tables: int, bits: int) -> Projection:
    """The shipped PCA plus ``tables`` x ``bits`` Gaussian hyperplanes from a fixed seed."""
    if not 1 <= bits <= TABLE_SHIFT or not 1 <= tables < 128:
        raise ValueError(f"tables must be 1..127 and bits 1..{TABLE_SHIFT}, got {tables} x {bits}")
    data = pkgutil.get_data(__package__, PROJECTION_FILE)
    if data is None:
        raise FileNotFoundError(f"{__package__}/{PROJECTION_FILE} is missing from the installed package")
    with np.load(io.BytesIO(data)) as z:
        mean, comps = z["mean"].astype(np.float32), z["components"].astype(np.float32)
    rng = np.random.default_rng(_HYPERPLANE_SEED)
    planes = rng.standard_normal((tables, bits, comps.shape[1])).astype(np.float32)
    return Projection(mean, comps, planes)


def lsh_digest(tables: int, bits: int) -> str:
    """SHA-256 of the exact projection and hyperplanes in use (part of the dataset hash)."""
    p = projection(tables, bits)
    h = hashlib.sha256()
    for a in (p.mean, p.components, p.planes):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def bucket_keys(rootsift: np.ndarray, proj: Projection) -> np.ndarray:
    """int64 keys (n * tables,), keypoint-major: key = table << TABLE_SHIFT | SimHash bits."""
    if not len(rootsift):
        return np.zeros(0, np.int64)
    z = (rootsift - proj.mean) @ proj.components                     # (n, dims)
    signs = np.einsum("nd,tbd->ntb", z, proj.planes) > 0             # (n, T, B)
    weights = (np.int64(1) << np.arange(proj.bits, dtype=np.int64))[::-1]
    h = (signs.astype(np.int64) * weights).sum(axis=2)               # (n, T)
    tables = (np.arange(proj.tables, dtype=np.int64) << TABLE_SHIFT)[None, :]
    return (h | tables).reshape(-1)


def describe(pixels: np.ndarray, params: KeypointParams = KeypointParams()) -> Keypoints:
    """Working image, keypoints and bucket keys of one decoded greyscale image."""
    img = working_image(pixels, params.work_size)
    xy, rs, m = sift_keypoints(img, params.n_keypoints, params.contrast_threshold, params.verify_contrast)
    keys = bucket_keys(rs, projection(params.tables, params.bits))
    desc = np.clip(np.rint(rs[:m] * DESC_SCALE), 0, 255).astype(np.uint8)
    return Keypoints(img, xy[:m], desc, keys)
