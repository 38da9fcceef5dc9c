"""MLflow: where runs go and how results are logged (called from Horovod rank 0 only).

The tracking URI is, in order: the configured ``train.mlflow.tracking_uri``, ``$MLFLOW_TRACKING_URI``,
else a sqlite store beside the training output (``<train.output>/../mlflow/mlflow.db``). The experiments
cxrspark creates in any sqlite store keep their artifacts in ``artifacts/`` beside the database; a
tracking server keeps its own artifact root. Look at runs with::

    mlflow ui --backend-store-uri sqlite:////abs/path/out/mlflow/mlflow.db
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrspark.metrics import confusion_table


def tracking_uri(configured: str | None, train_output: str | Path) -> str:
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{default_store(train_output) / 'mlflow.db'}"


def default_store(train_output: str | Path) -> Path:
    return Path(train_output).resolve().parent / "mlflow"


#: MLflow 3's UI opens an experiment by its kind; without this tag it shows cxrspark's training and
#: evaluation runs in its GenAI (traces) view
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def sqlite_artifact_root(uri: str) -> Path | None:
    """Where the artifacts of a sqlite store's experiments go: ``artifacts/`` beside the database file
    (None for any other store: a tracking server keeps its own artifact root)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).expanduser().resolve().parent / "artifacts"


def ensure_experiment(uri: str, experiment: str) -> str:
    """The id of ``experiment`` at ``uri``, created if needed and marked as a model-training experiment.
    In a sqlite store (the default one or any other) a new experiment keeps its artifacts beside the
    database, never in ``./mlruns`` of whatever folder the job ran in; a tracking server chooses its own
    artifact location."""
    import mlflow

    root = sqlite_artifact_root(uri)
    if root is not None:
        root.parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        for k, v in EXPERIMENT_KIND.items():
            if k not in exp.tags:
                client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    return client.create_experiment(experiment, artifact_location=root.as_uri() if root is not None else None,
                                    tags=EXPERIMENT_KIND)


def start_run(uri: str, experiment: str, *, run_id: str | None = None,
              run_name: str | None = None, parent_run_id: str | None = None):
    """Open (or re-open, when resuming) the run; a new experiment in a sqlite store keeps its artifacts
    beside the database. With ``parent_run_id`` the run is shown nested under that run
    (which may be in another experiment)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    if run_id:
        return mlflow.start_run(run_id=run_id)
    ensure_experiment(uri, experiment)
    mlflow.set_experiment(experiment)
    tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
    return mlflow.start_run(run_name=run_name, tags=tags)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_params(params: dict[str, Any]) -> None:
    import mlflow

    mlflow.log_params({k: (str(v) if v is not None else "null")[:6000] for k, v in flatten(params).items()})


def confusion_figure(cm: np.ndarray, classes: list[str], title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=120)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = cm.max() if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if peak and cm[i, j] > peak / 2 else "black")
    fig.tight_layout()
    return fig


def log_classification(split: str, cm: np.ndarray, table: pd.DataFrame, classes: list[str],
                       loss: float | None = None) -> None:
    """Per-class table, confusion matrix (table and picture) and summary metrics of one split."""
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_table(table, artifact_file=f"eval/{split}_per_class.json")
    mlflow.log_table(confusion_table(cm, classes), artifact_file=f"eval/{split}_confusion.json")
    fig = confusion_figure(cm, classes, f"{split}: confusion matrix")
    mlflow.log_figure(fig, f"eval/{split}_confusion.png")
    plt.close(fig)
    by = table.set_index("class")
    # "final_" keeps these apart from the per-epoch curves (val_loss, val_accuracy)
    metrics = {f"final_{split}_accuracy": float(by.loc["accuracy", "f1"]),
               f"final_{split}_macro_f1": float(by.loc["macro avg", "f1"]),
               f"final_{split}_weighted_f1": float(by.loc["weighted avg", "f1"])}
    for c in classes:
        key = c.lower().replace("-", "").replace(" ", "_")
        metrics[f"final_{split}_recall_{key}"] = float(by.loc[c, "recall"])
    if loss is not None:
        metrics[f"final_{split}_loss"] = float(loss)
    mlflow.log_metrics(metrics)


def log_keras_model(model, example: np.ndarray) -> None:
    """The model with a signature (stored image in, class probabilities out), servable with
    ``mlflow models serve``."""
    import mlflow
    import mlflow.tensorflow
    from mlflow.models import infer_signature

    signature = infer_signature(example, model.predict(example, verbose=0))
    mlflow.tensorflow.log_model(model, name="model", signature=signature)


def mask_overlay_figure(images: list[np.ndarray] | np.ndarray, truths, preds, titles: list[str]):
    """Greyscale images with the reference lung outline (green) and the predicted mask (red fill)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, truth, pred, title in zip(axes.ravel(), images, truths, preds, titles):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.imshow(np.ma.masked_where(np.asarray(pred) == 0, pred), cmap="autumn", alpha=0.35, vmin=0, vmax=1)
        if truth is not None:
            ax.contour(truth, levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    return fig
