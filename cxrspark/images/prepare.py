"""One image file's bytes to a model-ready square greyscale image plus its metadata and content hashes.

Hashes and the near-duplicate keypoints are computed on the decoded greyscale pixels before contrast and
resizing, so copies of an image at different resolutions or contrast settings still match.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrspark.images.decode import decode_image
from cxrspark.images.hashing import phash, pixel_sha256
from cxrspark.images.keypoints import KeypointParams, Keypoints, describe
from cxrspark.images.transforms import apply_contrast, resize


@dataclass
class Prepared:
    """A (size, size) uint8 image with the original file's size, format and mode, and its hashes."""

    image: np.ndarray
    orig_height: int
    orig_width: int
    orig_format: str
    orig_mode: str
    pixel_sha256: str
    phash: int
    keypoints: Keypoints | None  # near-duplicate descriptors (None when not asked for)


def prepare(data: bytes, *, size: int, resize_mode: str = "pad", contrast: str = "none",
            max_pixels: int = 50_000_000, min_side: int = 1, jpeg_draft: bool = True,
            keypoints: KeypointParams | None = None, draft_min: int = 0) -> Prepared:
    """Decode, hash, apply contrast and resize one image; raises DecodeError as `decode_image` does.

    With `jpeg_draft`, JPEGs are decoded at a DCT scale of at least 2*size per side, and at least the
    keypoints' working size and ``draft_min`` (fast, and still enough resolution for the final resize
    and for the near-duplicate detail); the hashes then describe those drafted pixels. Prediction passes
    the training ingest's ``draft_min`` without ``keypoints``, so its images are drafted the same way.
    With ``keypoints``, the near-duplicate descriptors of :func:`cxrspark.images.keypoints.describe`.
    """
    decoded = decode_image(data, max_pixels=max_pixels, min_side=min_side,
                           draft_size=max(2 * size, keypoints.work_size if keypoints else 0, draft_min)
                           if jpeg_draft else None)
    pixels = decoded.pixels
    return Prepared(
        image=resize(apply_contrast(pixels, contrast), size, resize_mode),
        orig_height=decoded.orig_height,
        orig_width=decoded.orig_width,
        orig_format=decoded.format,
        orig_mode=decoded.mode,
        pixel_sha256=pixel_sha256(pixels),
        phash=phash(pixels),
        keypoints=describe(pixels, keypoints) if keypoints is not None else None,
    )
