"""Source probe: can a linear model tell an image's SOURCE from the classifier's penultimate features?

    table = source_probe(features, sources, patient_keys, labels, classes, folds=5, seed=0)

A logistic regression (standardised features, balanced class weights) is cross-validated with folds
grouped by PATIENT, so no patient is in the training and the test part of one fold. The score is the
balanced accuracy (mean recall over sources), compared with chance (1 / number of sources) as
``skill = (balanced_accuracy - chance) / (1 - chance)``: 0 is chance, 1 is perfect.

Rows:
- ``all images``: every source. In public COVID-19 collections the sources are confounded with the
  classes, so a model that learned only the disease also predicts the source here.
- ``within <class>``: images of one class only. The class cannot explain the source there: what the
  probe finds is source information the features carry beyond the disease (scanner, hospital text,
  borders, processing) - the shortcut risk.

Only sources with at least ``folds`` patients in a row's images take part (the others are named in
``left_out``); a row needs two such sources. The risk levels are this project's convention:
skill >= 0.5 high, >= 0.2 moderate, else low.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

RISK_LEVELS = ((0.5, "high"), (0.2, "moderate"), (-np.inf, "low"))
COLUMNS = ["scope", "images", "patients", "sources", "left_out", "balanced_accuracy", "chance", "skill", "risk"]


def risk_level(skill: float) -> str:
    return next(name for bound, name in RISK_LEVELS if skill >= bound)


def penultimate_model(model):
    """A Keras model with two outputs: the class probabilities and the input of the final layer."""
    import tensorflow as tf

    return tf.keras.Model(model.inputs, [model.output, model.layers[-1].input], name=f"{model.name}_features")


def _probe_row(scope: str, x: np.ndarray, src: np.ndarray, groups: np.ndarray, folds: int,
               seed: int) -> dict | None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    patients = pd.Series(groups).groupby(src).nunique()
    usable = sorted(patients[patients >= folds].index)
    left_out = sorted(set(patients.index) - set(usable))
    if len(usable) < 2:
        return None
    keep = np.isin(src, usable)
    x, src, groups = x[keep], src[keep], groups[keep]
    predicted = np.empty(len(src), dtype=object)
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit, test in cv.split(x, src, groups):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
        probe.fit(x[fit], src[fit])
        predicted[test] = probe.predict(x[test])
    bal = float(balanced_accuracy_score(src, predicted))
    chance = 1.0 / len(usable)
    skill = (bal - chance) / (1.0 - chance)
    return {"scope": scope, "images": int(len(src)), "patients": int(pd.Series(groups).nunique()),
            "sources": ",".join(usable), "left_out": ",".join(left_out), "balanced_accuracy": bal,
            "chance": chance, "skill": skill, "risk": risk_level(skill)}


def source_probe(features: np.ndarray, sources: np.ndarray, patient_keys: np.ndarray, labels: np.ndarray,
                 classes: list[str], folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """One row for all images and one per class with at least two usable sources (see module doc)."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    src = np.asarray(sources).astype(str)
    groups = np.asarray(patient_keys).astype(str)
    y = np.asarray(labels)
    rows = [_probe_row("all images", x, src, groups, folds, seed)]
    for k, name in enumerate(classes):
        mask = y == k
        if mask.any():
            rows.append(_probe_row(f"within {name}", x[mask], src[mask], groups[mask], folds, seed))
    return pd.DataFrame([r for r in rows if r is not None], columns=COLUMNS)
