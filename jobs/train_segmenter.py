"""Train the lung U-Net on V7 lung polygons of Cohen images (Horovod-ready, tracked in MLflow).

    python jobs/train_segmenter.py --config conf/segmenter.yaml
    horovodrun --gloo -np 2 -H localhost:2 .venv/bin/python jobs/train_segmenter.py --config conf/segmenter.yaml
    # write the weights users get by default (cxrspark/segmentation/lung_unet):
    python jobs/train_segmenter.py --config conf/segmenter-devdata.yaml --set segmenter.publish=cxrspark/segmentation/lung_unet
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cxrspark.config import add_config_arguments, parse_job  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(ap, ["conf/segmenter.yaml"], "segmenter.epochs=20")
    _, cfg = parse_job(ap, argv)

    from cxrspark.train.segmenter import run_segmenter_training
    command = shlex.join(["python", "jobs/train_segmenter.py", *(sys.argv[1:] if argv is None else argv)])
    result = run_segmenter_training(cfg, command=command)
    if result["rank"] == 0:
        print(f"validation Dice (mean over contrasts) {result['validation']['mean_dice']:.4f}; "
              f"MLflow run {result['mlflow_run_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
