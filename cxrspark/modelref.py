"""Which trained model: a model reference resolved to a loadable URI, loaded, and identified.

    uri, run_id = resolve_model("latest", experiment="cxrspark")   # or runs:/<id>/model, models:/<id>, a file
    model = load_model(uri)
    digest = weights_digest(model)                                # sha256 of the weights, stable across saves

Used by evaluation and batch prediction; the tracking URI must be set (``mlflow.set_tracking_uri``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path


class ModelRefError(ValueError):
    pass


def resolve_model(spec: str, experiment: str) -> tuple[str, str | None]:
    """(model URI or path, the training run id when known)."""
    import mlflow

    if spec == "latest":
        exp = mlflow.get_experiment_by_name(experiment)
        runs = [] if exp is None else mlflow.search_runs([exp.experiment_id], filter_string="status = 'FINISHED'",
                                                        order_by=["start_time DESC"], output_format="list")
        for run in runs:
            uri = logged_model(run.info.run_id, exp.experiment_id)
            if uri:
                return uri, run.info.run_id
        raise ModelRefError(f"no finished run with a logged model in experiment {experiment!r} at "
                            f"{mlflow.get_tracking_uri()}; train one or name the model")
    if spec.startswith("runs:/"):
        return spec, spec[len("runs:/"):].split("/")[0]
    if spec.startswith("models:/"):
        model = mlflow.get_logged_model(spec[len("models:/"):])
        return spec, model.source_run_id
    if not Path(spec).exists():
        raise ModelRefError(f"model {spec!r} is neither an MLflow URI nor an existing file")
    return spec, None


def logged_model(run_id: str, experiment_id: str | None = None) -> str | None:
    """``models:/<id>`` of the model a run logged, or None."""
    import mlflow

    if experiment_id is None:
        experiment_id = mlflow.get_run(run_id).info.experiment_id
    models = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{run_id}'")
    return f"models:/{models[0].model_id}" if models else None


def load_model(uri: str):
    import tensorflow as tf

    if uri.startswith(("runs:/", "models:/")):
        import mlflow.tensorflow
        return mlflow.tensorflow.load_model(uri)
    return tf.keras.models.load_model(uri)


def weights_digest(model) -> str:
    """sha256 of the model's weights (shapes and bytes, in layer order): the same for every copy of
    the same trained model, whatever file format it was saved in."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(str(w.shape).encode())
        h.update(w.tobytes())
    return h.hexdigest()


def training_dataset(run_id: str | None) -> Path | None:
    """The ingest output a training run read (its ``dataset_path`` param), when known and present."""
    if not run_id:
        return None
    import mlflow

    path = mlflow.tracking.MlflowClient().get_run(run_id).data.params.get("dataset_path")
    return Path(path) if path and (Path(path) / "summary.json").is_file() else None
