"""The training recipe against source shortcuts: source-balanced batches (train.balance) and the
source-adversarial head (train.adversary): the gradient reversal itself, a toy where the source is
the only thing the adversary can remove, the batch composition drawn from the ingested sample, and
the loop under real horovodrun with both on (MLflow read back through MlflowClient)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from cxrspark.config import AdversaryConfig, load_config  # noqa: E402
from cxrspark.train import adversary as tadv  # noqa: E402
from cxrspark.train import data as tdata  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FAST = ["train.input_size=48", "train.batch_size=8", "train.augment.preset=none", "train.reader_workers=1"]


def _cfg(*overrides: str):
    return load_config([REPO / "conf/train.yaml"], list(overrides))


def _probe(out: Path, *args: str, np_: int = 1) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "python"), "tests/train_probe.py", str(out), *args]
    if np_ > 1:
        cmd = [str(BIN / "horovodrun"), "--gloo", "-np", str(np_), "-H", f"localhost:{np_}", *cmd]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


# ---- the gradient reversal ----------------------------------------------------------------------
def test_gradient_reversal_is_the_identity_forward_and_minus_lambda_backward():
    grl = tadv.GradientReversal()
    x = tf.constant([[1.0, -2.0, 3.0]])
    w = tf.constant([[2.0, -1.0, 5.0]])

    @tf.function
    def graph_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(grl(x) * w)
        return tape.gradient(loss, x)

    for lam in (0.3, 2.0, 0.0):
        grl.lam.assign(lam)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = grl(x)
            loss = tf.reduce_sum(y * w)
        np.testing.assert_array_equal(y.numpy(), x.numpy())
        np.testing.assert_allclose(tape.gradient(loss, x).numpy(), -lam * w.numpy())
        np.testing.assert_allclose(graph_gradient(x).numpy(), -lam * w.numpy())  # the variable's value, not a copy
    assert grl.lam.trainable is False and grl.non_trainable_weights == [grl.lam]


def test_lambda_schedules_and_source_index():
    assert tadv.lambda_at(0.0, 0.5, "ganin") == 0.0
    assert tadv.lambda_at(0.5, 0.5, "ganin") == pytest.approx(0.5 * (2 / (1 + math.exp(-5)) - 1))
    assert tadv.lambda_at(1.0, 0.5, "ganin") == pytest.approx(0.5, abs=1e-4)
    assert tadv.lambda_at(0.0, 0.5, "constant") == tadv.lambda_at(0.7, 0.5, "constant") == 0.5
    names, index = tadv.source_index({"b": 30, "a": 20, "c": 19, "d": 1, "e": 0}, min_images=20)
    assert names == ["a", "b", tadv.OTHER]
    assert index == {"a": 0, "b": 1, "c": 2, "d": 2}  # c, d: one "other" output; e has no training images
    assert tadv.source_index({"a": 50, "b": 20}, 20) == (["a", "b"], {"a": 0, "b": 1})


# ---- a toy where the source is all the adversary can take away -----------------------------------
def _toy(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """16x16 images: the class is which half is brighter, the source (independent of the class) a
    global brightness offset of 30 grey levels under pixel noise of 30."""
    source, label = rng.integers(0, 2, n), rng.integers(0, 2, n)
    x = 80.0 + 30.0 * source[:, None, None] + rng.normal(0.0, 30.0, (n, 16, 16))
    x[:, :, :8] += 40.0 * label[:, None, None]
    x[:, :, 8:] += 40.0 * (1 - label[:, None, None])
    return np.clip(x, 0, 255)[..., None].astype(np.float32), source, label


def _toy_classifier() -> tf.keras.Model:
    inputs = tf.keras.Input((16, 16, 1), name="image")
    x = tf.keras.layers.Flatten()(tf.keras.layers.Rescaling(1 / 255)(inputs))
    x = tf.keras.layers.Dense(32, activation="relu")(x)
    return tf.keras.Model(inputs, tf.keras.layers.Dense(2, activation="softmax", name="probabilities")(x))


def _train_toy(adversary: bool, steps: int = 600) -> tuple[float, float]:
    """(source probe accuracy on held-out features, class accuracy) after ``steps`` of SGD."""
    from sklearn.linear_model import LogisticRegression

    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, source, label = _toy(4096, rng)
    x_test, source_test, label_test = _toy(2000, rng)
    classifier = _toy_classifier()
    loss = tf.keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    optimizer = tf.keras.optimizers.SGD(0.01, momentum=0.9)
    y = tf.one_hot(label, 2)
    epochs, per_epoch = 6, steps // 6
    if adversary:
        acfg = AdversaryConfig()  # the defaults: weight 0.1, ganin, condition class, hidden 64
        trainer = tadv.AdversarialTrainer(classifier, 2, 2, hidden=acfg.hidden, condition=acfg.condition)
        ds = tf.data.Dataset.from_tensor_slices(({"image": x, "source": source}, y))
        callbacks = [tadv.ReversalSchedule(per_epoch, epochs, acfg.weight, acfg.schedule)]
    else:
        trainer, ds, callbacks = classifier, tf.data.Dataset.from_tensor_slices((x, y)), []
    trainer.compile(optimizer, loss=loss, metrics=["accuracy"])
    trainer.fit(ds.shuffle(4096, seed=0).repeat().batch(64), epochs=epochs, steps_per_epoch=per_epoch,
                callbacks=callbacks, verbose=0)
    features = tadv.penultimate_features(classifier).predict(x_test, verbose=0)[0]
    half = len(x_test) // 2
    probe = LogisticRegression(max_iter=3000).fit(features[:half], source_test[:half])
    accuracy = float((classifier.predict(x_test, verbose=0).argmax(1) == label_test).mean())
    return float(probe.score(features[half:], source_test[half:])), accuracy


def test_the_adversary_removes_the_source_from_the_features_but_not_the_class():
    """A probe that tells the source from the frozen features nearly always without the adversary is
    close to chance (0.5) with it, while the class is still learnt."""
    probe_off, accuracy_off = _train_toy(adversary=False)
    probe_on, accuracy_on = _train_toy(adversary=True)
    assert probe_off > 0.9 and accuracy_off > 0.95, (probe_off, accuracy_off)
    assert probe_on < 0.7 and probe_off - probe_on > 0.25, (probe_off, probe_on)
    assert accuracy_on > 0.95, accuracy_on


def test_the_trainer_keeps_the_classifier_and_its_loss():
    """Called on images the trainer is the classifier (shared variables); its class loss is the compiled
    one with label smoothing and class weights; it logs adv_loss and adv_accuracy per epoch."""
    tf.keras.utils.set_random_seed(1)
    classifier = _toy_classifier()
    trainer = tadv.AdversarialTrainer(classifier, 2, 3, hidden=8, condition="class")
    assert {id(v) for v in classifier.trainable_variables} <= {id(v) for v in trainer.trainable_variables}
    assert len(trainer.weights) == len(classifier.weights) + 4 + 1  # the head's two layers and lambda
    x, source, label = _toy(16, np.random.default_rng(1))
    np.testing.assert_allclose(trainer(x).numpy(), classifier(x).numpy())
    y = tf.one_hot(label, 2)
    weights = {0: 0.5, 1: 2.0}
    expected = float(tf.keras.losses.CategoricalCrossentropy(label_smoothing=0.2)(
        y, classifier(x), sample_weight=np.array([weights[k] for k in label])))
    trainer.compile(tf.keras.optimizers.SGD(0.0), loss=tf.keras.losses.CategoricalCrossentropy(label_smoothing=0.2),
                    metrics=["accuracy"])
    ds = tf.data.Dataset.from_tensor_slices(({"image": x, "source": source % 3}, y)).batch(16).repeat()
    history = trainer.fit(ds, epochs=2, steps_per_epoch=1, class_weight=weights, verbose=0,
                          callbacks=[tadv.ReversalSchedule(1, 2, 0.5, "constant")]).history
    assert history["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert set(history) == {"loss", "accuracy", "adv_loss", "adv_accuracy", "adv_lambda"}
    assert history["adv_lambda"] == [0.5, 0.5] and 0.0 <= history["adv_accuracy"][0] <= 1.0


# ---- source-balanced sampling ---------------------------------------------------------------------
def test_source_balanced_weights_follow_the_rule():
    counts = {("a", "X"): 60, ("b", "X"): 30, ("c", "X"): 4, ("d", "X"): 3,   # X: 97 images
              ("a", "Y"): 2, ("b", "Y"): 1,                                  # Y: 3, all small: one pool
              ("e", "Z"): 100, ("f", "Z"): 0}                               # Z: 100, f has none
    w = tdata.source_balanced_weights(counts, ["X", "Y", "Z"], {}, min_images=5)
    assert list(w) == [("X", ("a",)), ("X", ("b",)), ("X", ("c", "d")), ("Y", ("a", "b")), ("Z", ("e",))]
    assert sum(w.values()) == pytest.approx(1.0)
    for (c, _), v in w.items():  # equal within a class, the class at its natural share
        n_streams = sum(1 for k in w if k[0] == c)
        natural = sum(n for (_, label), n in counts.items() if label == c) / 200
        assert v == pytest.approx(natural / n_streams)
    over = tdata.source_balanced_weights(counts, ["X", "Y", "Z"], {"Y": 0.3}, min_images=5)
    assert over[("Y", ("a", "b"))] == pytest.approx(0.3)
    assert over[("X", ("a",))] == pytest.approx(0.7 * 97 / 197 / 3)
    assert over[("Z", ("e",))] == pytest.approx(0.7 * 100 / 197)
    one = tdata.source_balanced_weights(counts, ["X", "Y", "Z"], {}, min_images=1)
    assert one[("Y", ("a",))] == one[("Y", ("b",))] == pytest.approx(3 / 200 / 2)
    everything = tdata.source_balanced_weights({("a", "X"): 5, ("a", "Y"): 5}, ["X", "Y", "Z"],
                                               {"X": 0.2, "Y": 0.2}, min_images=1)
    assert everything == {("X", ("a",)): pytest.approx(0.5), ("Y", ("a",)): pytest.approx(0.5)}
    with pytest.raises(tdata.DatasetError, match="cannot oversample 'Z'"):
        tdata.source_balanced_weights({("a", "X"): 5}, ["X", "Z"], {"Z": 0.2}, 1)


def test_dataset_info_counts_images_per_source(sample_dataset):
    info = tdata.load_dataset_info(sample_dataset)
    for split, by_class in info.counts.items():
        for c, n in by_class.items():
            assert sum(v for (_, label), v in info.source_counts[split].items() if label == c) == n
    rows = json.loads((sample_dataset / "summary.json").read_text())["curated_table"]
    assert info.source_counts["train"][("kermany", "Pneumonia")] == \
        sum(r["n"] for r in rows if (r["split"], r["source"], r["label"]) == ("train", "kermany", "Pneumonia"))
    without = tdata.load_dataset_info(sample_dataset, exclude_sources=["kermany"])
    assert all(src != "kermany" for split in without.source_counts for src, _ in without.source_counts[split])


def test_source_balanced_batches_have_the_computed_composition(sample_dataset):
    """Every element of a balanced batch is drawn from stream k with its weight: over n elements the
    share of a (class, sources) stream is within 4 binomial standard deviations of the weight."""
    info = tdata.load_dataset_info(sample_dataset)
    tcfg = _cfg("train.batch_size=16", "train.augment.preset=none", "train.reader_workers=1",
                "train.balance.sources=true", "train.balance.min_images=3",
                "train.imbalance.oversample={Normal: 0.4}").train
    weights = tdata.source_balanced_weights(info.source_counts["train"], info.classes, {"Normal": 0.4}, 3)
    assert weights[("Normal", ("actualmed", "darkcovidnet", "figure1", "kermany", "radiography", "rsna"))] == \
        pytest.approx(0.4)  # every Normal source of the sample has fewer than 3 training images: one pool
    assert ("COVID-19", ("cohen",)) in weights and ("Pneumonia", ("kermany",)) in weights
    names = sorted({src for src, _ in info.source_counts["train"]})
    with contextlib.ExitStack() as stack:
        batches = list(tdata.train_dataset(info, tcfg, 0, 1, stack, source_index={s: i for i, s in enumerate(names)})
                       .take(80).as_numpy_iterator())
    x, y = batches[0]
    assert set(x) == {"image", "source"} and x["image"].shape == (16, 224, 224, 1) and y.shape == (16, 3)
    seen = Counter((info.classes[int(label.argmax())], names[int(s)])
                   for x, y in batches for s, label in zip(x["source"], y))
    n = sum(seen.values())
    for (c, sources), w in weights.items():
        share = sum(seen[(c, s)] for s in sources) / n
        assert abs(share - w) <= 4 * math.sqrt(w * (1 - w) / n), (c, sources, share, w)
    assert sum(seen.values()) == sum(seen[(c, s)] for c, sources in weights for s in sources)  # nothing else
    # augmentation keeps the image and source together
    aug = _cfg("train.batch_size=4", "train.augment.preset=strong", "train.reader_workers=1",
               "train.balance.sources=true").train
    with contextlib.ExitStack() as stack:
        ds = tdata.train_dataset(info, aug, 0, 1, stack, source_index={s: 7 for s in names})
        (x, y), = ds.take(1).as_numpy_iterator()
    assert x["image"].shape == (4, 224, 224, 1) and x["image"].max() <= 255 and list(x["source"]) == [7] * 4


# ---- the loop -------------------------------------------------------------------------------------
HOROVOD_STEP = '''
import json, os, sys
sys.path.insert(0, {repo!r})
import numpy as np
import tensorflow as tf
import horovod.tensorflow as hvd_tf
import horovod.tensorflow.keras as hvd
from cxrspark.train import adversary as tadv

hvd.init()
tf.keras.utils.set_random_seed(0)  # the same initial weights on every rank
inputs = tf.keras.Input((16, 16, 1))
x = tf.keras.layers.Dense(8, activation="relu")(tf.keras.layers.Flatten()(inputs))
classifier = tf.keras.Model(inputs, tf.keras.layers.Dense(2, activation="softmax", name="probabilities")(x))
trainer = tadv.AdversarialTrainer(classifier, 2, 2, hidden=4, condition="class")
trainer.reversal.lam.assign(0.5)
rng = np.random.default_rng(hvd.rank())  # every rank its own batch
image = rng.uniform(0, 1, (8, 16, 16, 1)).astype(np.float32)
y = tf.one_hot(rng.integers(0, 2, 8), 2)
source = rng.integers(0, 2, 8)
loss = tf.keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
with tf.GradientTape() as tape:  # this rank's own gradient of the trainer's total loss
    features, probs = trainer.encoder(image, training=True)
    logits = trainer.source_logits(features, y, training=True)
    total = loss(y, probs) + tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(source, logits, True))
local = [g.numpy() for g in tape.gradient(total, trainer.trainable_variables)]
before = [v.numpy() for v in trainer.trainable_variables]
trainer.compile(hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.1)), loss=loss)
trainer.fit(tf.data.Dataset.from_tensors(({{"image": image, "source": source}}, y)), epochs=1, steps_per_epoch=1,
            verbose=0)
mean = [np.mean(g, axis=0) for g in zip(*hvd_tf.allgather_object(local))]
after = [v.numpy() for v in trainer.trainable_variables]
with open(os.path.join({out!r}, f"rank{{hvd.rank()}}.json"), "w") as f:
    json.dump({{"averaged": max(float(np.abs(a - (b - 0.1 * m)).max()) for a, b, m in zip(after, before, mean)),
               "own": max(float(np.abs(a - (b - 0.1 * g)).max()) for a, b, g in zip(after, before, local))}}, f)
'''


@pytest.mark.slow
def test_horovod_averages_the_trainers_gradients_over_ranks(tmp_path):
    """One SGD step of the trainer on two ranks with different batches moves every variable (classifier
    and adversary) by the learning rate times the mean of the two ranks' own gradients."""
    script = tmp_path / "step.py"
    script.write_text(HOROVOD_STEP.format(repo=str(REPO), out=str(tmp_path)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(BIN / "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2", str(BIN / "python"),
                           str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["averaged"] < 1e-6 and result["own"] > 1e-4, result


@pytest.mark.slow
def test_two_ranks_train_with_the_adversary_and_balance_then_resume(sample_dataset, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    train_out = tmp_path / "train"
    common = [f"train.dataset={sample_dataset}", f"train.output={train_out}", *FAST, "train.adversary.enabled=true",
              "train.adversary.min_images=6", "train.balance.sources=true", "train.balance.min_images=3"]
    _probe(tmp_path / "a", *common, "train.epochs=1", np_=2)
    r0, r1 = (json.loads((tmp_path / "a" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["iterations"] == r1["iterations"] == r0["steps_per_epoch"] == 3
    for key in ("adv_accuracy", "adv_loss", "adv_lambda", "val_loss"):  # averaged over ranks: identical
        assert r0["history"][key] == r1["history"][key], key
    client = MlflowClient(f"sqlite:///{train_out.parent / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(r0["mlflow_run_id"])
    # sources with >= 6 training images: cohen (9), kermany (7); the rest is "other"
    assert run.data.params["adversary_sources"].startswith(f"0:cohen,1:kermany,2:{tadv.OTHER} {tadv.OTHER}=")
    assert run.data.params["adversary.enabled"] == "True" and run.data.params["balance.sources"] == "True"
    assert "balance_streams.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    mlflow.set_tracking_uri(client.tracking_uri)
    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    model = mlflow.tensorflow.load_model(f"models:/{logged.model_id}")
    assert len(model.inputs) == 1 and len(model.outputs) == 1 and model.output_shape == (None, 3)
    assert not {"adversary", "gradient_reversal"} & {layer.name for layer in model.layers}

    # --resume continues the trainer (adversary and lambda included) and the MLflow run
    _probe(tmp_path / "b", *common, "train.epochs=2", "train.mlflow.log_model=false", "--resume")
    second = json.loads((tmp_path / "b/rank0.json").read_text())
    assert second["initial_epoch"] == 1 and second["mlflow_run_id"] == r0["mlflow_run_id"]
    assert second["iterations"] == 3 + second["steps_per_epoch"]
    for key in ("adv_accuracy", "adv_loss", "adv_lambda", "loss"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
    # ganin, at the last step of each epoch: 3 steps of 1 epoch, then 5 steps of epoch 1 of 2
    lam = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "adv_lambda"))
    assert lam == [(0, pytest.approx(tadv.lambda_at(2 / 3, 0.1, "ganin"), rel=1e-5)),
                   (1, pytest.approx(tadv.lambda_at((1 + 4 / 5) / 2, 0.1, "ganin"), rel=1e-5))]
