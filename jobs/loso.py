"""Leave-one-source-out: train without each source in turn, evaluate on the source left out.

    python jobs/loso.py --config conf/train.yaml --set train.epochs=8
    python jobs/loso.py --config conf/train.yaml --set loso.sources=[kermany] --set loso.ranks=2

One parent MLflow run (experiment loso.experiment) with the table; trainings and evaluations are its
child runs. Exit status 1 when a fold failed (its row says why), 2 for a bad config or dataset.
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
    add_config_arguments(ap, ["conf/train.yaml"], "loso.sources=[cohen,kermany]")
    _, cfg = parse_job(ap, argv)

    from cxrspark.evaluate.loso import LosoError, run_loso
    try:
        r = run_loso(cfg)
    except LosoError as exc:
        print(f"loso: {exc}", file=sys.stderr)
        return 2
    cols = [c for c in ("left_out", "status", "images", "patients", "accuracy", "accuracy_low", "accuracy_high",
                        "macro_f1", "seen_sources_test_accuracy") if c in r["table"].columns]
    print(r["table"][cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"parent MLflow run {r['parent_run_id']} at {r['tracking_uri']} (loso/LOSO.md, loso/table.json)")
    return 1 if r["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
