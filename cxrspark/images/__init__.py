"""Image decoding, transforms and content hashing (numpy / Pillow / pydicom / scipy / scikit-image only).

No Spark, TensorFlow or MLflow here: these functions run inside Spark Python workers and in tests alike.
"""
from cxrspark.images.decode import DecodeError, Decoded, decode_image
from cxrspark.images.hashing import hamming, phash, pixel_sha256
from cxrspark.images.prepare import Prepared, prepare
from cxrspark.images.transforms import apply_contrast, resize

__all__ = [
    "DecodeError", "Decoded", "decode_image",
    "resize", "apply_contrast",
    "pixel_sha256", "phash", "hamming",
    "prepare", "Prepared",
]
