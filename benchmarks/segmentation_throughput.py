"""Lung segmentation throughput: the ingest's Spark pandas UDF against calling the U-Net directly in
one process, on the same images, in the same run.

    .venv/bin/python benchmarks/segmentation_throughput.py [--images 256] [--size 224] [--cores 2]

Images: real CXRs (../shared/data/cxr), decoded and resized to --size once, up front, with the ingest's
own code; both sides then do the same work per image: U-Net probabilities (resize to the model's
input, predict, resize back), mask cleaning + QC, stored image, mask PNG encoding.
- direct: this process, TensorFlow limited to ONE thread, batches of --batch: images/s for one core.
- spark:  local[--cores], the UDF over --cores*4 partitions, TF one thread per task (ingest.lungs.threads),
  results written to a no-op sink. "cold" includes starting TensorFlow and loading the model in each
  Python worker; "warm" is a second action on the same session (workers and models reused).
Per-core rate = images/s / cores. The ratio spark-per-core / direct is Spark's efficiency per core.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

OPTS = dict(stored_image="full", crop_margin=0.05, threshold=0.5, min_area=0.08, max_area=0.65, max_components=2,
            min_region=0.01)


def prepared_images(data: Path, n: int, size: int) -> list[bytes]:
    from cxrspark.spark.udfs import prepare_one

    paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    step = max(1, len(paths) // n)
    out = []
    for p in paths[::step]:
        r = prepare_one(str(p), size=size, resize_mode="pad", contrast="none", max_pixels=50_000_000,
                        max_file_bytes=64 << 20, jpeg_draft=True)
        if r["decode_error"] is None:
            out.append(r["image"])
        if len(out) == n:
            break
    return out


def direct(images: list[bytes], size: int, batch: int) -> float:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from cxrspark.segmentation.inference import LungSegmenter
    from cxrspark.spark.udfs import segment_batch

    seg = LungSegmenter(batch_size=batch)
    segment_batch(seg, images[:batch], [size] * batch, **OPTS)  # warm-up: graph tracing
    t = time.perf_counter()
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        segment_batch(seg, chunk, [size] * len(chunk), **OPTS)
    return time.perf_counter() - t


def spark_runs(images: list[bytes], size: int, batch: int, cores: int) -> tuple[float, float]:
    from pyspark.sql import functions as F

    from cxrspark.spark.session import build_session
    from cxrspark.spark.udfs import make_segment_udf

    spark = build_session(master=f"local[{cores}]", log_level="ERROR")
    udf = make_segment_udf(weights=None, batch_size=batch, threads=1, **OPTS)
    df = spark.createDataFrame([(i, b, size) for i, b in enumerate(images)], "i int, image binary, height int")
    df = df.repartition(cores * 4).cache()
    df.count()
    times = []
    for _ in range(2):
        t = time.perf_counter()
        df.withColumn("s", udf(F.col("image"), F.col("height"))).select("i", "s.*").write.format("noop") \
            .mode("overwrite").save()
        times.append(time.perf_counter() - t)
    spark.stop()
    return times[0], times[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cxr"))
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    images = prepared_images(Path(args.data), args.images, args.size)
    n = len(images)
    cold, warm = spark_runs(images, args.size, args.batch, args.cores)
    base = direct(images, args.size, args.batch)
    result = {
        "images": n, "size": args.size, "batch": args.batch, "cores": args.cores, "cpu_count": os.cpu_count(),
        "direct_1_thread_img_s": round(n / base, 2),
        "spark_cold_img_s": round(n / cold, 2), "spark_warm_img_s": round(n / warm, 2),
        "spark_warm_img_s_per_core": round(n / warm / args.cores, 2),
        "ratio_spark_warm_per_core_to_direct": round((n / warm / args.cores) / (n / base), 3),
        "ratio_spark_cold_per_core_to_direct": round((n / cold / args.cores) / (n / base), 3),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
