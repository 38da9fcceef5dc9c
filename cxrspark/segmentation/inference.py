"""Batched lung segmentation of stored images with the verified U-Net (TensorFlow, no Spark).

    seg = LungSegmenter()                      # bundled weights, verified; or LungSegmenter("dir/")
    probs = seg.probabilities(images)          # (n, s, s) uint8 -> (n, s, s) float32 lung probability
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class LungSegmenter:
    def __init__(self, weights: str | Path | None = None, batch_size: int = 16):
        from cxrspark.segmentation.weights import load_unet

        self.model, self.manifest = load_unet(weights)
        self.size = int(self.manifest["architecture"]["size"])
        self.batch_size = batch_size
        self.sha256 = self.manifest["sha256"]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Square uint8 images (n, s, s) of any s -> lung probabilities at the same size. Images are
        resized to the U-Net's input (bilinear) and the output back to s."""
        import tensorflow as tf

        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"expected square greyscale images (n, s, s), got {images.shape}")
        n, s = images.shape[0], images.shape[1]
        out = np.empty((n, s, s), dtype=np.float32)
        for start in range(0, n, self.batch_size):
            x = tf.convert_to_tensor(images[start:start + self.batch_size, :, :, None], tf.float32)
            if s != self.size:
                x = tf.image.resize(x, (self.size, self.size), antialias=True)
            p = self.model(x, training=False)
            if s != self.size:
                p = tf.image.resize(p, (s, s), antialias=True)
            out[start:start + len(x)] = p.numpy()[..., 0]
        return out
