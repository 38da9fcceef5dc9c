"""Classification metrics from labels, predictions and probabilities (numpy/pandas/scikit-learn).

    cm = confusion_matrix(y_true, y_pred, n_classes)          # rows: true class, columns: predicted
    table = per_class_table(cm, classes, y_true, probs)       # one row per class + averages + accuracy

Per class (one-vs-rest): TP/FP/FN/TN, precision (PPV), recall (sensitivity), specificity, F1, F2,
ROC AUC (needs probabilities; NaN when the class or its complement is absent), the mean predicted
probability of the class over its true images, and support (true images of the class).
A ratio with a zero denominator is 0 (a class never predicted has precision 0, as scikit-learn's
``zero_division=0`` reports it).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

#: the per-class metrics, in table order
METRICS = ("precision", "recall", "specificity", "f1", "f2", "auc", "mean_prob")
COUNTS = ("tp", "fp", "fn", "tn")
AVERAGE_ROWS = ("macro avg", "weighted avg", "accuracy")


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
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def one_vs_rest_counts(cm: np.ndarray) -> dict[str, np.ndarray]:
    """TP, FP, FN, TN of every class against the rest."""
    tp = np.diag(cm).astype(np.int64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def roc_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class (NaN where a class has no positive or no negative image)."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    out = np.full(probs.shape[1], np.nan)
    for c in range(probs.shape[1]):
        positive = y_true == c
        if positive.any() and not positive.all():
            out[c] = roc_auc_score(positive, probs[:, c])
    return out


def mean_true_class_probability(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per class: the mean probability the model gives that class on the images that are of it."""
    y_true = np.asarray(y_true)
    return np.array([probs[y_true == c, c].mean() if (y_true == c).any() else np.nan
                     for c in range(probs.shape[1])])


def class_metrics(cm: np.ndarray, y_true: np.ndarray | None = None,
                  probs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every per-class metric as an array over classes (the numbers behind :func:`per_class_table`)."""
    k = one_vs_rest_counts(cm)
    precision = _ratio(k["tp"], k["tp"] + k["fp"])
    recall = _ratio(k["tp"], k["tp"] + k["fn"])
    n = cm.shape[0]
    has_probs = probs is not None and y_true is not None and len(y_true)
    return {
        **k,
        "precision": precision,
        "recall": recall,
        "specificity": _ratio(k["tn"], k["tn"] + k["fp"]),
        "f1": _ratio(2 * precision * recall, precision + recall),
        "f2": _ratio(5 * precision * recall, 4 * precision + recall),
        "auc": roc_auc_ovr(y_true, probs) if has_probs else np.full(n, np.nan),
        "mean_prob": mean_true_class_probability(y_true, probs) if has_probs else np.full(n, np.nan),
        "support": cm.sum(axis=1),
    }


def summary_metrics(m: dict[str, np.ndarray]) -> dict[str, float]:
    """Macro and weighted (by support) averages of every metric, and accuracy."""
    support = m["support"].astype(float)
    total = support.sum()
    w = support / total if total else np.zeros_like(support)
    out = {}
    for name in METRICS:
        values = m[name]
        ok = ~np.isnan(values)
        out[f"macro_{name}"] = float(values[ok].mean()) if ok.any() else float("nan")
        out[f"weighted_{name}"] = float(w[ok] @ values[ok] / w[ok].sum()) if ok.any() and w[ok].sum() else float("nan")
    out["accuracy"] = float(m["tp"].sum() / total) if total else 0.0
    return out


def per_class_table(cm: np.ndarray, classes: list[str], y_true: np.ndarray | None = None,
                    probs: np.ndarray | None = None) -> pd.DataFrame:
    """One row per class, then 'macro avg', 'weighted avg' and 'accuracy' rows (the accuracy row holds
    the accuracy in every metric column). Columns: class, the METRICS, support, then TP/FP/FN/TN."""
    m = class_metrics(cm, y_true, probs)
    rows = [{"class": c, **{k: float(m[k][i]) for k in METRICS}, "support": int(m["support"][i]),
             **{k: int(m[k][i]) for k in COUNTS}} for i, c in enumerate(classes)]
    s = summary_metrics(m)
    total = int(m["support"].sum())
    for avg in ("macro", "weighted"):
        rows.append({"class": f"{avg} avg", **{k: s[f"{avg}_{k}"] for k in METRICS}, "support": total})
    rows.append({"class": "accuracy", **{k: s["accuracy"] for k in METRICS}, "support": total})
    return pd.DataFrame(rows, columns=["class", *METRICS, "support", *COUNTS])


def confusion_table(cm: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """The confusion matrix in long form (true, predicted, count): what mlflow.log_table stores well."""
    return pd.DataFrame([{"true": t, "predicted": p, "count": int(cm[i, j])}
                         for i, t in enumerate(classes) for j, p in enumerate(classes)])


def per_source_table(y_true: np.ndarray, probs: np.ndarray, sources: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """The per-class table of each source on its own: one row per (source, class), then each source's
    'accuracy' row. Within one source a class is often absent or the only one present: its recall,
    AUC... are then 0/NaN as the table defines them, and the support column says why."""
    y_true, sources = np.asarray(y_true), np.asarray(sources)
    parts = []
    for s in sorted(set(sources.tolist())):
        sel = sources == s
        cm = confusion_matrix(y_true[sel], probs[sel].argmax(1), len(classes))
        t = per_class_table(cm, classes, y_true[sel], probs[sel])
        t = t[t["class"].isin([*classes, "accuracy"])]
        parts.append(t.assign(source=s))
    cols = ["source", "class", *METRICS, "support", *COUNTS]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def predicted_shares(cm: np.ndarray) -> np.ndarray:
    """The share of the images given each class (the columns of the confusion matrix)."""
    cm = np.asarray(cm)
    total = cm.sum()
    return cm.sum(axis=0) / total if total else np.zeros(cm.shape[1])


def present_macro_f1(cm: np.ndarray) -> float:
    """Macro F1 over the classes that have images in the test set (a class absent from it, e.g. COVID-19
    in a left-out source without any, is not averaged in as a zero)."""
    cm = np.asarray(cm)
    present = cm.sum(axis=1) > 0
    return float(class_metrics(cm)["f1"][present].mean()) if present.any() else float("nan")


def constant_macro_f1(cm: np.ndarray) -> float:
    """The best :func:`present_macro_f1` of a model that gives every image one and the same class: the
    floor a collapsed model sits on. Predicting class k for all images has F1 2p/(1+p) on k (p: k's share
    of the images) and 0 on every other present class."""
    support = np.asarray(cm).sum(axis=1).astype(float)
    present = support > 0
    if not present.any():
        return float("nan")
    p = support[present] / support.sum()
    return float((2 * p / (1 + p)).max() / present.sum())
