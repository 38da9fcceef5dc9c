"""Evaluation metrics against hand-computed cases: the per-class table, ROC AUC, the patient
bootstrap and calibration."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrspark.evaluate.bootstrap import patient_bootstrap
from cxrspark.evaluate.calibration import expected_calibration_error, reliability_table
from cxrspark.metrics import confusion_matrix, per_class_table, roc_auc_ovr

# true:      0 0 0 1 1 2 2 2 2 ; predicted: 0 0 1 1 1 1 1 0 1  -> class c (2) is never predicted
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, 1, 1, 1, 1, 0, 1])


def test_one_vs_rest_counts_specificity_and_f2_by_hand():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    t = per_class_table(cm, ["a", "b", "c"]).set_index("class")
    # a: TP 2, FP 1 (a c predicted as a), FN 1, TN 5
    assert [t.loc["a", k] for k in ("tp", "fp", "fn", "tn")] == [2, 1, 1, 5]
    assert t.loc["a", "specificity"] == pytest.approx(5 / 6) and t.loc["a", "f2"] == pytest.approx(2 / 3)
    # b: TP 2, FP 4, FN 0, TN 3; P = 1/3, R = 1 -> F2 = 5PR / (4P + R) = 5/7
    assert [t.loc["b", k] for k in ("tp", "fp", "fn", "tn")] == [2, 4, 0, 3]
    assert t.loc["b", "specificity"] == pytest.approx(3 / 7) and t.loc["b", "f2"] == pytest.approx(5 / 7)
    # c is never predicted: precision, recall, F1, F2 are 0; specificity is 5/5
    assert [t.loc["c", k] for k in ("precision", "recall", "f1", "f2")] == [0, 0, 0, 0]
    assert t.loc["c", "specificity"] == 1.0 and [t.loc["c", k] for k in ("tp", "fp", "fn", "tn")] == [0, 0, 4, 5]
    assert t.loc["macro avg", "specificity"] == pytest.approx((5 / 6 + 3 / 7 + 1) / 3)
    assert t.loc["weighted avg", "recall"] == pytest.approx(4 / 9) == t.loc["accuracy", "f1"]
    assert np.isnan(t.loc["a", "auc"])  # no probabilities given


def test_auc_and_mean_probability_by_hand():
    y = np.array([0, 0, 1, 1])
    p0 = np.array([0.9, 0.4, 0.6, 0.1])
    probs = np.stack([p0, 1 - p0], axis=1)
    # class 0 positives score 0.9, 0.4; negatives 0.6, 0.1: 3 of 4 pairs ranked right
    assert roc_auc_ovr(y, probs)[0] == pytest.approx(0.75) and roc_auc_ovr(y, probs)[1] == pytest.approx(0.75)
    t = per_class_table(confusion_matrix(y, probs.argmax(1), 2), ["a", "b"], y, probs).set_index("class")
    assert t.loc["a", "auc"] == pytest.approx(0.75)
    assert t.loc["a", "mean_prob"] == pytest.approx((0.9 + 0.4) / 2)
    assert t.loc["b", "mean_prob"] == pytest.approx((0.4 + 0.9) / 2)
    # a class with no true image has no AUC
    assert np.isnan(roc_auc_ovr(np.array([0, 0]), np.array([[0.7, 0.3], [0.6, 0.4]]))[1])


def _clustered(n_patients: int, per_patient: int):
    """Half the patients have every image right, half every image wrong; 2 classes."""
    y = np.zeros(n_patients * per_patient, dtype=np.int64)
    right = np.repeat(np.arange(n_patients) < n_patients // 2, per_patient)
    probs = np.where(right[:, None], [[0.8, 0.2]], [[0.3, 0.7]])
    keys = np.repeat([f"p{i}" for i in range(n_patients)], per_patient)
    return y, probs, keys


def test_bootstrap_resamples_patients_known_case():
    # 20 patients x 5 images, accuracy 0.5 decided per patient: the patient bootstrap's 95% interval is
    # about 0.5 +- 1.96 * sqrt(0.25 / 20) = +-0.219; resampling the 100 images would give +-0.098
    y, probs, keys = _clustered(20, 5)
    acc = patient_bootstrap(y, probs, keys, ["a", "b"], n_boot=2000, seed=1, with_auc=False).table
    row = acc[acc["class"] == "accuracy"].iloc[0]
    assert row["value"] == 0.5
    assert (row["high"] - row["low"]) / 2 == pytest.approx(0.219, abs=0.03)
    per_image = patient_bootstrap(y, probs, np.arange(100).astype(str), ["a", "b"], n_boot=2000, seed=1,
                                  with_auc=False).table
    img = per_image[per_image["class"] == "accuracy"].iloc[0]
    assert (img["high"] - img["low"]) / 2 == pytest.approx(0.098, abs=0.02)
    # mean predicted probability of the true class: 0.5 * 0.8 + 0.5 * 0.3 = 0.55
    mp = acc[(acc["class"] == "a") & (acc["metric"] == "mean_prob")].iloc[0]
    assert mp["value"] == pytest.approx(0.55) and mp["low"] < 0.55 < mp["high"]


def test_bootstrap_of_a_perfect_model_has_no_width():
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[y] * 0.9 + 0.1 / 3
    r = patient_bootstrap(y, probs, np.array(["p1", "p1", "p2", "p3", "p4", "p4"]), ["a", "b", "c"], n_boot=200)
    t = r.table.set_index(["class", "metric"])
    assert tuple(t.loc[("accuracy", "accuracy")]) == (1.0, 1.0, 1.0)
    assert tuple(t.loc[("b", "auc")]) == (1.0, 1.0, 1.0) and r.n_patients == 4


def test_expected_calibration_error_by_hand():
    # confidences 0.9 (4 images, 3 right) and 0.6 (2 images, both right):
    # ECE = 4/6 * |0.75 - 0.9| + 2/6 * |1.0 - 0.6| = 0.1 + 0.1333
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    y = np.array([0, 0, 0, 1, 0, 0])
    assert expected_calibration_error(y, probs) == pytest.approx(0.1 + 0.4 / 3)
    t = reliability_table(y, probs)
    assert t["n"].sum() == 6 and t.loc[8, "n"] == 4 and t.loc[5, "n"] == 2  # (0.8, 0.9] and (0.5, 0.6]
    assert t.loc[8, "accuracy"] == 0.75
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(np.array([0, 1]), perfect) == 0.0


def test_per_source_table_splits_the_same_metrics_by_source():
    from cxrspark.metrics import per_source_table

    # source s1: both classes, one error; source s2: only class b, all right
    y = np.array([0, 0, 1, 1, 1, 1])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.4, 0.6], [0.2, 0.8]])
    src = np.array(["s1", "s1", "s1", "s2", "s2", "s2"])
    t = per_source_table(y, p, src, ["a", "b"]).set_index(["source", "class"])
    assert t.loc[("s1", "a"), "recall"] == 0.5 and t.loc[("s1", "b"), "precision"] == 0.5
    assert t.loc[("s1", "accuracy"), "f1"] == pytest.approx(2 / 3) and t.loc[("s2", "accuracy"), "f1"] == 1.0
    assert t.loc[("s2", "a"), "support"] == 0 and np.isnan(t.loc[("s2", "b"), "auc"])  # one class only
    assert int(t.xs("b", level="class")["support"].sum()) == 4


# ---- Grad-CAM -----------------------------------------------------------------------------------
def test_grad_cam_highlights_the_region_the_answer_depends_on():
    import tensorflow as tf

    from cxrspark.evaluate.gradcam import grad_cam, last_conv_layer, mass_inside

    # class 1 iff an X-shaped mark is somewhere in the picture; every picture also has a plain square
    # (a distractor) and noise. For a class-1 picture the answer depends on the mark's region only.
    rng = np.random.default_rng(0)
    n, s = 400, 32
    x = rng.uniform(0, 60, (n, s, s, 1)).astype(np.float32)
    y = rng.integers(0, 2, n)
    where = np.zeros((n, 2), dtype=np.int64)
    cross = np.eye(7, dtype=bool) | np.eye(7, dtype=bool)[::-1]
    for i in range(n):
        cells = rng.permutation(16)[:2]  # two different 8x8 cells of a 4x4 grid
        (r1, c1), (r2, c2) = divmod(int(cells[0]), 4), divmod(int(cells[1]), 4)
        x[i, r2 * 8 + 1:r2 * 8 + 6, c2 * 8 + 1:c2 * 8 + 6] = 230  # the distractor square
        if y[i]:
            x[i, r1 * 8:r1 * 8 + 7, c1 * 8:c1 * 8 + 7][cross] = 230
        where[i] = (r1 * 8, c1 * 8)
    tf.keras.utils.set_random_seed(0)
    L = tf.keras.layers
    inputs = tf.keras.Input((s, s, 1))
    h = L.Rescaling(1 / 255.0)(inputs)
    h = L.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = L.Conv2D(16, 3, padding="same")(h)
    h = L.ReLU()(h)
    h = L.GlobalAveragePooling2D()(h)
    out = L.Dense(2, activation="softmax")(h)
    model = tf.keras.Model(inputs, out)
    model.compile(tf.keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=25, batch_size=32, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] > 0.95
    assert last_conv_layer(model) == model.layers[4].name  # the ReLU after the last conv
    pos = np.flatnonzero(y == 1)[:20]
    cams = grad_cam(model, x[pos], 1)
    assert cams.shape == (20, s, s) and cams.min() >= 0 and cams.max() <= 1
    inside = []
    for cam, (r, c) in zip(cams, where[pos]):
        region = np.zeros((s, s), np.uint8)
        region[max(0, r - 2):r + 9, max(0, c - 2):c + 9] = 1  # the mark's 7x7 cell, 2 px around it
        inside.append(mass_inside(cam, region))
    assert np.median(inside) > 0.6, inside  # a uniform map would put ~12% there


@pytest.mark.parametrize("name", ["seed_cnn", "darkcovidnet", "vgg_dcnn", "transfer:VGG16"])
def test_grad_cam_finds_the_last_conv_layer_of_registry_models(name):
    import tensorflow as tf

    from cxrspark.evaluate.gradcam import grad_cam, last_conv_layer
    from cxrspark.train.models import build_model

    model = build_model(name, 3, 64)
    layer = model.get_layer(last_conv_layer(model))
    assert len(layer.output_shape) == 4
    if name.startswith("transfer:"):
        assert isinstance(layer, tf.keras.Model)  # the backbone's last convolutional block
    cams = grad_cam(model, np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 1)), [0, 2])
    assert cams.shape == (2, 64, 64) and np.isfinite(cams).all()


# ---- the evaluation job -------------------------------------------------------------------------
def test_evaluate_job_logs_tables_pictures_and_a_card(sample_dataset, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    import tensorflow as tf
    from mlflow.tracking import MlflowClient

    from cxrspark.train.data import load_dataset_info
    from cxrspark.train.models import build_model

    repo = Path(__file__).resolve().parents[1]
    info = load_dataset_info(sample_dataset)
    tf.keras.utils.set_random_seed(0)
    model = build_model("seed_cnn", 3, info.image_size, input_size=64)
    model.save(tmp_path / "model.keras")
    db = f"sqlite:///{tmp_path}/mlflow.db"
    common = [sys.executable, str(repo / "jobs/evaluate.py"), "--config", str(repo / "conf/train.yaml"),
              "--set", f"train.dataset={sample_dataset}", "--set", f"train.mlflow.tracking_uri={db}",
              "--set", "evaluate.split=val", "--set", "evaluate.bootstrap=200", "--set", "evaluate.gradcam_per_class=2"]
    env = {**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    work = tmp_path / "work"  # the job runs elsewhere than its store: nothing may land in work/mlruns
    work.mkdir()
    # no trained model in the store yet: a clear error, not a traceback
    none = subprocess.run(common, capture_output=True, text=True, timeout=300, cwd=work, env=env)
    assert none.returncode == 2 and "no finished run with a logged model" in none.stderr
    proc = subprocess.run(common + ["--set", f"evaluate.model={tmp_path / 'model.keras'}",
                                    "--set", "evaluate.probe_splits=[all]", "--set", "evaluate.probe_folds=2"],
                          capture_output=True, text=True, timeout=300, cwd=work, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    client = MlflowClient(db)
    experiment = client.get_experiment_by_name("cxrspark-evaluation")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert not (work / "mlruns").exists() and list((tmp_path / "artifacts").rglob("val_per_class.json"))
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["split"] == "val" and run.data.params["images"] == str(info.size("val"))
    files = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {f"eval/val_{n}" for n in ("per_class.json", "per_class_ci.json", "per_source.json", "confusion.png",
                                      "roc.png", "reliability.png", "reliability.json", "gradcam.png",
                                      "predictions.json")} <= files

    def table(name):
        t = json.loads(Path(client.download_artifacts(run.info.run_id, f"eval/{name}", str(tmp_path))).read_text())
        return pd.DataFrame(t["data"], columns=t["columns"])

    preds = table("val_predictions.json")
    assert len(preds) == info.size("val") and set(preds["label"]) <= set(info.classes)
    ci = table("val_per_class_ci.json")
    acc = ci[ci["class"] == "accuracy"].iloc[0]
    assert acc["low"] <= acc["value"] <= acc["high"]
    assert acc["value"] == pytest.approx((preds["label"] == preds["predicted"]).mean())
    per_source = table("val_per_source.json")
    assert set(per_source["source"]) == set(preds["source"])
    assert run.data.metrics["val_ece"] >= 0 and "val_accuracy_low" in run.data.metrics
    card = Path(client.download_artifacts(run.info.run_id, "MODEL_CARD.md", str(tmp_path))).read_text()
    assert "Not for clinical use" in card and "## Per source" in card and "bootstrap resamples of patients" in card
    assert "no lung masks" in card  # the sample was ingested without segmentation
    probe = table("source_probe.json").set_index("scope")
    assert probe.loc["all images", "images"] == sum(info.size(s) for s in info.counts)
    assert (probe["chance"] == 1 / probe["sources"].str.count(",").add(1)).all()
    assert "## Shortcut audit: source probe" in card and "all images" in card
    assert run.data.metrics["source_probe_skill_all_images"] == pytest.approx(probe.loc["all images", "skill"])




def test_a_new_hospitals_data_is_evaluated_with_the_defaults(spark, sample_dataset, tmp_path):
    """The documented way to evaluate on data the model never saw: a dataset ingested as one split
    ('test' only) and `evaluate.split=all`, every other setting at its default (probe_splits [val, test])."""
    import subprocess
    import sys
    from pathlib import Path

    import tensorflow as tf
    from mlflow.tracking import MlflowClient

    from conftest import _ingest
    from cxrspark.sample import make_sample_tree, sources_config
    from cxrspark.train.data import load_dataset_info
    from cxrspark.train.models import build_model

    repo = Path(__file__).resolve().parents[1]
    manifest = make_sample_tree(tmp_path / "raw", seed=5)
    hospital = _ingest(spark, sources_config(manifest), tmp_path / "hospital", tmp_path,
                       "ingest.split.ratios={test: 1.0}")
    info = load_dataset_info(hospital)
    assert list(info.counts) == ["test"] and info.size("test") > 0
    tf.keras.utils.set_random_seed(0)
    build_model("seed_cnn", 3, load_dataset_info(sample_dataset).image_size, input_size=64).save(tmp_path / "m.keras")
    db = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, str(repo / "jobs/evaluate.py"), "--config", str(repo / "conf/train.yaml"),
                           "--set", f"train.mlflow.tracking_uri={db}", "--set", f"evaluate.model={tmp_path / 'm.keras'}",
                           "--set", f"evaluate.dataset={hospital}", "--set", "evaluate.split=all",
                           "--set", "evaluate.bootstrap=100"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    note = "source probe on split(s) test; the dataset has no split 'val'"
    assert note in proc.stdout
    client = MlflowClient(db)
    (run,) = client.search_runs([client.get_experiment_by_name("cxrspark-evaluation").experiment_id])
    assert run.data.params["images"] == str(info.size("test")) and run.data.params["probe_splits_used"] == "test"
    card = Path(client.download_artifacts(run.info.run_id, "MODEL_CARD.md", str(tmp_path))).read_text()
    assert "## Shortcut audit: source probe" in card and "no split 'val'" in card



def test_probe_splits_follow_the_splits_the_dataset_has():
    from types import SimpleNamespace

    from cxrspark.evaluate.run import probe_splits_of

    one = SimpleNamespace(counts={"hospital": 10})  # a dataset ingested as one split of its own name
    assert probe_splits_of(one, ["val", "test"], ["hospital"]) == (
        ["hospital"], "source probe on the evaluated split(s) hospital; the dataset has no split 'val', 'test'")
    three = SimpleNamespace(counts={"train": 5, "val": 2, "test": 2})
    assert probe_splits_of(three, ["val", "test"], ["test"]) == (["test", "val"], "source probe on split(s) test, val")
    assert probe_splits_of(three, ["all"], ["test"])[0] == ["test", "train", "val"]
    assert probe_splits_of(three, [], ["test"])[0] == []


# ---- source probe -------------------------------------------------------------------------------
def _probe_data(seed: int, source_signal: float, patients_per_source: int = 24, per_patient: int = 3):
    """3 sources x 2 classes; class signal always, a per-source offset scaled by `source_signal`."""
    rng = np.random.default_rng(seed)
    feats, sources, patients, labels = [], [], [], []
    offsets = rng.normal(size=(3, 16)) * 3
    for s in range(3):
        for p in range(patients_per_source):
            label = p % 2
            for _ in range(per_patient):
                x = rng.normal(size=16)
                x[0] += 4 * label
                feats.append(x + source_signal * offsets[s])
                sources.append(f"src{s}")
                patients.append(f"src{s}/p{p}")
                labels.append(label)
    return np.array(feats), np.array(sources), np.array(patients), np.array(labels)


def test_source_probe_reports_source_information_beyond_the_class():
    from cxrspark.evaluate.probe import source_probe

    leaky = source_probe(*_probe_data(0, 1.0), ["a", "b"], folds=4, seed=0).set_index("scope")
    clean = source_probe(*_probe_data(0, 0.0), ["a", "b"], folds=4, seed=0).set_index("scope")
    assert list(leaky.index) == ["all images", "within a", "within b"]
    assert (leaky["skill"] > 0.9).all() and (leaky["risk"] == "high").all()
    assert (clean["skill"] < 0.2).all() and (clean["risk"] == "low").all()
    assert leaky.loc["within a", "chance"] == pytest.approx(1 / 3)
    assert leaky.loc["all images", "images"] == 3 * 24 * 3 and leaky.loc["all images", "patients"] == 72


def test_source_probe_folds_are_grouped_by_patient():
    """Features that only identify the PATIENT (sources assigned to patients at random): grouped folds
    must see no source skill. Image-level folds would memorise the patients and report a false risk."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_predict

    from cxrspark.evaluate.probe import source_probe

    rng = np.random.default_rng(3)
    n_patients, per_patient = 90, 4
    fingerprint = rng.normal(size=(n_patients, 64)) * 3
    source_of = np.array([f"s{k}" for k in rng.permutation(np.arange(n_patients) % 3)])
    idx = np.repeat(np.arange(n_patients), per_patient)
    x = fingerprint[idx] + rng.normal(size=(len(idx), 64)) * 0.3
    src, patients = source_of[idx], np.array([f"p{i}" for i in idx])
    image_level = (cross_val_predict(LogisticRegression(max_iter=2000), x, src,
                                     cv=KFold(5, shuffle=True, random_state=0)) == src).mean()
    assert image_level > 0.9  # the trap the grouping avoids
    row = source_probe(x, src, patients, np.zeros(len(idx), int), ["a"], folds=5, seed=0).iloc[0]
    assert row["scope"] == "all images" and row["skill"] < 0.2 and row["risk"] == "low"


def test_source_probe_needs_two_sources_with_enough_patients():
    from cxrspark.evaluate.probe import source_probe

    x, src, patients, labels = _probe_data(1, 1.0, patients_per_source=6)
    keep = ~((src == "src2") & ~np.isin(patients, ["src2/p0", "src2/p1"]))  # src2: 2 patients only
    table = source_probe(x[keep], src[keep], patients[keep], labels[keep], ["a", "b"], folds=3, seed=0)
    assert (table["left_out"] == "src2").all() and (table["sources"] == "src0,src1").all()
    assert table.iloc[0]["chance"] == pytest.approx(0.5)
    one = source_probe(x[src == "src0"], src[src == "src0"], patients[src == "src0"], labels[src == "src0"],
                       ["a", "b"], folds=3)
    assert one.empty
