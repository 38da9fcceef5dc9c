"""Batch prediction with Spark: a trained model over an ingest output or a folder of image files.

    ./spark-submit.sh jobs/predict.py --set predict.input=out/dataset --set predict.split=test
    ./spark-submit.sh jobs/predict.py --set predict.input=/data/new-hospital/images \\
        --set predict.model=runs:/<run id>/model --set predict.output=out/predictions/new-hospital

Writes <predict.output>/predictions (Parquet, one row per image or file, unreadable files with their
reason) and <predict.output>/summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cxrspark.config import add_config_arguments, parse_job  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(ap, ["conf/ingest.yaml", "conf/train.yaml"], "predict.input=/path/to/images")
    _, cfg = parse_job(ap, argv)

    from cxrspark.predict import PredictError, run_predict
    from cxrspark.spark.session import session_for
    spark = session_for(cfg.spark)
    try:
        summary = run_predict(spark, cfg)
    except PredictError as exc:
        print(f"predict: {exc}", file=sys.stderr)
        return 2
    finally:
        spark.stop()
    print(json.dumps({k: summary[k] for k in ("rows", "predicted", "unreadable", "reasons")}, indent=1))
    print(f"predictions: {summary['output']}  summary: {Path(summary['output']).parent / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
