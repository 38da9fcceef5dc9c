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


def _ingest(spark, sources: list[dict], out: Path, tmp: Path, *overrides: str) -> Path:
    import yaml

    from cxrspark.config import load_config
    from cxrspark.ingest.pipeline import run_ingest

    f = tmp / "sources.yaml"
    f.write_text(yaml.safe_dump({"sources": sources}))
    cfg = load_config([REPO / "conf/ingest.yaml", f], [f"ingest.output={out}", *overrides])
    run_ingest(spark, cfg, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def sample_dataset(spark, tmp_path_factory) -> Path:
    """The generated sample of every layout ingested at 224 px with 1 MiB row groups, so that its
    train split has two row groups (Petastorm shards by row group) and val/test have one."""
    from cxrspark.sample import make_sample_tree, sources_config

    tmp = tmp_path_factory.mktemp("sample_dataset")
    manifest = make_sample_tree(tmp / "raw", seed=0)
    return _ingest(spark, sources_config(manifest), tmp / "dataset", tmp, "ingest.row_group_mb=1")


@pytest.fixture(scope="session")
def real_dataset(spark, real_data, tmp_path_factory) -> Path:
    """The real snapshot (conf/sources-devdata.yaml) ingested at 64 px."""
    import yaml

    tmp = tmp_path_factory.mktemp("real_dataset")
    sources = yaml.safe_load((REPO / "conf/sources-devdata.yaml").read_text())["sources"]
    for s in sources:
        s["root"] = str(real_data / Path(s["root"]).name)
        link = s.get("options", {}).get("link_patients")
        if link:
            link["metadata"] = str(real_data / Path(link["metadata"]).parent.name / Path(link["metadata"]).name)
    return _ingest(spark, sources, tmp / "real", tmp, "ingest.image_size=64", "ingest.row_group_mb=1")
