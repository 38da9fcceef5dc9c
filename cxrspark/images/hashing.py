"""Content hashes of decoded greyscale pixels, for exact and near-duplicate detection.

`pixel_sha256` identifies identical pixels whatever the file encoding; `phash` is the 64-bit DCT
perceptual hash of imagehash.phash, returned as a signed int64 (Spark LongType). `band_values` and
`band_layout` split a hash into contiguous bit bands for pigeonhole LSH: two hashes within Hamming
distance t agree exactly on at least one of t+1 bands.
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


def band_layout(bands: int) -> list[tuple[int, int]]:
    """(shift, width) of each band, most significant band first.

    The first 64 % bands bands are one bit wider. Band i == (unsigned(h) >> shift) & ((1 << width) - 1);
    in Spark SQL on a signed LongType, shiftright(h, shift) & mask gives the same value for width <= 63.
    """
    if not 1 <= bands <= HASH_BITS:
        raise ValueError(f"bands must be between 1 and {HASH_BITS}, got {bands}")
    base, extra = divmod(HASH_BITS, bands)
    layout, top = [], HASH_BITS
    for i in range(bands):
        width = base + (1 if i < extra else 0)
        top -= width
        layout.append((top, width))
    return layout


def band_values(h: int, bands: int) -> list[int]:
    """Integer value of each of `bands` contiguous bit bands of the unsigned 64-bit hash `h`."""
    u = to_unsigned64(h)
    return [(u >> shift) & ((1 << width) - 1) for shift, width in band_layout(bands)]


THUMB_SIZE = 32


def thumbnail(pixels: np.ndarray, size: int = THUMB_SIZE) -> bytes:
    """A size x size uint8 greyscale thumbnail (bilinear), the evidence used to confirm near duplicates."""
    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8).tobytes()


def thumb_correlation(a: bytes, b: bytes) -> float:
    """Pearson correlation of two thumbnails (1.0 = same picture up to brightness and contrast).

    A 64-bit pHash alone confuses different chest X-rays (they all look alike at 8x8 DCT scale): on the
    real development set, pairs of different patients' images come within 6 bits. A near duplicate
    must therefore also have a thumbnail correlation above a threshold (see benchmarks/README.md).
    """
    x = np.frombuffer(a, dtype=np.uint8).astype(np.float64)
    y = np.frombuffer(b, dtype=np.uint8).astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    if den == 0.0:  # a flat thumbnail: only an identical flat one matches
        return 1.0 if np.array_equal(x, y) else 0.0
    return float((x * y).sum() / den)
