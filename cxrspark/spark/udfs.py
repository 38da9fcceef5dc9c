"""pandas UDFs over cxrspark.images: decode + hash + contrast + resize, one Arrow batch at a time.

A bad file never fails the task: its error goes into the ``decode_error`` column with a reason code
("corrupt_image: ...") and the pipeline quarantines the row.
"""
from __future__ import annotations

import pandas as pd
from pyspark.sql.functions import pandas_udf

from cxrspark.schema import DECODED_DDL


def prepare_one(path: str, *, size: int, resize_mode: str, contrast: str, max_pixels: int,
                max_file_bytes: int, jpeg_draft: bool) -> dict:
    """Read one file and prepare it; every failure becomes a decode_error (never an exception)."""
    from cxrspark.images import DecodeError, prepare

    empty = {c.split()[0]: None for c in DECODED_DDL.split(", ")}
    try:
        import os
        n = os.path.getsize(path)
        if n > max_file_bytes:
            return {**empty, "decode_error": f"file_too_large: {n} bytes > {max_file_bytes}"}
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return {**empty, "decode_error": f"missing_file: {path}"}
    except OSError as exc:
        return {**empty, "decode_error": f"unreadable_file: {exc}"}
    try:
        p = prepare(data, size=size, resize_mode=resize_mode, contrast=contrast,
                    max_pixels=max_pixels, jpeg_draft=jpeg_draft)
    except DecodeError as exc:
        return {**empty, "decode_error": str(exc)}
    except Exception as exc:  # an unexpected decoder failure is still a per-row outcome
        return {**empty, "decode_error": f"decode_failed: {type(exc).__name__}: {exc}"}
    return {
        "image": p.image.tobytes(), "height": int(p.image.shape[0]), "width": int(p.image.shape[1]),
        "orig_height": int(p.orig_height), "orig_width": int(p.orig_width),
        "orig_format": p.orig_format, "orig_mode": p.orig_mode,
        "pixel_sha256": p.pixel_sha256, "phash": int(p.phash), "thumb": p.thumb, "decode_error": None,
    }


def make_prepare_udf(*, size: int, resize_mode: str, contrast: str, max_pixels: int,
                     max_file_bytes: int, jpeg_draft: bool):
    """A pandas UDF: path column -> struct of DECODED_DDL."""
    opts = dict(size=size, resize_mode=resize_mode, contrast=contrast, max_pixels=max_pixels,
                max_file_bytes=max_file_bytes, jpeg_draft=jpeg_draft)

    @pandas_udf(DECODED_DDL)
    def prepare_images(paths: pd.Series) -> pd.DataFrame:
        rows = [prepare_one(p, **opts) for p in paths]
        return pd.DataFrame(rows, columns=[c.split()[0] for c in DECODED_DDL.split(", ")])

    return prepare_images
