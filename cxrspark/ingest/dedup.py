"""Duplicate detection across all sources, without an all-pairs join.

* exact duplicates: equal hash of the DECODED pixels (a PNG and its lossless re-encode match,
  byte-different files of the same picture match);
* near duplicates (re-encoded, resized, slightly cropped copies): 64-bit DCT perceptual hashes within
  ``threshold`` bits AND 32x32 thumbnails correlating at least ``min_correlation`` (pHash alone puts
  different patients' chest X-rays within a few bits of each other). Candidates come from pigeonhole
  banding: the hash is cut into ``threshold + 1`` bands, and two hashes within the threshold agree
  exactly on at least one band, so an equi-join on (band, value) finds every pair within the threshold
  (recall 1 by construction) while comparing only rows that share a bucket. Candidates are then
  checked with the exact Hamming distance and the thumbnail correlation (a pandas UDF).

Pairs become groups (connected components, on the driver: pairs are few); one representative per group
is kept by a stated rule; groups whose members disagree on the label are returned as conflicts.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import DoubleType

from cxrspark.images.hashing import band_layout, hamming, thumb_correlation
from cxrspark.ingest.groups import connected_components

KEEP_RULE = ("keep the member with the most original pixels (orig_height*orig_width); ties broken by "
             "the order of the sources in the config, then by record_id")


@pandas_udf(DoubleType())
def _correlation(a: pd.Series, b: pd.Series) -> pd.Series:
    return pd.Series([thumb_correlation(x, y) for x, y in zip(a, b)], dtype="float64")


def candidate_pairs(df: DataFrame, threshold: int, min_correlation: float, near: bool = True) -> DataFrame:
    """Pairs (a < b) of duplicate rows: columns a, b, kind ('exact'|'near'), distance, correlation.

    ``df`` needs record_id, pixel_sha256, phash, thumb.
    """
    base = df.select("record_id", "pixel_sha256", "phash")
    l, r = base.alias("l"), base.alias("r")
    exact = (l.join(r, (F.col("l.pixel_sha256") == F.col("r.pixel_sha256"))
                    & (F.col("l.record_id") < F.col("r.record_id")))
             .select(F.col("l.record_id").alias("a"), F.col("r.record_id").alias("b"),
                     F.lit("exact").alias("kind"), F.lit(0).alias("distance"),
                     F.lit(1.0).alias("correlation")))
    if not near:
        return exact
    bands = [F.struct(F.lit(i).alias("band"),
                      F.shiftrightunsigned(F.col("phash"), shift).bitwiseAND(F.lit((1 << width) - 1))
                      .alias("value"))
             for i, (shift, width) in enumerate(band_layout(threshold + 1))]
    banded = (base.select("record_id", "phash", F.explode(F.array(*bands)).alias("bv"))
              .select("record_id", "phash", "bv.band", "bv.value"))
    bl, br = banded.alias("l"), banded.alias("r")
    cand = (bl.join(br, (F.col("l.band") == F.col("r.band")) & (F.col("l.value") == F.col("r.value"))
                    & (F.col("l.record_id") < F.col("r.record_id")))
            .select(F.col("l.record_id").alias("a"), F.col("r.record_id").alias("b"),
                    F.bit_count(F.col("l.phash").bitwiseXOR(F.col("r.phash"))).cast("int").alias("distance"))
            .dropDuplicates(["a", "b"])
            .where(F.col("distance") <= threshold))
    thumbs = df.select("record_id", "thumb")
    ta, tb = thumbs.alias("ta"), thumbs.alias("tb")
    cand = (cand.join(ta, F.col("a") == F.col("ta.record_id")).join(tb, F.col("b") == F.col("tb.record_id"))
            .withColumn("correlation", _correlation(F.col("ta.thumb"), F.col("tb.thumb")))
            .where(F.col("correlation") >= min_correlation)
            .select("a", "b", F.lit("near").alias("kind"), "distance", "correlation"))
    # a pair found both ways is exact
    both = exact.unionByName(cand)
    return (both.groupBy("a", "b")
            .agg(F.min("distance").alias("distance"), F.max("correlation").alias("correlation"),
                 F.min(F.when(F.col("kind") == "exact", 0).otherwise(1)).alias("_k"))
            .select("a", "b", F.when(F.col("_k") == 0, "exact").otherwise("near").alias("kind"),
                    "distance", "correlation"))


@dataclass
class DedupResult:
    #: record_id -> (group id, representative record_id) for every row that is in a group
    membership: dict[str, tuple[str, str]]
    #: report rows for every dropped duplicate
    report: list[dict]
    #: record_id -> reason for rows quarantined because their group disagrees on the label
    conflicts: dict[str, str]
    #: pairs of patient keys that the kept groups link (same image under two patient keys)
    patient_links: list[tuple[str, str]]
    pairs: int


def resolve_groups(spark: SparkSession, decoded: DataFrame, pairs: list[tuple[str, str, str, int, float]],
                   source_order: list[str], threshold: int) -> DedupResult:
    """Groups from pairs, a representative per group, the report, label conflicts, patient links."""
    comp = connected_components((a, b) for a, b, *_ in pairs)
    members = sorted(comp)
    if not members:
        return DedupResult({}, [], {}, [], 0)
    info_rows = (decoded.where(F.col("record_id").isin(members))
                 .select("record_id", "source", "source_path", "label", "patient_key",
                         "orig_height", "orig_width", "pixel_sha256", "phash").collect())
    info = {r["record_id"]: r.asDict() for r in info_rows}
    edges: dict[str, list[str]] = {}
    for a, b, kind, dist, corr in pairs:
        why = (f" (phash distance {dist}, thumbnail correlation {corr:.3f})" if kind == "near"
               else " (same decoded pixels)")
        edges.setdefault(a, []).append(f"{kind} {b}{why}")
        edges.setdefault(b, []).append(f"{kind} {a}{why}")
    order = {name: i for i, name in enumerate(source_order)}
    groups: dict[str, list[str]] = {}
    for rid, root in comp.items():
        groups.setdefault(root, []).append(rid)

    membership, report, conflicts, links = {}, [], {}, []
    for gid, ids in sorted(groups.items()):
        rows = [info[i] for i in ids]
        rep = min(rows, key=lambda r: (-(r["orig_height"] or 0) * (r["orig_width"] or 0),
                                       order.get(r["source"], len(order)), r["record_id"]))
        group_id = f"dup:{gid}"
        labels = sorted({r["label"] for r in rows})
        if len(labels) > 1:
            for r in rows:
                conflicts[r["record_id"]] = (f"duplicate_label_conflict: {group_id} of {len(rows)} images "
                                             f"has labels {labels}")
            continue
        for r in rows:
            membership[r["record_id"]] = (group_id, rep["record_id"])
            if r["patient_key"] != rep["patient_key"]:
                links.append((r["patient_key"], rep["patient_key"]))
            if r["record_id"] == rep["record_id"]:
                continue
            exact = r["pixel_sha256"] == rep["pixel_sha256"]
            report.append({
                "record_id": r["record_id"], "source": r["source"], "source_path": r["source_path"],
                "patient_key": r["patient_key"], "label": r["label"],
                "duplicate_of": rep["record_id"], "kept_source": rep["source"],
                "kept_source_path": rep["source_path"], "kept_patient_key": rep["patient_key"],
                "dup_group": group_id, "group_size": len(rows),
                "kind": "exact" if exact else "near",
                "distance_to_kept": 0 if exact else hamming(r["phash"], rep["phash"]),
                "threshold": threshold,
                "evidence": "; ".join(sorted(edges.get(r["record_id"], []))),
                "keep_rule": KEEP_RULE,
            })
    return DedupResult(membership, report, conflicts, links, len(pairs))
