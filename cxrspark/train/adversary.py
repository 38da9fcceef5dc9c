"""Source-adversarial training (Ganin & Lempitsky 2015, "domain-adversarial" training).

    names, index = source_index(source_totals, min_images=20)      # the adversary's outputs
    trainer = AdversarialTrainer(model, n_classes=3, n_sources=len(names), hidden=64, condition="class")
    trainer.compile(optimizer, loss=..., metrics=["accuracy"])
    trainer.fit(ds, callbacks=[ReversalSchedule(steps, epochs, weight=0.1, schedule="ganin")], ...)

A small head predicts each training image's source from the classifier's penultimate features (the
input of its layer named ``probabilities``) through a gradient-reversal layer: the head learns to
tell the sources apart, and the reversed gradient (times lambda) pushes the features the other way,
so they lose what tells the collections apart. With ``condition="class"`` the head has one source
classifier per class and the loss uses the image's true class: the features lose source style
within a class, not the disease (which is confounded with the source in public COVID-19 sets).

:class:`AdversarialTrainer` wraps the classifier for ``fit`` only. Its inputs are
``{"image", "source"}`` batches (``data.train_dataset(..., source_index=index)``); called on images
alone it is the classifier, so validation works unchanged. The classifier itself stays a plain
single-input, single-output model (its layers are shared, not copied): evaluation, Grad-CAM and the
exported model never see the adversary.

Under Horovod the trainer's ``train_step`` hands one tape and one total loss (class loss + adversary
loss) to ``optimizer.minimize``, as Keras' own ``train_step`` does. ``hvd.DistributedOptimizer``
overrides ``compute_gradients``, which ``minimize`` calls, and averages every gradient (classifier
and adversary alike) across ranks there; Keras' ``apply_gradients`` then only sums over
tf.distribute replicas, of which there is one. So gradients are averaged exactly once per step.

The min-max game is sensitive to the optimizer. On the synthetic set of tests/test_train_recipe.py
(the source a brightness offset, independent of the class) SGD with momentum and weights 0.1-0.3
took the source out of the features steadily (a fresh linear probe near chance); Adam, which scales
every parameter's step to about the learning rate whatever lambda makes of its gradient, left the
features circling, and on some seeds they told the sources apart better than without the adversary.
Judge an adversarial run by the evaluation's source probe (cxrspark/evaluate/probe.py), not by
``adv_accuracy`` alone: an adversary at chance does not mean the features hold no source.
"""
from __future__ import annotations

import math

import tensorflow as tf

#: the adversary's name for the sources with too few training images, pooled into one output
OTHER = "(other)"


def source_index(totals: dict[str, int], min_images: int) -> tuple[list[str], dict[str, int]]:
    """The adversary's outputs and each source's index: sources with at least ``min_images``
    training images in name order, then one :data:`OTHER` output for the rest (when there are any).
    ``totals`` is source -> training images; sources with none are left out."""
    kept = sorted(s for s, n in totals.items() if n >= min_images)
    small = sorted(s for s, n in totals.items() if 0 < n < min_images)
    names = kept + ([OTHER] if small else [])
    index = {s: i for i, s in enumerate(kept)}
    index.update({s: len(kept) for s in small})
    return names, index


def lambda_at(progress: float, weight: float, schedule: str) -> float:
    """The weight of the reversed gradient at ``progress`` (fraction of the epochs done, 0..1):
    ganin: weight * (2 / (1 + exp(-10 p)) - 1), rising from 0 to almost ``weight``; constant: weight."""
    if schedule == "constant":
        return float(weight)
    if schedule == "ganin":
        return float(weight * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0))
    raise ValueError(f"unknown adversary schedule {schedule!r}")


@tf.custom_gradient
def _reverse(x: tf.Tensor, lam: tf.Tensor):
    def grad(dy):
        return -tf.cast(lam, dy.dtype) * dy, None
    return tf.identity(x), grad


class GradientReversal(tf.keras.layers.Layer):
    """Identity forward; the gradient times -lambda backward. Lambda is a non-trainable variable
    (set by :class:`ReversalSchedule`), so it is checkpointed and broadcast with the model."""
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.lam = self.add_weight(name="lambda", shape=(), initializer="zeros", trainable=False)

    def call(self, x):
        return _reverse(x, tf.convert_to_tensor(self.lam))


def penultimate_features(classifier: tf.keras.Model) -> tf.keras.Model:
    """The classifier's layers as a model with two outputs: the input of its ``probabilities`` layer
    and its probabilities (one forward pass gives both; the variables are the classifier's)."""
    try:
        features = classifier.get_layer("probabilities").input
    except ValueError as exc:
        raise ValueError(f"{classifier.name} has no layer named 'probabilities' to take features from") from exc
    return tf.keras.Model(classifier.inputs, [features, classifier.output], name=f"{classifier.name}_features")


def adversary_head(n_features: int, n_outputs: int, hidden: int) -> tf.keras.Model:
    """Features -> (Dense(hidden, relu) when hidden > 0) -> logits over ``n_outputs``."""
    inputs = tf.keras.Input((n_features,), name="features")
    x = tf.keras.layers.Dense(hidden, activation="relu", name="adversary_hidden")(inputs) if hidden else inputs
    return tf.keras.Model(inputs, tf.keras.layers.Dense(n_outputs, name="source_logits")(x), name="adversary")


class AdversarialTrainer(tf.keras.Model):
    """The classifier plus a source adversary behind a gradient-reversal layer, for ``fit``.

    ``train_step`` takes ``({"image", "source"}, one-hot label[, sample weight])``: the class loss is
    the compiled loss (label smoothing and class weights as without the adversary), the adversary's is
    the cross-entropy of the source (within the true class with ``condition="class"``); both are
    minimised together. Logs ``adv_loss`` and ``adv_accuracy`` beside the compiled metrics."""
    def __init__(self, classifier: tf.keras.Model, n_classes: int, n_sources: int, *, hidden: int = 64,
                 condition: str = "class", **kwargs):
        super().__init__(name=kwargs.pop("name", f"{classifier.name}_adversarial"), **kwargs)
        if condition not in ("class", "none"):
            raise ValueError(f"unknown adversary condition {condition!r}")
        self.n_classes, self.n_sources, self.condition = n_classes, n_sources, condition
        self.encoder = penultimate_features(classifier)
        n_features = int(self.encoder.outputs[0].shape[-1])
        self.reversal = GradientReversal(name="gradient_reversal")
        self.adversary = adversary_head(n_features, n_sources * (n_classes if condition == "class" else 1), hidden)
        # metric state is not model state: kept out of the weights, checkpoints and broadcasts
        object.__setattr__(self, "_adversary_metrics", (tf.keras.metrics.Mean(name="adv_loss"),
                                                        tf.keras.metrics.Mean(name="adv_accuracy")))
        self.built = True  # every variable exists already (the classifier's and the head's)

    @property
    def metrics(self):
        return super().metrics + list(self._adversary_metrics)

    def call(self, inputs, training=None):
        """The classifier's probabilities (``inputs``: images, or a dict with "image")."""
        image = inputs["image"] if isinstance(inputs, dict) else inputs
        return self.encoder(image, training=training)[1]

    def source_logits(self, features: tf.Tensor, labels: tf.Tensor, training=None) -> tf.Tensor:
        """The adversary's logits over sources (n, n_sources), through the gradient reversal; with
        ``condition="class"`` those of each image's class (``labels``: one-hot)."""
        logits = self.adversary(self.reversal(features), training=training)
        if self.condition == "class":
            logits = tf.reshape(logits, (-1, self.n_classes, self.n_sources))
            logits = tf.gather(logits, tf.argmax(labels, axis=-1, output_type=tf.int32), axis=1, batch_dims=1)
        return logits

    def train_step(self, data):
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        source = tf.cast(x["source"], tf.int32)
        with tf.GradientTape() as tape:
            features, probs = self.encoder(x["image"], training=True)
            class_loss = self.compute_loss(x, y, probs, sample_weight)
            logits = self.source_logits(features, y, training=True)
            adv_loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(source, logits, from_logits=True))
            loss = class_loss + adv_loss
        # through compute_gradients: the one place hvd.DistributedOptimizer averages over ranks
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        adv_loss_metric, adv_accuracy_metric = self._adversary_metrics
        adv_loss_metric.update_state(adv_loss)
        adv_accuracy_metric.update_state(
            tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), source), tf.float32))
        return self.compute_metrics(x, y, probs, sample_weight)


class ReversalSchedule(tf.keras.callbacks.Callback):
    """Sets the gradient-reversal weight before every batch (:func:`lambda_at` of the fraction of the
    epochs done) and logs its last value as ``adv_lambda`` at the end of each epoch."""
    def __init__(self, steps: int, epochs: int, weight: float, schedule: str):
        super().__init__()
        self.steps, self.epochs, self.weight, self.schedule, self.epoch = steps, epochs, weight, schedule, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        progress = (self.epoch + batch / self.steps) / self.epochs
        self.model.reversal.lam.assign(lambda_at(progress, self.weight, self.schedule))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["adv_lambda"] = float(self.model.reversal.lam.numpy())
