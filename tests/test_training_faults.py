"""Training against a real MLflow tracking server (`mlflow server`, sqlite backend, local artifact store, on
127.0.0.1) through MLFLOW_TRACKING_URI, read back only through MlflowClient; and a horovodrun job killed
mid-epoch that `--resume` continues from its last complete checkpoint."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from services import BIN, MlflowServer, loopback_env, wait_for

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FAST = ["train.input_size=48", "train.batch_size=8", "train.augment.preset=none", "train.reader_workers=1"]
TIMEOUT = 600


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as s:
        yield s


def _train_cmd(sample_dataset: Path, out: Path, *overrides: str, resume: bool = False) -> list[str]:
    sets = [a for o in (f"train.dataset={sample_dataset}", f"train.output={out}", *overrides) for a in ("--set", o)]
    return [str(BIN / "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2", str(BIN / "python"), "jobs/train.py",
            *sets, *(["--resume"] if resume else [])]


def _horovodrun(cmd: list[str], uri: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=loopback_env(MLFLOW_TRACKING_URI=uri), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def _only_run(client, experiment: str = "cxrspark"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def test_horovodrun_logs_to_an_mlflow_server(server, sample_dataset, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    out = tmp_path / "train"
    proc = _horovodrun(_train_cmd(sample_dataset, out, "train.epochs=2", "train.mlflow.experiment=server-test",
                                  *FAST), server.url)
    client = MlflowClient(server.url)
    run = _only_run(client, "server-test")
    assert f"MLflow run {run.info.run_id}" in proc.stdout
    assert run.info.status == "FINISHED"
    # params: the whole config and the Horovod set-up
    params = run.data.params
    assert params["horovod_size"] == "2" and params["model"] == "seed_cnn" and params["epochs"] == "2"
    assert params["dataset_hash"] == json.loads((sample_dataset / "summary.json").read_text())["dataset_hash"]
    # metrics: one value per epoch, and the final evaluation
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1]
    assert 0 <= run.data.metrics["final_test_accuracy"] <= 1
    # the per-class table, downloaded from the server's artifact store
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "eval/test_per_class.json",
                                                      str(tmp_path))).read_text())
    rows = {row[0]: dict(zip(table["columns"], row)) for row in table["data"]}
    assert set(rows) >= {"COVID-19", "Normal", "Pneumonia", "macro avg", "accuracy"}
    n_test = json.loads((sample_dataset / "summary.json").read_text())["splits"]["test"]
    assert sum(rows[c]["support"] for c in ("COVID-19", "Normal", "Pneumonia")) == n_test
    # the model: found through the server, loaded and run
    mlflow.set_tracking_uri(server.url)
    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert logged.source_run_id == run.info.run_id
    model = mlflow.tensorflow.load_model(f"models:/{logged.model_id}")
    probs = model.predict(np.zeros((2, 224, 224, 1), np.float32), verbose=0)
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    # everything went through the server: its artifact root holds the files, nothing local was made
    assert any(server.artifacts.rglob("test_per_class.json"))
    assert not (tmp_path / "mlflow").exists()


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL horovodrun and every process under it at once, as a crashed machine would."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for p in (proc, *children):
        try:
            p.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    proc.wait(timeout=30)  # reaped here, so that its exit status is kept
    psutil.wait_procs(children, timeout=30)


def _state(checkpoints: Path) -> dict | None:
    try:
        return json.loads((checkpoints / "state.json").read_text())
    except FileNotFoundError:
        return None


def test_a_killed_horovodrun_job_resumes_from_its_last_complete_checkpoint(server, sample_dataset, tmp_path):
    from mlflow import MlflowClient

    out = tmp_path / "train"
    checkpoints = out / "checkpoints"
    # small batches at full size: about ten steps per epoch, long enough to be killed in the middle
    slow = ["train.batch_size=2", "train.augment.preset=none", "train.reader_workers=1", "train.mlflow.log_model=false",
            "train.mlflow.experiment=resume-test", "train.early_stopping.patience=50"]
    log = tmp_path / "killed.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(_train_cmd(sample_dataset, out, "train.epochs=8", *slow), cwd=REPO,
                                env=loopback_env(MLFLOW_TRACKING_URI=server.url), stdout=fh,
                                stderr=subprocess.STDOUT)
    try:
        wait_for("epoch 1 checkpoint", lambda: (_state(checkpoints) or {}).get("epoch", 0) >= 1, 300, every=0.05,
                 alive=proc, log=log)
        t1 = time.monotonic()
        wait_for("epoch 2 checkpoint", lambda: (_state(checkpoints) or {}).get("epoch", 0) >= 2, 300, every=0.05,
                 alive=proc, log=log)
        epoch_seconds = time.monotonic() - t1
        time.sleep(epoch_seconds / 2)  # in the middle of the third epoch
        _kill_tree(proc)
    finally:
        _kill_tree(proc)
    state = _state(checkpoints)
    assert proc.wait(timeout=30) != 0
    done = state["epoch"]
    assert 2 <= done < 8, f"killed at epoch {done}: the kill did not land mid-training"
    # what state.json names is complete: the TF checkpoint restores and the best weights load
    prefix = checkpoints / state["checkpoint"]
    assert state["checkpoint"] == f"ckpt-{done}" and Path(f"{prefix}.index").is_file()
    reader = tf.train.load_checkpoint(str(prefix))
    assert any("optimizer" in k for k in reader.get_variable_to_shape_map())
    assert (checkpoints / state["best_weights"]).is_file()
    client = MlflowClient(server.url)
    run_id = state["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody ended it

    proc2 = _horovodrun(_train_cmd(sample_dataset, out, "train.epochs=8", *slow, resume=True), server.url)
    assert f"epochs {done}..7" in proc2.stdout
    run = _only_run(client, "resume-test")
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.tags.get(f"resumed_at_epoch_{done}") == "true"
    steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
    assert sorted(steps) == list(range(8)), steps  # every epoch once: none lost, none repeated
    final = _state(checkpoints)
    assert final["epoch"] == 8 and [h["epoch"] for h in final["history"]] == list(range(8))
    assert sorted(p.name for p in checkpoints.glob("best-*.h5")) == [final["best_weights"]]
