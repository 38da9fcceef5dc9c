"""The recipe sweep: its table arithmetic, and jobs/sweep.py end to end on the generated sample (real
ingest subprocesses, real horovodrun-free training, real MLflow store read back)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrspark.config import ConfigError, load_config
from cxrspark.evaluate.loso import non_covid_specificity, prediction_spread
from cxrspark.evaluate.sweep import loso_part, mean_with_halfwidth, refusals, slug, sweep_markdown
from cxrspark.metrics import constant_macro_f1, present_macro_f1

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["COVID-19", "Normal", "Pneumonia"]


def test_mean_loso_accuracy_and_its_halfwidth_combine_independent_folds():
    mean, half = mean_with_halfwidth([0.5, 0.7], [0.4, 0.6], [0.6, 0.8])
    assert mean == pytest.approx(0.6) and half == pytest.approx(math.sqrt(0.1 ** 2 + 0.1 ** 2) / 2)
    assert all(math.isnan(x) for x in mean_with_halfwidth([0.5, float("nan")], [0.4, 0.1], [0.6, 0.2]))


def test_non_covid_specificity_counts_ordinary_films_called_covid():
    # rows: true COVID-19, Normal, Pneumonia; columns: predicted
    cm = np.array([[5, 1, 0], [3, 6, 1], [2, 0, 8]])
    spec, n = non_covid_specificity(cm, CLASSES)
    assert n == 20 and spec == pytest.approx(1 - 5 / 20)
    assert math.isnan(non_covid_specificity(cm, ["Normal", "Pneumonia", "Other"])[0])


def test_one_class_predictor_floor_and_macro_f1_over_present_classes():
    # a left-out source without COVID-19: 30 Normal, 10 Pneumonia, all called Normal
    cm = np.array([[0, 0, 0], [0, 30, 0], [0, 10, 0]])
    assert present_macro_f1(cm) == pytest.approx((2 * 0.75 / 1.75) / 2)  # COVID-19 (absent) is not averaged
    assert constant_macro_f1(cm) == pytest.approx(present_macro_f1(cm))  # it IS the one-class predictor
    perfect = np.diag([10, 20, 30])
    assert present_macro_f1(perfect) == 1.0 and constant_macro_f1(perfect) == pytest.approx((2 * 0.5 / 1.5) / 3)
    spread = prediction_spread(np.array([[5, 1, 0], [3, 6, 1], [2, 0, 8]]), CLASSES)
    assert spread["predicted_COVID-19"] == pytest.approx(10 / 26) and spread["predicted_Pneumonia"] == pytest.approx(9 / 26)


def _spread_row(test_cm, folds: dict) -> dict:
    row = {f"test_{k}": v for k, v in prediction_spread(np.array(test_cm), CLASSES).items()}
    for s, cm in folds.items():
        row.update({f"loso_{s}_{k}": v for k, v in prediction_spread(np.array(cm), CLASSES).items()})
    return row


def test_refusals_name_collapsed_models_but_not_skewed_sources_they_get_right():
    good_test = [[8, 1, 1], [1, 8, 1], [1, 1, 8]]
    # a left-out source that IS mostly COVID-19 and is mostly called so, with the few others right: skill
    skewed_but_right = [[95, 0, 0], [1, 2, 0], [0, 0, 2]]
    assert refusals(_spread_row(good_test, {"a": skewed_but_right}), CLASSES, ["a"], 0.95, 0.05) == []
    # every image of the left-out source called Normal: collapsed, whatever its accuracy
    one_class = [[0, 40, 0], [0, 30, 0], [0, 30, 0]]
    why = refusals(_spread_row(good_test, {"a": one_class}), CLASSES, ["a"], 0.95, 0.05)
    assert len(why) == 1 and why[0].startswith("LOSO a: 100% Normal")
    never_covid = [[0, 5, 5], [0, 9, 1], [0, 1, 9]]
    assert refusals(_spread_row(never_covid, {}), CLASSES, [], 0.95, 0.05) == ["internal test: never predicts COVID-19"]
    assert refusals({}, CLASSES, ["a"], 0.95, 0.05) == ["internal test: no prediction spread recorded"]
    # a left-out source of one class, every image called that class: right, not collapsed
    assert refusals(_spread_row(good_test, {"a": [[0, 0, 0], [0, 50, 0], [0, 0, 0]]}), CLASSES, ["a"], 0.95, 0.05) == []


def test_loso_part_takes_each_left_out_source_and_marks_failed_folds_missing():
    table = pd.DataFrame([
        {"left_out": "a", "status": "ok", "images": 10, "accuracy": 0.6, "accuracy_low": 0.5, "accuracy_high": 0.7,
         "specificity_non_covid": 0.9},
        {"left_out": "b", "status": "training failed (exit 1)"}])
    row = loso_part(table, ["a", "b"])
    assert row["loso_a_accuracy"] == 0.6 and row["loso_a_specificity_non_covid"] == 0.9 and row["loso_a_images"] == 10
    assert math.isnan(row["loso_b_accuracy"]) and math.isnan(row["loso_mean_accuracy"])
    assert loso_part(table.iloc[:1], ["a"])["loso_mean_accuracy"] == pytest.approx(0.6)


def test_sweep_config_checks_variants_against_datasets():
    with pytest.raises(ConfigError, match="lack"):
        load_config([], ["sweep.datasets={a: []}", "sweep.variants=[{name: x, dataset: b}]"])
    with pytest.raises(ConfigError, match="compare_with"):
        load_config([], ["sweep.datasets={a: []}", "sweep.variants=[{name: x, dataset: a, compare_with: y}]"])
    with pytest.raises(ConfigError, match="unique"):
        load_config([], ["sweep.datasets={a: []}", "sweep.variants=[{name: x, dataset: a}, {name: x, dataset: a}]"])
    assert slug("+adversarial") == "adversarial" and slug("lung_crop+std") == "lung_crop_std"


def _row(model, variant, loso: bool, acc: float, compare_with=None, collapsed=False) -> dict:
    test_cm = [[0, 30, 0], [0, 30, 0], [0, 30, 0]] if collapsed else [[10, 10, 10], [10, 10, 10], [10, 10, 10]]
    row = {**_spread_row(test_cm, {"a": [[0, 0, 0], [0, 10, 10], [0, 10, 10]]}),
           "model": model, "variant": variant, "compare_with": compare_with, "image_size": 80, "test_accuracy": acc, "test_accuracy_low": acc - 0.1,
           "test_accuracy_high": acc + 0.1, "test_macro_f1": acc, "test_macro_f1_low": acc - 0.1,
           "test_macro_f1_high": acc + 0.1, "covid_sensitivity": 0.8, "covid_sensitivity_low": 0.7,
           "covid_sensitivity_high": 0.9, "covid_ppv": 0.7, "covid_ppv_low": 0.6, "covid_ppv_high": 0.8,
           "gradcam_lung_mass": 0.3, "gradcam_lung_area": 0.3, **{f"probe_skill_{c}": 0.1 for c in CLASSES}}
    if loso:
        row.update({"loso_a_accuracy": acc, "loso_a_accuracy_low": acc - 0.1, "loso_a_accuracy_high": acc + 0.1,
                    "loso_a_specificity_non_covid": 0.5, "loso_mean_accuracy": acc, "loso_mean_halfwidth": 0.1})
    return row


def test_sweep_markdown_names_the_best_loso_recipe_and_sets_leaky_rows_beside_the_patient_split():
    table = pd.DataFrame([_row("m", "plain", True, 0.4), _row("m", "better", True, 0.6),
                          _row("m", "leaky protocol", False, 0.95, compare_with="plain")])
    sc = load_config([], ["sweep.loso_sources=[a]", "sweep.baseline_model=m"]).sweep
    text = sweep_markdown(table, sc, CLASSES)
    assert "Best mean LOSO accuracy (collapsed models refused): m / better 0.600" in text
    # 0.6 - 0.4 = 0.2 against a half-width of hypot(0.1, 0.1) = 0.141
    assert "it beats the baseline by +0.200 (more than the half-width 0.141)" in text
    assert "| m | better | 0.33 / 0.33 / 0.33 | 0.00 / 0.50 / 0.50 |" in text
    leaky_line = next(line for line in text.splitlines() if "leaky protocol" in line and "+0.550" in line)
    assert "0.950 [0.850, 1.050]" in leaky_line and "| plain | 0.400 [0.300, 0.500]" in leaky_line
    assert leaky_line.endswith("| +0.550 |")


def test_a_collapsed_recipe_cannot_win_and_a_small_gain_is_not_a_win():
    sc = load_config([], ["sweep.loso_sources=[a]", "sweep.baseline_model=m"]).sweep
    table = pd.DataFrame([_row("m", "plain", True, 0.4), _row("m", "one class", True, 0.9, collapsed=True),
                          _row("m", "slightly", True, 0.45)])
    text = sweep_markdown(table, sc, CLASSES)
    assert "m / slightly 0.450" in text and "+0.050 against the baseline is within the half-width 0.141" in text
    assert "- m / one class: internal test: 100% Normal" in text
    assert next(line for line in text.splitlines() if line.startswith("| m | one class | 0.900")).endswith("| no |")
    # the baseline collapsed and scored more than the best cell that may win: said so, not "within"
    worse = sweep_markdown(pd.DataFrame([_row("m", "plain", True, 0.9, collapsed=True), _row("m", "x", True, 0.4)]),
                           sc, CLASSES)
    assert "(the baseline itself collapsed: see above); it is worse than the baseline by 0.500" in worse


def test_sweep_job_end_to_end_with_a_leaky_row_and_reuse(tmp_path):
    """Two datasets (patient split; the leaky image split without dedup), one model, two variants: the
    patient-split one also left-one-source-out. Run twice: the second run reuses datasets and cells."""
    from mlflow.tracking import MlflowClient

    from cxrspark.sample import make_sample_tree, sources_config

    manifest = make_sample_tree(tmp_path / "raw", seed=0)
    sources = tmp_path / "sources.yaml"
    sources.write_text(yaml.safe_dump({"sources": sources_config(manifest)}))
    db = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = {"sweep": {
        "output": str(tmp_path / "sweep"), "models": ["seed_cnn"], "image_size": 32,
        "datasets": {"patients": [], "leaky": ["ingest.split.unit=image", "ingest.split.leaky_audit=true",
                                              "ingest.dedup.exact=false", "ingest.dedup.near=false"]},
        "variants": [{"name": "plain", "dataset": "patients"},
                     {"name": "leaky protocol", "dataset": "leaky", "loso": False,
                      "compare_with": "plain"}],
        "loso_sources": ["kermany"]},
        "train": {"epochs": 1, "batch_size": 4, "schedule": {"warmup_epochs": 0, "decay_epochs": []},
                  "output": str(tmp_path / "train"), "mlflow": {"tracking_uri": db}},
        "evaluate": {"bootstrap": 30, "gradcam_per_class": 1}}
    conf = tmp_path / "sweep.yaml"
    conf.write_text(yaml.safe_dump(sweep))
    cmd = [sys.executable, str(REPO / "jobs/sweep.py"), "--config", str(REPO / "conf/ingest.yaml"),
           "--config", str(REPO / "conf/train.yaml"), "--config", str(sources), "--config", str(conf)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    table = pd.DataFrame(json.loads((tmp_path / "sweep" / "table.json").read_text())).set_index("variant")
    assert list(table.index) == ["plain", "leaky protocol"]
    plain, leaky = table.loc["plain"], table.loc["leaky protocol"]
    assert 0 <= plain["loso_kermany_accuracy"] <= 1 and plain["loso_mean_accuracy"] == plain["loso_kermany_accuracy"]
    assert pd.isna(leaky.get("loso_mean_accuracy")) and 0 <= leaky["test_accuracy"] <= 1
    text = (tmp_path / "sweep" / "SWEEP.md").read_text()
    assert f"{leaky['test_accuracy'] - plain['test_accuracy']:+.3f} |" in text
    for pre in ("test_", "loso_kermany_"):  # how the predictions spread: what tells a collapsed model
        assert sum(plain[f"{pre}predicted_{c}"] for c in CLASSES) == pytest.approx(1.0)
    assert plain["loso_kermany_constant_macro_f1"] > 0 and "Share of the images given each class" in text
    summary = json.loads((tmp_path / "sweep" / "datasets" / "leaky" / "summary.json").read_text())
    assert summary["config"]["ingest"]["split"]["unit"] == "image"

    client = MlflowClient(db)
    exp = client.get_experiment_by_name("cxrspark-sweep")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "recipe sweep"]
    children = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {"seed_cnn plain: all sources", "seed_cnn plain: internal test", "seed_cnn plain: leave-one-source-out",
            "seed_cnn leaky protocol: all sources", "seed_cnn leaky protocol: internal test"} == children
    (loso,) = [r for r in runs if r.info.run_name == "seed_cnn plain: leave-one-source-out"]
    fold = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == loso.info.run_id]
    assert {r.info.run_name for r in fold} == {"train without kermany", "evaluate on kermany"}
    internal = client.get_run(table.loc["plain", "train_run_id"])
    assert internal.data.params["input_size"] == "32" and internal.data.params["n_train"] == str(
        sum(r["n"] for r in json.loads((tmp_path / "sweep" / "datasets" / "patients" / "summary.json").read_text())
            ["curated_table"] if r["split"] == "train"))
    assert internal.data.tags["dataset.protocol"] == "patient-split"
    assert client.get_run(table.loc["leaky protocol", "train_run_id"]).data.tags["dataset.protocol"] == "leaky-image-split"
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/table.json", "sweep/SWEEP.md", "sweep/config.yaml"} <= files

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert again.stdout.count("reusing the finished cell") == 2 and again.stdout.count("[dataset") == 2
    runs = client.search_runs([exp.experiment_id])
    assert sum(r.info.run_name == "seed_cnn plain: all sources" for r in runs) == 1

    # a row written by an older version of the sweep: evaluated again, its training reused
    done = tmp_path / "sweep" / "cells" / "seed_cnn" / "plain" / "row.json"
    old = json.loads(done.read_text())
    done.write_text(json.dumps({"key": old["key"], "row": {k: v for k, v in old["row"].items() if "predicted" not in k}}))
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert third.returncode == 0, third.stdout[-4000:] + third.stderr[-4000:]
    assert third.stdout.count("evaluating the finished training again") == 1
    runs = client.search_runs([exp.experiment_id])
    assert sum(r.info.run_name == "seed_cnn plain: all sources" for r in runs) == 1
    assert sum(r.info.run_name == "seed_cnn plain: internal test" for r in runs) == 2
    assert sum(r.info.run_name == "train without kermany" for r in runs) == 1  # the fold training reused too
    again_row = json.loads(done.read_text())
    assert again_row["row"]["train_run_id"] == old["row"]["train_run_id"] and "test_predicted_Normal" in again_row["row"]

    # a run of no cell still tables the finished ones, but only those trained with the current settings
    none = [*cmd, "--set", "sweep.only_variants=[nothing]"]
    fourth = subprocess.run(none, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert fourth.returncode == 0 and "left out of the table" not in fourth.stdout, fourth.stdout[-3000:] + fourth.stderr[-3000:]
    assert len(json.loads((tmp_path / "sweep" / "table.json").read_text())) == 2
    fifth = subprocess.run([*none, "--set", "train.label_smoothing=0.2"], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert fifth.returncode == 0 and fifth.stdout.count("left out of the table") == 2, fifth.stdout[-3000:]
    assert (tmp_path / "sweep" / "SWEEP.md").read_text() == "No finished cells.\n"
