"""Keypoint buckets -> pair rows, for one partition of (key, image, keypoint) rows (numpy only, no Spark).

The dedup stage hash-partitions the exploded keypoint rows by bucket key, so every row of a bucket is in
one partition; :func:`bucket_pairs` then sorts the partition by key and, in a few vectorised passes:

* finds each bucket's rows and its number of distinct images;
* ignores buckets of one image (almost all of them) and buckets over the cap (generic anatomy): more
  than ``cap`` images, or more than ``ROWS_PER_IMAGE * cap`` rows (images repeating one texture);
* emits, for every two rows of a kept bucket that belong to different images, one *pair row*
  (ia, ib, ka, kb): ia < ib the two image ids, ka and kb their keypoints.

The pair rows are then hash-partitioned by (ia, ib), and :func:`pair_counts` gives each pair's
``shared`` keypoints: the smaller of the numbers of distinct keypoints of a and of b in its rows (it does
not depend on which image is a, and bounds a one-to-one matching of the two images' keypoints).
The partitions' statistics come back with their rows (:data:`STAT_NAMES`), so the rows are read once.
"""
from __future__ import annotations

import numpy as np

#: statistics per partition, in this order; all are sums over partitions except ``max_bucket_images``
STAT_NAMES = ("buckets", "keypoint_rows", "shared_buckets", "over_cap_buckets", "over_cap_rows",
              "max_bucket_images", "pair_rows")
#: a bucket with more rows than this many times the cap is over the cap whatever its image count
ROWS_PER_IMAGE = 8
#: row pairs generated per vectorised step (bounds the memory of the index arrays)
STEP_PAIRS = 2_000_000


def bucket_pairs(key: np.ndarray, iid: np.ndarray, kp: np.ndarray, cap: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """(ia, ib, ka, kb, stats): the pair rows of the buckets in ``key``, ``iid``, ``kp`` (int64 each)."""
    key, iid, kp = (np.asarray(a, np.int64) for a in (key, iid, kp))
    empty = np.zeros(0, np.int64)
    stats = dict.fromkeys(STAT_NAMES, 0)
    if not len(key):
        return empty, empty, empty, empty, stats
    order = np.lexsort((kp, iid, key))            # by key, then image, then keypoint
    key, iid, kp = key[order], iid[order], kp[order]
    new_key = np.r_[True, key[1:] != key[:-1]]
    starts = np.flatnonzero(new_key)
    rows = np.diff(np.r_[starts, len(key)])
    new_img = new_key | np.r_[True, iid[1:] != iid[:-1]]
    images = np.add.reduceat(new_img.astype(np.int64), starts)
    over = (images > cap) | (rows > ROWS_PER_IMAGE * cap)
    stats.update(buckets=len(starts), keypoint_rows=len(key), shared_buckets=int((images >= 2).sum()),
                 over_cap_buckets=int(over.sum()), over_cap_rows=int(rows[over].sum()),
                 max_bucket_images=int(images.max()))
    keep = (images >= 2) & ~over
    out_a, out_b, out_ka, out_kb = [], [], [], []
    # buckets of equal row count at once: an (n_buckets, c) index matrix and the c*(c-1)/2 row pairs
    for c in np.unique(rows[keep]):
        firsts = starts[keep & (rows == c)]
        i, j = np.triu_indices(int(c), 1)
        step = max(1, STEP_PAIRS // len(i))
        for s in range(0, len(firsts), step):
            first = firsts[s:s + step]
            x, y = (first[:, None] + i[None, :]).ravel(), (first[:, None] + j[None, :]).ravel()
            a, b = iid[x], iid[y]
            differ = a != b
            x, y, a, b = x[differ], y[differ], a[differ], b[differ]
            lo = a < b
            out_a.append(np.where(lo, a, b))
            out_b.append(np.where(lo, b, a))
            out_ka.append(np.where(lo, kp[x], kp[y]))
            out_kb.append(np.where(lo, kp[y], kp[x]))
    if not out_a:
        return empty, empty, empty, empty, stats
    ia, ib, ka, kb = (np.concatenate(o) for o in (out_a, out_b, out_ka, out_kb))
    stats["pair_rows"] = len(ia)
    return ia, ib, ka, kb, stats


def _distinct_per_pair(ia: np.ndarray, ib: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each (ia, ib) run, distinct k in it), for rows sorted by (ia, ib, k)."""
    new_pair = np.r_[True, (ia[1:] != ia[:-1]) | (ib[1:] != ib[:-1])]
    starts = np.flatnonzero(new_pair)
    new_k = new_pair | np.r_[True, k[1:] != k[:-1]]
    return starts, np.add.reduceat(new_k.astype(np.int64), starts)


def pair_counts(ia: np.ndarray, ib: np.ndarray, ka: np.ndarray, kb: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ia, ib, shared, rows) per distinct pair of the pair rows; every row of a pair must be here."""
    ia, ib, ka, kb = (np.asarray(a, np.int64) for a in (ia, ib, ka, kb))
    if not len(ia):
        e = np.zeros(0, np.int64)
        return e, e, e, e
    o = np.lexsort((ka, ib, ia))
    starts, na = _distinct_per_pair(ia[o], ib[o], ka[o])
    rows = np.diff(np.r_[starts, len(ia)])
    pa, pb = ia[o][starts], ib[o][starts]
    o = np.lexsort((kb, ib, ia))
    _, nb = _distinct_per_pair(ia[o], ib[o], kb[o])   # the same pairs, in the same order
    return pa, pb, np.minimum(na, nb), rows
