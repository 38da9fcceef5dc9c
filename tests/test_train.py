"""Training on ingested data: the tf.data input per rank, the loop under real horovodrun and
horovod.spark.run, resume, MLflow (read back through MlflowClient), and learning on real data."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from cxrspark.config import ConfigError, load_config  # noqa: E402
from cxrspark.metrics import confusion_matrix, per_class_table  # noqa: E402
from cxrspark.train import data as tdata  # noqa: E402
from cxrspark.train.loop import class_weights, learning_rate_at  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FAST = ["train.input_size=48", "train.batch_size=8", "train.augment.preset=none", "train.reader_workers=1",
        "train.mlflow.log_model=false"]


def _cfg(*overrides: str):
    return load_config([REPO / "conf/train.yaml"], list(overrides))


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def _probe(out: Path, *args: str, np_: int = 1) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "python"), "tests/train_probe.py", str(out), *args]
    if np_ > 1:
        cmd = [str(BIN / "horovodrun"), "--gloo", "-np", str(np_), "-H", f"localhost:{np_}", *cmd]
    return _run(cmd)


def _client(train_output: Path):
    from mlflow import MlflowClient
    return MlflowClient(f"sqlite:///{train_output.parent / 'mlflow' / 'mlflow.db'}")


def _runs(client):
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


# ---- pure pieces --------------------------------------------------------------------------------
def test_learning_rate_warms_up_holds_then_decays():
    kw = dict(base=0.001, size=4, warmup_epochs=2, decay_epochs=[10, 20], decay_factor=0.1)
    assert learning_rate_at(0, **kw) == pytest.approx(0.001)
    assert learning_rate_at(1, **kw) == pytest.approx(0.0025)
    assert learning_rate_at(2, **kw) == pytest.approx(0.004)
    assert learning_rate_at(9.9, **kw) == pytest.approx(0.004)
    assert learning_rate_at(10, **kw) == pytest.approx(0.0004)
    assert learning_rate_at(25, **kw) == pytest.approx(0.00004)
    assert learning_rate_at(0, **{**kw, "warmup_epochs": 0}) == pytest.approx(0.004)


def test_class_weights_balance_the_training_counts():
    w = class_weights({"COVID-19": 10, "Normal": 30, "Pneumonia": 0}, ["COVID-19", "Normal", "Pneumonia"])
    assert w == {0: pytest.approx(2.0), 1: pytest.approx(40 / 60), 2: 0.0}


def test_per_class_table_matches_a_hand_computed_confusion_matrix():
    # true:      0 0 0 1 1 2 2 2 2 ; predicted: 0 0 1 1 1 1 1 0 1  -> class 2 is never predicted
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 1, 1, 0, 1])
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 2, 0], [1, 3, 0]]
    t = per_class_table(cm, ["a", "b", "c"]).set_index("class")
    assert t.loc["a", "precision"] == pytest.approx(2 / 3) and t.loc["a", "recall"] == pytest.approx(2 / 3)
    assert t.loc["b", "precision"] == pytest.approx(2 / 6) and t.loc["b", "recall"] == pytest.approx(1.0)
    assert t.loc["b", "f1"] == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))
    assert t.loc["c", "precision"] == 0 and t.loc["c", "recall"] == 0 and t.loc["c", "f1"] == 0
    assert t.loc["c", "support"] == 4 and t.loc["accuracy", "f1"] == pytest.approx(4 / 9)
    assert t.loc["weighted avg", "recall"] == pytest.approx(4 / 9)  # weighted recall == accuracy


def test_train_config_is_checked():
    assert _cfg("train.augment.preset=strong").train.augment.resolved()["rotation"] == 10
    assert _cfg("train.augment.preset=strong", "train.augment.rotation=5").train.augment.resolved()["rotation"] == 5
    assert _cfg().train.augment.resolved()["horizontal_flip"] is False
    for bad, msg in [("train.augment.preset=wild", "preset"), ("train.optimizer=rmsprop", "optimizer"),
                     ("train.imbalance.oversample={Flu: 0.3}", "unknown classes"),
                     ("train.imbalance.oversample={COVID-19: 1.2}", "fractions"),
                     ("train.augment.zoom=2", "zoom"), ("train.epochs=0", "epochs")]:
        with pytest.raises(ConfigError, match=msg):
            _cfg(bad)


# ---- the input pipeline on the ingested sample ---------------------------------------------------
def test_dataset_info_reads_the_ingest_summary(sample_dataset):
    info = tdata.load_dataset_info(sample_dataset)
    assert info.image_size == 224 and info.classes == ["COVID-19", "Normal", "Pneumonia"]
    assert info.size("train") == 37 and info.row_groups("train") == 2 and info.row_groups("val") == 1
    with pytest.raises(tdata.DatasetError, match="summary.json"):
        tdata.load_dataset_info(sample_dataset / "curated")


@pytest.mark.parametrize("split", ["train", "val"])  # two row groups (petastorm shards) / one (rows thinned)
def test_rank_shares_are_disjoint_and_cover_the_split(sample_dataset, split):
    info = tdata.load_dataset_info(sample_dataset)
    shares = [[rid for b in tdata.eval_batches(info, split, r, 2, 5, workers=1) for rid in b["record_id"]]
              for r in range(2)]
    assert shares[0] and shares[1]
    assert not set(shares[0]) & set(shares[1])
    assert len(shares[0]) + len(shares[1]) == info.size(split) == len(set(shares[0]) | set(shares[1]))


def test_train_batches_are_decoded_images_with_one_hot_labels(sample_dataset):
    import contextlib

    info = tdata.load_dataset_info(sample_dataset)
    tcfg = _cfg("train.batch_size=4", "train.augment.preset=none", "train.shuffle_buffer=1").train
    with contextlib.ExitStack() as stack:
        batches = list(tdata.train_dataset(info, tcfg, 0, 1, stack).take(30).as_numpy_iterator())
    x, y = batches[0]
    assert x.shape == (4, 224, 224, 1) and x.dtype == np.float32 and y.shape == (4, 3)
    assert x.max() <= 255 and x.min() >= 0 and x.max() > 50  # pixel values, not [0,1] and not blank
    np.testing.assert_array_equal(y.sum(axis=1), 1)
    seen = np.concatenate([b[1].argmax(1) for b in batches])
    assert set(seen) == {0, 1, 2}  # the infinite stream cycles through the whole split
    # with no shuffle buffer the first pass yields every stored image once: compare with the Parquet
    import pandas as pd
    stored = pd.read_parquet(sample_dataset / "curated/train", columns=["image"])["image"]
    sums = sorted(np.frombuffer(b, np.uint8).astype(np.int64).sum() for b in stored)
    first = np.concatenate([b[0] for b in batches])[: len(stored)]
    assert sorted(first.reshape(len(stored), -1).sum(axis=1).astype(np.int64)) == sums


def test_augmentation_changes_pixels_but_not_labels_or_range(sample_dataset):
    import contextlib

    info = tdata.load_dataset_info(sample_dataset)
    plain, aug = (_cfg("train.batch_size=8", "train.shuffle_buffer=1", f"train.augment.preset={p}").train
                  for p in ("none", "strong"))
    with contextlib.ExitStack() as stack:
        (x0, y0), = tdata.train_dataset(info, plain, 0, 1, stack).take(1).as_numpy_iterator()
        (x1, y1), = tdata.train_dataset(info, aug, 0, 1, stack).take(1).as_numpy_iterator()
    np.testing.assert_array_equal(y0, y1)  # same order: shuffle buffer of 1, same seed
    assert x1.min() >= 0 and x1.max() <= 255
    assert np.abs(x1 - x0).mean() > 1.0


def test_oversampling_draws_the_configured_fraction_of_every_batch(sample_dataset):
    import contextlib

    info = tdata.load_dataset_info(sample_dataset)
    natural = info.counts["train"]["COVID-19"] / info.size("train")
    tcfg = _cfg("train.batch_size=16", "train.augment.preset=none", "train.imbalance.oversample={Normal: 0.6}").train
    with contextlib.ExitStack() as stack:
        labels = np.concatenate([y.argmax(1) for _, y in tdata.train_dataset(info, tcfg, 0, 1, stack)
                                 .take(40).as_numpy_iterator()])
    share = (labels == 1).mean()
    assert abs(share - 0.6) < 0.06, share
    assert info.counts["train"]["Normal"] / info.size("train") < 0.45 and natural > 0


def test_steps_per_epoch_is_the_same_for_every_rank(sample_dataset):
    info = tdata.load_dataset_info(sample_dataset)
    assert tdata.steps_per_epoch(info, "train", 8, 2) == math.ceil(37 / 16) == 3
    assert tdata.steps_per_epoch(info, "train", 8, 2, cap=2) == 2


# ---- the loop under real launchers ---------------------------------------------------------------
@pytest.mark.slow
def test_two_horovod_ranks_run_equal_steps_and_only_rank_0_logs(sample_dataset, tmp_path):
    train_out = tmp_path / "train"
    proc = _probe(tmp_path / "results", f"train.dataset={sample_dataset}", f"train.output={train_out}",
                  "train.epochs=2", *FAST, np_=2)
    r0, r1 = (json.loads((tmp_path / "results" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["size"] == r1["size"] == 2
    assert r0["steps_per_epoch"] == r1["steps_per_epoch"] == 3  # ceil(37 / (8 x 2))
    assert r0["steps_seen"] == r1["steps_seen"] == [3, 3]
    assert r0["iterations"] == r1["iterations"] == 6
    assert r0["history"]["val_loss"] == r1["history"]["val_loss"]  # exact, identical validation
    # rank 0 alone: one MLflow run, Keras progress, checkpoints
    runs = _runs(_client(train_out))
    assert len(runs) == 1 and runs[0].data.params["horovod_size"] == "2"
    assert r0["mlflow_run_id"] == runs[0].info.run_id and r1["mlflow_run_id"] is None
    lines = proc.stdout.splitlines()
    assert any(line.startswith("[0]<stdout>:Epoch 2/2") for line in lines)
    assert not [line for line in lines if line.startswith("[1]<stdout>:") and ("Epoch" in line or "loss" in line)]
    state = json.loads((train_out / "checkpoints/state.json").read_text())
    assert state["epoch"] == 2 and state["mlflow_run_id"] == r0["mlflow_run_id"]
    # the final evaluation covered every validation and test image exactly once
    ev = r0["evaluation"]
    info = tdata.load_dataset_info(sample_dataset)
    assert ev["val"]["n"] == info.size("val") and ev["test"]["n"] == info.size("test")
    assert np.array(ev["val"]["confusion"]).sum(axis=1).tolist() == [info.counts["val"][c] for c in info.classes]


@pytest.mark.slow
def test_resume_continues_the_epoch_count_optimizer_and_mlflow_run(sample_dataset, tmp_path):
    train_out = tmp_path / "train"
    common = [f"train.dataset={sample_dataset}", f"train.output={train_out}", *FAST]
    _probe(tmp_path / "a", *common, "train.epochs=2")
    first = json.loads((tmp_path / "a/rank0.json").read_text())
    steps = first["steps_per_epoch"]
    assert first["initial_epoch"] == 0 and first["iterations"] == 2 * steps
    _probe(tmp_path / "b", *common, "train.epochs=3", "--resume")
    second = json.loads((tmp_path / "b/rank0.json").read_text())
    assert second["initial_epoch"] == 2 and second["epochs_run"] == 1 and second["last_epoch"] == 2
    assert second["iterations"] == 3 * steps  # the optimizer state came back, step counter included
    assert second["mlflow_run_id"] == first["mlflow_run_id"]
    client = _client(train_out)
    assert len(_runs(client)) == 1
    history = client.get_metric_history(first["mlflow_run_id"], "val_loss")
    assert sorted(h.step for h in history) == [0, 1, 2]
    state = json.loads((train_out / "checkpoints/state.json").read_text())
    assert state["epoch"] == 3 and [h["epoch"] for h in state["history"]] == [0, 1, 2]
    # resuming with another model is refused with a clear message
    with pytest.raises(AssertionError, match="made with model 'seed_cnn'"):
        _probe(tmp_path / "c", *common, "train.epochs=4", "train.model=vgg_dcnn", "--resume")


@pytest.mark.slow
def test_the_job_logs_tables_pictures_and_a_servable_model(sample_dataset, tmp_path):
    import mlflow

    train_out = tmp_path / "train"
    _run([str(BIN / "python"), "jobs/train.py", "--set", f"train.dataset={sample_dataset}",
          "--set", f"train.output={train_out}", "--set", "train.epochs=1",
          *[a for o in FAST[:-1] for a in ("--set", o)]])
    client = _client(train_out)
    (run,) = _runs(client)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    for split in ("val", "test"):
        assert {f"eval/{split}_per_class.json", f"eval/{split}_confusion.json",
                f"eval/{split}_confusion.png"} <= artifacts
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "eval/test_per_class.json",
                                                      str(tmp_path))).read_text())
    assert table["columns"] == ["class", "precision", "recall", "specificity", "f1", "f2", "auc", "mean_prob",
                                "support", "tp", "fp", "fn", "tn"]
    assert [row[0] for row in table["data"]] == ["COVID-19", "Normal", "Pneumonia", "macro avg",
                                                 "weighted avg", "accuracy"]
    assert run.data.params["dataset_hash"] == json.loads((sample_dataset / "summary.json").read_text())["dataset_hash"]
    assert "final_test_accuracy" in run.data.metrics and "val_loss" in run.data.metrics
    mlflow.set_tracking_uri(client.tracking_uri)
    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert logged.source_run_id == run.info.run_id
    model = mlflow.tensorflow.load_model(f"models:/{logged.model_id}")
    x = np.zeros((2, 224, 224, 1), np.float32)
    assert model.predict(x, verbose=0).shape == (2, 3)
    assert mlflow.models.get_model_info(f"models:/{logged.model_id}").signature is not None


@pytest.mark.slow
def test_spark_launcher_runs_the_same_training_through_horovod_spark_run(sample_dataset, tmp_path):
    train_out = tmp_path / "train"
    proc = _run(["./spark-submit.sh", "jobs/train.py", "--launcher", "spark", "--num-proc", "2",
                 "--set", f"train.dataset={sample_dataset}", "--set", f"train.output={train_out}",
                 "--set", "train.epochs=1", *[a for o in FAST for a in ("--set", o)]])
    assert "horovod.spark.run: 2 ranks finished" in proc.stdout
    (run,) = _runs(_client(train_out))
    assert run.data.params["horovod_size"] == "2" and run.info.status == "FINISHED"


@pytest.mark.realdata
@pytest.mark.slow
def test_seed_cnn_learns_on_real_data(real_dataset, tmp_path):
    """Loss of the trained model on the validation patients is clearly below the untrained one."""
    import mlflow

    from cxrspark.train.models import build_model

    train_out = tmp_path / "train"
    _probe(tmp_path / "res", f"train.dataset={real_dataset}", f"train.output={train_out}", "train.epochs=8",
           "train.steps_per_epoch=25", "train.batch_size=32", "train.input_size=64", "train.augment.preset=none",
           "train.label_smoothing=0", "train.schedule.warmup_epochs=0")
    result = json.loads((tmp_path / "res/rank0.json").read_text())
    info = tdata.load_dataset_info(real_dataset)
    batches = list(tdata.eval_batches(info, "val", 0, 1, 64, workers=1))
    x = np.concatenate([b["image"] for b in batches])
    y = tf.one_hot(np.concatenate([b["label_index"] for b in batches]), 3)

    def loss(model) -> float:
        return float(tf.keras.losses.categorical_crossentropy(y, model.predict(x, verbose=0)).numpy().mean())

    tf.keras.utils.set_random_seed(42)
    before = loss(build_model("seed_cnn", 3, info.image_size, input_size=64))
    mlflow.set_tracking_uri(_client(train_out).tracking_uri)
    (logged,) = mlflow.search_logged_models(output_format="list",
                                            experiment_ids=[e.experiment_id for e in mlflow.search_experiments()])
    after = loss(mlflow.tensorflow.load_model(f"models:/{logged.model_id}"))
    assert after < 0.8 * before, (before, after)
    assert result["evaluation"]["val"]["loss"] == pytest.approx(after, rel=1e-3)
    assert result["history"]["val_loss"][-1] < result["history"]["val_loss"][0]
