"""Is image B a copy of image A? Geometric + high-pass-detail verification of a candidate pair.

Look-alike chest X-rays (different patients, or one patient's serial films) share anatomy, so they share
keypoints and even a rough global alignment; what only a copy shares is the *detail*: film grain,
vessel edges, noise, at the same places. So, for a candidate pair:

1. match RootSIFT descriptors (mutual nearest neighbours passing Lowe's ratio test);
2. fit an affine transform B -> A with RANSAC; require ``min_inliers`` inliers, a scale within
   [1/max_scale, max_scale], a rotation within +-``max_rotation`` degrees, an aspect change (x scale /
   y scale) within ``max_aspect``, almost no shear and no mirroring: a similarity, up to a copy resized
   to another aspect ratio;
3. warp one image onto the other, into the frame that holds the common area at the lower resolution
   (the shrunk image is low-pass filtered first, so its finer detail does not alias); require the overlap (the common area over the smaller image's area) >= ``min_overlap``;
4. detail = image minus its Gaussian blur; over a grid of blocks in the common area, the Pearson
   correlation of A's and warped B's detail; the median over blocks is the *detail score*. A copy
   (re-encoded, re-windowed, resized, cropped) keeps it high; a look-alike does not.

Re-windowing (gamma, contrast) is locally close to linear and Pearson correlation ignores it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VerifyParams:
    ratio: float = 0.85          # Lowe's ratio test
    ransac_px: float = 3.0       # RANSAC reprojection threshold (working-image px)
    min_inliers: int = 8
    max_scale: float = 3.0
    max_rotation: float = 20.0   # degrees
    max_aspect: float = 1.25     # x scale / y scale (a copy resized to another aspect ratio)
    max_shear: float = 0.1       # |cos| of the angle between the transformed axes
    min_overlap: float = 0.5
    min_detail: float = 0.5
    blur_sigma: float = 2.0      # px of the working image
    grid: int = 8                # blocks per side over the common area
    min_block_valid: float = 0.8 # a block counts when this share of it is common area


@dataclass
class Verdict:
    copy: bool
    inliers: int = 0
    scale: float = float("nan")
    rotation: float = float("nan")
    overlap: float = 0.0
    detail: float = float("nan")
    why: str = ""

    def evidence(self) -> str:
        return (f"{self.inliers} inliers, scale {self.scale:.3f}, rotation {self.rotation:.1f} deg, "
                f"overlap {self.overlap:.2f}, detail {self.detail:.3f}")


def match(desc_a: np.ndarray, desc_b: np.ndarray, ratio: float) -> np.ndarray:
    """(k, 2) index pairs (i in A, j in B): mutual nearest neighbours that pass the ratio test."""
    if len(desc_a) < 2 or len(desc_b) < 2:
        return np.zeros((0, 2), np.int64)
    a = desc_a.astype(np.float32)
    b = desc_b.astype(np.float32)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    np.maximum(d2, 0, out=d2)
    nn_ab = np.argmin(d2, axis=1)
    nn_ba = np.argmin(d2, axis=0)
    two = np.partition(d2, 1, axis=1)[:, :2]
    good = (np.sqrt(two[:, 0]) < ratio * np.sqrt(two[:, 1])) & (nn_ba[nn_ab] == np.arange(len(a)))
    i = np.nonzero(good)[0]
    return np.stack([i, nn_ab[i]], axis=1)


def _detail(img: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    f = img.astype(np.float32)
    return f - cv2.GaussianBlur(f, (0, 0), sigma)


def detail_score(a: np.ndarray, b_warped: np.ndarray, valid: np.ndarray, p: VerifyParams) -> float:
    """Median over grid blocks of the correlation of the two images' high-pass detail."""
    ys, xs = np.nonzero(valid)
    if not len(ys):
        return float("nan")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    da, db = _detail(a, p.blur_sigma), _detail(b_warped, p.blur_sigma)
    scores = []
    ey = np.linspace(y0, y1, p.grid + 1).astype(int)
    ex = np.linspace(x0, x1, p.grid + 1).astype(int)
    for i in range(p.grid):
        for j in range(p.grid):
            sl = (slice(ey[i], ey[i + 1]), slice(ex[j], ex[j + 1]))
            m = valid[sl]
            if m.size < 16 or m.mean() < p.min_block_valid:
                continue
            x, y = da[sl][m], db[sl][m]
            x = x - x.mean()
            y = y - y.mean()
            den = math.sqrt(float((x * x).sum() * (y * y).sum()))
            if den > 1e-6:
                scores.append(float((x * y).sum() / den))
    return float(np.median(scores)) if scores else float("nan")


def verify(img_a: np.ndarray, xy_a: np.ndarray, desc_a: np.ndarray,
           img_b: np.ndarray, xy_b: np.ndarray, desc_b: np.ndarray,
           p: VerifyParams = VerifyParams()) -> Verdict:
    """Verdict on whether B is a copy of A (symmetric up to the direction of the fitted transform)."""
    import cv2

    cv2.setNumThreads(1)
    m = match(desc_a, desc_b, p.ratio)
    if len(m) < max(p.min_inliers, 3):
        return Verdict(False, inliers=len(m), why="too_few_matches")
    src = xy_b[m[:, 1]].astype(np.float32)
    dst = xy_a[m[:, 0]].astype(np.float32)
    M, inl = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=p.ransac_px,
                                  maxIters=2000, confidence=0.995, refineIters=10)
    if M is None:
        return Verdict(False, why="no_transform")
    n_in = int(inl.sum())
    a = M[:, :2]
    det = float(np.linalg.det(a))
    scale = math.sqrt(abs(det))
    rot = float(math.degrees(math.atan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1])))
    sx, sy = float(np.hypot(*a[:, 0])), float(np.hypot(*a[:, 1]))
    aspect = sx / sy if sy > 0 else float("inf")
    shear = abs(float(a[:, 0] @ a[:, 1])) / max(sx * sy, 1e-12)
    v = Verdict(False, inliers=n_in, scale=scale, rotation=rot)
    if n_in < p.min_inliers:
        v.why = "too_few_inliers"
        return v
    if (det <= 0 or not 1.0 / p.max_scale <= scale <= p.max_scale or abs(rot) > p.max_rotation
            or not 1.0 / p.max_aspect <= aspect <= p.max_aspect or shear > p.max_shear):
        v.why = "transform_out_of_bounds"
        return v
    # compare in the frame that holds the common area at the lower resolution: the other image is shrunk
    # into it, low-pass filtered first so its finer detail does not alias
    target, moving = img_a, img_b
    if scale > 1.0:
        target, moving, M = img_b, img_a, cv2.invertAffineTransform(M)
    shrink = min(math.sqrt(abs(float(np.linalg.det(M[:, :2])))), 1.0)
    if shrink < 0.95:
        moving = cv2.GaussianBlur(moving, (0, 0), 0.5 * math.sqrt(1.0 / shrink ** 2 - 1.0))
    h, w = target.shape
    warped = cv2.warpAffine(moving, M, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    valid = cv2.warpAffine(np.ones(moving.shape, np.uint8), M, (w, h), flags=cv2.INTER_NEAREST,
                           borderValue=0).astype(bool)
    # shrink by the blur's reach so the warped edge does not count as detail
    k = int(2 * p.blur_sigma) * 2 + 1
    valid = cv2.erode(valid.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
    common = float(valid.sum())
    smaller = min(float(h * w), float(moving.shape[0] * moving.shape[1]) * shrink * shrink)
    v.overlap = min(1.0, common / max(smaller, 1.0))
    if v.overlap < p.min_overlap:
        v.why = "small_overlap"
        return v
    v.detail = detail_score(target, warped, valid, p)
    if not v.detail >= p.min_detail:
        v.why = "detail_differs"
        return v
    v.copy = True
    return v
