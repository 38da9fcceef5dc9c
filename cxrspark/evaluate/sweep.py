"""The recipe sweep: models x training recipes, measured on the sources they saw AND on sources they never saw.

    result = run_sweep(cfg)        # cfg.sweep says which models, datasets, variants and left-out sources

1. Each dataset of ``sweep.datasets`` (ingest overrides over the job's ingest config, at
   ``sweep.image_size``) is ingested once into ``<output>/datasets/<name>`` by ``jobs/ingest.py`` in a
   subprocess (a variant with its own ``image_size`` gets its own copy, ``<name>-<size>px``); a dataset
   whose resolved ingest settings are unchanged is reused.
2. Each cell (model x variant) is trained on every source (``jobs/train.py`` in a subprocess, input size
   ``sweep.image_size``) and evaluated on the test split with patient-bootstrap CIs, the source probe on
   val + test and Grad-CAM (:func:`cxrspark.evaluate.run.run_evaluation`); then, when the variant says
   ``loso``, :func:`cxrspark.evaluate.loso.run_loso` leaves each of ``sweep.loso_sources`` out in turn.
3. One row per cell: internal test accuracy and macro F1, COVID-19 sensitivity and PPV (all with CIs),
   the source probe's skill within each class, Grad-CAM mass in the lungs, and per left-out source the
   accuracy (CI) and the specificity of its non-COVID images (the share not called COVID-19), plus the
   mean LOSO accuracy with a CI half-width (per-fold bootstrap half-widths combined as independent), and
   how the predictions spread over the classes on each test set.
4. The winner is the best mean LOSO accuracy among cells that did not collapse (:func:`refusals`: one
   class for nearly every image at one-class-predictor skill, or a class never predicted on the internal
   test), set against the baseline recipe (``sweep.baseline_model`` / ``baseline_variant``): a win needs a
   difference larger than the half-width of its CI.

Everything is logged under one parent MLflow run (experiment ``sweep.experiment``): the table as
``sweep/table.json`` and ``sweep/SWEEP.md``, every training, evaluation and LOSO run as its
descendant. A cell whose settings and data are unchanged since it finished is not run again (its row is
kept in ``<output>/cells/<model>/<variant>/row.json``), so a sweep can be run in parts
(``sweep.only_models`` / ``sweep.only_variants``) and resumed.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import yaml

from cxrspark.config import Config, SweepConfig, SweepVariant, load_config, to_dict
from cxrspark.evaluate.loso import model_revision, prediction_spread

REPO = Path(__file__).resolve().parents[2]
COVID = "COVID-19"
#: the fields a cell's row holds; a finished cell of an older version is evaluated again (its trainings,
#: which the version does not change, are reused)
ROW_VERSION = 2


class SweepError(ValueError):
    pass


def slug(name: str) -> str:
    """A folder name for a variant name (``+adversarial`` -> ``adversarial``)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_") or "variant"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def mean_with_halfwidth(values: list[float], lows: list[float], highs: list[float]) -> tuple[float, float]:
    """Mean of per-fold values and the half-width of its CI, treating the folds' bootstrap CIs as
    independent: sqrt(sum(half_i^2)) / k."""
    if not values or any(math.isnan(v) for v in values):
        return float("nan"), float("nan")
    halves = [(h - lo) / 2 for lo, h in zip(lows, highs)]
    return float(np.mean(values)), float(math.sqrt(sum(x * x for x in halves)) / len(values))


def _ci(ci: pd.DataFrame, row: str, metric: str) -> tuple[float, float, float]:
    r = ci[(ci["class"] == row) & (ci["metric"] == metric)]
    return tuple(float(r.iloc[0][k]) for k in ("value", "low", "high")) if len(r) else (np.nan,) * 3


def internal_row(ev: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """The internal-test part of a cell's row, from :func:`run_evaluation`'s result."""
    row: dict[str, Any] = {"test_images": ev["n"], "test_patients": ev["patients"]}
    row.update({f"test_{k}": v for k, v in prediction_spread(ev["confusion"], classes).items()})
    for name, (cls, metric) in {"test_accuracy": ("accuracy", "accuracy"), "test_macro_f1": ("macro avg", "f1"),
                                "covid_sensitivity": (COVID, "recall"), "covid_ppv": (COVID, "precision")}.items():
        row[name], row[f"{name}_low"], row[f"{name}_high"] = _ci(ev["ci"], cls, metric)
    probe = ev.get("probe")
    for c in classes:
        hit = probe[probe["scope"] == f"within {c}"] if probe is not None and len(probe) else []
        row[f"probe_skill_{c}"] = float(hit.iloc[0]["skill"]) if len(hit) else np.nan
    mass = ev.get("lung_mass")
    if mass is not None and len(mass):
        w = mass["images"].to_numpy(float)
        row["gradcam_lung_mass"] = float(np.average(mass["mass_in_lungs"], weights=w))
        row["gradcam_lung_area"] = float(np.average(mass["lung_area"], weights=w))
    else:
        row["gradcam_lung_mass"] = row["gradcam_lung_area"] = np.nan
    return row


def loso_part(table: pd.DataFrame, sources: list[str]) -> dict[str, Any]:
    """The leave-one-source-out part of a cell's row, from :func:`run_loso`'s table."""
    row: dict[str, Any] = {}
    vals, lows, highs = [], [], []
    for s in sources:
        hit = table[(table["left_out"] == s)] if len(table) else table
        ok = len(hit) and hit.iloc[0].get("status") == "ok"
        r = hit.iloc[0] if ok else {}
        spread = [k for k in (hit.columns if len(hit) else []) if k.startswith("predicted_")]
        for k in ("accuracy", "accuracy_low", "accuracy_high", "specificity_non_covid", "macro_f1_present",
                  "constant_macro_f1", *spread):
            row[f"loso_{s}_{k}"] = float(r.get(k, np.nan)) if ok else np.nan
        row[f"loso_{s}_images"] = int(r.get("images", 0)) if ok else 0
        vals.append(row[f"loso_{s}_accuracy"])
        lows.append(row[f"loso_{s}_accuracy_low"])
        highs.append(row[f"loso_{s}_accuracy_high"])
    row["loso_mean_accuracy"], row["loso_mean_halfwidth"] = mean_with_halfwidth(vals, lows, highs)
    return row


def refusals(row: dict[str, Any], classes: list[str], sources: list[str], share: float, margin: float) -> list[str]:
    """Why a cell cannot be picked as the winning recipe (empty: it can): on the internal test or a
    left-out source the model collapsed (one class for ``share`` of the images, macro F1 at most ``margin``
    above the best one-class predictor's; not on a test set of one class), or on the internal test it never predicts a class. A collapsed
    model's LOSO accuracy is the share of its one class in the left-out source, not skill."""
    out = []
    scopes = [("internal test", "test_")] + [(f"LOSO {s}", f"loso_{s}_") for s in sources]
    for name, pre in scopes:
        shares = [row.get(f"{pre}predicted_{c}", np.nan) for c in classes]
        f1, floor = row.get(f"{pre}macro_f1_present", np.nan), row.get(f"{pre}constant_macro_f1", np.nan)
        if any(_missing(x) for x in (*shares, f1, floor)):
            if pre == "test_":
                out.append("internal test: no prediction spread recorded")
            continue
        top = int(np.argmax(shares))
        # floor 1.0: the test set holds one class, and calling every image that class is right
        if shares[top] >= share and f1 <= floor + margin and floor < 1.0:
            out.append(f"{name}: {shares[top]:.0%} {classes[top]}, macro F1 {f1:.3f} vs one-class {floor:.3f}")
        if pre == "test_":
            never = [c for c, x in zip(classes, shares) if x == 0]
            if never:
                out.append(f"internal test: never predicts {', '.join(never)}")
    return out


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _run(cmd: list[str], log: Callable[[str], None]) -> int:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}).returncode


def cell_size(cfg: Config, model: str, variant: SweepVariant) -> int:
    """The stored image and input size of one cell."""
    from cxrspark.train.models import model_spec

    if variant.image_size == "model":
        return model_spec(model).input_size
    return variant.image_size or cfg.sweep.image_size


def ensure_dataset(name: str, sets: list[str], config_file: Path, out: Path, image_size: int,
                   log: Callable[[str], None], folder_name: str | None = None) -> Path:
    """Ingest dataset ``name`` unless an ingest with the same resolved settings already finished."""
    folder = out / "datasets" / (folder_name or name)
    overrides = [f"ingest.output={folder}", f"ingest.image_size={image_size}", *sets]
    cfg = load_config([config_file], overrides)
    key = _digest([to_dict(cfg.ingest), [to_dict(s) for s in cfg.sources]])
    marker = folder / "sweep_dataset.json"
    if (folder / "summary.json").is_file() and marker.is_file() and json.loads(marker.read_text()).get("key") == key:
        log(f"[dataset {name}] reusing {folder} (same ingest settings)")
        return folder
    cmd = [sys.executable, str(REPO / "jobs" / "ingest.py"), "--config", str(config_file)]
    for o in overrides:
        cmd += ["--set", o]
    code = _run(cmd, log)
    if code != 0 or not (folder / "summary.json").is_file():
        raise SweepError(f"ingest of sweep dataset {name!r} failed (exit {code})")
    marker.write_text(json.dumps({"key": key, "overrides": overrides}))
    return folder


def dataset_folder(out: Path, variant: SweepVariant, size: int, default_size: int) -> Path:
    """Where a variant's dataset is ingested (a size of its own gets its own copy)."""
    return out / "datasets" / (variant.dataset if size == default_size else f"{variant.dataset}-{size}px")


def cell_key(config_file: Path, model: str, variant: SweepVariant, dataset: Path, size: int,
             loso_sources: list[str]) -> str:
    """What a cell's trainings depend on: the training settings (not where runs are logged or written),
    the model's architecture revision, the data and the left-out sources."""
    from cxrspark.train import data as tdata

    sets = [f"train.model={model}", f"train.input_size={size}", f"train.dataset={dataset}", *variant.set]
    train = to_dict(load_config([config_file], sets).train)
    for where in ("mlflow", "output"):
        train.pop(where)
    parts = [train, tdata.load_dataset_info(dataset).dataset_hash, variant.loso, loso_sources if variant.loso else []]
    return _digest(parts + ([f"revision {r}"] if (r := model_revision(model)) > 1 else []))


def finished_row(cell: Path, key: str) -> dict[str, Any] | None:
    """The row of a finished cell whose trainings match ``key`` (None: not finished, or trained with other
    settings, data or model revision)."""
    done = cell / "row.json"
    old = json.loads(done.read_text()) if done.is_file() else {}
    return old if old.get("key") == key else None


def run_cell(cfg: Config, config_file: Path, model: str, variant: SweepVariant, dataset: Path, out: Path,
             parent_id: str, log: Callable[[str], None], size: int) -> dict[str, Any]:
    """Train and evaluate one model x variant (see the module doc); returns its row."""
    from cxrspark.evaluate.loso import run_loso, train_command
    from cxrspark.evaluate.run import run_evaluation
    from cxrspark.modelref import logged_model
    from cxrspark.train import data as tdata
    from cxrspark.train.loop import read_state

    sc = cfg.sweep
    cell = out / "cells" / slug(model) / slug(variant.name)
    cell.mkdir(parents=True, exist_ok=True)
    info = tdata.load_dataset_info(dataset)
    sets = [f"train.model={model}", f"train.input_size={size}", f"train.dataset={dataset}",
            f"train.mlflow.experiment={sc.experiment}", f"train.mlflow.parent_run_id={parent_id}", *variant.set]
    key = cell_key(config_file, model, variant, dataset, size, sc.loso_sources)
    done = cell / "row.json"
    old = finished_row(cell, key) or {}
    trained = old.get("row")
    if trained and old.get("version") == ROW_VERSION:
        log(f"[{model} / {variant.name}] reusing the finished cell (same settings and data)")
        return trained
    started = time.time()
    row: dict[str, Any] = {"model": model, "variant": variant.name, "dataset": dataset.name, "image_size": size,
                           "compare_with": variant.compare_with}
    model_uri = logged_model(trained["train_run_id"]) if trained else None
    again = model_uri is not None
    if again:  # an older row of the same training: evaluate it again, do not retrain
        log(f"[{model} / {variant.name}] evaluating the finished training again (row version {ROW_VERSION})")
        row.update(train_run_id=trained["train_run_id"], epochs_run=trained["epochs_run"])
    else:
        internal = cell / "internal"
        code = _run(train_command(config_file, 1, [*sets, f"train.output={internal}",
                                                   f"train.mlflow.run_name={json.dumps(f'{model} {variant.name}: all sources')}"]), log)
        state = read_state(internal / "checkpoints")
        run_id = state.get("mlflow_run_id") if state else None
        model_uri = logged_model(run_id) if code == 0 and run_id else None
        if model_uri is None:
            raise SweepError(f"training of {model} / {variant.name} failed (exit {code})")
        row["train_run_id"] = run_id
        row["epochs_run"] = len(state.get("history", []))
    ev_cfg = load_config([config_file], [*sets, f"evaluate.model={model_uri}", f"evaluate.dataset={dataset}",
                                         "evaluate.split=test", f"evaluate.experiment={sc.experiment}"])
    ev = run_evaluation(ev_cfg, parent_run_id=parent_id, run_name=f"{model} {variant.name}: internal test")
    row.update(internal_row(ev, info.classes))
    if variant.loso and sc.loso_sources:
        loso_cfg = load_config([config_file], [*sets, f"loso.sources=[{','.join(sc.loso_sources)}]",
                                               f"loso.output={cell / 'loso'}", f"loso.experiment={sc.experiment}",
                                               "loso.ranks=1"])
        lo = run_loso(loso_cfg, log=log, parent_run_id=parent_id,
                      run_name=f"{model} {variant.name}: leave-one-source-out")
        row.update(loso_part(lo["table"], sc.loso_sources))
        row["loso_run_id"] = lo["parent_run_id"]
    # a cell evaluated again keeps the minutes of its first run (trainings and evaluations)
    row["minutes"] = trained["minutes"] if again else round((time.time() - started) / 60, 1)
    done.write_text(json.dumps({"key": key, "version": ROW_VERSION, "row": row}, default=float, indent=1))
    return row


def _fmt(v: Any, low: Any = None, high: Any = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if low is None or (isinstance(low, float) and math.isnan(low)):
        return f"{v:.3f}"
    return f"{v:.3f} [{low:.3f}, {high:.3f}]"


def _shares(r: dict[str, Any], pre: str, classes: list[str]) -> str:
    vals = [r.get(f"{pre}predicted_{c}") for c in classes]
    return "-" if any(_missing(v) for v in vals) else " / ".join(f"{v:.2f}" for v in vals)


def winner_line(loso: pd.DataFrame, sc: SweepConfig) -> str:
    """The best mean LOSO accuracy among the cells that may win, and whether it beats the baseline recipe
    by more than the half-width of the difference's CI (the two means' half-widths combined)."""
    ok = loso[loso["refused"] == ""]
    if not len(ok):
        return "\nNo cell may win: every model with LOSO folds collapsed (see above).\n"
    best = ok.sort_values("loso_mean_accuracy", ascending=False).iloc[0]
    text = (f"\nBest mean LOSO accuracy (collapsed models refused): {best['model']} / {best['variant']} "
            f"{best['loso_mean_accuracy']:.3f} +- {best['loso_mean_halfwidth']:.3f}.")
    base = loso[(loso["model"] == sc.baseline_model) & (loso["variant"] == sc.baseline_variant)]
    if not len(base):
        return text + f" The baseline {sc.baseline_model} / {sc.baseline_variant} has no LOSO result.\n"
    b = base.iloc[0]
    diff = best["loso_mean_accuracy"] - b["loso_mean_accuracy"]
    half = math.hypot(best["loso_mean_halfwidth"], b["loso_mean_halfwidth"])
    if best["model"] == b["model"] and best["variant"] == b["variant"]:
        verdict = "it is the baseline itself: no recipe beat it"
    elif diff > half:
        verdict = f"it beats the baseline by {diff:+.3f} (more than the half-width {half:.3f})"
    elif diff < -half:
        verdict = f"it is worse than the baseline by {-diff:.3f} (more than the half-width {half:.3f})"
    else:
        verdict = f"{diff:+.3f} against the baseline is within the half-width {half:.3f}: not a win"
    collapsed = " (the baseline itself collapsed: see above)" if b["refused"] else ""
    return text + (f" Baseline {b['model']} / {b['variant']}: {b['loso_mean_accuracy']:.3f} +- "
                   f"{b['loso_mean_halfwidth']:.3f}{collapsed}; {verdict}.\n")


def sweep_markdown(table: pd.DataFrame, sc: SweepConfig, classes: list[str]) -> str:
    """The sweep's tables: one for LOSO and internal test (with the cells that may not win because they
    collapsed, see :func:`refusals`), one of how each cell's predictions spread over the classes, and one
    setting each variant with ``compare_with`` beside that variant (the source studies' leaky protocol vs
    cxrspark's)."""
    if not len(table):
        return "No finished cells.\n"
    sources = sc.loso_sources
    loso = table[table["loso_mean_accuracy"].notna()] if "loso_mean_accuracy" in table else table.iloc[:0]
    loso = loso.assign(refused=["; ".join(refusals(r, classes, sources, sc.collapse_share, sc.chance_margin))
                                for r in loso.to_dict("records")])
    lines = ["| model | recipe | mean LOSO accuracy | " + " | ".join(f"LOSO {s} (non-COVID specificity)" for s in sources)
             + " | internal test macro F1 | COVID-19 sensitivity | COVID-19 PPV | probe skill within "
             + " / ".join(classes) + " | Grad-CAM mass in lungs (lung area) | may win |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in sources) + " | ---: | ---: | ---: | --- | --- | --- |"]
    for r in loso.to_dict("records"):
        per = [f"{_fmt(r[f'loso_{s}_accuracy'], r[f'loso_{s}_accuracy_low'], r[f'loso_{s}_accuracy_high'])} "
               f"({_fmt(r[f'loso_{s}_specificity_non_covid'])})" for s in sources]
        mean = f"{r['loso_mean_accuracy']:.3f} +- {r['loso_mean_halfwidth']:.3f}"
        lines.append(f"| {r['model']} | {r['variant']} | {mean} | " + " | ".join(per) + " | "
                     f"{_fmt(r['test_macro_f1'], r['test_macro_f1_low'], r['test_macro_f1_high'])} | "
                     f"{_fmt(r['covid_sensitivity'], r['covid_sensitivity_low'], r['covid_sensitivity_high'])} | "
                     f"{_fmt(r['covid_ppv'], r['covid_ppv_low'], r['covid_ppv_high'])} | "
                     + " / ".join(_fmt(r.get(f"probe_skill_{c}")) for c in classes) + " | "
                     f"{_fmt(r['gradcam_lung_mass'])} ({_fmt(r['gradcam_lung_area'])}) | "
                     f"{'no' if r['refused'] else 'yes'} |")
    out = "\n".join(lines) + "\n"
    if len(loso):
        refused = [f"- {r['model']} / {r['variant']}: {r['refused']}" for r in loso.to_dict("records") if r["refused"]]
        if refused:
            out += ("\nMay not win (collapsed: one class for at least "
                    f"{sc.collapse_share:.0%} of a test set's images and macro F1 at most {sc.chance_margin} above "
                    "the best one-class predictor's; or a class never predicted on the internal test):\n"
                    + "\n".join(refused) + "\n")
        out += winner_line(loso, sc)
        out += ("\nShare of the images given each class (" + " / ".join(classes) + "):\n\n| model | recipe | "
                "internal test | " + " | ".join(f"LOSO {s}" for s in sources) + " |\n| --- | --- | --- | "
                + " | ".join("---" for _ in sources) + " |\n")
        for r in loso.to_dict("records"):
            out += (f"| {r['model']} | {r['variant']} | {_shares(r, 'test_', classes)} | "
                    + " | ".join(_shares(r, f"loso_{s}_", classes) for s in sources) + " |\n")
    pairs = [(r, table[(table["model"] == r["model"]) & (table["variant"] == r["compare_with"])])
             for r in table.to_dict("records") if isinstance(r.get("compare_with"), str)]
    pairs = [(r, ref.iloc[0]) for r, ref in pairs if len(ref)]
    if pairs:
        out += ("\n| model | input px | protocol | test accuracy | test macro F1 | compared with | its test accuracy "
                "| its test macro F1 | accuracy added |\n| --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: |\n")
        for r, ref in pairs:
            out += (f"| {r['model']} | {r.get('image_size', '-')} | {r['variant']} | "
                    f"{_fmt(r['test_accuracy'], r['test_accuracy_low'], r['test_accuracy_high'])} | "
                    f"{_fmt(r['test_macro_f1'], r['test_macro_f1_low'], r['test_macro_f1_high'])} | {ref['variant']} | "
                    f"{_fmt(ref['test_accuracy'], ref['test_accuracy_low'], ref['test_accuracy_high'])} | "
                    f"{_fmt(ref['test_macro_f1'], ref['test_macro_f1_low'], ref['test_macro_f1_high'])} | "
                    f"{r['test_accuracy'] - ref['test_accuracy']:+.3f} |\n")
    return out


def run_sweep(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    import mlflow

    from cxrspark import tracking

    sc = cfg.sweep
    if not sc.variants or not sc.models:
        raise SweepError("sweep.models and sweep.variants must not be empty (see conf/sweep.yaml)")
    out = Path(sc.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking.tracking_uri(cfg.train.mlflow.tracking_uri, cfg.train.output)
    mlflow.set_tracking_uri(uri)
    client = mlflow.tracking.MlflowClient(uri)
    parent = client.create_run(tracking.ensure_experiment(uri, sc.experiment), run_name="recipe sweep")
    parent_id = parent.info.run_id
    base = to_dict(cfg)
    base["train"]["mlflow"]["tracking_uri"] = uri
    config_file = out / "config.yaml"
    config_file.write_text(yaml.safe_dump(base, sort_keys=False))
    client.log_artifact(parent_id, str(config_file), "sweep")
    client.log_param(parent_id, "image_size", sc.image_size)
    log(f"recipe sweep: {sc.models} x {[v.name for v in sc.variants]}; parent run {parent_id} at {uri}")
    models = [m for m in sc.models if not sc.only_models or m in sc.only_models]
    variants = [v for v in sc.variants if not sc.only_variants or v.name in sc.only_variants]
    datasets: dict[tuple[str, int], Path] = {}
    rows, failed = [], []
    try:
        for model in sc.models:
            for variant in sc.variants:
                if model in models and variant in variants:
                    size = cell_size(cfg, model, variant)
                    key = (variant.dataset, size)
                    try:
                        if key not in datasets:
                            datasets[key] = ensure_dataset(variant.dataset, sc.datasets[variant.dataset], config_file,
                                                           out, size, log, dataset_folder(out, variant, size, sc.image_size).name)
                        rows.append(run_cell(cfg, config_file, model, variant, datasets[key], out, parent_id, log,
                                             size))
                    except Exception as exc:  # one failed cell is a line in the report, the others still run
                        failed.append(f"{model} / {variant.name}: {exc}")
                        log(f"[{model} / {variant.name}] FAILED: {exc}")
                else:  # a finished cell of an earlier partial run still belongs in the table, if still current
                    size = cell_size(cfg, model, variant)
                    folder = dataset_folder(out, variant, size, sc.image_size)
                    cell = out / "cells" / slug(model) / slug(variant.name)
                    if not (cell / "row.json").is_file():
                        continue
                    found = (finished_row(cell, cell_key(config_file, model, variant, folder, size, sc.loso_sources))
                             if (folder / "summary.json").is_file() else None)
                    if found:
                        rows.append(found["row"])
                    else:
                        log(f"[{model} / {variant.name}] left out of the table: its finished row was trained with "
                            "other settings, data or model revision (run the cell again)")
    except BaseException:
        client.set_terminated(parent_id, "KILLED" if isinstance(sys.exc_info()[1], KeyboardInterrupt) else "FAILED")
        raise
    table = pd.DataFrame(rows)
    classes = list(cfg.ingest.classes)
    text = sweep_markdown(table, sc, classes)
    if failed:
        text += "\nFailed cells:\n" + "".join(f"- {f}\n" for f in failed)
    (out / "SWEEP.md").write_text(text)
    table.to_json(out / "table.json", orient="records", indent=1)
    if len(table):
        client.log_table(parent_id, table, artifact_file="sweep/table.json")
    client.log_text(parent_id, text, "sweep/SWEEP.md")
    client.set_terminated(parent_id, "FINISHED" if not failed else "FAILED")
    return {"parent_run_id": parent_id, "tracking_uri": uri, "table": table, "markdown": text, "failed": failed}
