"""Geometric and contrast transforms on 2-D uint8 greyscale images.

`resize` makes a square (size, size) image by padding, centre-cropping or stretching (bilinear,
antialiased when shrinking). `apply_contrast` selects global histogram equalisation or CLAHE.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps
from skimage.exposure import equalize_adapthist

RESIZE_MODES = ("pad", "crop", "stretch")
CONTRAST_METHODS = ("none", "equalize", "clahe")
#: Pillow first shrinks by an integer factor with box reduction while the image is over 3x the target
REDUCING_GAP = 3.0


def _check_grey(pixels: np.ndarray) -> None:
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {pixels.dtype} {pixels.shape}")


def _scaled(pixels: np.ndarray, height: int, width: int, resample: str = "bilinear") -> np.ndarray:
    """Resize to (height, width). Bilinear: antialiased, with a box pre-reduction when shrinking;
    box: each output pixel is the mean of the input area it covers (masks use it)."""
    h, w = pixels.shape
    if resample == "box":
        return np.array(Image.fromarray(pixels).resize((width, height), Image.Resampling.BOX), dtype=np.uint8)
    shrinking = height < h or width < w
    out = Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR,
                                         reducing_gap=REDUCING_GAP if shrinking else None)
    return np.array(out, dtype=np.uint8)


def resize(pixels: np.ndarray, size: int, mode: str = "pad", resample: str = "bilinear") -> np.ndarray:
    """Return a (size, size) uint8 image.

    'pad': longest side scaled to `size`, aspect kept, centred on black; 'crop': shortest side scaled to
    `size`, centre crop; 'stretch': both sides scaled to `size` independently. `resample`: bilinear
    (images) or box (area means; masks, see cxrspark.segmentation.masks.resize_mask).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    _check_grey(pixels)
    h, w = pixels.shape
    if mode == "stretch":
        return _scaled(pixels, size, size, resample)
    scale = size / (max(h, w) if mode == "pad" else min(h, w))
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if mode == "pad":
        nh, nw = min(nh, size), min(nw, size)
    else:
        nh, nw = max(nh, size), max(nw, size)
    scaled = _scaled(pixels, nh, nw, resample)
    if mode == "pad":
        out = np.zeros((size, size), dtype=np.uint8)
        top, left = (size - nh) // 2, (size - nw) // 2
        out[top:top + nh, left:left + nw] = scaled
        return out
    top, left = (nh - size) // 2, (nw - size) // 2
    return scaled[top:top + size, left:left + size].copy()


def equalize(pixels: np.ndarray) -> np.ndarray:
    """Global histogram equalisation (Pillow's ImageOps.equalize)."""
    _check_grey(pixels)
    return np.array(ImageOps.equalize(Image.fromarray(pixels)), dtype=np.uint8)


def clahe(pixels: np.ndarray, clip_limit: float = 0.01, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation over about `tiles` x `tiles` contextual regions."""
    _check_grey(pixels)
    h, w = pixels.shape
    kernel = (max(1, h // tiles), max(1, w // tiles))
    out = equalize_adapthist(pixels, kernel_size=kernel, clip_limit=clip_limit)
    return np.rint(out * 255.0).astype(np.uint8)


def apply_contrast(pixels: np.ndarray, method: str) -> np.ndarray:
    """Apply the contrast `method`: 'none' (unchanged), 'equalize' or 'clahe'."""
    if method == "none":
        return pixels
    if method == "equalize":
        return equalize(pixels)
    if method == "clahe":
        return clahe(pixels)
    raise ValueError(f"unknown contrast method {method!r}; expected one of {CONTRAST_METHODS}")
