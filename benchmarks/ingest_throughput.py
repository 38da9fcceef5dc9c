"""Ingest throughput: Spark local[1] and local[2] against a plain single-process loop, same run.

    .venv/bin/python benchmarks/ingest_throughput.py [--repeat 3] [--size 224]

The work per image is identical in all three: read the file, decode, hash (pixel SHA-256, pHash,
thumbnail), resize to --size (cxrspark.images.prepare). The baseline loops over the files in this
process; the Spark runs push the same paths through the ingest's pandas UDF and write the results to
Parquet (the decode stage of the ingest, as it runs in the job). Each Spark run gets its own JVM; the
timer starts after the session is up and covers the whole action. Images: every image file of the
real data set (../shared/data/cxr), the list repeated --repeat times so runs last long enough.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def image_paths(data: Path) -> list[str]:
    from cxrspark.sources.base import IMAGE_SUFFIXES
    return sorted(str(p) for p in data.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def baseline(paths: list[str], size: int) -> float:
    from cxrspark.spark.udfs import prepare_one
    t = time.perf_counter()
    for p in paths:
        prepare_one(p, size=size, resize_mode="pad", contrast="none", max_pixels=50_000_000,
                    max_file_bytes=64 << 20, jpeg_draft=True)
    return time.perf_counter() - t


def spark_run(paths: list[str], size: int, cores: int) -> float:
    from pyspark.sql import functions as F

    from cxrspark.spark.session import build_session
    from cxrspark.spark.udfs import make_prepare_udf
    spark = build_session(master=f"local[{cores}]", log_level="ERROR")
    udf = make_prepare_udf(size=size, resize_mode="pad", contrast="none", max_pixels=50_000_000,
                           max_file_bytes=64 << 20, jpeg_draft=True)
    df = spark.createDataFrame([(f"r{i}", p) for i, p in enumerate(paths)], "record_id string, path string")
    spark.range(cores * 4).repartition(cores * 4).count()  # start the executor threads
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        (df.repartition(cores * 4, "record_id").withColumn("d", udf(F.col("path"))).select("record_id", "d.*")
         .write.format(os.environ.get("BENCH_SINK", "parquet")).mode("overwrite").save(os.path.join(tmp, "out")))
        elapsed = time.perf_counter() - t
    spark.stop()
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cxr"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--spark-cores", type=int, help=argparse.SUPPRESS)  # child process mode
    args = ap.parse_args()
    paths = image_paths(Path(args.data)) * args.repeat
    if args.spark_cores:
        print(json.dumps({"seconds": spark_run(paths, args.size, args.spark_cores)}))
        return 0

    n = len(paths)
    print(f"{n} images ({n // args.repeat} files x {args.repeat}), size {args.size}, {os.cpu_count()} cores")
    base = baseline(paths, args.size)
    results = {"single-process loop": base}
    for cores in (1, 2):
        env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
        out = subprocess.run([sys.executable, __file__, "--data", args.data, "--repeat", str(args.repeat),
                              "--size", str(args.size), "--spark-cores", str(cores)],
                             capture_output=True, text=True, env=env, check=True)
        results[f"spark local[{cores}]"] = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
    print(f"\n| run | seconds | images/s | images/s per core vs loop |")
    print("| --- | ---: | ---: | ---: |")
    for name, sec in results.items():
        cores = 2 if "[2]" in name else 1
        rate = n / sec
        print(f"| {name} | {sec:.1f} | {rate:.1f} | {rate / cores / (n / base):.2f} |")
    l1, l2 = results["spark local[1]"], results["spark local[2]"]
    overhead = l1 / base - 1
    print(f"\nSpark overhead per core (local[1] vs loop): {overhead * 100:.0f}% (goal < 30%)")
    print(f"local[2] / local[1] speed-up: {l1 / l2:.2f}x (goal >= 1.8x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
