"""Leak audit of a published split: the patients and images that sit in more than one of its splits.

    ./spark-submit.sh jobs/audit.py --config conf/audit-covidx9a.yaml [--set audit.output=DIR]

The sources of the config must carry each record's published split (``provenance.published_split``:
the ``covidx`` and ``split_csv`` adapters do). Output: ``<audit.output>/leaks/`` (Parquet) and
``summary.json``, an MLflow run (experiment ``audit.experiment``), and the table printed here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cxrspark.config import add_config_arguments, parse_job  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(ap, ["conf/audit-covidx9a.yaml"], "audit.output=out/audit")
    _, cfg = parse_job(ap, argv)

    from cxrspark.audit import log_run, report_table, run_audit
    from cxrspark.spark.session import session_for

    spark = session_for(cfg.spark)
    try:
        summary = run_audit(spark, cfg)
    finally:
        spark.stop()
    print(report_table(summary))
    run_id = log_run(summary, cfg)
    out = summary["output"]
    print(f"leaks: {out}/leaks  summary: {out}/summary.json  MLflow run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
