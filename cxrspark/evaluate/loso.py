"""Leave-one-source-out: how a model does on a collection (a "hospital") it never saw.

    result = run_loso(cfg)        # cfg.loso says which sources; cfg.train and cfg.evaluate the rest

For each left-out source S:
1. train: ``jobs/train.py`` in a subprocess (``horovodrun`` with ``loso.ranks`` > 1) on the resolved
   config plus ``train.exclude_sources=[S]``: S is out of the training AND the validation split (so
   early stopping does not select on it either); output ``<loso.output>/<S>``.
2. evaluate: :func:`cxrspark.evaluate.run.run_evaluation` on ALL curated images of S (every split:
   the model never saw any of them), with patient-bootstrap CIs - except images of patients that
   also have images in another source (linked patient keys or duplicate images: the same
   ``split_group``), which the model did see; how many is in the table.

A fold whose training settings and data are unchanged since a finished earlier run of the runner
reuses that training run (``loso.reuse``; its MLflow run is moved under the new parent).

One parent MLflow run (experiment ``loso.experiment``) holds the table (one row per source:
accuracy and macro F1 with CIs, macro AUC, per-class recall, ECE, the same model's accuracy on the
test split of the sources it saw, the classes S has but training lacked) as ``loso/table.json``, a
markdown report and a figure; every training and evaluation run is its child. A fold that fails is a
row with its reason; the others still run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import yaml

from cxrspark.config import Config, config_from_dict, to_dict
from cxrspark.metrics import constant_macro_f1, predicted_shares, present_macro_f1

REPO = Path(__file__).resolve().parents[2]


class LosoError(ValueError):
    pass


def plan_folds(counts: dict[str, int], wanted: list[str], min_images: int) -> tuple[list[str], dict[str, str]]:
    """(sources to leave out in turn, source -> why it is not a fold)."""
    if wanted:
        unknown = sorted(set(wanted) - set(counts))
        if unknown:
            raise LosoError(f"loso.sources names sources the dataset does not have: {unknown}; "
                            f"its sources: {sorted(counts)}")
        return list(wanted), {}
    folds = [s for s in sorted(counts) if counts[s] >= min_images]
    skipped = {s: f"{counts[s]} images < loso.min_images {min_images}" for s in sorted(counts) if s not in folds}
    if len(counts) < 2:
        raise LosoError(f"leave-one-source-out needs at least two sources; the dataset has {sorted(counts)}")
    return folds, skipped


def shared_patient_records(dataset: Path, source: str) -> set[str]:
    """Record ids of ``source`` whose patient group (``split_group``: patients linked by key or by
    duplicate images) also has images in another source: a model trained on the other sources has
    seen those patients, so they are not evidence about an unseen collection."""
    import pyarrow.dataset as ds

    t = ds.dataset(str(dataset / "curated"), format="parquet", partitioning=None).to_table(
        columns=["record_id", "source", "split_group"]).to_pandas()
    elsewhere = set(t.loc[t["source"] != source, "split_group"])
    mine = t[t["source"] == source]
    return set(mine.loc[mine["split_group"].isin(elsewhere), "record_id"])


def fold_key(fold_cfg: Config, dataset_hash: str) -> str:
    """What a fold's training depends on: the training settings (not where runs are logged), the model's
    architecture revision and the data."""
    import hashlib
    import json

    train = to_dict(fold_cfg.train)
    train.pop("mlflow")
    parts = [train, dataset_hash] + ([f"revision {r}"] if (r := model_revision(fold_cfg.train.model)) > 1 else [])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def model_revision(name: str) -> int:
    """The architecture revision of a registered model (1 for a name the registry does not know: the
    training will say why)."""
    from cxrspark.train.models import ModelError, model_spec

    try:
        return model_spec(name).revision
    except ModelError:
        return 1


def train_command(config_file: Path, ranks: int, overrides: list[str]) -> list[str]:
    train = [sys.executable, str(REPO / "jobs" / "train.py"), "--config", str(config_file)]
    for o in overrides:
        train += ["--set", o]
    if ranks == 1:
        return train
    horovodrun = str(Path(sys.executable).parent / "horovodrun")
    return [horovodrun, "--gloo", "-np", str(ranks), "-H", f"localhost:{ranks}", *train]


def _ci(ci: pd.DataFrame, row: str, metric: str) -> tuple[float, float, float]:
    r = ci[(ci["class"] == row) & (ci["metric"] == metric)]
    return tuple(float(r.iloc[0][k]) for k in ("value", "low", "high")) if len(r) else (np.nan,) * 3


def non_covid_specificity(confusion: np.ndarray, classes: list[str]) -> tuple[float, int]:
    """(share of the non-COVID-19 images NOT predicted COVID-19, number of non-COVID-19 images): what a new
    hospital sees when a model calls its ordinary films COVID-19."""
    if "COVID-19" not in classes:
        return float("nan"), 0
    k = classes.index("COVID-19")
    cm = np.asarray(confusion)
    others = int(cm.sum() - cm[k].sum())
    called = int(cm[:, k].sum() - cm[k, k])
    return (1.0 - called / others if others else float("nan")), others


def prediction_spread(confusion: np.ndarray, classes: list[str]) -> dict[str, float]:
    """How a model's predictions spread over the classes, and its macro F1 over the classes present next
    to that of the best one-class predictor: what tells a collapsed model from a weak one."""
    shares = predicted_shares(confusion)
    return {**{f"predicted_{c}": float(shares[i]) for i, c in enumerate(classes)},
            "macro_f1_present": present_macro_f1(confusion), "constant_macro_f1": constant_macro_f1(confusion)}


def fold_row(source: str, ev: dict[str, Any], classes: list[str], missing: list[str],
             seen_test_accuracy: float | None) -> dict[str, Any]:
    """One table row from an evaluation result of :func:`run_evaluation`."""
    acc, f1 = _ci(ev["ci"], "accuracy", "accuracy"), _ci(ev["ci"], "macro avg", "f1")
    table = ev["table"].set_index("class")
    row = {"left_out": source, "status": "ok", "images": ev["n"], "patients": ev["patients"],
           "accuracy": acc[0], "accuracy_low": acc[1], "accuracy_high": acc[2],
           "macro_f1": f1[0], "macro_f1_low": f1[1], "macro_f1_high": f1[2],
           "macro_auc": float(table.loc["macro avg", "auc"]), "ece": float(ev["ece"]),
           "seen_sources_test_accuracy": seen_test_accuracy if seen_test_accuracy is not None else np.nan,
           "classes_missing_in_training": ",".join(missing)}
    row["specificity_non_covid"], row["n_non_covid"] = non_covid_specificity(ev["confusion"], classes)
    row.update(prediction_spread(ev["confusion"], classes))
    for c in classes:
        support = int(table.loc[c, "support"])
        row[f"recall_{c}"] = float(table.loc[c, "recall"]) if support else np.nan
        row[f"n_{c}"] = support
    return row


def run_loso(cfg: Config, log: Callable[[str], None] = print, *, parent_run_id: str | None = None,
             run_name: str = "leave-one-source-out") -> dict[str, Any]:
    """Run every fold (see the module doc); the runner's own run is a child of ``parent_run_id`` if given."""
    import matplotlib.pyplot as plt
    import mlflow

    from cxrspark import tracking
    from cxrspark.evaluate import report
    from cxrspark.train import data as tdata

    lc = cfg.loso
    dataset = Path(cfg.train.dataset).resolve()
    try:
        info = tdata.load_dataset_info(dataset)
    except tdata.DatasetError as exc:
        raise LosoError(str(exc)) from exc
    counts = tdata.sources_of(dataset)
    folds, skipped = plan_folds(counts, lc.sources, lc.min_images)
    out = Path(lc.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking.tracking_uri(cfg.train.mlflow.tracking_uri, cfg.train.output)
    mlflow.set_tracking_uri(uri)
    client = mlflow.tracking.MlflowClient(uri)
    parent = client.create_run(tracking.ensure_experiment(uri, lc.experiment),
                               run_name=run_name,
                               tags={"loso.dataset": str(dataset), "dataset.hash": info.dataset_hash,
                                     **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})})
    parent_id = parent.info.run_id
    base = to_dict(cfg)
    base["train"]["dataset"] = str(dataset)
    base["train"]["mlflow"].update(tracking_uri=uri, experiment=lc.experiment, parent_run_id=parent_id)
    config_file = out / "config.yaml"
    config_file.write_text(yaml.safe_dump(base, sort_keys=False))
    client.log_artifact(parent_id, str(config_file), "loso")
    for k, v in {"dataset": str(dataset), "dataset_hash": info.dataset_hash, "folds": ",".join(folds),
                 "ranks": lc.ranks, "model": cfg.train.model, "epochs": cfg.train.epochs,
                 **{f"skipped.{s}": why for s, why in skipped.items()}}.items():
        client.log_param(parent_id, k, str(v))
    log(f"leave-one-source-out over {folds} (skipped: {skipped or 'none'}); parent run {parent_id} at {uri}")

    try:
        rows = _run_folds(cfg, folds, info, dataset, out, base, config_file, parent_id, client, log)
    except BaseException:
        client.set_terminated(parent_id, "KILLED" if isinstance(sys.exc_info()[1], KeyboardInterrupt) else "FAILED")
        raise
    table = pd.DataFrame(rows)
    client.log_table(parent_id, table, artifact_file="loso/table.json")
    client.log_text(parent_id, report.loso_markdown(table, info.classes, skipped, cfg.train.model), "loso/LOSO.md")
    ok = table[table["status"] == "ok"] if len(table) else table
    if len(ok):
        fig = report.loso_figure(ok)
        client.log_figure(parent_id, fig, "loso/accuracy.png")
        plt.close(fig)
        for r in ok.itertuples():
            client.log_metric(parent_id, f"accuracy_without_{r.left_out}", r.accuracy)
    failed = len(table) - len(ok)
    client.set_terminated(parent_id, "FINISHED" if not failed else "FAILED")
    return {"parent_run_id": parent_id, "tracking_uri": uri, "table": table, "skipped": skipped, "failed": failed}


def _run_folds(cfg: Config, folds: list[str], info, dataset: Path, out: Path, base: dict[str, Any],
               config_file: Path, parent_id: str, client, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Train and evaluate every fold; one row each."""
    from cxrspark.evaluate.run import EvaluationError, run_evaluation
    from cxrspark.modelref import logged_model
    from cxrspark.train import data as tdata
    from cxrspark.train.loop import read_state

    lc = cfg.loso
    rows: list[dict[str, Any]] = []
    for source in folds:
        started = time.time()
        fold_out = out / source
        train_info = tdata.load_dataset_info(dataset, exclude_sources=[source])
        missing = [c for c in info.classes if train_info.counts[cfg.train.train_split][c] == 0]
        overrides = [f"train.exclude_sources=[{source}]", f"train.output={fold_out}",
                     f"train.mlflow.run_name=train without {source}"]
        key = fold_key(config_from_dict({**base, "train": {**base["train"], "exclude_sources": [source],
                                                           "output": str(fold_out)}}), info.dataset_hash)
        marker = fold_out / "loso_fold.json"
        done = json.loads(marker.read_text()) if marker.is_file() else {}
        train_run = done.get("train_run_id") if lc.reuse and done.get("key") == key else None
        model_uri = logged_model(train_run) if train_run else None
        reused = model_uri is not None
        if reused:
            client.set_tag(train_run, "mlflow.parentRunId", parent_id)
            log(f"[{source}] reusing training run {train_run} (same settings and data)")
        else:
            cmd = train_command(config_file, lc.ranks, overrides)
            log(f"[{source}] training on the other sources: {' '.join(cmd[-8:])}")
            proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            state = read_state(fold_out / "checkpoints")
            train_run = state.get("mlflow_run_id") if state else None
            model_uri = logged_model(train_run) if proc.returncode == 0 and train_run else None
            if model_uri is None:
                rows.append({"left_out": source, "status": f"training failed (exit {proc.returncode})",
                             "classes_missing_in_training": ",".join(missing)})
                log(f"[{source}] training failed with exit code {proc.returncode}")
                continue
            marker.write_text(json.dumps({"key": key, "train_run_id": train_run}))
        shared = shared_patient_records(dataset, source)
        ev_cfg = config_from_dict({**base, "evaluate": {**base["evaluate"], "model": model_uri, "split": "all",
                                                        "sources": [source], "probe_splits": [],
                                                        "experiment": lc.experiment, "dataset": str(dataset)}})
        try:
            ev = run_evaluation(ev_cfg, parent_run_id=parent_id, run_name=f"evaluate on {source}",
                                exclude_records=shared,
                                exclude_reason="their patients also have images in the training sources")
        except EvaluationError as exc:
            rows.append({"left_out": source, "status": f"not evaluated: {exc}", "train_run_id": train_run,
                         "excluded_shared_patients": len(shared), "classes_missing_in_training": ",".join(missing)})
            log(f"[{source}] not evaluated: {exc}")
            continue
        seen = client.get_run(train_run).data.metrics.get(f"final_{cfg.train.test_split}_accuracy")
        row = fold_row(source, ev, info.classes, missing, seen)
        row.update(excluded_shared_patients=ev["excluded"], train_run_id=train_run, eval_run_id=ev["run_id"],
                   reused_training=reused, minutes=round((time.time() - started) / 60, 1))
        rows.append(row)
        log(f"[{source}] {row['images']} images of {row['patients']} patients: accuracy {row['accuracy']:.3f} "
            f"[{row['accuracy_low']:.3f}, {row['accuracy_high']:.3f}] (on the seen sources' test split: "
            f"{row['seen_sources_test_accuracy']:.3f})")

    return rows
