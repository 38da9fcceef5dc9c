"""run_ingest: the stages in order, the outputs written atomically, a summary that reconciles.

Output layout (under ``ingest.output``)::

    curated/<split>/   Petastorm-readable Parquet: image bytes + shape + label index + canonical columns
    quarantine/        rows that could not be used, with stage and reason
    filtered/          rows out of scope, with the rule
    duplicates/        the dedup report: every dropped row, what it duplicates, the evidence
    summary.json       counts, reconciliation, config, dataset fingerprint
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from typing import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import cxrspark
from cxrspark.config import Config, to_dict
from cxrspark.ingest.dedup import KEEP_RULE, REPORT_DDL, find_duplicates, method_identity
from cxrspark.ingest.groups import connected_components
from cxrspark.ingest.output import AtomicDir, format_counts
from cxrspark.ingest.split import assign_splits
from cxrspark.ingest.stages import decode, metadata_outcome, output_files, read_sources, segment, to_frame
from cxrspark.schema import (CURATED, CURATED_COLUMNS, DUPLICATE, FILTERED, OUTCOMES, QUARANTINED,
                             RECORD_COLUMNS)

_MAPPING_DDL = "record_id string, outcome string, reason string, dup_group string, split_group string, split string"


def run_ingest(spark: SparkSession, cfg: Config, log: Callable[[str], None] = print) -> dict:
    started = time.time()
    ing = cfg.ingest
    out = AtomicDir(ing.output)
    try:
        summary = _run(spark, cfg, out, log)
        summary["seconds"] = round(time.time() - started, 1)
        with open(out.path("summary.json"), "w") as fh:
            json.dump(summary, fh, indent=2, sort_keys=True)
        final = out.commit()
    except BaseException:
        out.abort()
        raise
    summary["output"] = str(final)
    log(format_counts(summary["curated_table"], list(ing.split.ratios)))
    log(summary["reconciliation"])
    lungs = summary["lungs"]
    if lungs["segmentation"] != "none":
        log(f"lungs: {lungs['segmented']} curated images segmented, {lungs['flagged']} with an implausible mask "
            f"(lung_mask_ok = false: {lungs['reasons']}); stored image: {lungs['stored_image']}")
    return summary


def _run(spark: SparkSession, cfg: Config, out: AtomicDir, log: Callable[[str], None]) -> dict:
    ing = cfg.ingest
    rows, source_problems = read_sources(cfg.sources)
    n_input = len(rows)
    log(f"ingest: {n_input} input rows from {len([s for s in cfg.sources if s.enabled])} sources")
    for problem in source_problems:
        log(f"ingest: WARNING source {problem['source']!r} could not be read: {problem['error']}")
    outcome, reason = metadata_outcome(cfg)
    classified = to_frame(spark, rows).withColumn("outcome", outcome).withColumn("reason", reason)
    early = classified.where(F.col("outcome").isNotNull()).withColumn("stage", F.lit("metadata"))
    pending = classified.where(F.col("outcome").isNull()).drop("outcome", "reason")

    # decode once; every later stage reads the stored result instead of decoding again
    work = out.path("_work", "decoded")
    segment(decode(spark, pending, cfg), cfg).write.parquet(work)
    decoded = spark.read.parquet(work)
    bad = decoded.where(F.col("decode_error").isNotNull())
    ok = decoded.where(F.col("decode_error").isNull())

    dd = find_duplicates(spark, ok, ing.dedup, [s.name for s in cfg.sources], out.path("_work", "dedup"), log)
    st = dd.stats
    log(f"dedup: {st['exact_pairs']} exact pairs, {st['candidate_pairs']} candidate pairs, "
        f"{st['verified_pairs']} verified near pairs, {st['groups']} groups")
    dropped = {r["record_id"]: r for r in dd.report}

    # patients linked by a duplicate group split as one unit
    patient_group = connected_components(dd.patient_links)
    meta = ok.select("record_id", "patient_key", "label").collect()
    mapping, images = [], []
    for r in meta:
        rid = r["record_id"]
        unit = patient_group.get(r["patient_key"], r["patient_key"])
        if rid in dd.conflicts:
            mapping.append((rid, QUARANTINED, dd.conflicts[rid], None, unit, None))
        elif rid in dropped:
            d = dropped[rid]
            mapping.append((rid, DUPLICATE, f"{d['kind']}_duplicate: of {d['duplicate_of']}",
                            d["dup_group"], unit, None))
        else:
            mapping.append((rid, CURATED, None, dd.membership.get(rid, (None,))[0], unit, None))
            images.append((unit, r["label"]))
    split_of = assign_splits(images, ing.split.ratios, ing.split.seed)
    mapping = [(rid, o, why, g, unit, split_of.get(unit) if o == CURATED else None)
               for rid, o, why, g, unit, _ in mapping]
    placed = ok.join(spark.createDataFrame(mapping, _MAPPING_DDL), "record_id", "left")

    # ---- write ----
    curated = (placed.where(F.col("outcome") == CURATED)
               .withColumn("label_index", _label_index(ing.classes))
               .select(*CURATED_COLUMNS))
    block = str(ing.row_group_mb * 2**20)
    for split in ing.split.ratios:
        part = curated.where(F.col("split") == split)
        n = part.count()
        (part.repartitionByRange(output_files(n), "record_id").sortWithinPartitions("record_id")
         .write.option("parquet.block.size", block).option("compression", "snappy")
         # image rows are large: check page and row-group sizes every 10 rows, not every 100
         .option("parquet.page.size.row.check.min", "10").option("parquet.block.size.row.check.min", "10")
         .parquet(out.path("curated", split)))

    record_cols = list(RECORD_COLUMNS)
    quarantine = (early.where(F.col("outcome") == QUARANTINED).select(*record_cols, "stage", "reason")
                  .unionByName(bad.select(*record_cols, F.lit("decode").alias("stage"),
                                          F.col("decode_error").alias("reason")))
                  .unionByName(placed.where(F.col("outcome") == QUARANTINED)
                               .select(*record_cols, F.lit("dedup").alias("stage"), "reason")))
    _write_table(quarantine, out.path("quarantine"))
    _write_table(early.where(F.col("outcome") == FILTERED).select(*record_cols, "reason"), out.path("filtered"))
    cols = [c.split()[0] for c in REPORT_DDL.split(", ")]
    _write_table(spark.createDataFrame([tuple(r[c] for c in cols) for r in dd.report], REPORT_DDL),
                 out.path("duplicates"))

    # ---- count what was WRITTEN, and reconcile ----
    read = {
        CURATED: spark.read.parquet(*[out.path("curated", s) for s in ing.split.ratios]),
        QUARANTINED: spark.read.parquet(out.path("quarantine")),
        FILTERED: spark.read.parquet(out.path("filtered")),
        DUPLICATE: spark.read.parquet(out.path("duplicates")),
    }
    counts = {k: read[k].count() for k in OUTCOMES}
    total = sum(counts.values())
    reconciliation = (f"reconciliation: input rows {n_input} = curated {counts[CURATED]} + filtered "
                      f"{counts[FILTERED]} + duplicates {counts[DUPLICATE]} + quarantined "
                      f"{counts[QUARANTINED]}" + (" (exact)" if total == n_input else f" MISMATCH: {total}"))
    if total != n_input:
        raise RuntimeError(reconciliation)
    reasons = Counter()
    for outcome_name in (QUARANTINED, FILTERED):
        for r in read[outcome_name].select(F.substring_index("reason", ":", 1).alias("code")).collect():
            reasons[f"{outcome_name}/{r['code']}"] += 1
    for r in read[DUPLICATE].select("kind").collect():
        reasons[f"{DUPLICATE}/{r['kind']}"] += 1
    flagged = F.when(F.col("lung_mask_ok") == F.lit(False), 1).otherwise(0)
    table = [r.asDict() for r in read[CURATED].groupBy("source", "label", "split")
             .agg(F.count("*").alias("n"), F.sum(flagged).cast("long").alias("lung_flagged")).collect()]
    fp_rows = sorted(f"{r['record_id']}|{r['pixel_sha256']}|{r['split']}|{r['label']}"
                     for r in read[CURATED].select("record_id", "pixel_sha256", "split", "label").collect())
    config = to_dict(cfg)
    lungs = _lung_summary(read[CURATED], cfg)
    # the U-Net's weights change the stored images and masks: they are part of the dataset's identity;
    # where the dataset is written is not
    settings = {k: v for k, v in config["ingest"].items() if k != "output"}
    # so are the near-duplicate method's version and its projection matrices (they decide the groups)
    dataset_hash = hashlib.sha256(("\n".join(fp_rows) + json.dumps(settings, sort_keys=True)
                                   + lungs.get("weights_sha256", "")
                                   + json.dumps(method_identity(ing.dedup), sort_keys=True)).encode()).hexdigest()
    shutil.rmtree(out.path("_work"), ignore_errors=True)
    return {
        "cxrspark_version": cxrspark.__version__,
        "input_rows": n_input,
        "counts": counts,
        "reasons": dict(sorted(reasons.items())),
        "reconciliation": reconciliation,
        "curated_table": sorted(table, key=lambda r: (r["source"], r["label"], r["split"])),
        "splits": {s: sum(r["n"] for r in table if r["split"] == s) for s in ing.split.ratios},
        "classes": ing.classes,
        "dedup": {**{k: v for k, v in dd.stats.items() if not k.startswith("seconds_")},
                  "linked_patient_keys": len(dd.patient_links), "keep_rule": KEEP_RULE},
        # run-specific, like the total "seconds": kept apart so two runs' summaries compare equal
        "stage_seconds": {f"dedup_{k[len('seconds_'):]}": v for k, v in dd.stats.items() if k.startswith("seconds_")},
        "lungs": lungs,
        "source_problems": source_problems,
        "dataset_hash": dataset_hash,
        "config": config,
    }


def _lung_summary(curated: DataFrame, cfg: Config) -> dict:
    ing = cfg.ingest
    out: dict = {"segmentation": ing.segmentation}
    if ing.segmentation == "none":
        return out
    from cxrspark.segmentation.weights import resolve

    weights, manifest = resolve(ing.lungs.weights)
    stats = curated.agg(F.count("lung_mask").alias("segmented"),
                        F.sum(F.when(~F.col("lung_mask_ok"), 1).otherwise(0)).alias("flagged"),
                        F.percentile_approx("lung_area_fraction", [0.01, 0.05, 0.5, 0.95, 0.99]).alias("q"),
                        ).first()
    reasons = Counter(r["code"] for r in curated.where(~F.col("lung_mask_ok"))
                      .select(F.substring_index("lung_qc", ":", 1).alias("code")).collect())
    return {**out, "stored_image": ing.lungs.stored_image, "weights": str(weights),
            "weights_sha256": manifest["sha256"], "segmented": int(stats["segmented"]),
            "flagged": int(stats["flagged"] or 0), "reasons": dict(sorted(reasons.items())),
            "area_fraction_quantiles": dict(zip(("p01", "p05", "p50", "p95", "p99"), stats["q"] or [])),
            "qc": {k: getattr(ing.lungs, k) for k in ("threshold", "min_area", "max_area", "max_components",
                                                   "min_region")}}


def _label_index(classes: list[str]):
    expr = F.lit(None).cast("int")
    for i, c in reversed(list(enumerate(classes))):
        expr = F.when(F.col("label") == c, F.lit(i)).otherwise(expr)
    return expr


def _write_table(df: DataFrame, path: str) -> None:
    df.orderBy("record_id").coalesce(1).write.parquet(path)
