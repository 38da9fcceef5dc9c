"""How the near-duplicate candidate search grows with the number of images (10^3 .. 10^5).

    .venv/bin/python benchmarks/dedup_scale.py [--sizes 1000,3000,10000,30000,100000]
        [--tables 8 --bits 40 --min-shared 4 --bucket-cap 50] [--cache /tmp/cxrspark-dedup-scale]

What is measured: ``cxrspark.ingest.dedup.candidate_pairs`` alone (keypoint buckets -> candidate pairs,
the stage that must not be an all-pairs join) on N images, for each N in --sizes, in one Spark
``local[2]`` session. For each N the table gives the keypoint rows, the buckets (and how many are over
``bucket_cap``, and the largest bucket), the pair rows the buckets generate, the distinct pairs that share
a bucket, the candidates (pairs with at least ``min_shared`` shared keypoints), the candidates that are
not planted copies ("chance" candidates), the candidate rate (candidates / (N(N-1)/2)), the recall of the
planted copies and the wall time of the whole call, forced by writing its result to Parquet, on a fresh
work folder. The input DataFrame is written to Parquet and read back first, so generating it is not
timed; a small untimed run warms the JVM up first. At the end, the least-squares slope of log(y) against
log(N) for the candidates, the chance candidates, the pair rows and the seconds: the goal is that none
grows faster than about N^1.2 (an all-pairs search grows as N^2). For N up to --single-max the same
search also runs in this process on one core (``cxrspark.ingest.buckets.bucket_pairs`` and
``pair_counts`` over all rows): it must give the same candidates, and its time over (Spark's time x cores) is
the Spark stage's per-core speed relative to one process. The CPU seconds of both sides (Spark: its JVM
and the Python workers it forks, and this driver) and the 1-minute load averages are printed next to
them: on a shared machine the wall time also counts the waits for a core, the CPU time does not.

Why synthetic images, and why built this way: SIFT costs about 55 ms per image here, too slow for 10^5
images, and the real data set has only 1,928 images. The dedup stage only sees the bucket keys of the
RootSIFT descriptors, so it is benchmarked on generated descriptor sets:

1. the RootSIFT descriptors of every real image under --data are computed once with the pipeline's own
   code (``decode_image`` -> ``working_image`` -> ``sift_keypoints``, ``DedupConfig.keypoints`` per
   image) and cached in a .npz under --cache (files that fail to decode are skipped);
2. a *distinct synthetic image* has ``keypoints`` descriptors, each a random keypoint of a DIFFERENT
   random real image, plus Gaussian noise (--noise, default sigma 0.01 per component), clipped at 0 and
   renormalised to unit L2 norm (as RootSIFT is). Its descriptors follow the real marginal distribution of
   chest X-ray descriptors, generic anatomy that fills the same buckets in every image included, but two
   synthetic images share no content: every candidate between two of them is a chance collision;
3. *planted copies*: --copy-rate (1%) of the N images are copies of another synthetic image: a random
   --copy-keep (70%) of its keypoints, with noise --copy-noise (sigma 0.02), renormalised. These are
   the pairs the search must find (planted recall).

Caveat of the generator: the real pool is finite (about 440,000 descriptors: 1,928 images with ~230
keypoints each), so at 10^5 images (3 x 10^7 keypoints) every real descriptor is drawn about 70 times,
each time with fresh noise. Two distinct synthetic images then share a few source descriptors by chance,
and a noisy pair of the same descriptor often lands in a common bucket: a collision that grows as N^2 and
that real distinct images would not have. The second table counts the chance candidates whose two images
drew at least ``min_shared`` keypoints from the same real descriptors (the generator's share of them).

Bucket keys: ``bucket_keys(rootsift, projection(tables, bits))`` as in the ingest. Options --tables,
--bits, --min-shared and --bucket-cap override the ``DedupConfig`` defaults.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrspark.config import DedupConfig  # noqa: E402

#: distinct synthetic images whose descriptors are generated at once (memory: ~46 MB of float32)
CHUNK = 250
#: images per generated Parquet file
FILE_IMAGES = 2500


# ---- real descriptors -----------------------------------------------------------------------------
def image_files(data: Path) -> list[Path]:
    from cxrspark.sources.base import IMAGE_SUFFIXES
    return sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def real_descriptors(data: Path, cache: Path, dd: DedupConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """(RootSIFT float32 (M, 128) of all real images concatenated, per-image counts, info); cached."""
    from cxrspark.images.decode import decode_image
    from cxrspark.images.keypoints import sift_keypoints, working_image

    files = image_files(data)
    ident = {"data": str(data.resolve()), "files": len(files), "bytes": sum(p.stat().st_size for p in files),
             "keypoints": dd.keypoints, "work_size": dd.work_size, "contrast_threshold": dd.contrast_threshold}
    path = cache / f"real_rootsift_k{dd.keypoints}_w{dd.work_size}_c{dd.contrast_threshold:g}.npz"
    if path.exists():
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            if meta["ident"] == ident:
                return z["desc"], z["counts"], {**meta, "cached": True}
    t0 = time.perf_counter()
    descs, counts, failed = [], [], 0
    for p in files:
        try:
            pixels = decode_image(p.read_bytes()).pixels
        except Exception:  # noqa: BLE001 - a file that does not decode is skipped
            failed += 1
            continue
        _, rs, _ = sift_keypoints(working_image(pixels, dd.work_size), dd.keypoints, dd.contrast_threshold)
        if len(rs):
            descs.append(rs.astype(np.float32))
            counts.append(len(rs))
    desc, cnt = np.concatenate(descs), np.array(counts, np.int64)
    meta = {"ident": ident, "images": len(cnt), "failed": failed, "seconds": round(time.perf_counter() - t0, 1)}
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, desc=desc, counts=cnt, meta=np.array(json.dumps(meta)))
    os.replace(tmp, path)
    return desc, cnt, {**meta, "cached": False}


# ---- synthetic descriptor sets --------------------------------------------------------------------
def _noisy(d: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """d + N(0, sigma^2) per component, clipped at 0, renormalised to unit L2 norm (last axis)."""
    x = d + rng.normal(0.0, sigma, d.shape).astype(np.float32) if sigma > 0 else d.copy()
    np.clip(x, 0.0, None, out=x)
    x /= np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12
    return x


def generate(n: int, pool: np.ndarray, counts: np.ndarray, dd: DedupConfig, args, out: Path,
             rng: np.random.Generator) -> tuple[list[tuple[str, str]], dict[str, np.ndarray]]:
    """Write N synthetic images (record_id, kp_keys) as Parquet under ``out``.

    Returns the planted pairs (a < b) and, per record_id, the indices of the real descriptors its
    keypoints were drawn from (to tell chance candidates that share reused real descriptors).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cxrspark.images.keypoints import bucket_keys, projection

    proj = projection(dd.tables, dd.bits)
    k = dd.keypoints
    n_real = len(counts)
    if n_real < k:
        raise SystemExit(f"need at least {k} real images with keypoints, have {n_real}")
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    planted_n = int(round(n * args.copy_rate))
    distinct = n - planted_n
    is_orig = np.zeros(distinct, bool)
    is_orig[rng.choice(distinct, planted_n, replace=False)] = True
    keep = max(1, int(round(k * args.copy_keep)))
    out.mkdir(parents=True)
    schema = pa.schema([("record_id", pa.string()), ("kp_keys", pa.list_(pa.int64()))])
    planted: list[tuple[str, str]] = []
    sources: dict[str, np.ndarray] = {}
    writer, in_file, files = None, 0, 0
    for start in range(0, distinct, CHUNK):
        m = min(CHUNK, distinct - start)
        # keypoint j of synthetic image i: a random keypoint of a different random real image
        src = rng.random((m, n_real)).argpartition(k, axis=1)[:, :k]                  # (m, k) real images
        idx = offsets[src] + (rng.random((m, k)) * counts[src]).astype(np.int64)      # (m, k) descriptors
        desc = _noisy(pool[idx], args.noise, rng)                                     # (m, k, 128)
        ids, sets = [], []
        for i in range(m):
            rid = f"s{start + i:07d}"
            ids.append(rid)
            sets.append(desc[i])
            sources[rid] = idx[i].astype(np.int32)
            if is_orig[start + i]:
                cid = f"c{start + i:07d}"
                kept = rng.choice(k, keep, replace=False)
                ids.append(cid)
                sets.append(_noisy(desc[i][kept], args.copy_noise, rng))
                sources[cid] = idx[i][kept].astype(np.int32)
                planted.append((min(rid, cid), max(rid, cid)))
        keys = bucket_keys(np.concatenate(sets), proj)
        lens = np.array([len(s) * dd.tables for s in sets], np.int32)
        arr = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)),
                                       pa.array(keys, pa.int64()))
        if writer is None:
            writer = pq.ParquetWriter(str(out / f"part-{files:05d}.parquet"), schema)
            files += 1
        writer.write_table(pa.Table.from_arrays([pa.array(ids, pa.string()), arr], schema=schema))
        in_file += m
        if in_file >= FILE_IMAGES:
            writer.close()
            writer, in_file = None, 0
    if writer is not None:
        writer.close()
    return planted, sources


# ---- Spark ----------------------------------------------------------------------------------------
class JvmMemory:
    """Peak old-generation heap (per measurement) and peak RSS of the driver JVM (local mode: all of Spark)."""

    def __init__(self, spark):
        self.jvm = spark._jvm
        self.pid = int(self.jvm.java.lang.ProcessHandle.current().pid())
        self.max_heap = int(self.jvm.java.lang.Runtime.getRuntime().maxMemory())

    def _old_pools(self):
        pools = self.jvm.java.lang.management.ManagementFactory.getMemoryPoolMXBeans()
        return [p for p in pools if str(p.getType()) == "Heap memory" and
                any(w in str(p.getName()) for w in ("Old", "Tenured"))]

    def reset(self) -> None:
        self.jvm.java.lang.System.gc()
        for p in self._old_pools():
            p.resetPeakUsage()

    def old_gen_peak(self) -> int:
        return sum(int(p.getPeakUsage().getUsed()) for p in self._old_pools())

    def rss_peak(self) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and all its descendants, live or reaped.

    For the JVM of a local session this is all of Spark: its threads and the Python workers it forks.
    On a shared machine CPU time is steadier than wall time: it does not count time spent waiting for
    a core that another program holds.
    """
    tick = os.sysconf("SC_CLK_TCK")
    parent, times = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        f = stat[stat.rfind(")") + 2:].split()
        parent[int(d.name)] = int(f[1])
        times[int(d.name)] = sum(int(x) for x in f[11:15]) / tick   # utime, stime, cutime, cstime
    total = 0.0
    for p, t in times.items():
        q = p
        while q and q != pid:
            q = parent.get(q, 0)
        if q == pid:
            total += t
    return total


def measure(spark, n: int, pool, counts, dd: DedupConfig, args, root: Path, mem: JvmMemory | None) -> dict:
    from pyspark.sql import functions as F

    from cxrspark.ingest.dedup import candidate_pairs

    d = root / f"n{n}"
    rng = np.random.default_rng([args.seed, n])
    t0 = time.perf_counter()
    planted, sources = generate(n, pool, counts, dd, args, d / "images", rng)
    gen_s = time.perf_counter() - t0
    df = spark.read.parquet(str(d / "images"))
    if mem:
        mem.reset()
    stats: dict = {}
    cpu0 = (tree_cpu_seconds(mem.pid) if mem else 0.0, time.process_time())
    load = os.getloadavg()
    t0 = time.perf_counter()
    cand = candidate_pairs(df, dd, str(d / "work"), stats)
    cand.write.parquet(str(d / "work" / "out"))
    seconds = time.perf_counter() - t0
    res = {"n": n, "seconds": seconds, "generate_seconds": gen_s, **stats, "load": load + os.getloadavg()}
    if mem:  # the JVM with its Python workers, and this driver process
        res["cpu_seconds"] = tree_cpu_seconds(mem.pid) - cpu0[0] + time.process_time() - cpu0[1]
    if mem:
        res["old_gen_peak"], res["rss_peak"] = mem.old_gen_peak(), mem.rss_peak()
    got = spark.read.parquet(str(d / "work" / "out"))
    res["candidates"] = got.count()
    res["planted"] = len(planted)
    if planted:
        pl = spark.createDataFrame(planted, "a string, b string")
        shared = sorted(r["shared"] for r in got.join(pl, ["a", "b"]).select("shared").collect())
        res["found"] = len(shared)
        res["planted_shared"] = f"{shared[0]} / {shared[len(shared) // 2]}" if shared else "-"
    else:
        res["found"], res["planted_shared"] = 0, "-"
    res["chance"] = res["candidates"] - res["found"]
    chance = got.join(spark.createDataFrame(planted or [("", "")], "a string, b string"), ["a", "b"], "left_anti")
    res["max_shared_chance"] = chance.agg(F.max("shared")).first()[0] or 0
    # chance candidates whose two images drew at least min_shared keypoints from the same real descriptors
    # (the pool is finite: an artefact of the generator, not of the search); looked at for up to 100,000
    common = [np.intersect1d(sources[r["a"]], sources[r["b"]]).size
              for r in chance.select("a", "b").limit(100_000).collect()]
    res["chance_reused"] = sum(c >= dd.min_shared for c in common)
    if n <= args.single_max:
        c0 = time.process_time()
        res["single_load"] = os.getloadavg()
        res["single_seconds"], single, res["single_split"] = single_process(d / "images", dd)
        res["single_cpu_seconds"] = time.process_time() - c0
        res["single_load"] += os.getloadavg()
        res["single_same"] = single == {(r["a"], r["b"]): r["shared"] for r in got.collect()}
    shutil.rmtree(d, ignore_errors=True)
    return res


def single_process(images: Path, dd: DedupConfig) -> tuple[float, dict, str]:
    """The same search in this process on one core: ``bucket_pairs`` then ``pair_counts`` over all rows.

    The baseline of the Spark stage's per-core speed (Spark's threads do the same numpy work per partition
    plus the shuffles); returns (seconds, {(a, b): shared} for the candidates, "read / bucket_pairs /
    pair_counts" seconds).
    """
    import pyarrow.parquet as pq

    from cxrspark.ingest.buckets import bucket_pairs, pair_counts

    t0 = time.perf_counter()
    t = pq.read_table(str(images))
    ids = np.asarray(t.column("record_id").to_pylist(), dtype=object)
    lists = t.column("kp_keys").combine_chunks()
    key = lists.flatten().to_numpy()
    lens = np.diff(lists.offsets.to_numpy())
    img = np.repeat(np.arange(len(ids), dtype=np.int64), lens)
    kp = np.concatenate([np.arange(m, dtype=np.int64) // dd.tables for m in lens]) if len(lens) else img
    t1 = time.perf_counter()
    *pair_rows, _ = bucket_pairs(key, img, kp, dd.bucket_cap)
    t2 = time.perf_counter()
    ia, ib, shared, _ = pair_counts(*pair_rows)
    t3 = time.perf_counter()
    keep = shared >= dd.min_shared
    out = {}
    for a, b, v in zip(ia[keep], ib[keep], shared[keep]):
        x, y = ids[a], ids[b]
        out[(x, y) if x < y else (y, x)] = int(v)
    return time.perf_counter() - t0, out, f"{t1 - t0:.1f} / {t2 - t1:.1f} / {t3 - t2:.1f}"


def slope(ns: list[int], ys: list[float]) -> float:
    pts = [(math.log(n), math.log(y)) for n, y in zip(ns, ys) if y and y > 0]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return float("nan")
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cxr"))
    ap.add_argument("--sizes", default="1000,3000,10000,30000,100000", help="comma-separated image counts N")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "cxrspark-dedup-scale"),
                    help="folder of the cached real RootSIFT descriptors")
    ap.add_argument("--tmp", default=None, help="folder for the generated inputs and work folders")
    ap.add_argument("--tables", type=int)
    ap.add_argument("--bits", type=int)
    ap.add_argument("--min-shared", type=int)
    ap.add_argument("--bucket-cap", type=int)
    ap.add_argument("--noise", type=float, default=0.01, help="sigma of the noise on a synthetic descriptor")
    ap.add_argument("--copy-rate", type=float, default=0.01, help="planted copies, as a fraction of N")
    ap.add_argument("--copy-keep", type=float, default=0.7, help="fraction of its original's keypoints a copy keeps")
    ap.add_argument("--copy-noise", type=float, default=0.02, help="sigma of the noise on a copy's descriptors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--single-max", type=int, default=30000,
                    help="largest N also searched by the same code in this process (the per-core baseline)")
    ap.add_argument("--cores", type=int, default=2, help="Spark local[cores]")
    ap.add_argument("--shuffle-partitions", type=int, default=8)
    ap.add_argument("--driver-memory", default="4g", help="spark.driver.memory (local mode: all of Spark)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    over = {"tables": args.tables, "bits": args.bits, "min_shared": args.min_shared, "bucket_cap": args.bucket_cap}
    dd = DedupConfig.model_validate({**DedupConfig().model_dump(), **{k: v for k, v in over.items() if v is not None}})

    t0 = time.perf_counter()
    pool, counts, info = real_descriptors(Path(args.data), Path(args.cache), dd)
    how = (f"cached (computed in {info['seconds']} s)" if info["cached"]
           else f"computed in {time.perf_counter() - t0:.1f} s")
    print(f"real descriptors: {len(pool)} from {info['images']} images ({info['failed']} files did not decode), "
          f"{how}")
    print(f"dedup: tables {dd.tables}, bits {dd.bits}, min_shared {dd.min_shared}, bucket_cap {dd.bucket_cap}, "
          f"keypoints {dd.keypoints}; synthetic: noise {args.noise}, copies {args.copy_rate:.0%} of N keeping "
          f"{args.copy_keep:.0%} with noise {args.copy_noise}, seed {args.seed}; "
          f"spark local[{args.cores}], {args.shuffle_partitions} shuffle partitions, driver memory "
          f"{args.driver_memory}")

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from cxrspark.spark.session import build_session
    spark = build_session(master=f"local[{args.cores}]", app_name="dedup_scale",
                          shuffle_partitions=args.shuffle_partitions, log_level="ERROR",
                          conf={"spark.driver.memory": args.driver_memory})
    try:
        mem = JvmMemory(spark)
    except Exception:  # noqa: BLE001 - memory figures are extra
        mem = None
    rows = []
    with tempfile.TemporaryDirectory(prefix="dedup_scale_", dir=args.tmp) as tmp:
        root = Path(tmp)
        measure(spark, 300, pool, counts, dd, args, root / "warmup", None)  # JIT, Python workers: untimed
        for n in sizes:
            r = measure(spark, n, pool, counts, dd, args, root, mem)
            rows.append(r)
            print(f"  N={n}: {r['seconds']:.1f} s (generated in {r['generate_seconds']:.1f} s)", flush=True)
    spark.stop()

    print("\n| N | keypoint rows | buckets | over-cap buckets | max bucket images | pair rows "
          "| pairs sharing a bucket | candidates | chance candidates | candidate rate | planted recall "
          "| seconds | s per 1000 images |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        n = r["n"]
        rate = r["candidates"] / (n * (n - 1) / 2)
        recall = f"{r['found'] / r['planted']:.1%} ({r['found']}/{r['planted']})" if r["planted"] else "n/a"
        print(f"| {n} | {r['keypoint_rows']} | {r['buckets']} | {r['over_cap_buckets']} | {r['max_bucket_images']} "
              f"| {r['pair_rows']} | {r['pairs_sharing_a_bucket']} | {r['candidates']} | {r['chance']} "
              f"| {rate:.2e} | {recall} | {r['seconds']:.1f} | {r['seconds'] / n * 1000:.2f} |")
    print("\n| N | s search job (buckets + pair counts) | task s: bucket_pairs / pair_counts | s stats + ids + write "
          "| shared of a found planted pair: min / median | max shared of a chance candidate "
          "| chance candidates from reused real descriptors | JVM old-gen peak MiB | JVM RSS peak MiB (so far) "
          "| Spark CPU s | load average (1 min) before-after |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        rest = r["seconds"] - r["seconds_buckets"]
        task = (f"{r['seconds_tasks_bucket_pairs']:.1f} / {r['seconds_tasks_pair_counts']:.1f}"
                if "seconds_tasks_bucket_pairs" in r else "n/a")
        old = f"{r['old_gen_peak'] / 2**20:.0f}" if "old_gen_peak" in r else "n/a"
        rss = f"{r['rss_peak'] / 2**20:.0f}" if r.get("rss_peak") else "n/a"
        print(f"| {r['n']} | {r['seconds_buckets']:.1f} | {task} | {rest:.1f} "
              f"| {r['planted_shared']} | {r['max_shared_chance']} | {r['chance_reused']} | {old} | {rss} "
              f"| {r['cpu_seconds']:.1f} | {r['load'][0]:.1f}-{r['load'][3]:.1f} |"
              if "cpu_seconds" in r else
              f"| {r['planted_shared']} | {r['max_shared_chance']} | {r['chance_reused']} | {old} | {rss} "
              f"| n/a | {r['load'][0]:.1f}-{r['load'][3]:.1f} |")
    if mem:
        print(f"\nJVM max heap: {mem.max_heap / 2**20:.0f} MiB")
    single = [r for r in rows if "single_seconds" in r]
    if single:
        print(f"\n| N | Spark local[{args.cores}] s | one process, one core s | same candidates "
              f"| one process s: read / bucket_pairs / pair_counts | Spark per-core speed vs one process "
              f"| Spark CPU s | one process CPU s | CPU-time ratio | load average (1 min) Spark / one process |")
        print("| ---: | ---: | ---: | :---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in single:
            cpu = (f"{r['cpu_seconds']:.1f} | {r['single_cpu_seconds']:.1f} "
                   f"| {r['single_cpu_seconds'] / r['cpu_seconds']:.2f}x" if "cpu_seconds" in r else "n/a | n/a | n/a")
            print(f"| {r['n']} | {r['seconds']:.1f} | {r['single_seconds']:.1f} | {r['single_same']} "
                  f"| {r['single_split']} | {r['single_seconds'] / (r['seconds'] * args.cores):.2f}x | {cpu} "
                  f"| {r['load'][0]:.1f}-{r['load'][3]:.1f} / {r['single_load'][0]:.1f}-{r['single_load'][3]:.1f} |")
    ns = [r["n"] for r in rows]
    g = {name: slope(ns, [r[key] for r in rows]) for name, key in
         (("candidates", "candidates"), ("chance candidates", "chance"), ("pair rows", "pair_rows"),
          ("seconds", "seconds"))}
    print("\nfitted growth exponent (slope of log y vs log N, "
          f"N {min(ns)}..{max(ns)}; goal <= ~1.2):")
    for name, v in g.items():
        print(f"  {name}: {v:.2f}")
    print(f"growth exponents: candidates {g['candidates']:.2f}, pair rows {g['pair rows']:.2f}, "
          f"seconds {g['seconds']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
