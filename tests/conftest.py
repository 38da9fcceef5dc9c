"""Shared fixtures: one local SparkSession for the whole run, and the real CXR data when present."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("CXRSPARK_REAL_DATA", REPO.parent / "shared" / "data" / "cxr"))


@pytest.fixture(scope="session")
def spark():
    from cxrspark.spark.session import build_session

    session = build_session(master="local[2]", app_name="cxrspark-tests", shuffle_partitions=4,
                            log_level="ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real public CXR snapshot (../shared/data/cxr); tests that need it skip when it is absent."""
    if not (REAL_DATA / "cohen" / "metadata.csv").is_file():
        pytest.skip(f"real CXR data not found at {REAL_DATA} (set CXRSPARK_REAL_DATA)")
    return REAL_DATA
