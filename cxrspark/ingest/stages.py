"""The ingest stages in order, each a small function over Spark DataFrames.

Every input row ends in exactly one outcome (cxrspark.schema.OUTCOMES) with a reason code:
metadata errors -> quarantined; filter rules -> filtered; decode errors -> quarantined;
dropped duplicates -> duplicate; label conflicts inside a duplicate group -> quarantined; the rest is
curated.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from cxrspark.config import Config, IngestConfig, SourceConfig
from cxrspark.images.standardize import Standardizer, file_sha256
from cxrspark.ingest.dedup import keypoint_params
from cxrspark.schema import (FILTERED, FRONTAL_VIEWS, LATERAL_VIEWS, QUARANTINED, RECORD_DDL,
                             SEGMENTED_DDL, UNKNOWN_VIEW, SourceRecord)
from cxrspark.sources import SourceError, make_adapter
from cxrspark.spark.udfs import make_prepare_udf, make_segment_udf, typed_frame


# ---- 1. sources -> canonical rows ----------------------------------------------------------------
#: record rows the driver holds at once while it streams the adapters into Parquet
RECORD_CHUNK = 20_000


def write_records(sources: list[SourceConfig], path: str, log: Callable[[str], None] = print,
                  chunk: int | None = None) -> tuple[dict[str, int], list[dict]]:
    """Stream every enabled source's records into Parquet files under ``path``, ``chunk`` rows at a time
    (the driver never holds a source's rows whole). Returns (rows per source, problems). A source that
    cannot be read at all becomes one quarantined row, so it shows in the counts instead of vanishing;
    the rows it yielded before the error are kept."""
    os.makedirs(path, exist_ok=True)
    chunk = chunk or RECORD_CHUNK
    cols = [c.split()[0] for c in RECORD_DDL.split(", ")]
    schema = _arrow_schema()
    per_source: dict[str, int] = {}
    problems: list[dict] = []
    buf: list[dict] = []
    files = 0

    def flush() -> None:
        nonlocal buf, files
        if buf:
            table = pa.Table.from_pydict({c: [r[c] for r in buf] for c in cols}, schema=schema)
            pq.write_table(table, os.path.join(path, f"part-{files:05d}.parquet"))
            files += 1
            buf = []

    for s in sources:
        if not s.enabled:
            continue
        n = 0
        try:
            adapter = make_adapter(s.kind, s.name, s.root, s.options)
            for rec in adapter.records():
                buf.append(rec.to_row())
                n += 1
                if len(buf) >= chunk:
                    flush()
        except Exception as exc:  # noqa: BLE001 - any failure of one source is that source's quarantined row
            reason = f"source_unreadable: {exc}" if isinstance(exc, (SourceError, OSError, ValueError, KeyError)) \
                else f"source_unreadable: {type(exc).__name__}: {exc}"
            problems.append({"source": s.name, "error": reason, "rows_read_before_error": n})
            buf.append(SourceRecord(record_id=f"{s.name}:<source>", source=s.name, source_path=s.root,
                                    path=None, label=None, finding="", patient_key=f"{s.name}:<source>",
                                    error=reason).to_row())
            n += 1
        per_source[s.name] = n
        log(f"ingest: source {s.name!r}: {n:,} rows")
    flush()
    if not files:  # no rows at all: an empty table of the right schema
        pq.write_table(schema.empty_table(), os.path.join(path, "part-00000.parquet"))
    return per_source, problems


def _arrow_schema() -> pa.Schema:
    types = {"string": pa.string(), "int": pa.int32()}
    return pa.schema([(c, types[t]) for c, t in (x.split() for x in RECORD_DDL.split(", "))])


def finish_records(spark: SparkSession, path: str, sources: list[SourceConfig], rows_per_task: int) -> DataFrame:
    """The records under ``path`` with the per-file part of each (existence, containment, file headers:
    :meth:`SourceAdapter.finish`) done in the executors; fails when two records share a record_id."""
    adapters = {}
    for s in sources:
        if s.enabled:
            try:
                adapters[s.name] = make_adapter(s.kind, s.name, s.root, s.options)
            except Exception:  # noqa: BLE001 - its one row is already quarantined as source_unreadable
                pass
    raw = spark.read.schema(RECORD_DDL).parquet(path)
    n = raw.count()
    clash = raw.groupBy("record_id").count().where("count > 1").limit(5).collect()
    if clash:
        raise RuntimeError(f"adapters produced non-unique record_ids, e.g. {sorted(r['record_id'] for r in clash)}")

    def finish(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            rows = []
            for row in pdf.astype(object).where(pdf.notna(), None).to_dict("records"):
                adapter = adapters.get(row["source"])
                rows.append(adapter.finish(row) if adapter is not None else row)
            yield typed_frame(rows, RECORD_DDL)

    return raw.repartition(partitions_for(spark, n, rows_per_task)).mapInPandas(finish, RECORD_DDL)


def partitions_for(spark: SparkSession, rows: int, rows_per_task: int) -> int:
    """Tasks for a per-row stage: ``rows_per_task`` rows each, at least 4 per core (an even spread, a
    lost executor costs little, and a progress line that moves)."""
    return max(4 * spark.sparkContext.defaultParallelism, -(-rows // max(1, rows_per_task)))


# ---- 2. metadata rules: quarantine bad rows, filter what is out of scope ---------------------------
def metadata_outcome(cfg: Config) -> tuple[Column, Column]:
    """(outcome, reason) columns; null outcome = goes on to decoding. Rules checked in this order."""
    ing = cfg.ingest
    frontal = F.col("view").isin(list(FRONTAL_VIEWS))
    if ing.keep_unknown_view:
        frontal = frontal | (F.col("view") == UNKNOWN_VIEW)
    rules = [
        (F.col("error").isNotNull(), QUARANTINED, F.col("error")),
        (F.col("modality") != "X-ray", FILTERED, F.concat(F.lit("modality: "), F.col("modality"))),
        (F.col("view").isin(list(LATERAL_VIEWS)), FILTERED, F.concat(F.lit("lateral_view: "), F.col("view"))),
        (~frontal, FILTERED, F.concat(F.lit("non_frontal_view: "), F.col("view"))),
        (F.col("label").isNull(), FILTERED,
         F.concat(F.lit("unusable_label: finding '"), F.coalesce(F.col("finding"), F.lit("")), F.lit("'"))),
        (~F.col("label").isin(list(ing.classes)), FILTERED,
         F.concat(F.lit("class_not_selected: "), F.col("label"))),
    ]
    outcome, reason = F.lit(None).cast("string"), F.lit(None).cast("string")
    for cond, out, why in reversed(rules):
        outcome = F.when(cond, F.lit(out)).otherwise(outcome)
        reason = F.when(cond, why).otherwise(reason)
    return outcome, reason


# ---- 3. decode, hash, keypoints, contrast, resize (the pandas UDF) -------------------------------------------
def standardizer(ing: IngestConfig) -> Standardizer | None:
    """``ingest.standardize`` ready for the workers (a reference image decoded here, once), or None
    for ``method: none``. A reference that cannot be read is a ValueError naming the key."""
    st = ing.standardize
    if st.method == "none":
        return None
    try:
        return Standardizer.build(st.method, st.scale, st.reference)
    except Exception as exc:  # noqa: BLE001 - unreadable or undecodable reference: one clear message
        raise ValueError(f"ingest.standardize.reference {st.reference}: cannot be used as a reference "
                         f"image: {type(exc).__name__}: {exc}") from exc


def standardize_record(ing: IngestConfig) -> dict:
    """What summary.json records of the standardisation (and the dataset hash covers): the settings,
    the reference file's sha256 (histmatch with a reference image), and where it was applied. Checks
    that the reference is usable, so a bad one stops the ingest before any work."""
    st = ing.standardize
    out = {"method": st.method, "scale": st.scale, "reference": st.reference, "reference_sha256": None}
    if st.method == "none":
        return out
    standardizer(ing)
    if st.method == "histmatch" and st.reference is not None:
        out["reference_sha256"] = file_sha256(st.reference)
    out["statistics_from"] = ("the lung mask aligned with the stored image" if ing.segmentation == "unet"
                              else "the non-padding pixels of the stored image")
    return out


def decode(spark: SparkSession, df: DataFrame, cfg: Config, keypoints: bool = True,
           rows: int | None = None) -> DataFrame:
    """Decoded rows (DECODED_DDL); ``keypoints=False`` (prediction) leaves the near-duplicate columns null
    but drafts JPEGs as an ingest with this config would. Without segmentation the image is the stored
    one, standardised here (``ingest.standardize``); with it, :func:`segment` standardises."""
    ing = cfg.ingest
    near = ing.dedup.near
    udf = make_prepare_udf(size=ing.image_size, resize_mode=ing.resize_mode, contrast=ing.contrast,
                           max_pixels=ing.max_pixels, min_side=ing.min_side,
                           max_file_bytes=ing.max_file_mb * 2**20, jpeg_draft=ing.jpeg_draft,
                           keypoints=keypoint_params(ing.dedup) if near and keypoints else None,
                           draft_min=ing.dedup.work_size if near else 0,
                           standardize=standardizer(ing) if ing.segmentation == "none" else None)
    # enough tasks to keep every core busy and to show progress (``rows``: the row count when known);
    # the decode cost per row dwarfs the task overhead
    parts = (partitions_for(spark, rows, ing.partitions.decode_rows) if rows is not None
             else spark.sparkContext.defaultParallelism * 4)
    return (df.repartition(parts, "record_id")
            .withColumn("_d", udf(F.col("path")))
            .select("*", "_d.*").drop("_d"))


# ---- 4. lung segmentation (the U-Net pandas UDF) ---------------------------------------------------
def segment(df: DataFrame, cfg: Config) -> DataFrame:
    """``segmentation: unet``: lung mask + QC columns, and the stored image as ``lungs.stored_image``
    says, standardised over the lung mask (``ingest.standardize``). ``none``: the full image, lung
    columns null. The weights are verified on the driver first, so a missing or wrong file stops the job
    before any work instead of failing every task."""
    nulls = [F.lit(None).cast(t).alias(c) for c, t in (x.split() for x in SEGMENTED_DDL.split(", "))
             if c != "image"]
    if cfg.ingest.segmentation == "none":
        return df.select("*", *nulls)
    from cxrspark.segmentation.weights import resolve

    lungs = cfg.ingest.lungs
    resolve(lungs.weights)  # raises SegmenterError with the reason
    udf = make_segment_udf(weights=lungs.weights, stored_image=lungs.stored_image, crop_margin=lungs.crop_margin,
                           batch_size=lungs.batch_size, threads=lungs.threads, threshold=lungs.threshold,
                           min_area=lungs.min_area, max_area=lungs.max_area, max_components=lungs.max_components,
                           min_region=lungs.min_region, standardize=standardizer(cfg.ingest))
    return (df.withColumn("_s", udf(F.col("image"), F.col("height")))
            .select(*[c for c in df.columns if c != "image"], "_s.*").drop("_s"))


def output_files(count: int, rows_per_file: int = 2000) -> int:
    return max(1, math.ceil(count / rows_per_file))
