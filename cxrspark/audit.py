"""Leak audit of a published split: which patients and which images sit in more than one split of a
split that someone else made (COVIDx's train/test, or any CSV of file, patient, split).

    summary = run_audit(spark, cfg)      # cfg.sources: sources whose records carry a published split

The sources are read by their adapters, so patient identity is linked as in an ingest (RSNA's per-image
ids through the RSNA -> NIH map, origin-namespaced patient keys, ...). Two kinds of leak:

* **identity** (metadata only, no image needed): a patient key with images in several published splits.
  Every image of such a patient gets one row per other split it leaks into; the evidence names the
  patient, how many of its images the other split holds, one of them, and the rule that linked the
  identity.
* **duplicate** (pixels, where the files exist, ``audit.pixels``): the ingest's own decode and
  near-duplicate search (exact pixels, then keypoint buckets and verification) over the images found;
  a duplicate group whose members sit in several splits leaks each member into the other splits, with
  the verification's evidence.

Outputs under ``audit.output``: ``leaks/`` (Parquet, one row per (image, other split it leaks into):
``record_id, source, split, label, patient_key, other_split, kind, evidence``) and ``summary.json``
(counts per split, per split pair, label and kind, the identity rules used, what the pixel search saw).
Everything per image stays in Spark; the driver holds per-source, per-split-pair and duplicate-group
state only (the leak rows of duplicate groups are made from the groups' members, as the ingest's dedup
report is). The MLflow run gets the leak rows as a table up to ``LOG_TABLE_ROWS``.
"""
from __future__ import annotations

import json
import shutil
import time
from typing import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from cxrspark.config import Config, to_dict
from cxrspark.ingest.dedup import find_duplicates
from cxrspark.ingest.output import AtomicDir
from cxrspark.ingest.stages import decode, finish_records, write_records

LEAK_DDL = ("record_id string, source string, split string, label string, patient_key string, "
            "other_split string, kind string, evidence string")
LEAK_COLUMNS = tuple(c.split()[0] for c in LEAK_DDL.split(", "))
#: the leak rows go into the MLflow run as a table up to this many; beyond, the run names the Parquet
LOG_TABLE_ROWS = 50_000


def run_audit(spark: SparkSession, cfg: Config, log: Callable[[str], None] = print) -> dict:
    started = time.time()
    out = AtomicDir(cfg.audit.output)
    try:
        summary = _audit(spark, cfg, out, log)
        summary["seconds"] = round(time.time() - started, 1)
        with open(out.path("summary.json"), "w") as fh:
            json.dump(summary, fh, indent=2, sort_keys=True)
        summary["output"] = str(out.commit())
    except BaseException:
        out.abort()
        raise
    return summary


def _audit(spark: SparkSession, cfg: Config, out: AtomicDir, log: Callable[[str], None]) -> dict:
    ac = cfg.audit
    per_source, problems = write_records(cfg.sources, out.path("_work", "records"), log)
    for p in problems:
        log(f"audit: WARNING source {p['source']!r} could not be read: {p['error']}")
    finish_records(spark, out.path("_work", "records"), cfg.sources, cfg.ingest.partitions.record_rows) \
        .write.parquet(out.path("_work", "checked"))
    rows = spark.read.parquet(out.path("_work", "checked")).withColumn(
        "split", F.get_json_object("provenance", f"$.{ac.split_field}"))
    placed = rows.where(F.col("split").isNotNull() & (F.col("split") != ""))

    identity = identity_leaks(placed)
    duplicates, pixels = (duplicate_leaks(spark, placed, cfg, out.path("_work", "pixels"), log) if ac.pixels
                          else (None, {"searched": False}))
    leaks = identity if duplicates is None else identity.unionByName(duplicates)
    leaks.orderBy("kind", "record_id", "other_split").coalesce(1).write.parquet(out.path("leaks"))
    written = spark.read.parquet(out.path("leaks"))
    summary = _summary(rows, placed, written, cfg)
    summary.update(input_rows_per_source=dict(sorted(per_source.items())), source_problems=problems, pixels=pixels)
    shutil.rmtree(out.path("_work"), ignore_errors=True)
    return summary


def identity_leaks(placed: DataFrame) -> DataFrame:
    """One row per (image, other split) for every patient key with images in several splits."""
    per = (placed.groupBy("patient_key", "split")
           .agg(F.count("*").alias("n"), F.min("source_path").alias("example")))
    other = per.select("patient_key", F.col("split").alias("other_split"), F.col("n").alias("n_other"),
                       F.col("example").alias("example_other"))
    pairs = per.join(other, "patient_key").where(F.col("split") != F.col("other_split"))
    rule = F.coalesce(F.get_json_object("provenance", "$.identity_rule"), F.lit("the source's patient id"))
    evidence = F.concat(F.lit("patient "), F.col("patient_key"), F.lit(" has "), F.col("n_other").cast("string"),
                        F.lit(" image(s) in "), F.col("other_split"), F.lit(" (e.g. "), F.col("example_other"),
                        F.lit("); identity: "), rule)
    return (placed.join(pairs.select("patient_key", "split", "other_split", "n_other", "example_other"),
                        ["patient_key", "split"])
            .select("record_id", "source", "split", "label", "patient_key", "other_split",
                    F.lit("identity").alias("kind"), evidence.alias("evidence")))


def duplicate_leaks(spark: SparkSession, placed: DataFrame, cfg: Config, work: str,
                    log: Callable[[str], None]) -> tuple[DataFrame, dict]:
    """Leak rows of duplicate groups spanning several splits, and what the pixel search saw."""
    present = placed.where(F.col("path").isNotNull() & F.col("error").isNull())
    n = present.count()
    stats: dict = {"searched": True, "images_found": n}
    empty = spark.createDataFrame([], LEAK_DDL)
    if n == 0:
        log("audit: no image file found: identity leaks only")
        return empty, stats
    decode(spark, present, cfg, rows=n).write.parquet(f"{work}/decoded")
    decoded = spark.read.parquet(f"{work}/decoded")
    ok = decoded.where(F.col("decode_error").isNull())
    stats["images_decoded"] = ok.count()
    stats["decode_errors"] = n - stats["images_decoded"]
    dd = find_duplicates(spark, ok, cfg.ingest.dedup, [s.name for s in cfg.sources], f"{work}/dedup", log)
    stats.update({k: v for k, v in dd.stats.items() if k in ("exact_pairs", "candidate_pairs", "verified_pairs",
                                                              "groups", "conflict_groups")})
    group_of = {rid: g for rid, (g, _) in dd.membership.items()} | dict(dd.conflict_groups)
    if not group_of:
        return empty, stats
    evidence = {r["record_id"]: r["evidence"] for r in dd.report}
    conflict = {rid: why for rid, why in dd.conflicts.items()}
    members = spark.createDataFrame(sorted(group_of.items()), "record_id string, dup_group string")
    info = (placed.join(F.broadcast(members), "record_id")
            .select("record_id", "source", "split", "label", "patient_key", "source_path", "dup_group").collect())
    by_group: dict[str, list] = {}
    for r in info:
        by_group.setdefault(r["dup_group"], []).append(r)
    rows = []
    for group, rs in sorted(by_group.items()):
        splits = {r["split"] for r in rs}
        if len(splits) < 2:
            continue
        for r in sorted(rs, key=lambda r: r["record_id"]):
            for other_split in sorted(splits - {r["split"]}):
                o = min((x for x in rs if x["split"] == other_split), key=lambda x: x["record_id"])
                how = conflict.get(r["record_id"]) or evidence.get(r["record_id"]) or evidence.get(o["record_id"]) \
                    or "kept image of the group"
                rows.append((r["record_id"], r["source"], r["split"], r["label"], r["patient_key"], other_split,
                             "duplicate", f"{group} ({len(rs)} images): same image as {o['record_id']} "
                                          f"({o['source_path']}) in {other_split}; {how}"))
    stats["groups_across_splits"] = sum(1 for rs in by_group.values() if len({r["split"] for r in rs}) > 1)
    return (spark.createDataFrame(rows, LEAK_DDL) if rows else empty), stats


def _summary(rows: DataFrame, placed: DataFrame, leaks: DataFrame, cfg: Config) -> dict:
    """Counts from the written leak table (Spark aggregations; per split pair, label and kind)."""
    n_rows, n_placed = rows.count(), placed.count()
    splits = {r["split"]: int(r["count"]) for r in placed.groupBy("split").count().collect()}
    by_pair = [r.asDict() for r in leaks.groupBy("split", "other_split", "label", "kind")
               .agg(F.count("*").alias("rows"), F.countDistinct("patient_key").alias("patients")).collect()]
    per_kind = {r["kind"]: {"rows": int(r["rows"]), "images": int(r["images"]), "patients": int(r["patients"])}
                for r in leaks.groupBy("kind").agg(F.count("*").alias("rows"),
                                                   F.countDistinct("record_id").alias("images"),
                                                   F.countDistinct("patient_key").alias("patients")).collect()}
    any_leak = leaks.select("record_id").distinct().count()
    patients = placed.select("patient_key").distinct().count()
    rules = {r["rule"] or "the source's patient id": int(r["count"]) for r in placed.groupBy(
        F.get_json_object("provenance", "$.identity_rule").alias("rule")).count().collect()}
    return {
        "input_rows": n_rows,
        "rows_with_a_published_split": n_placed,
        "rows_without_a_split": n_rows - n_placed,
        "splits": dict(sorted(splits.items())),
        "patients": patients,
        "leaking_images": any_leak,
        "leaking_fraction": round(any_leak / n_placed, 4) if n_placed else 0.0,
        "leaks": {k: per_kind.get(k, {"rows": 0, "images": 0, "patients": 0}) for k in ("identity", "duplicate")},
        "by_split_pair": sorted(by_pair, key=lambda r: (r["kind"], r["split"], r["other_split"], r["label"] or "")),
        "identity_rules": dict(sorted(rules.items())),
        "config": {"sources": to_dict(cfg)["sources"], "audit": to_dict(cfg.audit),
                   "dedup": to_dict(cfg.ingest.dedup)},
    }


def report_table(summary: dict) -> str:
    """The leaks per split pair, label and kind, as printed by jobs/audit.py."""
    lines = [f"{'kind':<10} {'split':<8} {'leaks into':<11} {'label':<10} {'images':>7} {'patients':>9}"]
    for r in summary["by_split_pair"]:
        lines.append(f"{r['kind']:<10} {r['split']:<8} {r['other_split']:<11} {str(r['label']):<10} "
                     f"{r['rows']:>7,} {r['patients']:>9,}")
    lk = summary["leaks"]
    lines.append(f"{summary['leaking_images']:,} of {summary['rows_with_a_published_split']:,} images "
                 f"({100 * summary['leaking_fraction']:.1f} %) leak into another split: identity "
                 f"{lk['identity']['images']:,} images of {lk['identity']['patients']:,} patients, duplicate "
                 f"{lk['duplicate']['images']:,} images")
    return "\n".join(lines)


def log_run(summary: dict, cfg: Config) -> str:
    """One MLflow run (experiment ``audit.experiment``, tracking URI as training's): the counts as metrics,
    the per-split-pair table, the leak rows and summary.json. Returns the run id."""
    import mlflow
    import pandas as pd

    from cxrspark import tracking

    uri = tracking.tracking_uri(cfg.train.mlflow.tracking_uri, cfg.train.output)
    with tracking.start_run(uri, cfg.audit.experiment, run_name=f"audit {', '.join(s.name for s in cfg.sources)}") as run:
        tracking.log_params({"sources": ",".join(s.name for s in cfg.sources), "output": summary["output"],
                             "pixels": cfg.audit.pixels, "split_field": cfg.audit.split_field})
        lk = summary["leaks"]
        mlflow.log_metrics({"leaking_images": summary["leaking_images"], "leaking_fraction": summary["leaking_fraction"],
                            "identity_leak_images": lk["identity"]["images"],
                            "identity_leak_patients": lk["identity"]["patients"],
                            "duplicate_leak_images": lk["duplicate"]["images"],
                            "images": summary["rows_with_a_published_split"], "patients": summary["patients"]})
        mlflow.log_table(pd.DataFrame(summary["by_split_pair"],
                                      columns=["kind", "split", "other_split", "label", "rows", "patients"]),
                         artifact_file="audit/leaks_by_split_pair.json")
        import pyarrow.parquet as pq

        n_leaks = pq.ParquetDataset(f"{summary['output']}/leaks").read(columns=["record_id"]).num_rows
        if n_leaks <= LOG_TABLE_ROWS:
            mlflow.log_table(pd.read_parquet(f"{summary['output']}/leaks"), artifact_file="audit/leaks.json")
        else:  # the table stays in the output folder; the run says where
            mlflow.set_tag("audit.leaks", f"{n_leaks} rows in {summary['output']}/leaks (Parquet)")
        mlflow.log_artifact(f"{summary['output']}/summary.json", artifact_path="audit")
        return run.info.run_id
