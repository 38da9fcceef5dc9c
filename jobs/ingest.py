"""Raw CXR sources -> curated, deduplicated, patient-split Parquet.

    ./spark-submit.sh jobs/ingest.py [--config conf/ingest.yaml --config conf/sources.yaml] [--set k=v]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cxrspark.config import add_config_arguments, parse_job  # noqa: E402
from cxrspark.ingest.pipeline import run_ingest  # noqa: E402
from cxrspark.spark.session import session_for  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(ap, ["conf/ingest.yaml", "conf/sources.yaml"], "ingest.image_size=256")
    _, cfg = parse_job(ap, argv)
    spark = session_for(cfg.spark)
    try:
        summary = run_ingest(spark, cfg)
    finally:
        spark.stop()
    out = summary["output"]
    print(f"curated Parquet: {out}/curated/{{{','.join(summary['splits'])}}}")
    print(f"quarantine: {out}/quarantine  filtered: {out}/filtered  dedup report: {out}/duplicates")
    print(f"summary: {out}/summary.json  (dataset hash {summary['dataset_hash'][:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
