"""run_ingest: the stages in order, the outputs written atomically, a summary that reconciles.

Output layout (under ``ingest.output``)::

    curated/<split>/   Petastorm-readable Parquet: image bytes + shape + label index + canonical columns
    quarantine/        rows that could not be used, with stage and reason
    filtered/          rows out of scope, with the rule
    duplicates/        the dedup report: every dropped row, what it duplicates, the evidence
    summary.json       counts, reconciliation, config, split protocol, standardisation, dataset fingerprint

The split is by patient (``ingest.split.unit: patient``, split groups never straddle splits) or, for
audits of the source studies' leaky protocol only, by image (``unit: image``, with ``leaky_audit``):
then the ingest warns loudly and summary.json's ``protocol`` says ``"leaky": true``.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from typing import Callable

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

import cxrspark
from cxrspark.config import Config, SplitConfig, to_dict
from cxrspark.ingest.dedup import KEEP_RULE, REPORT_DDL, DedupResult, find_duplicates, method_identity
from cxrspark.ingest.groups import connected_components
from cxrspark.ingest.output import AtomicDir, format_counts, leaky_warning, protocol_record
from cxrspark.ingest.split import assign_unit_splits
from cxrspark.ingest.stages import (decode, finish_records, metadata_outcome, output_files, segment,
                                    standardize_record, write_records)
from cxrspark.spark.progress import StageTracker
from cxrspark.schema import (CURATED, CURATED_COLUMNS, DUPLICATE, FILTERED, OUTCOMES, QUARANTINED,
                             RECORD_COLUMNS)


def run_ingest(spark: SparkSession, cfg: Config, log: Callable[[str], None] = print,
               progress_every: float | None = None) -> dict:
    """``progress_every``: seconds between progress lines (default: 1 on a terminal, where the line is
    rewritten in place, else 30)."""
    started = time.time()
    ing = cfg.ingest
    out = AtomicDir(ing.output)
    try:
        summary = _run(spark, cfg, out, log, progress_every)
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
    warning = leaky_warning(ing)
    if warning:
        log(f"ingest: {warning}")
    lungs = summary["lungs"]
    if lungs["segmentation"] != "none":
        log(f"lungs: {lungs['segmented']} curated images segmented, {lungs['flagged']} with an implausible mask "
            f"(lung_mask_ok = false: {lungs['reasons']}); stored image: {lungs['stored_image']}")
    return summary


def _run(spark: SparkSession, cfg: Config, out: AtomicDir, log: Callable[[str], None],
         progress_every: float | None) -> dict:
    shuffle = spark.conf.get("spark.sql.shuffle.partitions")
    try:
        return _stages(spark, cfg, out, StageTracker(spark.sparkContext, log, interval=progress_every))
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", shuffle)


def _stages(spark: SparkSession, cfg: Config, out: AtomicDir, track: StageTracker) -> dict:
    ing = cfg.ingest
    log = track.log
    standardize = standardize_record(ing)  # a reference image that cannot be used stops the ingest here
    warning = leaky_warning(ing)
    if warning:
        log(f"ingest: {warning}")
    with track.stage("sources"):
        per_source, source_problems = write_records(cfg.sources, out.path("_work", "records"), log)
    n_input = sum(per_source.values())
    log(f"ingest: {n_input} input rows from {len([s for s in cfg.sources if s.enabled])} sources")
    for problem in source_problems:
        log(f"ingest: WARNING source {problem['source']!r} could not be read: {problem['error']}")
    identity = identity_warnings(cfg)
    for name, warning in identity.items():
        log(f"ingest: WARNING source {name!r}: {warning}")
    # shuffles of per-image bookkeeping rows grow with the input; a cluster's setting may be higher
    parts = max(int(spark.conf.get("spark.sql.shuffle.partitions")), -(-n_input // ing.partitions.shuffle_rows))
    spark.conf.set("spark.sql.shuffle.partitions", str(parts))

    with track.stage("file_checks", n_input, "records"):
        (finish_records(spark, out.path("_work", "records"), cfg.sources, ing.partitions.record_rows)
         .write.parquet(out.path("_work", "checked")))
    outcome, reason = metadata_outcome(cfg)
    classified = (spark.read.parquet(out.path("_work", "checked"))
                  .withColumn("outcome", outcome).withColumn("reason", reason))
    early = classified.where(F.col("outcome").isNotNull()).withColumn("stage", F.lit("metadata"))
    pending = classified.where(F.col("outcome").isNull()).drop("outcome", "reason")

    # decode once; every later stage reads the stored result instead of decoding again
    n_pending = pending.count()
    work = out.path("_work", "decoded")
    with track.stage("decode", n_pending, "images"):
        segment(decode(spark, pending, cfg, rows=n_pending), cfg).write.parquet(work)
    decoded = spark.read.parquet(work)
    bad = decoded.where(F.col("decode_error").isNotNull())
    ok = decoded.where(F.col("decode_error").isNull())

    with track.stage("dedup"):
        dd = find_duplicates(spark, ok, ing.dedup, [s.name for s in cfg.sources], out.path("_work", "dedup"), log)
    st = dd.stats
    log(f"dedup: {st['exact_pairs']} exact pairs, {st['candidate_pairs']} candidate pairs, "
        f"{st['verified_pairs']} verified near pairs, {st['groups']} groups")

    with track.stage("split"):
        placed = _place(spark, ok, dd, ing.split)

    with track.stage("write"):
        _write(spark, out, ing, placed, early, bad, dd)

    with track.stage("summary"):
        summary = _summary(spark, cfg, out, n_input, dd, identity, standardize)
    shutil.rmtree(out.path("_work"), ignore_errors=True)
    summary["source_problems"] = source_problems
    summary["input_rows_per_source"] = dict(sorted(per_source.items()))
    # run-specific, like the total "seconds": kept apart so two runs' summaries compare equal
    summary["stage_seconds"] = {**track.seconds, **{f"dedup_{k[len('seconds_'):]}": v
                                                    for k, v in dd.stats.items() if k.startswith("seconds_")}}
    return summary


def _place(spark: SparkSession, ok: DataFrame, dd: DedupResult, split: SplitConfig) -> DataFrame:
    """``ok`` + outcome, reason, dup_group, split_group and split, by joins with tables of the duplicate
    groups' members and the linked patients. ``unit: patient``: the driver assigns splits from per-unit
    image counts; ``unit: image``: :func:`image_split` (``split_group`` still names the patient group)."""
    rows = [(rid, QUARANTINED, why, None) for rid, why in dd.conflicts.items()]
    rows += [(d["record_id"], DUPLICATE, f"{d['kind']}_duplicate: of {d['duplicate_of']}", d["dup_group"])
             for d in dd.report]
    dropped = {d["record_id"] for d in dd.report}
    rows += [(rid, CURATED, None, group) for rid, (group, _) in dd.membership.items() if rid not in dropped]
    dups = spark.createDataFrame(rows, "record_id string, outcome string, reason string, dup_group string")
    # patients linked by a duplicate group split as one unit
    units = spark.createDataFrame(sorted(connected_components(dd.patient_links).items()),
                                  "patient_key string, unit string")
    base = (ok.join(F.broadcast(dups), "record_id", "left").join(F.broadcast(units), "patient_key", "left")
            .withColumn("outcome", F.coalesce("outcome", F.lit(CURATED)))
            .withColumn("split_group", F.coalesce("unit", "patient_key")).drop("unit"))
    curated = base.where(F.col("outcome") == CURATED)
    if split.unit == "image":
        return base.withColumn("split", F.when(F.col("outcome") == CURATED,
                                               image_split(curated, split.ratios, split.seed)))
    counts = curated.groupBy("split_group", "label").count().collect()  # one row per unit and label
    split_of = assign_unit_splits((((r["split_group"], r["label"]), r["count"]) for r in counts),
                                  split.ratios, split.seed)
    splits = spark.createDataFrame(sorted(split_of.items()), "split_group string, _split string")
    return (base.join(F.broadcast(splits), "split_group", "left")
            .withColumn("split", F.when(F.col("outcome") == CURATED, F.col("_split"))).drop("_split"))


def image_split(curated: DataFrame, ratios: dict[str, float], seed: int) -> Column:
    """The split column of the leaky image-level protocol: every curated image is its own unit, placed by
    a seeded 64-bit hash of its record_id, stratified by label. Within each label the images are ranked
    by (hash, record_id); the split of cumulative ratio c ends at rank round(c * n), so every split gets
    its ratio of every label within rounding. The driver receives the images at those ranks (labels x
    splits rows), never a per-image list; a patient's images and duplicates land in several splits,
    which is the point of the protocol."""
    names = [n for n, r in ratios.items() if r > 0]
    h = F.xxhash64(F.lit(seed), F.col("record_id"))
    cumulative, total = [], 0.0
    for n in names[:-1]:
        total += ratios[n]
        cumulative.append(min(total, 1.0))
    if not cumulative:
        return F.lit(names[0])
    by_label = Window.partitionBy("label")
    ranked = (curated.select("label", "record_id", h.alias("h"))
              .withColumn("rank", F.row_number().over(by_label.orderBy("h", "record_id")))
              .withColumn("n", F.count("*").over(by_label)))
    ends = [F.floor(F.col("n") * c + 0.5) for c in cumulative]
    at_an_end = F.col("rank") == ends[0]
    for e in ends[1:]:
        at_an_end = at_an_end | (F.col("rank") == e)
    rows = ranked.where(at_an_end).collect()
    at = {(r["label"], r["rank"]): (r["h"], r["record_id"]) for r in rows}
    sizes = {r["label"]: r["n"] for r in rows}
    column = F.lit(names[-1])  # a label too small for any end rank: every image to the last split
    for label in sorted(sizes):
        per_label = F.lit(names[-1])
        for name, c in reversed(list(zip(names, cumulative))):
            end = at.get((label, math.floor(sizes[label] * c + 0.5)))
            if end is None:  # round(c * n) = 0: no image of this label up to this split
                continue
            last_h, last_id = end
            upto = (h < F.lit(last_h)) | ((h == F.lit(last_h)) & (F.col("record_id") <= F.lit(last_id)))
            per_label = F.when(upto, F.lit(name)).otherwise(per_label)
        column = F.when(F.col("label") == label, per_label).otherwise(column)
    return column


def _write(spark: SparkSession, out: AtomicDir, ing, placed: DataFrame, early: DataFrame, bad: DataFrame,
           dd: DedupResult) -> None:
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


def _summary(spark: SparkSession, cfg: Config, out: AtomicDir, n_input: int, dd: DedupResult,
             identity: dict[str, str], standardize: dict) -> dict:
    """Counts, reasons, the curated table and the dataset hash, from what was WRITTEN (Spark
    aggregations; nothing per image reaches the driver), and the reconciliation with the input."""
    ing = cfg.ingest
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
    code = F.substring_index("reason", ":", 1)
    parts = [read[o].select(F.concat(F.lit(f"{o}/"), code).alias("k")) for o in (QUARANTINED, FILTERED)]
    parts.append(read[DUPLICATE].select(F.concat(F.lit(f"{DUPLICATE}/"), F.col("kind")).alias("k")))
    reasons = {r["k"]: int(r["count"]) for r in parts[0].unionByName(parts[1]).unionByName(parts[2])
               .groupBy("k").count().collect()}
    flagged = F.when(F.col("lung_mask_ok") == F.lit(False), 1).otherwise(0)
    table = [r.asDict() for r in read[CURATED].groupBy("source", "label", "split")
             .agg(F.count("*").alias("n"), F.sum(flagged).cast("long").alias("lung_flagged")).collect()]
    config = to_dict(cfg)
    lungs = _lung_summary(read[CURATED], cfg)
    # the U-Net's weights change the stored images and masks: they are part of the dataset's identity;
    # where the dataset is written and how the work was spread are not
    settings = {k: v for k, v in config["ingest"].items() if k not in ("output", "partitions")}
    # so are the near-duplicate method's version and its projection matrices (they decide the groups),
    # and the standardisation's reference image (its settings, the split unit and the dedup switches are
    # in ``settings``)
    dataset_hash = hashlib.sha256((fingerprint(read[CURATED]) + json.dumps(settings, sort_keys=True)
                                   + lungs.get("weights_sha256", "") + (standardize["reference_sha256"] or "")
                                   + json.dumps(method_identity(ing.dedup), sort_keys=True)).encode()).hexdigest()
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
        "lungs": lungs,
        "standardize": standardize,
        "protocol": protocol_record(ing),
        "identity": _identity_summary(read[CURATED], identity),
        "dataset_hash": dataset_hash,
        "config": config,
    }


def identity_warnings(cfg: Config) -> dict[str, str]:
    """Source name -> the adapter's warning that its patient ids do not identify patients."""
    from cxrspark.sources import make_adapter

    out = {}
    for s in cfg.sources:
        if not s.enabled:
            continue
        try:
            warning = make_adapter(s.kind, s.name, s.root, s.options).identity_warning()
        except Exception:  # noqa: BLE001 - an adapter that cannot be built is already a quarantined row
            continue
        if warning:
            out[s.name] = warning
    return out


def _identity_summary(curated: DataFrame, warnings: dict[str, str]) -> dict:
    """Per source: curated images, how many kept the source's own patient key and how many carry another
    key space's (e.g. ``nih:`` through a cross-archive link), how many have a per-image id for a patient
    id (``provenance.per_image_id``: each is split as its own patient), and the source's identity warning."""
    own = F.col("patient_key").startswith(F.concat(F.col("source"), F.lit(":")))
    per_image = F.get_json_object("provenance", "$.per_image_id") == F.lit("true")
    rows = (curated.groupBy("source")
            .agg(F.count("*").alias("n"), F.sum(own.cast("int")).alias("own"),
                 F.sum(per_image.cast("int")).alias("per_image")).collect())
    out = {}
    for r in sorted(rows, key=lambda r: r["source"]):
        entry = {"curated_images": int(r["n"]), "own_patient_keys": int(r["own"] or 0),
                 "linked_patient_keys": int(r["n"]) - int(r["own"] or 0)}
        if r["source"] in warnings or r["per_image"]:
            entry["images_split_as_own_patients"] = int(r["per_image"] or 0)
        if r["source"] in warnings:
            entry["warning"] = warnings[r["source"]]
        out[r["source"]] = entry
    for name, warning in warnings.items():
        out.setdefault(name, {"curated_images": 0, "own_patient_keys": 0, "linked_patient_keys": 0,
                              "warning": warning, "images_split_as_own_patients": 0})
    return out


#: the curated rows are hashed in this many buckets (by record_id) in the executors; the driver hashes
#: the buckets' digests
FINGERPRINT_BUCKETS = 1024


def fingerprint(curated: DataFrame) -> str:
    """SHA-256 over every curated row's record_id, pixel hash, split and label, independent of row and
    partition order: each row's digest, sorted within its record_id bucket and hashed there, then the
    buckets' digests in bucket order. The driver receives FINGERPRINT_BUCKETS digests, whatever the size."""
    row = F.sha2(F.concat_ws("|", "record_id", "pixel_sha256", "split", "label"), 256)
    buckets = (curated.select(F.pmod(F.xxhash64("record_id"), F.lit(FINGERPRINT_BUCKETS)).alias("b"), row.alias("h"))
               .groupBy("b").agg(F.sha2(F.concat_ws("", F.array_sort(F.collect_list("h"))), 256).alias("d"))
               .collect())
    return hashlib.sha256("".join(r["d"] for r in sorted(buckets, key=lambda r: r["b"])).encode()).hexdigest()


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
    reasons = {r["code"]: int(r["count"]) for r in curated.where(~F.col("lung_mask_ok"))
               .groupBy(F.substring_index("lung_qc", ":", 1).alias("code")).count().collect()}
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
