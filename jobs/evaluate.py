"""Evaluate a trained model on a split of an ingest output; everything goes to MLflow.

    python jobs/evaluate.py --config conf/train.yaml                          # newest trained model, test split
    python jobs/evaluate.py --config conf/train.yaml --set evaluate.model=runs:/<run id>/model \\
        --set evaluate.dataset=out/other-hospital --set evaluate.split=test
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
    add_config_arguments(ap, ["conf/train.yaml"], "evaluate.split=val")
    _, cfg = parse_job(ap, argv)

    from cxrspark.evaluate.run import EvaluationError, run_evaluation
    try:
        r = run_evaluation(cfg)
    except EvaluationError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    ci = r["ci"].set_index(["class", "metric"])
    acc = ci.loc[("accuracy", "accuracy")]
    print(r["table"].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\n{r['n']} images of {r['patients']} patients; accuracy {acc['value']:.3f} "
          f"[{acc['low']:.3f}, {acc['high']:.3f}]; ECE {r['ece']:.3f}")
    print(f"MLflow run {r['run_id']} at {r['tracking_uri']} (model card: MODEL_CARD.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
