"""Pictures and the model card of an evaluation (matplotlib + markdown; no Spark, no MLflow)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def roc_figure(y_true: np.ndarray, probs: np.ndarray, classes: list[str], title: str):
    """One-vs-rest ROC curve per class, AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=120)
    for c, name in enumerate(classes):
        positive = np.asarray(y_true) == c
        if positive.any() and not positive.all():
            fpr, tpr, _ = roc_curve(positive, probs[:, c])
            ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(positive, probs[:, c]):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def reliability_figure(table: pd.DataFrame, ece: float, title: str):
    """Accuracy against mean confidence per bin, bar widths the bins, with the diagonal."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.4), dpi=120)
    used = table[table["n"] > 0]
    ax.bar(used["lower"], used["accuracy"], width=used["upper"] - used["lower"], align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot(used["confidence"], used["accuracy"], "o", color="crimson", ms=3, label="(confidence, accuracy)")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for _, r in used.iterrows():
        ax.text(r["lower"] + (r["upper"] - r["lower"]) / 2, 0.02, str(int(r["n"])), ha="center", fontsize=6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {ece:.3f}")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return fig


def curves_figure(history: dict[str, list[tuple[int, float]]], title: str):
    """Training curves (metric -> [(step, value)]): losses on the left, accuracies on the right."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4), dpi=110)
    for name, points in sorted(history.items()):
        if not points:
            continue
        steps, values = zip(*sorted(points))
        ax = left if "loss" in name else right
        ax.plot(steps, values, marker="o", ms=2, label=name)
    for ax, what in ((left, "loss"), (right, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def gallery_figure(pictures: list[np.ndarray], titles: list[str], title: str, cols: int = 4):
    plt = _plt()
    rows = max(1, (len(pictures) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, pic, t in zip(axes.ravel(), pictures, titles):
        ax.imshow(pic)
        ax.set_title(t, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (floats with 3 decimals)."""
    counts = {"support", "tp", "fp", "fn", "tn", "n", "images"}

    def show(v: Any, column: str) -> str:
        if isinstance(v, (float, np.floating)):
            return str(int(v)) if column in counts and float(v).is_integer() else _fmt(float(v))
        return str(v)
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(show(v, c) for v, c in zip(row, df.columns)) + " |"
            for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def protocol_header(summary: dict[str, Any] | None) -> list[str]:
    """The model card's lines about the evaluated dataset's split protocol (its summary.json), shown
    right under the title: a loud warning for the leaky image-level protocol, nothing for the patient
    split (or an unknown dataset)."""
    from cxrspark.ingest.output import is_leaky

    if not summary or not is_leaky(summary):
        return []
    p = summary.get("protocol") or {}
    kept = [k for k in ("exact", "near") if p.get(f"dedup_{k}") is False]
    return [
        "> **LEAKY AUDIT PROTOCOL: THE METRICS BELOW ARE NOT RESULTS.** The dataset was split image by image",
        "> (`ingest.split.unit: image`, the leaky protocol of the source studies): a patient's films land in",
        "> training and test alike" + (f", and so do duplicate images (`dedup.{'`, `dedup.'.join(kept)}` off)"
                                       if kept else "") + ",",
        "> so these metrics reward recognising patients and copies, not diagnosing new patients. Use them only",
        "> to audit that protocol against the patient-level split.",
        "",
    ]


def standardize_line(summary: dict[str, Any] | None) -> list[str]:
    """The model card's line on the input standardisation of the evaluated dataset (none: no line)."""
    st = (summary or {}).get("standardize") or {}
    if st.get("method", "none") == "none":
        return []
    ref = (f", reference image `{st['reference']}` (sha256 `{st['reference_sha256'][:12]}`)"
           if st.get("reference_sha256") else "")
    return [f"- Input standardisation: `{st['method']}` (scale {st.get('scale')}{ref}), statistics from "
            f"{st.get('statistics_from', 'the stored image')}."]


def _dataset_summary(ctx: dict[str, Any]) -> dict[str, Any] | None:
    """``ctx['dataset_summary']``, else the evaluated dataset's summary.json when it can be read."""
    if ctx.get("dataset_summary") is not None:
        return ctx["dataset_summary"]
    try:
        return json.loads((Path(ctx["dataset"]) / "summary.json").read_text())
    except (KeyError, TypeError, OSError, ValueError):
        return None


def model_card(ctx: dict[str, Any]) -> str:
    """Markdown: data, metrics with CIs, the per-source table, calibration, Grad-CAM, intended use.
    A dataset of the leaky image-level protocol is named in the card's first lines
    (:func:`protocol_header`)."""
    ci: pd.DataFrame = ctx["ci_table"]
    classes: list[str] = ctx["classes"]

    def cell(cls: str, metric: str) -> str:
        r = ci[(ci["class"] == cls) & (ci["metric"] == metric)]
        if r.empty:
            return "n/a"
        r = r.iloc[0]
        return f"{_fmt(r['value'])} [{_fmt(r['low'])}, {_fmt(r['high'])}]"

    metrics = ("precision", "recall", "specificity", "f1", "f2", "auc", "mean_prob")
    summary = _dataset_summary(ctx)
    header = protocol_header(summary)
    lines = [
        f"# Model card: {ctx['model_name']}"
        + (" (leaky image-level split: metrics are not results)" if header else ""),
        "",
        *header,
        "**Not for clinical use.** A research model trained on public chest X-ray collections. It has not been",
        "validated on any hospital's patients and must not inform a diagnosis or a treatment.",
        "",
        "## Model",
        f"- Model: `{ctx['model_uri']}`" + (f" (training run `{ctx['train_run_id']}`)" if ctx.get("train_run_id") else ""),
        f"- Evaluated on: `{ctx['dataset']}` (dataset hash `{ctx['dataset_hash'][:12]}`), split `{ctx['split']}`:",
        f"  {ctx['n_images']} images of {ctx['n_patients']} patients"
        + (f" of source(s) {', '.join(ctx['sources'])} only." if ctx.get("sources") is not None else "."),
        *([f"  {ctx['excluded']} images left out: {ctx['exclude_reason']}."] if ctx.get("excluded") else []),
        *standardize_line(summary),
        "",
        "## Data: images per source, class and split (the ingest's curated table)",
        "",
        markdown_table(ctx["data_table"]),
        "",
        f"## Metrics on `{ctx['split']}` with {int(ctx['level'] * 100)}% CIs ({ctx['n_boot']} bootstrap resamples of patients)",
        "",
        "| class | " + " | ".join(metrics) + " | support |",
        "| --- | " + " | ".join("---" for _ in metrics) + " | ---: |",
    ]
    support = ctx["point_table"].set_index("class")["support"]
    for c in [*classes, "macro avg", "weighted avg"]:
        lines.append(f"| {c} | " + " | ".join(cell(c, m) for m in metrics) + f" | {int(support[c])} |")
    lines += [f"| accuracy | {cell('accuracy', 'accuracy')} |" + " |" * len(metrics), "",
              "`mean_prob`: the mean predicted probability of the class on its own images.", "",
              "## Per source", "",
              "One row per (source, class) of the evaluated split. A model that learned the SOURCE instead of the",
              "disease scores well on the sources it saw with one class and collapses on a new hospital.", "",
              markdown_table(ctx["per_source"]), "",
              "## Calibration", "",
              f"Expected calibration error (top-label, {ctx['bins']} bins): **{ctx['ece']:.3f}**; see the reliability diagram.",
              ""]
    lungs = ctx.get("lung_mass")
    lines += ["## Where the model looks (Grad-CAM)", ""]
    if lungs is not None and len(lungs):
        lines += ["Fraction of Grad-CAM mass inside the lung mask (mean over the images shown, per true class).",
                  "`lung_area` is the fraction of the image the lungs cover: what a map spread evenly would score.", "",
                  markdown_table(lungs), ""]
        low = lungs[lungs["mass_in_lungs"] < 0.5]
        if len(low):
            lines += [f"**Warning:** for {', '.join(low['class'])} less than half of the attention is inside the "
                      "lungs: the model may rely on labels, devices or borders rather than the lungs.", ""]
    else:
        lines += ["The dataset has no lung masks (ingest with `segmentation: unet` to measure attention inside the",
                  "lungs).", ""]
    probe = ctx.get("probe")
    lines += ["## Shortcut audit: source probe", ""]
    if probe is not None and len(probe):
        lines += [f"A linear probe (logistic regression, {ctx['probe_folds']}-fold cross-validation grouped by patient)",
                  "predicts each image's SOURCE from the model's penultimate features, on the split(s) "
                  f"{', '.join(ctx['probe_splits'])}" + (f" ({ctx['probe_note']})." if ctx.get("probe_note") else "."),
                  "Skill = (balanced accuracy - chance) / (1 - chance). `within <class>` rows use images of one class",
                  "only, so the disease cannot explain the source there.", "", markdown_table(probe), ""]
        risky = probe[probe["scope"].str.startswith("within") & (probe["risk"] == "high")]
        if len(risky):
            lines += [f"**Risk:** the features identify the source well within {', '.join(s[7:] for s in risky['scope'])}:",
                      "the model carries hospital/collection information beyond the disease and may use it as a",
                      "shortcut. Expect lower performance on a new hospital; see leave-one-source-out results.", ""]
    else:
        lines += ["No probe: evaluate.probe_splits is empty." if not ctx.get("probe_splits") else
                  "No probe: fewer than two sources with enough patients in the probed images.", ""]
    lines += ["## Intended use and limits",
              "- Intended use: research on dataset bias and distributed training pipelines for CXR classification.",
              "- Sources are confounded with classes in public COVID-19 collections (COVID-19 images come from",
              "  COVID collections, Normal images mostly from others); read the per-source table before any metric.",
              "- Not for clinical use; not a medical device.", ""]
    return "\n".join(lines)


# ---- leave-one-source-out -------------------------------------------------------------------------
def loso_figure(table: pd.DataFrame):
    """Accuracy on each left-out source (with its CI) next to the same model on the seen sources' test split."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(table), 3.6), dpi=110)
    x = np.arange(len(table))
    acc = table["accuracy"].to_numpy(float)
    err = np.vstack([acc - table["accuracy_low"].to_numpy(float), table["accuracy_high"].to_numpy(float) - acc])
    ax.bar(x - 0.18, acc, 0.36, yerr=err, capsize=3, label="left-out source (all its images)")
    ax.bar(x + 0.18, table["seen_sources_test_accuracy"].to_numpy(float), 0.36,
           label="seen sources' test split", alpha=0.6)
    ax.set_xticks(x, [f"without\n{s}" for s in table["left_out"]])
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Leave-one-source-out")
    fig.tight_layout()
    return fig


def loso_markdown(table: pd.DataFrame, classes: list[str], skipped: dict[str, str], model: str) -> str:
    lines = [f"# Leave-one-source-out: {model}", "",
             "Each row: a model trained (and early-stopped) on every other source, evaluated on ALL images of the",
             "left-out source, which it never saw, except `excluded_shared_patients`: images of patients who also",
             "have images in another source. Intervals: 95% patient bootstrap. `seen_sources_test_accuracy`:",
             "the same model on the test split of the sources it trained on. A large gap means the model does not",
             "carry over to a new collection; `classes_missing_in_training` are classes of the left-out source",
             "that no other source has (the model cannot predict them). `predicted_<class>`: the share of the",
             "left-out images given that class (one near 1.0: the model calls every film of the new source the same).", ""]
    if len(table):
        cols = ["left_out", "status", "images", "patients", "excluded_shared_patients", "accuracy", "accuracy_low", "accuracy_high", "macro_f1",
                "macro_auc", "ece", "seen_sources_test_accuracy",
                *[f"recall_{c}" for c in classes], *[f"predicted_{c}" for c in classes], "classes_missing_in_training"]
        lines += [markdown_table(table[[c for c in cols if c in table.columns]]), ""]
    if skipped:
        lines += ["Not left out: " + "; ".join(f"{s} ({why})" for s, why in skipped.items()), ""]
    lines += ["Not for clinical use.", ""]
    return "\n".join(lines)
