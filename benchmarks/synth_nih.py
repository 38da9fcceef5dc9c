"""Synthetic NIH ChestX-ray14 source at full scale (112,120 images) for the ingest-scale benchmark.

    .venv/bin/python benchmarks/synth_nih.py --out DIR --n N [--seed 0] [--size 256] [--workers 2]

Writes DIR/Data_Entry_2017_v2020.csv (the real NIH header and its FIRST n data lines, byte for byte: the
real metadata, whole patients except possibly the last) and DIR/images/<Image Index>, one 8-bit
greyscale size x size PNG per row, plus DIR/synth_manifest.json (the planted copy pairs).

Why the pixels are built this way: the development set has only ~1,900 real images, so each is the
base of ~60 outputs, and the ingest's near-duplicate search (upright SIFT -> RootSIFT -> SimHash
buckets; RANSAC affine + high-pass detail check) is built to find crops and re-windowed copies: flips,
crops and rotations of a shared base would be found, or flood the candidate search with pairs that a
real data set does not have. So an output keeps only the LOW spatial frequencies (below ~6 cycles per
image, tapered out by 12) of its base, randomly flipped, rotated, cropped, scaled and elastically
warped (so no two outputs of one base are affine images of each other): lungs, mediastinum, diaphragm,
it still reads as a chest X-ray. Above the cutoff the DCT signs (the DCT's "phase"; unlike an FFT it
does not turn the image edges into streaks) are random per row, keeping the base's amplitude spectrum
(real texture statistics, about the size and decode cost of a real PNG), and that band is re-modulated
by the base's local detail envelope (grain where the base has anatomy, calm where it has background).
SIFT's keypoints then come from content unique to each output; random gamma, contrast and brightness
vary the windowing. Each image depends only on (seed, row), so the workers share no state but the pool.

Planted copies: ``planted_fraction`` of the rows (never the first) are instead a re-published copy of
an earlier row's image (crop up to 15 % per side, resized back, gamma 0.8-1.25, JPEG 70-95 round
trip, saved as PNG), often of another patient: the pairs the dedup stage must find.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import scipy.fft as sfft
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
NIH_CSV = REPO.parent / "shared/data/meta/nih/Data_Entry_2017_v2020.csv.gz"
CXR_DIR = REPO.parent / "shared/data/cxr"
CHUNK = 250                  # rows per worker task
CUTOFF = (6.0, 12.0)         # base kept below the first radius (cycles / image), tapered out by the second
WARP_PX, WARP_GRID = 8.0, 5  # elastic displacement: std (px of a 256 px image), control grid size
ENVELOPE_PX = 19             # box (px of a 256 px image) over which the detail envelope is measured
_POOL: list[np.ndarray] = []


def _hash(seed: int, idx: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of (seed, row, salt), vectorised: uint64 per row."""
    with np.errstate(over="ignore"):
        z = np.asarray(idx, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z ^= np.uint64((seed * 1_000_003 + salt * 7919) & 0xFFFFFFFFFFFFFFFF)
        for m, s in ((0xBF58476D1CE4E5B9, 30), (0x94D049BB133111EB, 27)):
            z = (z ^ (z >> np.uint64(s))) * np.uint64(m)
        return z ^ (z >> np.uint64(31))


def plan(n: int, seed: int, fraction: float) -> np.ndarray:
    """source[i] = the row whose image row i copies (i itself when it is not a planted copy)."""
    idx = np.arange(n, dtype=np.uint64)
    planted = (_hash(seed, idx, 1) >> np.uint64(11)).astype(np.float64) / 2.0 ** 53 < fraction
    planted[:1] = False
    src = np.arange(n, dtype=np.int64)
    for i in np.flatnonzero(planted):
        j = int(_hash(seed, np.array([i]), 2)[0] % np.uint64(i))
        src[i] = src[j]           # j < i is resolved already: a copy of a copy is a copy of the original
    return src


def load_pool(root: Path = CXR_DIR, side: int = 320, limit: int | None = None) -> list[np.ndarray]:
    """Every decodable image under ``root`` (sorted paths), greyscale, longer side at most ``side``."""
    pool = []
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        try:
            with Image.open(p) as im:
                im = ImageOps.exif_transpose(im)
                if im.mode in ("P", "PA", "LA", "RGBA"):
                    im = im.convert("RGBA")
                    im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im)
                a = np.asarray(im.convert("L"), np.uint8)
        except Exception:  # not an image (metadata, zip) or not decodable: skipped
            continue
        if min(a.shape) < 32:
            continue
        if (s := side / max(a.shape)) < 1:
            a = cv2.resize(a, (round(a.shape[1] * s), round(a.shape[0] * s)), interpolation=cv2.INTER_AREA)
        pool.append(a)
        if limit and len(pool) >= limit:
            break
    return pool


@lru_cache(maxsize=4)
def _order(seed: int, epoch: int) -> np.ndarray:
    """Base image per row, balanced: every base once per epoch of len(pool) rows."""
    return np.random.default_rng([seed, epoch, 99]).permutation(len(_POOL))


@lru_cache(maxsize=2)
def _grid(size: int) -> np.ndarray:
    return np.mgrid[0:size, 0:size].astype(np.float32)


@lru_cache(maxsize=2)
def _masks(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Low-pass and high-pass weights over DCT-II coefficients (index k = k / 2 cycles per image)."""
    k = np.arange(size, dtype=np.float32) / 2
    t = np.clip((np.hypot(k[:, None], k[None, :]) - CUTOFF[0]) / (CUTOFF[1] - CUTOFF[0]), 0, 1)
    low = (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)
    return low, (1 - low).astype(np.float32)


def render(row: int, seed: int, size: int) -> np.ndarray:
    """The (non-copy) image of ``row``: low frequencies of a warped base + random-sign DCT detail."""
    rng = np.random.default_rng([seed, row])
    base = _POOL[int(_order(seed, row // len(_POOL))[row % len(_POOL)])]
    h, w = base.shape
    # output -> base: flip, rotation, a square-ish window of 70-100 % of the shorter side, anywhere
    side = rng.uniform(0.7, 1.0) * min(h, w)
    sx, sy = side / size * rng.uniform(0.92, 1.08), side / size
    ang = math.radians(rng.uniform(-12, 12))
    cx, cy = rng.uniform(side / 2, w - side / 2), rng.uniform(side / 2, h - side / 2)
    flip = -1.0 if rng.random() < 0.5 else 1.0
    c, s = math.cos(ang), math.sin(ang)
    a = np.array([[c * sx * flip, -s * sy], [s * sx * flip, c * sy]])
    t = np.array([cx, cy]) - a @ np.array([size / 2, size / 2])
    # plus a smooth random (elastic) displacement: no two outputs of one base are affine images of each other
    yy, xx = _grid(size)
    g = rng.standard_normal((WARP_GRID, WARP_GRID, 2)).astype(np.float32) * (WARP_PX * size / 256)
    dx, dy = cv2.split(cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC))
    u, v = xx + dx, yy + dy
    mx = (a[0, 0] * u + a[0, 1] * v + t[0]).astype(np.float32)
    my = (a[1, 0] * u + a[1, 1] * v + t[1]).astype(np.float32)
    x = cv2.remap(base, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101).astype(np.float32)
    # DCT, not FFT: its symmetric extension has no edge discontinuity (no axis-aligned streaks)
    low_m, high_m = _masks(size)
    f = sfft.dctn(x, norm="ortho")
    low = sfft.idctn(f * low_m, norm="ortho")
    sign = rng.integers(0, 2, f.shape, dtype=np.int8).astype(np.float32) * 2 - 1
    noise = sfft.idctn(np.abs(f) * high_m * sign, norm="ortho")
    k = (ENVELOPE_PX * size // 512 * 2 + 1,) * 2
    env = np.sqrt(cv2.blur((x - low) ** 2, k))   # where the base has detail (anatomy) and where not
    env_n = np.sqrt(cv2.blur(noise * noise, k))
    y = low + noise * (env / (env_n + 1e-3 + 0.05 * float(env_n.mean())))
    lo, hi = np.quantile(y[::4, ::4], [0.002, 0.998])
    y = np.clip((y - lo) / max(hi - lo, 1e-6), 0, 1) ** rng.uniform(0.75, 1.33)
    y = y * rng.uniform(0.85, 1.0) + rng.uniform(0, 0.1)
    return np.clip(y * 255 + 0.5, 0, 255).astype(np.uint8)


def republish(img: np.ndarray, row: int, seed: int) -> np.ndarray:
    """A planted copy: crop up to 15 % per side, resize back, gamma 0.8-1.25, JPEG 70-95 round trip."""
    rng = np.random.default_rng([seed, row, 7])
    n = img.shape[0]
    l, t, r, b = (int(rng.uniform(0, 0.15) * n) for _ in range(4))
    crop = cv2.resize(img[t:n - b, l:n - r], (n, n), interpolation=cv2.INTER_LINEAR)
    lut = np.clip(255 * (np.arange(256) / 255.0) ** rng.uniform(0.8, 1.25) + 0.5, 0, 255).astype(np.uint8)
    jpg = cv2.imencode(".jpg", cv2.LUT(crop, lut), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 96))])[1]
    return cv2.imdecode(jpg, cv2.IMREAD_GRAYSCALE)


def _work(task: tuple[list[int], list[int], list[str], int, int, str]) -> int:
    rows, srcs, names, seed, size, out = task
    cv2.setNumThreads(1)
    for i, j, name in zip(rows, srcs, names):
        img = render(j, seed, size)
        if j != i:
            img = republish(img, i, seed)
        # Huffman-only deflate: the fastest to write here, and the smallest for grainy content
        png = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3, cv2.IMWRITE_PNG_STRATEGY,
                                         cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY])[1]
        Path(out, name).write_bytes(png.tobytes())
    return len(rows)


def generate(out_dir: str | Path, n: int, seed: int = 0, size: int = 256, planted_fraction: float = 0.01,
             workers: int = 2, pool_limit: int | None = None) -> dict:
    """Write the CSV, the n PNGs and synth_manifest.json under ``out_dir``; return the manifest."""
    global _POOL
    t0 = time.time()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    with gzip.open(NIH_CSV, "rb") as fh:
        header = fh.readline()
        lines = [fh.readline() for _ in range(n)]
    lines = [ln for ln in lines if ln]
    n = len(lines)
    (out / NIH_CSV.name.removesuffix(".gz")).write_bytes(header + b"".join(lines))
    names = [ln.split(b",", 1)[0].decode() for ln in lines]
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # an OpenCV thread pool started before fork() deadlocks the workers
    _POOL = load_pool(limit=pool_limit)
    _order.cache_clear()
    t1 = time.time()
    src = plan(n, seed, planted_fraction).tolist()
    tasks = [(list(range(s, min(n, s + CHUNK))), src[s:s + CHUNK], names[s:s + CHUNK], seed, size,
              str(out / "images")) for s in range(0, n, CHUNK)]
    with get_context("fork").Pool(workers) as pool:  # fork: the workers share the decoded base pool
        done = sum(pool.imap_unordered(_work, tasks))
    cv2.setNumThreads(threads)
    t2 = time.time()
    manifest = {"n": done, "seed": seed, "size": size, "planted_fraction": planted_fraction,
                "base_pool": len(_POOL), "workers": workers, "seconds": round(t2 - t0, 1),
                "seconds_pool": round(t1 - t0, 1), "ms_per_image": round(1000 * (t2 - t1) / max(done, 1), 2),
                "planted": [[names[i], names[j]] for i, j in enumerate(src) if i != j]}
    (out / "synth_manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    for name, kind, default in (("--n", int, 112_120), ("--seed", int, 0), ("--size", int, 256),
                                ("--workers", int, 2), ("--planted-fraction", float, 0.01)):
        ap.add_argument(name, type=kind, default=default)
    ap.add_argument("--pool-limit", type=int, default=None, help="use only the first K base images (tests)")
    a = ap.parse_args()
    m = generate(a.out, a.n, a.seed, a.size, a.planted_fraction, a.workers, a.pool_limit)
    print(f"synth_nih: {m['n']} images ({m['size']} px, base pool {m['base_pool']}), {len(m['planted'])} planted"
          f" copies, {m['seconds']} s ({m['seconds_pool']} s pool, {m['ms_per_image']} ms/image wall with"
          f" {m['workers']} workers) -> {a.out}")


if __name__ == "__main__":
    main()
