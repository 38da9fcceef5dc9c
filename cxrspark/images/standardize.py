"""Input standardisation of a stored image: removes the collection's grey-level style (exposure, window,
gain, offset) so that a classifier cannot tell sources apart by it. Pure numpy/scipy, no Spark.

    std = Standardizer("zscore", scale=32.0)           # or Standardizer.build("histmatch", 32.0, "ref.png")
    stored = std(image, mask)                          # uint8 in, uint8 out, same shape

The statistics come from the *region* of :func:`region`: the lung mask when one is given (aligned with
the image: cropped the same way for a lung crop), else the image's non-padding pixels (the ``pad``
resize mode leaves black borders, which carry no picture). Then:

- ``zscore``: ``clip(round(128 + scale * (x - mean) / sd), 0, 255)`` with the region's mean and sd;
- ``histmatch``: each grey level's mid-rank in the region's empirical CDF mapped onto the reference's
  quantiles (default reference: a normal distribution N(128, scale) clipped to 0..255; or the whole
  histogram of a reference image, decoded once by :meth:`Standardizer.build`).

The transform is one monotone lookup table applied to every pixel; padding stays black (0).

Degenerate images never raise. The region is the first of (the mask, the non-padding pixels, the whole
image) that covers at least ``MIN_REGION`` (1%) of the image and whose pixels are not all equal: an
empty or tiny mask, or a flat one, falls back to the non-padding pixels, and those to the whole image.
A constant image is returned unchanged.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STANDARDIZE_METHODS = ("none", "zscore", "histmatch")
#: a region (mask, non-padding pixels) with fewer than this fraction of the image's pixels is not used
MIN_REGION = 0.01
#: the reference distribution is kept as its quantiles at these many evenly spaced probabilities
REFERENCE_LEVELS = 1024
_PROBS = (np.arange(REFERENCE_LEVELS) + 0.5) / REFERENCE_LEVELS


def _check(image: np.ndarray) -> None:
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} {image.shape}")


def padding(image: np.ndarray) -> np.ndarray:
    """Boolean map of the padding: border rows and columns that are entirely 0 (what the ``pad`` resize
    mode and the lung crop add). An all-zero image is all padding."""
    _check(image)
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    pad = np.ones(image.shape, dtype=bool)
    if rows.size:
        pad[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = False
    return pad


def region(image: np.ndarray, mask: np.ndarray | None = None, min_fraction: float = MIN_REGION) -> np.ndarray:
    """The pixels the statistics come from (boolean, the image's shape): the first of ``mask``, the
    non-padding pixels and the whole image that covers at least ``min_fraction`` of the image and whose
    pixels are not all equal (no spread to standardise by)."""
    _check(image)
    need = max(1, int(np.ceil(min_fraction * image.size)))
    choices = []
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the image's {image.shape}")
        choices.append(mask.astype(bool))
    choices.append(~padding(image))
    for r in choices:
        if r.sum() >= need:
            values = image[r]
            if values.min() != values.max():
                return r
    return np.ones(image.shape, dtype=bool)


def normal_reference(scale: float) -> np.ndarray:
    """Quantiles (at REFERENCE_LEVELS probabilities) of N(128, scale) clipped to 0..255."""
    from scipy.special import ndtri

    return np.clip(128.0 + scale * ndtri(_PROBS), 0.0, 255.0)


def image_reference(pixels: np.ndarray) -> np.ndarray:
    """Quantiles (at REFERENCE_LEVELS probabilities) of every pixel of a reference image."""
    return np.quantile(np.asarray(pixels, dtype=np.float64).ravel(), _PROBS)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def zscore(image: np.ndarray, mask: np.ndarray | None = None, scale: float = 32.0) -> np.ndarray:
    """``clip(round(128 + scale * z))`` with z over the :func:`region`'s mean and sd; padding stays 0.
    A constant image is returned unchanged."""
    r = region(image, mask)
    values = image[r].astype(np.float64)
    sd = values.std()
    if sd == 0:  # only a constant image gets here (region() falls back from a flat region)
        return image
    levels = np.arange(256, dtype=np.float64)
    return _apply(image, 128.0 + scale * (levels - values.mean()) / sd)


def histmatch(image: np.ndarray, mask: np.ndarray | None = None, reference: np.ndarray | None = None,
              scale: float = 32.0) -> np.ndarray:
    """Each grey level's mid-rank in the :func:`region`'s empirical CDF mapped onto ``reference``
    (quantiles at REFERENCE_LEVELS probabilities; None: :func:`normal_reference` of ``scale``); padding
    stays 0. A constant image is returned unchanged."""
    r = region(image, mask)
    counts = np.bincount(image[r].ravel(), minlength=256).astype(np.float64)
    if np.count_nonzero(counts) < 2:
        return image
    cum = np.cumsum(counts)
    mid = (cum - counts / 2.0) / cum[-1]  # levels absent from the region sit at the CDF step they fall on
    ref = normal_reference(scale) if reference is None else np.asarray(reference, dtype=np.float64)
    return _apply(image, np.interp(mid, _PROBS, ref))


def _apply(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    out = np.clip(np.rint(lut), 0, 255).astype(np.uint8)[image]
    out[padding(image)] = 0
    return out


@dataclass(frozen=True)
class Standardizer:
    """One ingest's standardisation settings, ready to ship to Spark workers (small and picklable:
    a reference image is held as its REFERENCE_LEVELS quantiles, decoded once by :meth:`build`)."""

    method: str = "none"
    scale: float = 32.0
    #: histmatch: the reference quantiles (None: the normal reference of ``scale``)
    reference: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.method not in STANDARDIZE_METHODS:
            raise ValueError(f"unknown standardize method {self.method!r}; expected one of {STANDARDIZE_METHODS}")

    @classmethod
    def build(cls, method: str, scale: float, reference: str | Path | None = None) -> Standardizer:
        """With a ``reference`` path (histmatch), the file is decoded here, once (any format the ingest
        decodes); raises OSError or cxrspark.images.DecodeError when it cannot be read."""
        quantiles = None
        if method == "histmatch" and reference is not None:
            from cxrspark.images.decode import decode_image

            pixels = decode_image(Path(reference).read_bytes()).pixels
            quantiles = tuple(float(q) for q in image_reference(pixels))
        return cls(method, float(scale), quantiles)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        _check(image)
        if self.method == "zscore":
            return zscore(image, mask, self.scale)
        if self.method == "histmatch":
            ref = None if self.reference is None else np.asarray(self.reference)
            return histmatch(image, mask, ref, self.scale)
        return image
