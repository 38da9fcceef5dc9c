"""Confidence intervals by bootstrap resampling of PATIENTS (not images).

Images of one patient are correlated (follow-ups, copies, the same anatomy): resampling images would
pretend there is more independent evidence than there is and give intervals that are too narrow. Each
replicate draws as many patients as there are, with replacement, and takes all images of each drawn
patient; the interval is the percentile interval of the replicate values.

    ci = patient_bootstrap(y_true, probs, patient_keys, classes, n_boot=1000, seed=0)
    ci.table      # class/average rows x metric: value, low, high (95% by default)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrspark.metrics import METRICS, class_metrics, confusion_matrix, summary_metrics


@dataclass
class BootstrapResult:
    table: pd.DataFrame  # rows: class / "macro avg" / "weighted avg" / "accuracy"; columns: metric, value, low, high
    n_boot: int
    n_patients: int
    level: float


def _point(y: np.ndarray, probs: np.ndarray, n_classes: int, with_auc: bool) -> dict[str, np.ndarray | float]:
    cm = confusion_matrix(y, probs.argmax(1), n_classes)
    m = class_metrics(cm, y, probs) if with_auc else class_metrics(cm)
    if not with_auc:  # mean_prob needs no ranking: keep it even without AUC
        from cxrspark.metrics import mean_true_class_probability
        m["mean_prob"] = mean_true_class_probability(y, probs)
    return {**m, **summary_metrics(m)}


def patient_bootstrap(y_true: np.ndarray, probs: np.ndarray, patient_keys: np.ndarray, classes: list[str],
                      n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                      with_auc: bool = True) -> BootstrapResult:
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    keys = np.asarray(patient_keys)
    if not (len(y_true) == len(probs) == len(keys)):
        raise ValueError("y_true, probs and patient_keys must have the same length")
    patients, inverse = np.unique(keys, return_inverse=True)
    members = [np.flatnonzero(inverse == p) for p in range(len(patients))]
    rng = np.random.default_rng(seed)
    n = len(classes)
    point = _point(y_true, probs, n, with_auc)
    per_class = {k: np.full((n_boot, n), np.nan) for k in METRICS}
    overall = {k: np.full(n_boot, np.nan) for k in point if not isinstance(point[k], np.ndarray)}
    for b in range(n_boot):
        idx = np.concatenate([members[p] for p in rng.integers(0, len(patients), len(patients))])
        rep = _point(y_true[idx], probs[idx], n, with_auc)
        for k in METRICS:
            # a class absent from the replicate has no defined recall/AUC/...: leave it out (NaN)
            present = rep["support"] > 0
            per_class[k][b] = np.where(present | (k in ("precision", "specificity")), rep[k], np.nan)
        for k in overall:
            overall[k][b] = rep[k]
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2

    def interval(values: np.ndarray) -> tuple[float, float]:
        ok = values[~np.isnan(values)]
        return (float(np.percentile(ok, lo_q)), float(np.percentile(ok, hi_q))) if len(ok) else (np.nan, np.nan)

    rows = []
    for i, c in enumerate(classes):
        for k in METRICS:
            low, high = interval(per_class[k][:, i])
            rows.append({"class": c, "metric": k, "value": float(point[k][i]), "low": low, "high": high})
    for avg in ("macro", "weighted"):
        for k in METRICS:
            low, high = interval(overall[f"{avg}_{k}"])
            rows.append({"class": f"{avg} avg", "metric": k, "value": float(point[f"{avg}_{k}"]),
                         "low": low, "high": high})
    low, high = interval(overall["accuracy"])
    rows.append({"class": "accuracy", "metric": "accuracy", "value": float(point["accuracy"]), "low": low,
                 "high": high})
    return BootstrapResult(pd.DataFrame(rows, columns=["class", "metric", "value", "low", "high"]),
                           n_boot, len(patients), level)
