"""Decode image bytes (JPEG, PNG, other Pillow formats, DICOM) into upright 2-D greyscale uint8 pixels.

The format is detected from the content, never from a file name. Every failure is a `DecodeError` with a
short `reason` code (empty_file, not_an_image, corrupt_image, decompression_bomb, too_small,
unsupported_image, unsupported_transfer_syntax, dicom_error) so the pipeline can quarantine bad files by
reason. Image size is checked from the header before any pixels are decoded (more than `max_pixels` pixels:
decompression_bomb; a side shorter than `min_side`: too_small, e.g. a 1x1 tracking pixel or icon), and
truncated files are rejected (Pillow's LOAD_TRUNCATED_IMAGES is left False).

Compressed DICOM is decoded by pydicom's plugins (python-gdcm, pylibjpeg-openjpeg, pyjpegls, Pillow):
JPEG baseline, JPEG lossless (8 to 16 bits), JPEG-LS, JPEG 2000 and RLE. A transfer syntax that no
installed plugin decodes (JPEG XL, video, 12-bit JPEG Extended, a private one) is
unsupported_transfer_syntax with the syntax named; a file whose compressed data is broken is dicom_error.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import JPEGExtended12Bit, UID

DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
EXIF_ORIENTATION = 0x0112
#: EXIF orientations that rotate by 90 or 270 degrees (the upright image has height and width swapped)
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
#: Pillow modes with an alpha channel or palette: composited over black, then converted to 'L'
_ALPHA_MODES = ("P", "PA", "LA", "RGBA")
#: Pillow modes converted to 'L' through 'RGB'
_VIA_RGB_MODES = ("CMYK", "YCbCr")
#: Pillow modes wider than 8 bits: linearly min-max scaled to 0..255
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
#: DICOM photometric interpretations that pydicom decodes to RGB
_DICOM_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
#: transfer syntaxes newer than pydicom's UID dictionary, named here so that their quarantine rows say what they are
_NEWER_SYNTAXES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
    "1.2.840.10008.1.2.8.1": "Deflated Image Frame Compression",
}


class DecodeError(Exception):
    """An image could not be decoded; `reason` is a short machine-readable code, `detail` is free text."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):
        return type(self), (self.reason, self.detail)


@dataclass
class Decoded:
    """Greyscale pixels (native or JPEG-draft resolution) and what the file said about itself."""

    pixels: np.ndarray
    format: str
    mode: str
    orig_height: int
    orig_width: int


def decode_image(data: bytes, *, max_pixels: int = 50_000_000, min_side: int = 1,
                 draft_size: int | None = None) -> Decoded:
    """Decode `data` to an upright 2-D uint8 greyscale image.

    The header's size must have at most `max_pixels` pixels and both sides at least `min_side` pixels.

    `draft_size` lets a JPEG decode at a reduced DCT scale that is still at least draft_size x draft_size
    (about 2x faster when shrinking a lot). `orig_height`/`orig_width` are the full-resolution upright size
    (swapped when an EXIF orientation rotates the image by 90 degrees).
    """
    if not data:
        raise DecodeError("empty_file", "0 bytes")
    if data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC:
        return _decode_dicom(data, max_pixels, min_side)
    return _decode_pillow(data, max_pixels, min_side, draft_size)


def _check_size(height: int, width: int, max_pixels: int, min_side: int) -> None:
    """The header's size against the limits, before any pixel is decoded."""
    if height * width > max_pixels:
        raise DecodeError("decompression_bomb", f"{width}x{height} exceeds max_pixels={max_pixels}")
    if min(height, width) < min_side:
        raise DecodeError("too_small", f"{width}x{height} has a side below min_side={min_side}")


def _decode_pillow(data: bytes, max_pixels: int, min_side: int, draft_size: int | None) -> Decoded:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise DecodeError("not_an_image", "Pillow cannot identify the image format") from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DecodeError("decompression_bomb", str(exc)) from exc
        except Exception as exc:  # a plugin recognised the header but could not parse it
            raise DecodeError("corrupt_image", f"{type(exc).__name__}: {exc}") from exc
        fmt, mode = img.format or "UNKNOWN", img.mode
        width, height = img.size
        _check_size(height, width, max_pixels, min_side)
        if draft_size is not None and isinstance(img, JpegImagePlugin.JpegImageFile):
            img.draft(img.mode if img.mode in ("L", "RGB") else "RGB", (draft_size, draft_size))
        try:
            img.load()
            orientation = img.getexif().get(EXIF_ORIENTATION)
            img = ImageOps.exif_transpose(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DecodeError("decompression_bomb", str(exc)) from exc
        except Exception as exc:  # truncated data, bad CRC, broken codec stream, ...
            raise DecodeError("corrupt_image", f"{type(exc).__name__}: {exc}") from exc
    if orientation in _SWAPPING_ORIENTATIONS:
        height, width = width, height
    return Decoded(_to_grey(img), fmt, mode, height, width)


def _to_grey(img: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image of any supported mode to a 2-D uint8 array."""
    mode = img.mode
    if mode in ("1", "L", "RGB"):
        grey = img.convert("L")
    elif mode in _ALPHA_MODES:
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        grey = Image.alpha_composite(black, img.convert("RGBA")).convert("L")
    elif mode in _VIA_RGB_MODES:
        grey = img.convert("RGB").convert("L")
    elif mode in _WIDE_MODES:
        return _minmax_uint8(np.asarray(img))
    else:
        raise DecodeError("unsupported_image", f"unsupported Pillow mode {mode!r}")
    return np.array(grey, dtype=np.uint8)


def _minmax_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale `arr` linearly so its minimum is 0 and its maximum 255; a constant array becomes all zeros."""
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _decode_dicom(data: bytes, max_pixels: int, min_side: int) -> Decoded:
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        raise DecodeError("dicom_error", f"cannot parse DICOM: {type(exc).__name__}: {exc}") from exc
    if "PixelData" not in ds:
        raise DecodeError("unsupported_image", "DICOM has no PixelData")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows <= 0 or cols <= 0:
        raise DecodeError("dicom_error", f"invalid Rows/Columns {rows}x{cols}")
    _check_size(rows, cols, max_pixels, min_side)
    if photometric not in ("MONOCHROME1", "MONOCHROME2") + _DICOM_COLOUR:
        raise DecodeError("unsupported_image", f"unsupported PhotometricInterpretation {photometric!r}")
    unsupported = _unsupported_syntax(ds)
    if unsupported:
        raise DecodeError("unsupported_transfer_syntax", unsupported)
    try:
        ds.pixel_array_options(index=0)  # only the first frame of a multi-frame image
        arr = ds.pixel_array
        if photometric in _DICOM_COLOUR:
            # pydicom returns RGB for colour data; ITU-R 601-2 luma, as Pillow's 'L' conversion
            arr = arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        else:
            arr = apply_voi_lut(apply_modality_lut(arr, ds), ds, index=0)
    except Exception as exc:
        raise DecodeError("dicom_error", f"cannot decode pixel data: {type(exc).__name__}: {exc}") from exc
    if arr.ndim != 2:
        raise DecodeError("unsupported_image", f"unexpected DICOM pixel array shape {arr.shape}")
    if photometric == "MONOCHROME1":  # low values are bright: invert so bone is bright, as MONOCHROME2
        arr = -np.asarray(arr, dtype=np.float64)
    return Decoded(_minmax_uint8(arr), "DICOM", photometric, rows, cols)


def _unsupported_syntax(ds: pydicom.Dataset) -> str | None:
    """Why no installed pydicom plugin can decode the pixel data of `ds`, naming its transfer syntax; None
    when one can (or the file has no Transfer Syntax UID, which pydicom reports itself)."""
    tsyntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if not tsyntax:
        return None
    tsyntax = UID(str(tsyntax))
    name = _NEWER_SYNTAXES.get(tsyntax, tsyntax.name if tsyntax.name != tsyntax else "unknown transfer syntax")
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        return f"{name} ({tsyntax}): pydicom has no decoder for it"
    if not decoder.is_available:
        return f"{name} ({tsyntax}): no decoding plugin installed ({'; '.join(decoder.missing_dependencies)})"
    bits = ds.get("BitsStored") or 8
    if tsyntax == JPEGExtended12Bit and bits > 8 and "pylibjpeg" not in decoder.available_plugins:
        # pydicom's GDCM and Pillow plugins decode only 8-bit JPEG Extended
        return f"{name} ({tsyntax}) with {bits}-bit samples: only pylibjpeg-libjpeg decodes it, not installed"
    return None
