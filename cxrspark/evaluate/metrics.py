"""Classification metrics from labels and predictions (numpy/pandas only).

    cm = confusion_matrix(y_true, y_pred, n_classes)          # rows: true class, columns: predicted
    table = per_class_table(cm, classes)                      # precision, recall, f1, support (+ averages)
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    if len(y_true) and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes})")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (a class never predicted has precision 0, as scikit-learn's
    zero_division=0 reports it)."""
    num = num.astype(float)
    den = den.astype(float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class_table(cm: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per class with precision, recall, F1 and support, then macro and weighted averages
    and accuracy (support = number of true images of the class)."""
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    rows = [{"class": c, "precision": precision[i], "recall": recall[i], "f1": f1[i], "support": int(support[i])}
            for i, c in enumerate(classes)]
    total = int(support.sum())
    w = support / total if total else np.zeros_like(precision)
    rows.append({"class": "macro avg", "precision": precision.mean(), "recall": recall.mean(),
                 "f1": f1.mean(), "support": total})
    rows.append({"class": "weighted avg", "precision": float(w @ precision), "recall": float(w @ recall),
                 "f1": float(w @ f1), "support": total})
    acc = float(tp.sum() / total) if total else 0.0
    rows.append({"class": "accuracy", "precision": acc, "recall": acc, "f1": acc, "support": total})
    return pd.DataFrame(rows, columns=["class", "precision", "recall", "f1", "support"])


def confusion_table(cm: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """The confusion matrix in long form (true, predicted, count): what mlflow.log_table stores well."""
    return pd.DataFrame([{"true": t, "predicted": p, "count": int(cm[i, j])}
                         for i, t in enumerate(classes) for j, p in enumerate(classes)])
