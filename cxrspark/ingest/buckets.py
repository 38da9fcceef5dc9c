"""Keypoint buckets -> pair rows, for one partition of (key, image, keypoint) rows (numpy, no Spark).

The dedup stage sends the keypoint rows to partitions by bucket key, so every row of a bucket is in
one partition; :func:`bucket_pairs` then sorts the partition by key and, in a few vectorised passes:

* finds each bucket's rows and its number of distinct images;
* ignores buckets of one image (almost all of them) and buckets over the cap (generic anatomy): more
  than ``cap`` images, or more than ``ROWS_PER_IMAGE * cap`` rows (images repeating one texture);
* emits, for every two rows of a kept bucket that belong to different images, one *pair row*
  (ia, ib, ka, kb): ia < ib the two image ids, ka and kb their keypoints.

The pair rows are then sent to partitions by (ia, ib), and :func:`pair_counts` gives each pair's
``shared`` keypoints: the smaller of the numbers of distinct keypoints of a and of b in its rows (it does
not depend on which image is a, and bounds a one-to-one matching of the two images' keypoints).
The partitions' statistics travel with their rows (:data:`STAT_NAMES`, :data:`SEARCH_STATS`).

The same two functions are the whole search in one process (benchmarks/dedup_scale.py runs them over
all rows as the baseline); the Spark stage wraps them in the ``mapInArrow`` functions at the end of
this module, which move rows as binary blobs (pyarrow, numpy).
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


# ---- the Spark stage's partition functions (pyarrow record batches in and out, numpy inside) -------
# The rows between the stages are *blobs*: one row per (map batch, destination partition) holding the
# raw bytes of that destination's rows, column by column, so the shuffles move a few large rows instead
# of one 32-byte row per keypoint or pair: no per-row Spark, Arrow or pandas cost, and 12 bytes per
# keypoint row (the image as a 16-bit index into the blob's table of image ids) and 20 per pair row
# instead of 32. Column ``p`` is the destination: the value whose Spark hash partition is the wanted
# index (:func:`partition_values`).

#: keypoint index in the blobs (DedupConfig.keypoints <= 2000)
KP_DTYPE = np.int16
#: statistics of the whole search, in this order: STAT_NAMES, then what the pair counting adds;
#: all are sums over partitions except ``max_bucket_images``
SEARCH_STATS = STAT_NAMES + ("task_ms_bucket_pairs", "pairs_sharing_a_bucket", "task_ms_pair_counts")
#: mapInArrow output of :func:`key_blobs`: a destination, the (key, image, keypoint) rows bound there
#: (image: an index into ids) and ids, the 64-bit ids of the images of the batch the rows come from
KEY_BLOBS_DDL = "p int, key binary, img binary, kp binary, ids binary"
#: image index in a key blob: images per Arrow batch must stay below 2^16
IMG_DTYPE = np.uint16
#: mapInArrow output of :func:`pair_blobs`: a destination and its pair rows; a statistics blob has
#: ka = -1 - the index of the statistic in SEARCH_STATS and the value in ia
PAIR_BLOBS_DDL = "p int, ia binary, ib binary, ka binary, kb binary"
#: mapInArrow output of :func:`pair_count_rows`: candidate pairs (shared >= min_shared) and, per
#: partition, one row per SEARCH_STATS entry (shared = -1 - its index, the value in ia)
PAIR_COUNTS_DDL = "ia long, ib long, shared long, rows long"
#: rows of one blob (a destination with more rows gets several blobs) and bytes of one record batch
BLOB_ROWS = 4_000_000
BATCH_BYTES = 64 << 20
_MIX = np.uint64(0x9E3779B97F4A7C15)
_MIX_B = np.uint64(0xC2B2AE3D27D4EB4F)


def _murmur3_int(v: int, seed: int = 42) -> int:
    """Spark's Murmur3Hash of an int column (what ``repartition(n, col)`` partitions by)."""
    m = 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & m

    k = rotl((v & m) * 0xCC9E2D51 & m, 15) * 0x1B873593 & m
    h = (rotl(seed ^ k, 13) * 5 + 0xE6546B64) & m
    h ^= 4
    h ^= h >> 16
    h = h * 0x85EBCA6B & m
    h ^= h >> 13
    h = h * 0xC2B2AE35 & m
    h ^= h >> 16
    return h - (1 << 32) if h >= 1 << 31 else h


def partition_values(parts: int) -> np.ndarray:
    """For each partition index t < parts, an int whose Spark hash partition among ``parts`` is t.

    Only the balance depends on it: the rows of one value always meet in one partition.
    """
    out = np.full(parts, -1, np.int32)
    v = 0
    while (out < 0).any():
        t = _murmur3_int(v) % parts
        if out[t] < 0:
            out[t] = v
        v += 1
    return out


def destination(parts: int, a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Partition index (< parts) of each int64 value of ``a`` (or pair of values of ``a`` and ``b``)."""
    h = np.ascontiguousarray(a, np.int64).view(np.uint64) * _MIX
    if b is not None:
        h ^= np.ascontiguousarray(b, np.int64).view(np.uint64) * _MIX_B
    d = (h >> np.uint64(32)) % np.uint64(parts)
    return d.astype(np.int16 if parts < 1 << 15 else np.int32)


def _binary(a: np.ndarray, bounds: np.ndarray):
    """A pyarrow binary array: row i holds the bytes of a[bounds[i]:bounds[i + 1]]."""
    import pyarrow as pa

    a = np.ascontiguousarray(a)
    offsets = ((bounds - bounds[0]) * a.itemsize).astype(np.int32)
    data = a[bounds[0]:bounds[-1]]
    return pa.Array.from_buffers(pa.binary(), len(bounds) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _blob_batches(values: np.ndarray, dest: np.ndarray, cols: dict[str, np.ndarray], extra=None):
    """Record batches of blobs (column p = values[destination]) of the rows ``cols`` bound to ``dest``.

    ``extra``: (name, array): the same bytes in one more column of every blob (a table the rows refer to).
    """
    import pyarrow as pa

    parts = len(values)
    if not len(dest):
        return
    order = np.argsort(dest, kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    ends = np.cumsum(np.bincount(dest, minlength=parts))
    starts = ends - np.bincount(dest, minlength=parts)
    # blobs: (destination, first row, end row), large destinations cut in BLOB_ROWS pieces
    blobs = [(t, s, min(s + BLOB_ROWS, e)) for t, (s0, e) in enumerate(zip(starts.tolist(), ends.tolist()))
             for s in range(s0, e, BLOB_ROWS)]
    row_bytes = sum(v.itemsize for v in cols.values())
    first = 0
    while first < len(blobs):
        last, size = first, 0
        while last < len(blobs) and (last == first or size + (blobs[last][2] - blobs[last][1]) * row_bytes
                                     <= BATCH_BYTES):
            size += (blobs[last][2] - blobs[last][1]) * row_bytes
            last += 1
        chunk = blobs[first:last]
        bounds = np.array([c[1] for c in chunk] + [chunk[-1][2]], np.int64)
        arrays = [pa.array(values[[c[0] for c in chunk]], pa.int32())]
        arrays += [_binary(v, bounds) for v in cols.values()]
        names = ["p", *cols]
        if extra is not None:
            table = np.ascontiguousarray(extra[1])
            arrays.append(pa.array([table.tobytes()] * len(chunk), pa.binary()))
            names.append(extra[0])
        yield pa.RecordBatch.from_arrays(arrays, names=names)
        first = last


def _gather(batches, names: tuple[str, ...], dtypes: tuple, lengths: bool = False):
    """The concatenated values of the binary columns ``names`` of all ``batches`` (one partition), and
    with ``lengths`` also the values per row of each column."""
    import pyarrow as pa

    parts: list[list[np.ndarray]] = [[] for _ in names]
    lens: list[list[np.ndarray]] = [[] for _ in names]
    for b in batches:
        for i, (name, dt) in enumerate(zip(names, dtypes)):
            col = b.column(name)
            if not len(col):
                continue
            _, off, data = col.buffers()
            wide = pa.types.is_large_binary(col.type)
            o = np.frombuffer(off, np.int64 if wide else np.int32)[col.offset:col.offset + len(col) + 1]
            parts[i].append(np.frombuffer(data, np.uint8)[o[0]:o[-1]].view(dt))
            lens[i].append(np.diff(o) // np.dtype(dt).itemsize)
    out = [np.concatenate(p) if p else np.zeros(0, dt) for p, dt in zip(parts, dtypes)]
    if lengths:
        return out, [np.concatenate(n) if n else np.zeros(0, np.int64) for n in lens]
    return out


def key_blobs(values: np.ndarray, tables: int):
    """A mapInArrow function: (iid long, kp_keys array<long>) image rows -> KEY_BLOBS_DDL blobs.

    Keypoint k of an image is the run of ``tables`` keys at list positions k*tables ..; a key's rows go
    to ``destination(len(values), key)``, so every row of a bucket meets in one partition. Each blob
    carries the image ids of its batch; its rows refer to them by index.
    """
    def run(batches):
        import pyarrow.compute as pc

        for b in batches:
            lists = b.column("kp_keys")
            lens = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)
            key = lists.flatten().to_numpy()
            if not len(key):
                continue
            if lens.max() // tables >= np.iinfo(KP_DTYPE).max or len(lens) > np.iinfo(IMG_DTYPE).max:
                raise ValueError(f"dedup: {len(lens)} images or {lens.max() // tables} keypoints in one image "
                                 f"do not fit {IMG_DTYPE.__name__}/{KP_DTYPE.__name__}")
            img = np.repeat(np.arange(len(lens), dtype=IMG_DTYPE), lens)
            pos = np.arange(len(key), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
            yield from _blob_batches(values, destination(len(values), key),
                                     {"key": key, "img": img, "kp": (pos // tables).astype(KP_DTYPE)},
                                     ("ids", b.column("iid").to_numpy()))

    return run


def pair_blobs(cap: int, values: np.ndarray, pair_values: np.ndarray):
    """A mapInArrow function: one partition of KEY_BLOBS_DDL blobs (whole buckets) -> PAIR_BLOBS_DDL blobs.

    The partition's buckets are paired by :func:`bucket_pairs`; each pair row goes to
    ``destination(len(pair_values), ia, ib)``; the partition's statistics follow as one more blob.
    """
    def run(batches):
        import time

        t0 = time.perf_counter()
        (key, img, kp, ids), (n, _, _, n_ids) = _gather(batches, ("key", "img", "kp", "ids"),
                                                       (np.int64, IMG_DTYPE, KP_DTYPE, np.int64), lengths=True)
        # each blob's image indices point into its own table: offset them into the concatenated tables
        iid = ids[img + np.repeat(np.cumsum(n_ids) - n_ids, n)]
        del img, ids
        ia, ib, ka, kb, stats = bucket_pairs(key, iid, kp, cap)
        del key, iid, kp
        stats["task_ms_bucket_pairs"] = int((time.perf_counter() - t0) * 1000)
        yield from _blob_batches(pair_values, destination(len(pair_values), ia, ib),
                                 {"ia": ia, "ib": ib, "ka": ka.astype(KP_DTYPE), "kb": kb.astype(KP_DTYPE)})
        names = SEARCH_STATS[:len(STAT_NAMES) + 1]
        st = np.array([stats[n] for n in names], np.int64)
        zero = np.zeros(len(st), KP_DTYPE)
        yield from _blob_batches(pair_values[:1], np.zeros(len(st), np.int16),
                                 {"ia": st, "ib": np.zeros(len(st), np.int64),
                                  "ka": (-1 - np.arange(len(st))).astype(KP_DTYPE), "kb": zero})

    return run


def sum_stats(index: np.ndarray, value: np.ndarray) -> np.ndarray:
    """SEARCH_STATS values from (index, value) rows: the sum per index, the max for max_bucket_images."""
    out = np.bincount(index, weights=value, minlength=len(SEARCH_STATS)).astype(np.int64)
    m = SEARCH_STATS.index("max_bucket_images")
    out[m] = value[index == m].max(initial=0)
    return out


def pair_count_rows(min_shared: int):
    """A mapInArrow function: one partition of PAIR_BLOBS_DDL blobs (all rows of its pairs) -> PAIR_COUNTS_DDL."""
    def run(batches):
        import time

        import pyarrow as pa

        t0 = time.perf_counter()
        ia, ib, ka, kb = _gather(batches, ("ia", "ib", "ka", "kb"), (np.int64, np.int64, KP_DTYPE, KP_DTYPE))
        is_stat = ka < 0
        st = sum_stats((-1 - ka[is_stat]).astype(np.int64), ia[is_stat])
        if is_stat.any():
            keep = ~is_stat
            ia, ib, ka, kb = ia[keep], ib[keep], ka[keep], kb[keep]
        a, b, shared, rows = pair_counts(ia, ib, ka, kb)
        del ia, ib, ka, kb
        st[SEARCH_STATS.index("pairs_sharing_a_bucket")] = len(a)
        st[SEARCH_STATS.index("task_ms_pair_counts")] = int((time.perf_counter() - t0) * 1000)
        keep = shared >= min_shared
        names = ["ia", "ib", "shared", "rows"]
        yield pa.RecordBatch.from_arrays([pa.array(a[keep]), pa.array(b[keep]), pa.array(shared[keep]),
                                          pa.array(rows[keep])], names=names)
        yield pa.RecordBatch.from_arrays([pa.array(st), pa.array(np.zeros(len(st), np.int64)),
                                          pa.array(-1 - np.arange(len(st), dtype=np.int64)),
                                          pa.array(np.zeros(len(st), np.int64))], names=names)

    return run
