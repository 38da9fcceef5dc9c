"""The lung U-Net (Keras) and the loss/metrics it trains with.

    model = build_unet(size=256, base_filters=16, depth=4)

Input: a (size, size, 1) greyscale image with values 0..255 (the stored ingest image, resized);
output: per-pixel lung probability (size, size, 1). Encoder: ``depth`` levels of two 3x3 conv +
batch norm + ReLU and a 2x2 max pool, doubling the filters per level; a bottleneck; a decoder of 2x2
transposed convs, skip concatenation and two convs per level (Ronneberger et al. 2015, with batch norm
and same padding).
"""
from __future__ import annotations

import tensorflow as tf

#: the architecture's arguments; a weights file is only valid for the same values
DEFAULT_ARCHITECTURE = {"size": 256, "base_filters": 16, "depth": 4}


def _block(x, filters: int, name: str):
    for i in (1, 2):
        x = tf.keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = tf.keras.layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = tf.keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build_unet(size: int = 256, base_filters: int = 16, depth: int = 4) -> tf.keras.Model:
    if size % (2 ** depth):
        raise ValueError(f"U-Net input size {size} must be divisible by 2**depth = {2 ** depth}")
    inputs = tf.keras.Input((size, size, 1), name="image")
    x = tf.keras.layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    skips = []
    for level in range(depth):
        x = _block(x, base_filters * 2 ** level, f"down{level}")
        skips.append(x)
        x = tf.keras.layers.MaxPool2D(2, name=f"pool{level}")(x)
    x = _block(x, base_filters * 2 ** depth, "bottleneck")
    for level in reversed(range(depth)):
        x = tf.keras.layers.Conv2DTranspose(base_filters * 2 ** level, 2, strides=2, name=f"up{level}")(x)
        x = tf.keras.layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _block(x, base_filters * 2 ** level, f"dec{level}")
    outputs = tf.keras.layers.Conv2D(1, 1, activation="sigmoid", name="lung_probability")(x)
    return tf.keras.Model(inputs, outputs, name=f"lung_unet_{size}_{base_filters}_{depth}")


def soft_dice_loss(y_true, y_pred, smooth: float = 1.0):
    """1 - soft Dice per image, averaged over the batch."""
    y_true = tf.cast(y_true, y_pred.dtype)
    inter = tf.reduce_sum(y_true * y_pred, axis=[1, 2, 3])
    total = tf.reduce_sum(y_true, axis=[1, 2, 3]) + tf.reduce_sum(y_pred, axis=[1, 2, 3])
    return 1.0 - tf.reduce_mean((2.0 * inter + smooth) / (total + smooth))


def bce_dice_loss(y_true, y_pred):
    bce = tf.reduce_mean(tf.keras.losses.binary_crossentropy(tf.cast(y_true, y_pred.dtype), y_pred))
    return bce + soft_dice_loss(y_true, y_pred)


def dice_metric(y_true, y_pred):
    """Hard Dice (threshold 0.5) per image, averaged over the batch."""
    p = tf.cast(y_pred >= 0.5, tf.float32)
    t = tf.cast(y_true, tf.float32)
    inter = tf.reduce_sum(p * t, axis=[1, 2, 3])
    total = tf.reduce_sum(p, axis=[1, 2, 3]) + tf.reduce_sum(t, axis=[1, 2, 3])
    return tf.reduce_mean(tf.where(total > 0, 2.0 * inter / tf.maximum(total, 1.0), 1.0))
