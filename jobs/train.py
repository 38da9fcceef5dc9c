"""Train a classifier on a curated dataset: Petastorm -> tf.data -> Horovod Keras, tracked in MLflow.

    horovodrun --gloo -np 2 -H localhost:2 .venv/bin/python jobs/train.py --config conf/train.yaml
    ./spark-submit.sh jobs/train.py --config conf/train.yaml --launcher spark --num-proc 2
    python jobs/train.py --config conf/train.yaml --resume        # continue from the last checkpoint
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cxrspark.config import add_config_arguments, parse_job, to_dict  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(ap, ["conf/train.yaml"], "train.epochs=5")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in train.output")
    ap.add_argument("--launcher", choices=("horovodrun", "spark"), default="horovodrun",
                    help="horovodrun (or plain python for one rank), or spark: horovod.spark.run on the "
                         "cluster of spark-submit")
    ap.add_argument("--num-proc", type=int, default=None,
                    help="--launcher spark: number of Horovod ranks (default: the default parallelism)")
    args, cfg = parse_job(ap, argv)

    if args.launcher == "spark":
        from cxrspark.train.launch import run_on_spark
        results = run_on_spark(to_dict(cfg), resume=args.resume, num_proc=args.num_proc)
        print(f"horovod.spark.run: {len(results)} ranks finished; MLflow run {results[0]['mlflow_run_id']}")
        return 0

    from cxrspark.train.loop import run_training
    result = run_training(cfg, resume=args.resume)
    if result["rank"] == 0:
        print(f"MLflow run {result['mlflow_run_id']}; checkpoints in {Path(cfg.train.output).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
