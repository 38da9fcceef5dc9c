"""Where MLflow runs and artifacts go: beside the sqlite database for any sqlite store, the server's own
artifact root for a tracking server, never ./mlruns of the folder a job ran in; every experiment
cxrspark creates is marked as a model-training experiment for the MLflow 3 UI."""
from __future__ import annotations

from pathlib import Path

import pytest

from cxrspark import tracking

KIND = ("mlflow.experimentKind", "custom_model_development")


def _log_one(uri: str, experiment: str) -> str:
    import mlflow

    with tracking.start_run(uri, experiment, run_name="t") as run:
        mlflow.log_text("hello", "eval/note.txt")
    return run.info.run_id


def _no_stray_store(folder: Path) -> None:
    assert not (folder / "mlruns").exists() and not (folder / "mlartifacts").exists(), sorted(folder.iterdir())


@pytest.mark.parametrize("relative", [False, True])
def test_explicit_sqlite_store_keeps_artifacts_beside_the_database(tmp_path, monkeypatch, relative):
    from mlflow.tracking import MlflowClient

    store, work = tmp_path / "store", tmp_path / "work"
    store.mkdir()
    work.mkdir()
    monkeypatch.chdir(work if not relative else store)
    uri = "sqlite:///mlflow.db" if relative else f"sqlite:///{store}/mlflow.db"
    for experiment in ("cxrspark", "cxrspark-evaluation", "cxrspark-loso"):
        run_id = _log_one(uri, experiment)
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        assert exp.tags.get(KIND[0]) == KIND[1]
        assert exp.artifact_location == (store / "artifacts").as_uri()
        local = Path(client.download_artifacts(run_id, "eval/note.txt", str(tmp_path)))
        assert local.read_text() == "hello"
        assert list((store / "artifacts").rglob("note.txt")), "artifact not beside the database"
    _no_stray_store(work)
    _no_stray_store(store)


def test_an_existing_experiment_is_marked_and_keeps_its_location(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    elsewhere = (tmp_path / "theirs").as_uri()
    exp_id = client.create_experiment("cxrspark", artifact_location=elsewhere)
    assert KIND[0] not in client.get_experiment(exp_id).tags
    assert tracking.ensure_experiment(uri, "cxrspark") == exp_id
    exp = client.get_experiment(exp_id)
    assert exp.tags[KIND[0]] == KIND[1] and exp.artifact_location == elsewhere


@pytest.mark.slow
def test_a_tracking_server_keeps_its_own_artifact_root(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from services import MlflowServer

    monkeypatch.chdir(tmp_path)
    server = MlflowServer(tmp_path / "server")
    try:
        run_id = _log_one(server.url, "cxrspark-evaluation")
        exp = MlflowClient(server.url).get_experiment_by_name("cxrspark-evaluation")
        assert exp.tags.get(KIND[0]) == KIND[1]
        assert exp.artifact_location.startswith("mlflow-artifacts:")
        assert [p.read_text() for p in server.artifacts.rglob("note.txt")] == ["hello"]
        assert MlflowClient(server.url).get_run(run_id).info.status == "FINISHED"
    finally:
        server.stop()
    _no_stray_store(tmp_path)
