"""The one place a SparkSession is built."""
from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession


def build_session(master: str | None = None, app_name: str = "cxrspark", shuffle_partitions: int = 8,
                  log_level: str = "WARN", conf: dict[str, str] | None = None) -> SparkSession:
    """Create (or reuse) the SparkSession.

    ``master=None`` keeps what spark-submit chose (``--master``) and falls back to ``local[*]``.
    Local runs bind to 127.0.0.1 and use this interpreter for the Python workers.
    """
    builder = SparkSession.builder.appName(app_name)
    submitted_master = os.environ.get("CXRSPARK_SUBMIT_MASTER")  # set by spark-submit.sh
    if master:
        builder = builder.master(master)
    elif not submitted_master and "spark.master" not in _submit_conf():
        builder = builder.master("local[*]")
    effective = master or submitted_master or _submit_conf().get("spark.master", "local[*]")
    if effective.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    settings = {
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # images are large rows: keep Arrow batches between the JVM and Python workers small
        "spark.sql.execution.arrow.maxRecordsPerBatch": "64",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
    }
    settings.update(conf or {})
    for k, v in settings.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(log_level)
    return spark


def _submit_conf() -> dict[str, str]:
    """Settings spark-submit passed to this driver (empty when started from plain python)."""
    raw = os.environ.get("PYSPARK_SUBMIT_ARGS", "")
    out = {}
    parts = raw.split()
    for i, p in enumerate(parts[:-1]):
        if p == "--master":
            out["spark.master"] = parts[i + 1]
    return out


def session_for(spark_cfg) -> SparkSession:
    """The session a job's ``spark`` config section asks for (what every job in jobs/ builds)."""
    return build_session(spark_cfg.master, spark_cfg.app_name, spark_cfg.shuffle_partitions,
                         spark_cfg.log_level, spark_cfg.conf)
