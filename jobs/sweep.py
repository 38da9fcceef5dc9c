"""The recipe sweep: models x training recipes, each on its internal test split and leave-one-source-out.

    .venv/bin/python jobs/sweep.py --config conf/train.yaml --config conf/sources-devdata.yaml \
        --config conf/sweep.yaml [--set sweep.only_models=[seed_cnn]]

Datasets are ingested once under sweep.output; trainings, evaluations and LOSO runs are children of one
parent MLflow run (experiment sweep.experiment) that holds the table (sweep/SWEEP.md). Finished cells are
reused when run again. Exit status 1 when a cell failed, 2 for a bad config.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cxrspark.config import add_config_arguments, parse_job  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(ap, ["conf/ingest.yaml", "conf/train.yaml", "conf/sweep.yaml"], "sweep.only_models=[seed_cnn]")
    _, cfg = parse_job(ap, argv)

    from cxrspark.evaluate.sweep import SweepError, run_sweep
    try:
        r = run_sweep(cfg)
    except SweepError as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return 2
    print(r["markdown"])
    print(f"parent MLflow run {r['parent_run_id']} at {r['tracking_uri']} (sweep/SWEEP.md, sweep/table.json)")
    return 1 if r["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
