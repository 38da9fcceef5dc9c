"""Grad-CAM (Selvaraju et al., 2017) for any model of the registry.

    layer = last_conv_layer(model)                 # found automatically
    cams = grad_cam(model, images, class_index)    # (n, s, s) in [0, 1], at the input's size

The layer is the last convolution of the network in layer order, followed through the batch norm and
activation layers that directly come after it (so the maps are the rectified features); for a
transfer model it is the backbone as a whole (its output is the last convolutional block). The map
is ReLU(sum_k alpha_k A_k) with alpha_k the spatial mean of d score / d A_k, where the score is the
class logit (the input of the final softmax; the probability for a model without one), resized to
the input image and scaled to [0, 1].
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

_CONV = (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D, tf.keras.layers.SeparableConv2D)
_FOLLOW = (tf.keras.layers.BatchNormalization, tf.keras.layers.Activation, tf.keras.layers.ReLU,
           tf.keras.layers.LeakyReLU)


def last_conv_layer(model: tf.keras.Model) -> str:
    layers = model.layers
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        nested = isinstance(layer, tf.keras.Model) and len(layer.output_shape) == 4
        if isinstance(layer, _CONV) or nested:
            j = i
            while j + 1 < len(layers) and isinstance(layers[j + 1], _FOLLOW):
                j += 1
            return layers[j].name
    raise ValueError(f"model {model.name} has no convolutional layer for Grad-CAM")


def grad_cam(model: tf.keras.Model, images: np.ndarray, class_index: np.ndarray | int,
             layer: str | None = None) -> np.ndarray:
    """Class activation maps of `images` (n, s, s, 1) for `class_index` (one per image or one for all)."""
    images = tf.convert_to_tensor(images, tf.float32)
    n, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
    target = model.get_layer(layer or last_conv_layer(model))
    # a nested backbone's own output lives in its inner graph: take the node where THIS model calls it
    maps_out = target.get_output_at(-1) if isinstance(target, tf.keras.Model) else target.output
    last = model.layers[-1]
    # the paper's score is the class logit: a saturated softmax (p = 1.0) has no gradient
    logits = isinstance(last, tf.keras.layers.Dense) and last.activation is tf.keras.activations.softmax
    probe = tf.keras.Model(model.inputs, [maps_out, last.input if logits else model.output])
    idx = np.broadcast_to(np.asarray(class_index, dtype=np.int32), (n,))
    with tf.GradientTape() as tape:
        maps, head = probe(images, training=False)
        scores = tf.matmul(head, last.kernel) + last.bias if logits else head
        score = tf.gather(scores, idx, axis=1, batch_dims=1)
    grads = tape.gradient(score, maps)
    alpha = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(alpha * maps, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, (height, width), method="bilinear")[..., 0].numpy()
    peak = cam.reshape(n, -1).max(axis=1)
    return np.divide(cam, peak[:, None, None], out=np.zeros_like(cam), where=peak[:, None, None] > 0)


def mass_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """The fraction of a map's total mass that lies inside a binary mask (e.g. the lungs)."""
    total = float(cam.sum())
    return float((cam * (mask > 0)).sum() / total) if total > 0 else float("nan")


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An RGB uint8 picture: the grey image with the map in a jet colour scale on top."""
    import matplotlib

    grey = np.repeat(np.asarray(image, dtype=np.float32).reshape(cam.shape)[..., None] / 255.0, 3, axis=-1)
    heat = matplotlib.colormaps["jet"](cam)[..., :3]
    return (np.clip((1 - alpha) * grey + alpha * heat, 0, 1) * 255 + 0.5).astype(np.uint8)
