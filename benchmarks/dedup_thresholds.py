"""How the near-duplicate thresholds were chosen, measured on the real data set.

    .venv/bin/python benchmarks/dedup_thresholds.py [--data ../shared/data/cxr] [--copies 150]

Prints (1) for all pairs of distinct image files, how many fall at each pHash Hamming distance and how
their 32x32 thumbnails correlate, and (2) for synthetic copies of real images (JPEG quality 75, 0.8x
resize, 2% and 4% crop per side) the distance and correlation to their original. A good rule keeps the
copies and rejects the distinct pairs.
"""
from __future__ import annotations

import argparse
import io
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrspark.images import decode_image, hamming, phash  # noqa: E402
from cxrspark.images.hashing import thumb_correlation, thumbnail, to_unsigned64  # noqa: E402
from cxrspark.sources.base import IMAGE_SUFFIXES  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cxr"))
    ap.add_argument("--copies", type=int, default=150)
    args = ap.parse_args()
    files = sorted(p for p in Path(args.data).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    pixels = [decode_image(p.read_bytes()).pixels for p in files]
    hashes = np.array([to_unsigned64(phash(px)) for px in pixels], dtype=np.uint64)
    thumbs = np.stack([np.frombuffer(thumbnail(px), np.uint8).astype(np.float64) for px in pixels])
    thumbs -= thumbs.mean(1, keepdims=True)
    thumbs /= np.linalg.norm(thumbs, axis=1, keepdims=True) + 1e-12
    x = hashes[:, None] ^ hashes[None, :]
    dist = sum(((x >> np.uint64(i)) & np.uint64(1)).astype(np.int32) for i in range(64))
    iu = np.triu_indices(len(files), 1)
    d, c = dist[iu], (thumbs @ thumbs.T)[iu]
    print(f"{len(files)} files, {len(d)} pairs of distinct files")
    print("| pHash distance | pairs | corr min | corr median | corr max | pairs with corr >= 0.95 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for k in range(0, 13, 2):
        m = d == k
        if m.any():
            print(f"| {k} | {m.sum()} | {c[m].min():.3f} | {np.median(c[m]):.3f} | {c[m].max():.3f} "
                  f"| {(c[m] >= 0.95).sum()} |")

    rng = random.Random(0)
    out: dict[str, list[tuple[int, float]]] = {"jpeg q75": [], "resize 0.8x": [], "crop 2%": [], "crop 4%": []}
    for i in rng.sample(range(len(files)), min(args.copies, len(files))):
        im = Image.fromarray(pixels[i])
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=75)
        w, h = im.size
        copies = {"jpeg q75": decode_image(buf.getvalue()).pixels,
                  "resize 0.8x": np.asarray(im.resize((int(w * .8), int(h * .8))))}
        for name, f in (("crop 2%", .02), ("crop 4%", .04)):
            copies[name] = np.asarray(im.crop((int(w * f), int(h * f), w - int(w * f), h - int(h * f))))
        for name, px in copies.items():
            out[name].append((hamming(phash(px), phash(pixels[i])),
                              thumb_correlation(thumbnail(px), thumbnail(pixels[i]))))
    print("\n| copy | distance median | distance p90 | distance max | corr min | corr p10 | found at <= 8 bits and corr >= 0.95 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in out.items():
        a = np.array(r)
        found = ((a[:, 0] <= 8) & (a[:, 1] >= 0.95)).mean()
        print(f"| {name} | {np.median(a[:, 0]):.0f} | {np.quantile(a[:, 0], .9):.0f} | {a[:, 0].max():.0f} "
              f"| {a[:, 1].min():.3f} | {np.quantile(a[:, 1], .1):.3f} | {found:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
