"""Calibration: does a predicted probability of 0.8 come true 80% of the time?

Top-label calibration: each image's confidence is its highest class probability; images are binned by
confidence into ``n_bins`` equal-width bins (lower, upper] over [0, 1] (a confidence of 0 joins the
first bin). Expected calibration error (Guo et al. 2017):
``ECE = sum over bins of (n_bin / n) * |accuracy_bin - mean confidence_bin|``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def reliability_table(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """One row per bin: lower, upper, n, mean confidence, accuracy (NaN for an empty bin)."""
    y_true = np.asarray(y_true)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        sel = which == b
        rows.append({"lower": edges[b], "upper": edges[b + 1], "n": int(sel.sum()),
                     "confidence": float(confidence[sel].mean()) if sel.any() else np.nan,
                     "accuracy": float(correct[sel].mean()) if sel.any() else np.nan})
    return pd.DataFrame(rows)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    t = reliability_table(y_true, probs, n_bins)
    used = t[t["n"] > 0]
    total = used["n"].sum()
    return float((used["n"] / total * (used["accuracy"] - used["confidence"]).abs()).sum()) if total else float("nan")
