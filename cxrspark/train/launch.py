"""Run the training loop on a Spark cluster's executors with ``horovod.spark.run``.

The driver ships the config as a plain dict; each Spark task becomes one Horovod rank and calls
:func:`cxrspark.train.loop.run_training`. Paths in the config (dataset, output, a sqlite MLflow
store) must be readable and writable from every executor: a shared filesystem, or an MLflow server.
"""
from __future__ import annotations

from typing import Any


def _rank_main(config: dict[str, Any], resume: bool) -> dict[str, Any]:
    from cxrspark.config import config_from_dict
    from cxrspark.train.loop import run_training

    result = run_training(config_from_dict(config), resume=resume)
    return {k: v for k, v in result.items() if k != "evaluation" or result["rank"] == 0}


def run_on_spark(config: dict[str, Any], *, resume: bool = False, num_proc: int | None = None,
                 spark=None) -> list[dict[str, Any]]:
    import horovod.spark

    from cxrspark.config import config_from_dict
    from cxrspark.spark.session import build_session

    if spark is None:
        sc = config_from_dict(config).spark
        spark = build_session(sc.master, sc.app_name + "-train", sc.shuffle_partitions, sc.log_level, sc.conf)
    return horovod.spark.run(_rank_main, args=(config, resume), num_proc=num_proc, use_gloo=True,
                             stdout=None, stderr=None)
