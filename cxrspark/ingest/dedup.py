"""Duplicate detection across all sources: exact copies by pixels, near copies by keypoints, no all-pairs join.

* **exact** (``dedup.exact``, off only for the leaky audit protocol): equal SHA-256 of the DECODED pixels
  (a PNG and its lossless re-encode match). Each set of identical images takes part in the near search
  once, through its smallest record_id. Without it, identical images are left to the near search (if on).
* **near** (re-cropped, re-windowed, re-encoded, resized copies):

  1. *buckets*: every image's keypoints carry one SimHash key per table (cxrspark.images.keypoints).
     A ``mapInArrow`` turns each batch of images into (key, image, keypoint) rows, bound by key to a
     partition so that each bucket lies whole in one partition, and ships them as one binary blob per
     (batch, partition); there, cxrspark.ingest.buckets sorts them (numpy), skips buckets of one image
     and buckets over ``bucket_cap`` images (generic anatomy), and emits every pair of a kept bucket's
     images (at most cap^2/2 pair rows per bucket: no join);
  2. *candidates*: the pair rows bound by pair to a partition (blobs again); per pair the shared
     keypoints (the fewer of the distinct keypoints of either image in its rows, numpy again); pairs
     with at least ``min_shared`` are candidates. Steps 1 and 2 are one Spark job;
  3. *verification* (a pandas UDF over cxrspark.images.copymatch): a RANSAC similarity fit of the
     matched keypoints, then the high-pass detail correlation of the aligned images;
  4. *groups* without chaining (cxrspark.ingest.groups.strict_groups): in each connected component of
     verified edges the member ranked first by the keep rule is kept, and every other member must itself
     verify against it; a pair of the two that was never a candidate is verified in a second round.

Every verified edge (also one that does not end in a group) links the two images' patients, so a copy
never lands in another split than its original. Driver state: the verified edges and the members of the
duplicate groups, never a per-image list.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cxrspark.config import DedupConfig
from cxrspark.images.copymatch import VerifyParams
from cxrspark.images.hashing import hamming
from cxrspark.images.keypoints import KeypointParams, lsh_digest
from cxrspark.ingest.groups import connected_components, strict_groups
from cxrspark.ingest.buckets import (KEY_BLOBS_DDL, PAIR_BLOBS_DDL, PAIR_COUNTS_DDL, SEARCH_STATS, key_blobs,
                                     pair_blobs, pair_count_rows, partition_values, sum_stats)
from cxrspark.spark.udfs import VERDICT_DDL, make_verify_udf

#: the method's version: part of the dataset hash together with the projection digest and the settings
DEDUP_VERSION = "keypoints-rootsift-simhash-ransac-detail/1"
KEEP_RULE = ("keep the member with the most original pixels (orig_height*orig_width); ties broken by "
             "the order of the sources in the config, then by record_id; every other member is a verified "
             "copy of the kept one")
KP_COLUMNS = ("kp_image", "kp_height", "kp_width", "kp_xy", "kp_desc")
#: keypoint rows per partition of the bucket step (an upper bound: images x keypoints x tables); the
#: pair rows are spread over as many partitions. Each task costs about 0.1 s of its own (Python worker
#: round trips), so partitions are large; 4 x 10^6 rows take a few hundred MB in a Python worker
ROWS_PER_PARTITION = 4_000_000
#: Arrow batch size (rows) of the search: image rows of (iid, kp_keys) going in, then blobs
IMAGES_PER_BATCH = 512
VERDICT_COLUMNS = tuple(c.split()[0] for c in VERDICT_DDL.split(", "))


def keypoint_params(dd: DedupConfig) -> KeypointParams:
    return KeypointParams(n_keypoints=dd.keypoints, tables=dd.tables, bits=dd.bits, work_size=dd.work_size,
                          contrast_threshold=dd.contrast_threshold,
                          verify_contrast=max(dd.verify.contrast_threshold, dd.contrast_threshold))


def verify_params(dd: DedupConfig) -> VerifyParams:
    v = dd.verify
    return VerifyParams(ratio=v.ratio, ransac_px=v.ransac_px, min_inliers=v.min_inliers, max_scale=v.max_scale,
                        max_rotation=v.max_rotation, max_aspect=v.max_aspect, max_shear=v.max_shear,
                        min_overlap=v.min_overlap, min_detail=v.min_detail,
                        blur_sigma=v.blur_sigma, grid=v.grid)


def method_identity(dd: DedupConfig) -> dict:
    """What defines the near-duplicate method's results (enters the dataset hash)."""
    return {"version": DEDUP_VERSION, "lsh_sha256": lsh_digest(dd.tables, dd.bits) if dd.near else None}


# ---- exact ---------------------------------------------------------------------------------------
def exact_edges(df: DataFrame) -> DataFrame:
    """(a, b): a = the smallest record_id of a set of identical images, b = each other member."""
    first = df.groupBy("pixel_sha256").agg(F.min("record_id").alias("a"), F.count("*").alias("n")).where("n > 1")
    return (df.select("record_id", "pixel_sha256").join(first.select("pixel_sha256", "a"), "pixel_sha256")
            .where(F.col("record_id") != F.col("a")).select("a", F.col("record_id").alias("b")))


# ---- near: buckets -> candidates ------------------------------------------------------------------
def candidate_pairs(df: DataFrame, dd: DedupConfig, work: str, stats: dict) -> DataFrame:
    """Candidate pairs (a < b by record_id) with ``shared`` keypoints; ``df`` has record_id and kp_keys.

    One Spark job, two shuffles, all of it numpy on Arrow batches (cxrspark.ingest.buckets):
    image rows -> blobs of (key, image, keypoint) rows by bucket key -> shuffle -> ``bucket_pairs`` per
    partition -> blobs of pair rows by pair -> shuffle -> ``pair_counts`` per partition -> the candidates
    and the statistics, written under ``work`` (read twice). Fills ``stats``.
    """
    t0 = time.time()
    ids = df.select("record_id", F.xxhash64("record_id").alias("iid"), "kp_keys")
    n_img, n_iid = ids.agg(F.count("*"), F.countDistinct("iid")).first()
    if n_img != n_iid:  # 64-bit hash ids: a collision (about 1 in 3e7 at 10^6 images) must not merge two images
        raise RuntimeError(f"dedup: 64-bit image ids collide ({n_img} images, {n_iid} ids)")
    spark = df.sparkSession
    cores = spark.sparkContext.defaultParallelism
    parts = max(cores, -(-n_img * dd.keypoints * dd.tables // ROWS_PER_PARTITION))
    values = partition_values(parts)
    # image rows in, blobs out: the session's 64-row Arrow batches (meant for image pixels) would cut
    # the blobs small (a blob per batch and destination); after the first step the rows are a few large
    # blobs, so one batch size serves all three steps
    batch = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(IMAGES_PER_BATCH))
    try:
        (ids.select("iid", "kp_keys").mapInArrow(key_blobs(values, dd.tables), KEY_BLOBS_DDL)
         .repartition(parts, "p")          # every row of a bucket in one partition
         .mapInArrow(pair_blobs(dd.bucket_cap, values, values), PAIR_BLOBS_DDL)
         .repartition(parts, "p")          # every row of a pair in one partition
         .mapInArrow(pair_count_rows(dd.min_shared), PAIR_COUNTS_DDL)
         .write.parquet(f"{work}/pairs"))
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", batch)
    stats["seconds_buckets"] = round(time.time() - t0, 2)  # the buckets and the pair counts: one job
    t0 = time.time()
    pairs = spark.read.parquet(f"{work}/pairs")
    st = pairs.where("shared < 0").select((-1 - F.col("shared")).alias("i"), F.col("ia").alias("v")).collect()
    totals = sum_stats(np.array([r["i"] for r in st], np.int64), np.array([r["v"] for r in st], np.int64))
    stats.update({n: int(v) for n, v in zip(SEARCH_STATS, totals.tolist())})
    for name in ("bucket_pairs", "pair_counts"):  # summed task times: run-specific, kept with the seconds
        stats[f"seconds_tasks_{name}"] = round(stats.pop(f"task_ms_{name}") / 1000, 2)
    # back to record ids, a < b
    cand = pairs.where("shared >= 0").select("ia", "ib", "shared")
    name = ids.select("iid", "record_id")
    na, nb = name.alias("na"), name.alias("nb")
    out = (cand.join(na, F.col("ia") == F.col("na.iid")).join(nb, F.col("ib") == F.col("nb.iid"))
           .select(F.least("na.record_id", "nb.record_id").alias("a"),
                   F.greatest("na.record_id", "nb.record_id").alias("b"), "shared"))
    stats["seconds_candidates"] = round(time.time() - t0, 2)
    return out


def verify_pairs(df: DataFrame, pairs: DataFrame, params: VerifyParams) -> DataFrame:
    """pairs (a, b, ...) -> the same columns + the verdict columns (cxrspark.images.copymatch.verify)."""
    kp = df.select("record_id", *KP_COLUMNS)
    ka = kp.select(F.col("record_id").alias("a"), *[F.col(c).alias(f"a_{c}") for c in KP_COLUMNS])
    kb = kp.select(F.col("record_id").alias("b"), *[F.col(c).alias(f"b_{c}") for c in KP_COLUMNS])
    udf = make_verify_udf(params)
    args = [F.col(f"a_{c}") for c in KP_COLUMNS] + [F.col(f"b_{c}") for c in KP_COLUMNS]
    joined = pairs.join(ka, "a").join(kb, "b")
    return (joined.withColumn("_v", udf(*args))
            .select(*pairs.columns, *[F.col(f"_v.{c}").alias(c) for c in VERDICT_COLUMNS]))


# ---- groups ---------------------------------------------------------------------------------------
@dataclass
class DedupResult:
    #: record_id -> (group id, representative record_id) for every row that is in a kept group
    membership: dict[str, tuple[str, str]]
    #: report rows for every dropped duplicate
    report: list[dict]
    #: record_id -> reason for rows quarantined because their group disagrees on the label
    conflicts: dict[str, str]
    #: pairs of patient keys that verified copies link (same image under two patient keys)
    patient_links: list[tuple[str, str]]
    stats: dict = field(default_factory=dict)
    #: record_id -> group id for the members of the groups in ``conflicts``
    conflict_groups: dict[str, str] = field(default_factory=dict)


def find_duplicates(spark: SparkSession, ok: DataFrame, dd: DedupConfig, source_order: list[str], work: str,
                    log: Callable[[str], None] = print) -> DedupResult:
    """Exact and near duplicates of the decoded rows ``ok``; groups, report, conflicts and patient links."""
    stats: dict = {"method": method_identity(dd)}
    t0 = time.time()
    # exact: false (the leaky audit protocol) skips this step: identical images are left to the near search
    exact = [(r["a"], r["b"]) for r in exact_edges(ok).collect()] if dd.exact else []
    stats["exact_pairs"] = len(exact)
    stats["seconds_exact"] = round(time.time() - t0, 2)
    verdicts: dict[tuple[str, str], dict] = {}
    params = verify_params(dd)
    if dd.near:
        # one image per set of identical pixels: the others follow it through their exact edge
        singles = ok.join(spark.createDataFrame([(b,) for _, b in exact], "record_id string"), "record_id",
                          "left_anti") if exact else ok
        searchable = singles.where(F.col("kp_keys").isNotNull())
        cand = candidate_pairs(searchable, dd, work, stats)
        t0 = time.time()
        verify_pairs(searchable, cand, params).write.parquet(f"{work}/verdicts")
        v = spark.read.parquet(f"{work}/verdicts")
        why = {r["why"] or "copy": int(r["n"]) for r in v.groupBy("why").agg(F.count("*").alias("n")).collect()}
        stats["candidate_pairs"] = sum(why.values())
        stats["verdicts"] = dict(sorted(why.items()))
        for r in v.where("copy").collect():
            verdicts[(r["a"], r["b"])] = r.asDict()
        stats["verified_pairs"] = len(verdicts)
        stats["seconds_verify"] = round(time.time() - t0, 2)
    else:
        stats.update(candidate_pairs=0, verified_pairs=0)
    t0 = time.time()
    near_edges = list(verdicts)
    comp = connected_components(exact + near_edges)
    if not comp:
        stats["seconds_groups"] = round(time.time() - t0, 2)
        stats.update(groups=0, second_round_pairs=0)
        return DedupResult({}, [], {}, [], stats)
    members = spark.createDataFrame([(m,) for m in comp], "record_id string")
    info = {r["record_id"]: r.asDict() for r in ok.join(members, "record_id").select(
        "record_id", "source", "source_path", "label", "patient_key", "orig_height", "orig_width",
        "pixel_sha256", "phash").collect()}
    # the image that represents each set of identical pixels in the near search
    exact_rep = {b: a for a, b in exact}
    order = {name: i for i, name in enumerate(source_order)}

    def rank(rid: str) -> tuple:
        r = info[rid]
        return (-(r["orig_height"] or 0) * (r["orig_width"] or 0), order.get(r["source"], len(order)), rid)

    def key(x: str, y: str) -> tuple[str, str]:
        a, b = exact_rep.get(x, x), exact_rep.get(y, y)
        return (a, b) if a < b else (b, a)

    second: dict[tuple[str, str], dict] = {}

    def verdict(x: str, y: str) -> bool | None:
        k = key(x, y)
        if k[0] == k[1]:
            return True
        if k in verdicts:
            return True
        return second[k]["copy"] if k in second else None

    def verify_more(pairs: list[tuple[str, str]]) -> None:
        need = sorted({key(x, y) for x, y in pairs if key(x, y) not in second and key(x, y)[0] != key(x, y)[1]})
        if not need:
            return
        df = spark.createDataFrame(need, "a string, b string")
        for r in verify_pairs(ok.join(members, "record_id"), df, params).collect():
            second[(r["a"], r["b"])] = r.asDict()
        for k in need:  # a pair whose images lack keypoints comes back from no join: not a copy
            second.setdefault(k, {"a": k[0], "b": k[1], "copy": False, "why": "no_keypoints"})

    roots: dict[str, list[str]] = {}
    for rid, root in comp.items():
        roots.setdefault(root, []).append(rid)
    groups = strict_groups(roots.values(), rank, verdict, verify_more, exact + near_edges)
    stats["second_round_pairs"] = len(second)
    stats["second_round_copies"] = sum(1 for r in second.values() if r["copy"])

    def evidence(x: str, rep: str) -> dict:
        if info[x]["pixel_sha256"] == info[rep]["pixel_sha256"]:
            return {"kind": "exact", "evidence": f"exact {rep}: same decoded pixels"}
        k = key(x, rep)
        r = verdicts.get(k) or second[k]
        how = "candidate" if k in verdicts else "verified against the kept image in a second round"
        return {"kind": "near", "inliers": r["inliers"], "scale": r["scale"], "rotation": r["rotation"],
                "overlap": r["overlap"], "detail": r["detail"],
                "evidence": (f"near {rep}: {r['inliers']} inliers, scale {r['scale']:.3f}, rotation "
                             f"{r['rotation']:.1f} deg, overlap {r['overlap']:.2f}, detail {r['detail']:.3f} "
                             f"({how}{', through ' + k[0] + ' ~ ' + k[1] if k != (min(x, rep), max(x, rep)) else ''})")}

    membership, report, conflicts, conflict_groups = {}, [], {}, {}
    for ids in sorted(groups, key=lambda g: min(g)):
        rep = ids[0]
        group_id = f"dup:{min(ids)}"
        labels = sorted({info[i]["label"] for i in ids})
        if len(labels) > 1:
            for i in ids:
                conflicts[i] = f"duplicate_label_conflict: {group_id} of {len(ids)} images has labels {labels}"
                conflict_groups[i] = group_id
            continue
        for i in ids:
            membership[i] = (group_id, rep)
            if i == rep:
                continue
            r, k = info[i], info[rep]
            report.append({
                "record_id": i, "source": r["source"], "source_path": r["source_path"],
                "patient_key": r["patient_key"], "label": r["label"], "duplicate_of": rep,
                "kept_source": k["source"], "kept_source_path": k["source_path"],
                "kept_patient_key": k["patient_key"], "dup_group": group_id, "group_size": len(ids),
                "inliers": None, "scale": None, "rotation": None, "overlap": None, "detail": None,
                "distance_to_kept": hamming(r["phash"], k["phash"]), **evidence(i, rep), "keep_rule": KEEP_RULE,
            })
    # every verified copy links its two images' patients (quarantined conflict rows link nothing)
    links = sorted({(info[a]["patient_key"], info[b]["patient_key"])
                    for a, b in exact + near_edges + [k for k, r in second.items() if r["copy"]]
                    if a not in conflicts and b not in conflicts
                    and info[a]["patient_key"] != info[b]["patient_key"]})
    stats["groups"] = len({g for g, _ in membership.values()})
    stats["conflict_groups"] = len({r.split(" of ")[0] for r in conflicts.values()})
    stats["seconds_groups"] = round(time.time() - t0, 2)
    return DedupResult(membership, report, conflicts, links, stats, conflict_groups)


REPORT_DDL = ("record_id string, source string, source_path string, patient_key string, label string, "
              "duplicate_of string, kept_source string, kept_source_path string, kept_patient_key string, "
              "dup_group string, group_size int, kind string, inliers int, scale double, rotation double, "
              "overlap double, detail double, distance_to_kept int, evidence string, keep_rule string")
