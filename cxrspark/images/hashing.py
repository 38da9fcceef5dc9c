"""Content hashes of decoded greyscale pixels, for exact and near-duplicate detection.

`pixel_sha256` identifies identical pixels whatever the file encoding (the exact-duplicate key);
`phash` is the 64-bit DCT perceptual hash of imagehash.phash, returned as a signed int64 (Spark
LongType), stored with every curated image as a compact fingerprint. Near duplicates are found by
keypoints (cxrspark.images.keypoints), not by pHash: on chest X-rays pHash puts different patients
within a few bits and moves by 20-30 bits under a 5 % crop (benchmarks/README.md).
"""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image
from scipy.fft import dct

HASH_BITS = 64
MASK64 = (1 << HASH_BITS) - 1
PHASH_SIZE = 8
PHASH_HIGHFREQ_FACTOR = 4


def pixel_sha256(pixels: np.ndarray) -> str:
    """Hex SHA-256 of "<h>x<w>:" followed by the C-contiguous uint8 pixel bytes."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {pixels.dtype} {pixels.shape}")
    h, w = pixels.shape
    digest = hashlib.sha256(f"{h}x{w}:".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def to_signed64(u: int) -> int:
    """Two's-complement signed int64 value of the low 64 bits of `u`."""
    u &= MASK64
    return u - (1 << HASH_BITS) if u >> (HASH_BITS - 1) else u


def to_unsigned64(s: int) -> int:
    """Unsigned value (0 .. 2**64-1) of a signed or unsigned 64-bit integer."""
    return s & MASK64


def phash(pixels: np.ndarray) -> int:
    """64-bit DCT perceptual hash, bit-for-bit as imagehash.phash(hash_size=8, highfreq_factor=4).

    First bit (DCT coefficient [0, 0]) is the most significant; returned as a signed int64.
    """
    img_size = PHASH_SIZE * PHASH_HIGHFREQ_FACTOR
    small = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    small = small.resize((img_size, img_size), Image.Resampling.LANCZOS)
    coeffs = dct(dct(np.asarray(small, dtype=np.float64), axis=0), axis=1)
    block = coeffs[:PHASH_SIZE, :PHASH_SIZE]
    bits = (block > np.median(block)).ravel()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return to_signed64(value)


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes (signed or unsigned representation)."""
    return ((a ^ b) & MASK64).bit_count()
