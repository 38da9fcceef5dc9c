"""The MLflow UI shows cxrspark's runs as a user needs them: in headless Chromium (Debian's package,
driven by Playwright), the experiment opens as a model-training experiment and the run's per-class table
and confusion-matrix picture are displayed. Skipped where Chromium or Playwright is not installed (see
tools/mlflow_ui_check.py, which runs the same check on any store)."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="Chromium not installed (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright not installed"),
]


def test_run_page_shows_the_per_class_table_and_the_pictures(tmp_path):
    import mlflow

    from cxrspark import tracking
    from cxrspark.metrics import confusion_matrix, per_class_table

    sys.path.insert(0, str(REPO / "tools"))
    from mlflow_ui_check import check_store

    classes = ["COVID-19", "Normal", "Pneumonia"]
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    cm = confusion_matrix(y, np.array([0, 1, 1, 1, 2, 0, 2]), 3)
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    with tracking.start_run(uri, "cxrspark", run_name="ui") as run:
        mlflow.log_metric("val_loss", 0.5, step=0)
        tracking.log_classification("test", cm, per_class_table(cm, classes), classes)
    report = check_store(tmp_path / "store" / "mlflow.db", tmp_path / "shots", [run.info.run_id], CHROMIUM)
    by = {c["check"]: c for c in report.checks}
    assert report.ok, report.checks
    assert by["eval/test_per_class.json shown as a table with every class"]["ok"]
    assert by["eval/test_confusion.png displayed"]["ok"]
    assert any(k.startswith("experiment") and "model training" in k for k in by)
    assert (tmp_path / "shots" / by["eval/test_confusion.png displayed"]["screenshot"]).stat().st_size > 10_000
