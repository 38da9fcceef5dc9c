"""Ingest on a real Spark standalone cluster (master + two workers on 127.0.0.1, started from the installed
pyspark package) through ./spark-submit.sh with the shipped environment, and what crashes do to it:
a worker killed mid-job, a driver killed mid-job. Every output is compared with a local-mode run of
the same input, table by table."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from services import SparkCluster, free_port, get_json, kill_group, loopback_env, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TABLES = ("curated/train", "curated/val", "curated/test", "quarantine", "filtered", "duplicates")
SUBMIT_TIMEOUT = 600


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    from cxrspark.sample import make_sample_tree, sources_config

    root = tmp_path_factory.mktemp("cluster")
    manifest = make_sample_tree(root / "raw", seed=0)
    (root / "sources.yaml").write_text(yaml.safe_dump({"sources": sources_config(manifest)}))
    return root


def _ingest_cmd(work: Path, output: Path, *spark_opts: str) -> list[str]:
    return ["./spark-submit.sh", *spark_opts, "jobs/ingest.py", "--config", "conf/ingest.yaml",
            "--config", str(work / "sources.yaml"), "--set", f"ingest.output={output}"]


def _submit(work: Path, output: Path, *spark_opts: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(_ingest_cmd(work, output, *spark_opts), cwd=REPO, env=loopback_env(),
                          capture_output=True, text=True, timeout=SUBMIT_TIMEOUT)
    assert proc.returncode == 0, f"ingest failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _start(work: Path, output: Path, log: Path, *spark_opts: str) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen(_ingest_cmd(work, output, *spark_opts), cwd=REPO, env=loopback_env(),
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _tables(output: Path) -> dict[str, pd.DataFrame]:
    return {t: pd.read_parquet(output / t).sort_values("record_id").reset_index(drop=True) for t in TABLES}


def _summary(output: Path) -> dict:
    s = json.loads((output / "summary.json").read_text())
    for run_specific in ("seconds", "stage_seconds", "output"):
        s.pop(run_specific, None)
    s["config"]["ingest"].pop("output")
    s["config"].pop("spark")
    return s


def assert_same_output(a: Path, b: Path) -> None:
    ta, tb = _tables(a), _tables(b)
    for t in TABLES:
        assert len(ta[t]) == len(tb[t]), t
        pd.testing.assert_frame_equal(ta[t], tb[t], check_like=True, obj=t)
    assert _summary(a) == _summary(b)
    assert not list(b.parent.glob(b.name + ".incomplete-*")), "a staging folder was left behind"


@pytest.fixture(scope="module")
def local_output(work) -> Path:
    out = work / "local"
    proc = _submit(work, out)
    assert "(exact)" in proc.stdout
    assert len(_tables(out)["curated/train"]) > 0
    return out


@pytest.fixture(scope="module")
def cluster(work):
    with SparkCluster(work / "spark", workers=2, cores=1, memory="2g") as c:
        yield c


def test_standalone_cluster_ingest_equals_local_mode(cluster, work, local_output):
    out = work / "on-cluster"
    proc = _submit(work, out, "--master", cluster.url)
    assert "reconciliation" in proc.stdout and "(exact)" in proc.stdout
    assert_same_output(local_output, out)
    # it ran on the two workers' executors, with the environment shipped to them
    (app,) = [a for a in cluster.state()["completedapps"] if a["name"] == "cxrspark-ingest"]
    executors = list((work / "spark").glob(f"work*/{app['id']}/*"))
    assert {p.parent.parent.name for p in executors} == {"work0", "work1"}
    for e in executors:
        assert (e / "environment" / "bin" / "python").exists(), f"{e}: no unpacked environment"


def _active_stage(ui: str) -> dict | None:
    """A running stage with at least 8 tasks, some finished and some still running."""
    (app,) = get_json(f"{ui}/api/v1/applications")
    for s in get_json(f"{ui}/api/v1/applications/{app['id']}/stages?status=active"):
        if s["numTasks"] >= 8 and s["numCompleteTasks"] >= 2 and s["numActiveTasks"] >= 1:
            return {"app": app["id"], **s}
    return None


def test_killing_a_worker_mid_ingest_changes_nothing(cluster, work, local_output):
    out, ui_port = work / "worker-killed", free_port()
    ui = f"http://127.0.0.1:{ui_port}"
    log = work / "worker-killed.log"
    proc = _start(work, out, log, "--master", cluster.url, "--conf", f"spark.ui.port={ui_port}")
    try:
        stage = wait_for("a stage with finished and running tasks", lambda: _active_stage(ui), 300, every=0.2,
                         alive=proc, log=log)
        victim = cluster.workers[1]
        kill_group(victim)  # the worker JVM, its executor and the executor's Python workers
        victim.wait(timeout=30)
        lost = wait_for("the driver noticing the lost executor",
                        lambda: [e for e in get_json(f"{ui}/api/v1/applications/{stage['app']}/allexecutors")
                                 if e["id"] != "driver" and not e["isActive"]], 120, alive=proc, log=log)
        assert proc.wait(timeout=SUBMIT_TIMEOUT) == 0, log.read_text()[-6000:]
    finally:
        kill_group(proc)
    text = log.read_text()
    assert "(exact)" in text
    assert len(lost) == 1 and lost[0]["removeReason"], lost
    assert_same_output(local_output, out)
    dead = [w for w in cluster.state()["workers"] if w["state"] != "ALIVE"]
    assert len(dead) == 1


def test_killing_the_driver_keeps_the_previous_output_and_a_rerun_succeeds(work, local_output):
    out = work / "driver-killed"
    shutil.copytree(local_output, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    log = work / "driver-killed.log"
    proc = _start(work, out, log)  # local mode: the driver is the only process that writes
    try:
        # kill it once it has written part of its new output: decoded rows in its staging folder
        wait_for("the ingest writing its staging folder",
                 lambda: [p for p in out.parent.glob(out.name + ".incomplete-*/_work/decoded/*.parquet")],
                 300, every=0.2, alive=proc, log=log)
        kill_group(proc)
        proc.wait(timeout=30)
    finally:
        kill_group(proc)
    assert proc.returncode != 0
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before, "the previous output changed"
    assert list(out.parent.glob(out.name + ".incomplete-*")), "the killed run wrote into its staging folder"
    _submit(work, out)
    assert_same_output(local_output, out)
