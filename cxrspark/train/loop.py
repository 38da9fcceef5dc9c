"""The Horovod training loop: one function that every rank runs.

    result = run_training(cfg)                 # under horovodrun, horovod.spark.run, or plain python

What makes it correct on N ranks:
- Every rank runs the same ``steps_per_epoch`` over an infinite, rank-sharded stream (see data.py).
- ``hvd.DistributedOptimizer`` averages gradients; variables are broadcast from rank 0 after the
  first step; training metrics are averaged over ranks.
- Validation is exact: every rank scores its disjoint share of the split and the loss and accuracy
  sums are allreduced, so all ranks see the same val_loss and early stopping stops them together.
- The learning rate warms up from the single-worker rate to rate x ranks, holds, then steps down.
- With ``train.adversary.enabled`` the model is trained inside an
  :class:`~cxrspark.train.adversary.AdversarialTrainer` (a source adversary behind gradient reversal;
  its one ``optimizer.minimize`` per step is where Horovod averages the gradients, once); the
  classifier alone is validated, evaluated and logged.
- Only rank 0 writes checkpoints and talks to MLflow. A checkpoint is the TensorFlow checkpoint of
  model and optimizer (written first) plus ``state.json`` (written last, atomically) naming it, the
  epoch counter, the early-stopping state and the MLflow run; ``resume=True`` continues from it.
  With the adversary the checkpoint holds the trainer (classifier, adversary, lambda).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from cxrspark.config import Config, to_dict
from cxrspark.metrics import confusion_matrix, per_class_table
from cxrspark.train import adversary as tadv
from cxrspark.train import data as tdata
from cxrspark.train.models import build_model

STATE_FILE = "state.json"


class ResumeError(RuntimeError):
    pass


# ---- pure pieces --------------------------------------------------------------------------------
def learning_rate_at(epoch: float, base: float, size: int, warmup_epochs: int, decay_epochs: list[int],
                     decay_factor: float) -> float:
    """Warm-up (base -> base*size, linear over ``warmup_epochs``), plateau, then step decay."""
    peak = base * size
    if epoch < warmup_epochs:
        return base + (peak - base) * epoch / warmup_epochs
    return peak * decay_factor ** sum(1 for e in decay_epochs if epoch >= e)


def class_weights(counts: dict[str, int], classes: list[str]) -> dict[int, float]:
    """n / (n_classes * n_c) for classes present in the training split (absent ones weigh 0)."""
    total = sum(counts.get(c, 0) for c in classes)
    present = [c for c in classes if counts.get(c, 0)]
    return {i: (total / (len(present) * counts[c]) if counts.get(c, 0) else 0.0) for i, c in enumerate(classes)}


def read_state(checkpoints: Path) -> dict[str, Any] | None:
    path = checkpoints / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _config_hash(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(to_dict(cfg.train), sort_keys=True, default=str).encode()).hexdigest()


# ---- callbacks ----------------------------------------------------------------------------------
class LearningRateSchedule(tf.keras.callbacks.Callback):
    def __init__(self, steps: int, **schedule: Any):
        super().__init__()
        self.steps, self.schedule, self.epoch = steps, schedule, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        lr = learning_rate_at(self.epoch + batch / self.steps, **self.schedule)
        self.model.optimizer.learning_rate.assign(lr)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.model.optimizer.learning_rate.numpy())


class StepCounter(tf.keras.callbacks.Callback):
    """Counts the optimizer steps this rank ran in each epoch and times them (validation excluded:
    this callback runs before the validation callback)."""
    def __init__(self):
        super().__init__()
        self.per_epoch: list[int] = []
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


class ShardedValidation(tf.keras.callbacks.Callback):
    """Exact validation loss and accuracy over the whole split, computed by all ranks together."""
    def __init__(self, info: tdata.DatasetInfo, split: str, batch_size: int, label_smoothing: float,
                 workers: int):
        super().__init__()
        self.info, self.split, self.batch_size = info, split, batch_size
        self.smoothing, self.workers = label_smoothing, workers

    def on_epoch_end(self, epoch, logs=None):
        loss, accuracy = evaluate_loss(self.model, self.info, self.split, self.batch_size, self.smoothing,
                                       self.workers)
        logs["val_loss"], logs["val_accuracy"] = loss, accuracy


class EarlyStop(tf.keras.callbacks.Callback):
    """Early stopping whose state survives a resume (Keras' own resets at every fit)."""
    def __init__(self, monitor: str, patience: int, min_delta: float, restore_best: bool,
                 state: dict[str, Any] | None = None, enabled: bool = True):
        super().__init__()
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.restore_best, self.enabled = restore_best, enabled
        self.sign = 1.0 if monitor.endswith("loss") else -1.0  # minimise loss, maximise accuracy
        state = state or {}
        self.best = state.get("best", np.inf)
        self.best_epoch = state.get("best_epoch")
        self.wait = state.get("wait", 0)
        self.best_weights: list[np.ndarray] | None = None
        self.improved = False
        self.stopped_epoch: int | None = None

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def on_epoch_end(self, epoch, logs=None):
        value = self.sign * float(logs[self.monitor])
        self.improved = value < self.best - self.min_delta
        if self.improved:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.enabled and self.wait >= self.patience:
                self.model.stop_training = True
                self.stopped_epoch = epoch

    def on_train_end(self, logs=None):
        if self.restore_best and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class Checkpointer(tf.keras.callbacks.Callback):
    """Rank 0: model + optimizer checkpoint every epoch, best weights, then state.json last."""
    def __init__(self, directory: Path, early: EarlyStop, extra: dict[str, Any], keep: int = 2):
        super().__init__()
        self.directory, self.early, self.extra, self.keep = directory, early, extra, keep
        self.manager: tf.train.CheckpointManager | None = None
        self.history: list[dict[str, float]] = list(extra.pop("history", []))
        self.best: str | None = extra.pop("best_weights", None)

    def on_train_begin(self, logs=None):
        ckpt = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)
        self.manager = tf.train.CheckpointManager(ckpt, str(self.directory), max_to_keep=self.keep,
                                                  checkpoint_name="ckpt")

    def on_epoch_end(self, epoch, logs=None):
        # Nothing that state.json names is ever overwritten: the TF checkpoint and the best weights of
        # this epoch get new names, state.json switches to them in one rename, older files go after.
        # A process killed at any point leaves state.json naming complete files.
        path = self.manager.save(checkpoint_number=epoch + 1)
        if self.early.improved:
            # legacy .h5 (layer weights only): Keras' .weights.h5 would also carry the optimizer state
            tmp = self.directory / "best-tmp.h5"
            self.model.save_weights(str(tmp))
            self.best = f"best-{epoch + 1}.h5"
            os.replace(tmp, self.directory / self.best)
        self.history.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})
        _write_json_atomic(self.directory / STATE_FILE, {
            **self.extra, "epoch": epoch + 1, "checkpoint": Path(path).name, "best_weights": self.best,
            "early_stopping": self.early.state(), "history": self.history})
        for old in self.directory.glob("best-*.h5"):
            if old.name != self.best:
                old.unlink(missing_ok=True)


class MlflowEpochLogger(tf.keras.callbacks.Callback):
    """Rank 0: the per-epoch curves (step = epoch)."""
    def on_epoch_end(self, epoch, logs=None):
        import mlflow
        mlflow.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch)


# ---- evaluation across ranks --------------------------------------------------------------------
def _predict(model, batch: dict[str, np.ndarray]) -> np.ndarray:
    return model(batch["image"], training=False).numpy()


def evaluate_loss(model, info: tdata.DatasetInfo, split: str, batch_size: int, smoothing: float,
                  workers: int) -> tuple[float, float]:
    import horovod.tensorflow as hvd_tf

    n_classes = len(info.classes)
    sums = np.zeros(3)  # loss, correct, n
    for batch in tdata.eval_batches(info, split, hvd_tf.rank(), hvd_tf.size(), batch_size, workers):
        probs = _predict(model, batch)
        y = tf.one_hot(batch["label_index"], n_classes)
        loss = tf.keras.losses.categorical_crossentropy(y, probs, label_smoothing=smoothing).numpy()
        sums += (loss.sum(), (probs.argmax(1) == batch["label_index"]).sum(), len(loss))
    total = hvd_tf.allreduce(tf.constant(sums, tf.float64), op=hvd_tf.Sum).numpy()
    return float(total[0] / max(total[2], 1)), float(total[1] / max(total[2], 1))


def predict_split(model, info: tdata.DatasetInfo, split: str, batch_size: int, workers: int) -> dict[str, np.ndarray]:
    """Predictions of all ranks for a whole split, gathered on every rank."""
    import horovod.tensorflow as hvd_tf

    parts: dict[str, list[np.ndarray]] = {"probs": [], "label_index": [], "record_id": [], "source": [],
                                          "patient_key": []}
    for batch in tdata.eval_batches(info, split, hvd_tf.rank(), hvd_tf.size(), batch_size, workers):
        parts["probs"].append(_predict(model, batch))
        for k in ("label_index", "record_id", "source", "patient_key"):
            parts[k].append(batch[k])
    mine = {k: (np.concatenate(v) if v else np.zeros((0, len(info.classes)) if k == "probs" else 0))
            for k, v in parts.items()}
    gathered = hvd_tf.allgather_object(mine)
    return {k: np.concatenate([g[k] for g in gathered]) for k in mine}


# ---- the loop -----------------------------------------------------------------------------------
def _set_threads(local_size: int) -> None:
    per_rank = max(1, (os.cpu_count() or 1) // max(1, local_size))
    with contextlib.suppress(RuntimeError):  # already initialised (e.g. a second call in one process)
        tf.config.threading.set_intra_op_parallelism_threads(per_rank)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, per_rank))


def _optimizer(tcfg, lr: float):
    if tcfg.optimizer == "sgd":
        return tf.keras.optimizers.SGD(lr, momentum=tcfg.momentum)
    return tf.keras.optimizers.Adam(lr)


def run_training(cfg: Config, *, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg.train.model`` on ``cfg.train.dataset``; returns what this rank saw and did."""
    import horovod.tensorflow as hvd_tf
    import horovod.tensorflow.keras as hvd

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    _set_threads(hvd.local_size())
    tcfg = cfg.train
    tf.keras.utils.set_random_seed(tcfg.seed)
    info = tdata.load_dataset_info(tcfg.dataset, tcfg.exclude_lung_flagged, tcfg.train_split,
                                   exclude_sources=tcfg.exclude_sources)
    out = Path(tcfg.output).resolve()
    checkpoints = out / "checkpoints"

    adversary = _adversary_sources(info, tcfg) if tcfg.adversary.enabled else None
    state = None
    if rank == 0:
        state = read_state(checkpoints) if resume else None
        if resume and state is None:
            print(f"--resume: no checkpoint in {checkpoints}; starting from epoch 0", flush=True)
        if state is not None:
            for key, now in (("model", tcfg.model), ("dataset_hash", info.dataset_hash),
                             ("adversary_sources", adversary and adversary[0])):
                if state.get(key) != now:
                    raise ResumeError(f"the checkpoint in {checkpoints} was made with {key} "
                                      f"{state.get(key)!r}, not {now!r}; use another train.output")
        if state is None:
            shutil.rmtree(checkpoints, ignore_errors=True)
        checkpoints.mkdir(parents=True, exist_ok=True)
    state = hvd_tf.broadcast_object(state, root_rank=0)

    model = build_model(tcfg.model, len(info.classes), info.image_size, input_size=tcfg.input_size,
                        weights=tcfg.weights,
                        fine_tune_layers=tcfg.fine_tune_layers)
    # what fit trains: the classifier, or the classifier plus the source adversary (sharing its layers)
    trainer = model if adversary is None else tadv.AdversarialTrainer(
        model, len(info.classes), len(adversary[0]), hidden=tcfg.adversary.hidden,
        condition=tcfg.adversary.condition)
    schedule = dict(base=tcfg.learning_rate, size=size, warmup_epochs=tcfg.schedule.warmup_epochs,
                    decay_epochs=tcfg.schedule.decay_epochs, decay_factor=tcfg.schedule.decay_factor)
    initial_epoch = int(state["epoch"]) if state else 0
    optimizer = hvd.DistributedOptimizer(_optimizer(tcfg, learning_rate_at(initial_epoch, **schedule)))
    trainer.compile(optimizer, loss=tf.keras.losses.CategoricalCrossentropy(label_smoothing=tcfg.label_smoothing),
                    metrics=["accuracy"])
    early = EarlyStop(tcfg.early_stopping.monitor, tcfg.early_stopping.patience, tcfg.early_stopping.min_delta,
                      tcfg.early_stopping.restore_best_weights, state["early_stopping"] if state else None,
                      enabled=tcfg.early_stopping.enabled)
    if state:
        # every rank that can read the checkpoint restores it; rank 0's variables are broadcast anyway
        prefix = checkpoints / state["checkpoint"]
        if Path(f"{prefix}.index").is_file():
            optimizer.build(trainer.trainable_variables)
            ckpt = tf.train.Checkpoint(model=trainer, optimizer=optimizer)
            ckpt.restore(str(prefix)).assert_existing_objects_matched()
            best = checkpoints / str(state.get("best_weights"))
            if early.restore_best and state.get("best_weights") and best.is_file():
                current = trainer.get_weights()
                trainer.load_weights(str(best))
                early.best_weights = trainer.get_weights()
                trainer.set_weights(current)
        elif rank == 0:
            raise ResumeError(f"{checkpoints / STATE_FILE} names {prefix.name}, which is missing")

    steps = tdata.steps_per_epoch(info, tcfg.train_split, tcfg.batch_size, size, tcfg.steps_per_epoch)
    counter = StepCounter()
    callbacks: list[tf.keras.callbacks.Callback] = [
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        hvd.callbacks.MetricAverageCallback(),
        LearningRateSchedule(steps, **schedule),
        counter,
        ShardedValidation(info, tcfg.val_split, tcfg.batch_size, tcfg.label_smoothing, tcfg.reader_workers),
        early,
    ]
    if adversary is not None:  # beside the learning-rate schedule: after the metric averaging, like "lr"
        callbacks.insert(3, tadv.ReversalSchedule(steps, tcfg.epochs, tcfg.adversary.weight, tcfg.adversary.schedule))
    run_id = state.get("mlflow_run_id") if state else None
    if rank == 0:
        from cxrspark import tracking

        uri = tracking.tracking_uri(tcfg.mlflow.tracking_uri, out)
        run = tracking.start_run(uri, tcfg.mlflow.experiment, run_id=run_id, run_name=tcfg.mlflow.run_name,
                                 parent_run_id=tcfg.mlflow.parent_run_id)
        run_id = run.info.run_id
        if state is None:
            _log_run_params(cfg, info, size, steps, model, adversary)
        else:
            import mlflow
            mlflow.set_tag(f"resumed_at_epoch_{initial_epoch}", "true")
        callbacks += [
            Checkpointer(checkpoints, early, {
                "model": tcfg.model, "dataset_hash": info.dataset_hash, "mlflow_run_id": run_id,
                "adversary_sources": adversary and adversary[0],
                "mlflow_tracking_uri": uri, "config_hash": _config_hash(cfg),
                "history": state.get("history", []) if state else [],
                "best_weights": state.get("best_weights") if state else None}),
            MlflowEpochLogger(),
        ]
        print(f"training {tcfg.model} on {info.root} ({info.size(tcfg.train_split)} train images, "
              f"{size} rank(s), {steps} steps/epoch, epochs {initial_epoch}..{tcfg.epochs - 1}); "
              f"MLflow run {run_id} at {uri}", flush=True)

    weights = (class_weights(info.counts[tcfg.train_split], info.classes)
               if tcfg.imbalance.class_weights else None)
    result: dict[str, Any] = {"rank": rank, "size": size, "steps_per_epoch": steps, "initial_epoch": initial_epoch,
                              "mlflow_run_id": run_id}
    try:
        with contextlib.ExitStack() as stack:
            train_ds = tdata.train_dataset(info, tcfg, rank, size, stack,
                                           source_index=adversary[1] if adversary is not None else None)
            history = trainer.fit(train_ds, epochs=tcfg.epochs, initial_epoch=initial_epoch,
                                  steps_per_epoch=steps, class_weight=weights, callbacks=callbacks,
                                  verbose=(1 if sys.stdout.isatty() else 2) if rank == 0 else 0)
        result.update(history={k: [float(x) for x in v] for k, v in history.history.items()},
                      epochs_run=len(history.epoch), last_epoch=(history.epoch[-1] if history.epoch else None),
                      steps_seen=counter.per_epoch, epoch_seconds=counter.seconds, stopped_early=early.stopped_epoch is not None,
                      iterations=int(optimizer.iterations.numpy()))
        # all ranks hold rank 0's weights (early stopping may have restored the best ones)
        hvd_tf.broadcast_variables(model.variables, root_rank=0)
        result["evaluation"] = _final_evaluation(model, info, tcfg, rank, run_id is not None and rank == 0)
        if rank == 0:
            import mlflow
            from cxrspark import tracking

            if tcfg.mlflow.log_model:
                export = tf.keras.models.clone_model(model)
                export.set_weights(model.get_weights())
                example = next(tdata.eval_batches(info, tcfg.val_split, 0, 1, 2, 1))["image"]
                tracking.log_keras_model(export, example)
            mlflow.end_run("FINISHED")
    except BaseException:
        if rank == 0:
            import mlflow
            if mlflow.active_run():
                mlflow.end_run("KILLED" if isinstance(sys.exc_info()[1], KeyboardInterrupt) else "FAILED")
        raise
    return result


def _adversary_sources(info: tdata.DatasetInfo, tcfg) -> tuple[list[str], dict[str, int]]:
    """The adversary's outputs and source -> output index, from the training split's counts."""
    totals: dict[str, int] = {}
    for (source, _), n in info.source_counts.get(tcfg.train_split, {}).items():
        totals[source] = totals.get(source, 0) + n
    return tadv.source_index(totals, tcfg.adversary.min_images)


def _log_run_params(cfg: Config, info: tdata.DatasetInfo, size: int, steps: int, model,
                    adversary: tuple[list[str], dict[str, int]] | None = None) -> None:
    import mlflow
    from cxrspark import tracking

    params = to_dict(cfg.train)
    params["augment"] = {"preset": cfg.train.augment.preset, **cfg.train.augment.resolved()}
    if adversary is not None:
        names, index = adversary  # output index:source, then the sources pooled into OTHER
        pooled = "+".join(s for s, i in sorted(index.items()) if names[i] == tadv.OTHER)
        params["adversary_sources"] = ",".join(f"{i}:{name}" for i, name in enumerate(names)) + \
            (f" {tadv.OTHER}={pooled}" if pooled else "")
    if cfg.train.balance.sources:
        streams = tdata.source_balanced_weights(info.source_counts.get(cfg.train.train_split, {}), info.classes,
                                                cfg.train.imbalance.oversample, cfg.train.balance.min_images)
        mlflow.log_dict({f"{c}/{'+'.join(s)}": w for (c, s), w in streams.items()}, "balance_streams.json")
    tracking.log_params({**params, "dataset_path": str(info.root), "dataset_hash": info.dataset_hash,
                         "image_size": info.image_size, "classes": ",".join(info.classes),
                         "horovod_size": size, "global_batch_size": cfg.train.batch_size * size,
                         "steps_per_epoch_run": steps, "model_parameters": model.count_params(),
                         **{f"n_{s}": info.size(s) for s in info.counts}})
    from cxrspark.ingest.output import protocol_of

    summary = json.loads((info.root / "summary.json").read_text())
    mlflow.set_tags({"dataset.protocol": protocol_of(summary),
                     "dataset.hash": info.dataset_hash, "dataset.path": str(info.root), "model": cfg.train.model,
                     "dataset.sources": ",".join(info.sources) if info.sources is not None else "all"})
    mlflow.log_artifact(str(info.root / "summary.json"), artifact_path="dataset")


def _final_evaluation(model, info: tdata.DatasetInfo, tcfg, rank: int, log: bool) -> dict[str, Any]:
    """Validation and test: per-class tables and confusion matrices (logged by rank 0)."""
    from cxrspark import tracking

    results = {}
    for split in (tcfg.val_split, tcfg.test_split):
        if info.size(split) == 0:
            continue
        pred = predict_split(model, info, split, tcfg.batch_size, tcfg.reader_workers)
        cm = confusion_matrix(pred["label_index"], pred["probs"].argmax(1), len(info.classes))
        table = per_class_table(cm, info.classes, pred["label_index"], pred["probs"])
        y = tf.one_hot(pred["label_index"], len(info.classes))
        loss = float(tf.keras.losses.categorical_crossentropy(y, pred["probs"]).numpy().mean())
        if log:
            tracking.log_classification(split, cm, table, info.classes, loss=loss)
        if rank == 0:
            print(f"\n{split}: {len(pred['label_index'])} images, loss {loss:.4f} (no label smoothing)")
            print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
        results[split] = {"confusion": cm.tolist(), "table": table.to_dict("records"), "loss": loss,
                          "n": int(len(pred["label_index"]))}
    return results
