"""Tests for cxrspark.images: decoding, transforms, hashing and prepare; every input is built in memory."""
from __future__ import annotations

import io
import pickle
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (JPEG2000Lossless, ExplicitVRLittleEndian, SecondaryCaptureImageStorage,
                         generate_uid)

from cxrspark.images import (DecodeError, Decoded, Prepared, apply_contrast, decode_image, hamming,
                             phash, pixel_sha256, prepare, resize)
from cxrspark.images.hashing import to_signed64, to_unsigned64
from cxrspark.images.transforms import clahe, equalize

# ----------------------------------------------------------------------------------------------- helpers


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def synthetic_cxr(seed: int, size: int = 256) -> np.ndarray:
    """A chest-X-ray-like picture: a smooth random field, two darker 'lungs' and mild noise."""
    rng = np.random.default_rng(seed)
    grid = Image.fromarray(rng.uniform(60, 200, (6, 6)).astype(np.float32))
    field = np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for cx in (0.3 + rng.uniform(-0.05, 0.05), 0.7 + rng.uniform(-0.05, 0.05)):
        cy, ry, rx = 0.5 + rng.uniform(-0.05, 0.05), rng.uniform(0.25, 0.35), rng.uniform(0.12, 0.18)
        field[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] -= rng.uniform(40, 70)
    field += rng.normal(0, 4, field.shape)
    return np.clip(field, 0, 255).astype(np.uint8)


def png_with_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height, with a far too short IDAT (decoding it would fail)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def dicom_bytes(arr: np.ndarray, photometric: str = "MONOCHROME2", *, transfer_syntax=ExplicitVRLittleEndian,
                pixel_data: bytes | None = None, **elements) -> bytes:
    """A DICOM Part 10 file of unsigned 16-bit (12 bits stored) pixels, or 8-bit RGB for 3-channel input."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PhotometricInterpretation = photometric
    ds.PixelRepresentation = 0
    if arr.ndim == 3 and arr.shape[-1] == 3:
        ds.Rows, ds.Columns = arr.shape[:2]
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        raw = arr.astype(np.uint8).tobytes()
    else:
        ds.Rows, ds.Columns = arr.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        raw = arr.astype(np.uint16).tobytes()
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.PixelData = raw if pixel_data is None else pixel_data
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def reason_of(data: bytes, **kwargs) -> str:
    with pytest.raises(DecodeError) as info:
        decode_image(data, **kwargs)
    return info.value.reason


RAMP = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (12, 1))  # 12 x 256, values 0..4080

# ------------------------------------------------------------------------------------------------ decode


def test_format_is_detected_from_content():
    pixels = synthetic_cxr(1, 64)
    png = decode_image(encode(Image.fromarray(pixels), "PNG"))
    assert isinstance(png, Decoded)
    assert (png.format, png.mode, png.orig_height, png.orig_width) == ("PNG", "L", 64, 64)
    np.testing.assert_array_equal(png.pixels, pixels)
    assert decode_image(encode(Image.fromarray(pixels), "JPEG")).format == "JPEG"
    assert decode_image(encode(Image.fromarray(pixels), "BMP")).format == "BMP"
    assert decode_image(dicom_bytes(RAMP)).format == "DICOM"


def test_greyscale_and_bilevel_modes():
    pixels = synthetic_cxr(2, 40)
    bilevel = Image.fromarray(pixels).convert("1")
    out = decode_image(encode(bilevel, "PNG"))
    assert out.mode == "1" and out.pixels.dtype == np.uint8
    assert set(np.unique(out.pixels)) <= {0, 255}
    np.testing.assert_array_equal(out.pixels, np.asarray(bilevel.convert("L")))


def test_rgb_uses_itu_601_luma():
    rgb = np.zeros((8, 12, 3), dtype=np.uint8)
    rgb[:, :4] = (255, 0, 0)
    rgb[:, 4:8] = (0, 255, 0)
    rgb[:, 8:] = (0, 0, 255)
    out = decode_image(encode(Image.fromarray(rgb), "PNG"))
    assert out.mode == "RGB" and out.pixels.shape == (8, 12)
    # L = R * 299/1000 + G * 587/1000 + B * 114/1000
    assert out.pixels[0, 0] == 76 and out.pixels[0, 4] == 150 and out.pixels[0, 8] == 29


def test_alpha_is_composited_over_black():
    rgba = np.zeros((4, 3, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:, 0, 3], rgba[:, 1, 3], rgba[:, 2, 3] = 0, 128, 255
    out = decode_image(encode(Image.fromarray(rgba), "PNG"))
    assert out.mode == "RGBA"
    assert out.pixels[0, 0] == 0 and out.pixels[0, 2] == 200
    assert abs(int(out.pixels[0, 1]) - 100) <= 1

    la = Image.merge("LA", [Image.new("L", (3, 1), 200), Image.frombytes("L", (3, 1), bytes([0, 128, 255]))])
    out = decode_image(encode(la, "PNG"))
    assert out.mode == "LA"
    assert out.pixels[0, 0] == 0 and out.pixels[0, 2] == 200 and abs(int(out.pixels[0, 1]) - 100) <= 1


def test_palette_with_transparency():
    pal = Image.new("P", (4, 1))
    pal.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0] + [0] * (253 * 3))
    pal.putdata([0, 1, 2, 1])
    out = decode_image(encode(pal, "PNG"))
    assert out.mode == "P"
    np.testing.assert_array_equal(out.pixels[0], [0, 255, 76, 255])
    # palette entry 1 (white) fully transparent -> composited over black
    np.testing.assert_array_equal(decode_image(encode(pal, "PNG", transparency=1)).pixels[0], [0, 0, 76, 0])


def test_cmyk_jpeg():
    rgb = np.zeros((16, 32, 3), dtype=np.uint8)
    rgb[:, 16:] = 255
    out = decode_image(encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95))
    assert (out.format, out.mode, out.pixels.shape) == ("JPEG", "CMYK", (16, 32))
    assert out.pixels[:, :12].mean() < 20 and out.pixels[:, 20:].mean() > 235


@pytest.mark.parametrize("fmt,values", [("PNG", (1000, 3000, 5000)), ("TIFF", (1000, 3000, 5000))])
def test_16_bit_is_min_max_scaled(fmt, values):
    arr = np.array([values, values[::-1]], dtype=np.uint16)
    out = decode_image(encode(Image.fromarray(arr), fmt))
    assert out.mode.startswith("I;16")
    np.testing.assert_array_equal(out.pixels, [[0, 128, 255], [255, 128, 0]])


def test_big_endian_32_bit_and_float_modes():
    arr = np.array([[1000, 3000, 5000]], dtype=np.uint16)
    big = Image.frombytes("I;16B", (3, 1), arr.astype(">u2").tobytes())
    np.testing.assert_array_equal(decode_image(encode(big, "TIFF")).pixels, [[0, 128, 255]])
    wide = Image.fromarray(np.array([[-70000, 0, 70000]], dtype=np.int32))
    out = decode_image(encode(wide, "TIFF"))
    assert out.mode == "I"
    np.testing.assert_array_equal(out.pixels, [[0, 128, 255]])
    floats = Image.fromarray(np.array([[-1.5, 0.0, 1.5]], dtype=np.float32))
    out = decode_image(encode(floats, "TIFF"))
    assert out.mode == "F"
    np.testing.assert_array_equal(out.pixels, [[0, 128, 255]])


def test_constant_16_bit_image_becomes_zeros():
    out = decode_image(encode(Image.fromarray(np.full((5, 7), 4000, dtype=np.uint16)), "PNG"))
    assert out.pixels.shape == (5, 7) and not out.pixels.any()


def test_exif_orientation_is_applied():
    # 40 high, 60 wide, bright 10x10 marker in the top-left corner; orientation 6 = rotate 90 deg clockwise
    arr = np.zeros((40, 60), dtype=np.uint8)
    arr[:10, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(data)
    assert out.pixels.shape == (60, 40)
    assert (out.orig_height, out.orig_width) == (60, 40)  # upright size
    assert out.pixels[:10, -10:].mean() > 200  # top-left moved to top-right
    for corner in (out.pixels[:10, :10], out.pixels[-10:, :10], out.pixels[-10:, -10:]):
        assert corner.mean() < 30
    plain = decode_image(encode(Image.fromarray(arr), "JPEG", quality=95))
    assert plain.pixels.shape == (40, 60) and plain.pixels[:10, :10].mean() > 200


def test_jpeg_draft_decodes_smaller_but_reports_original_size():
    big = np.asarray(Image.fromarray(synthetic_cxr(3, 256)).resize((1200, 1000)))
    data = encode(Image.fromarray(big), "JPEG")
    full = decode_image(data)
    assert full.pixels.shape == (1000, 1200)
    drafted = decode_image(data, draft_size=200)
    h, w = drafted.pixels.shape
    assert 200 <= min(h, w) and (h, w) != (1000, 1200) and (h, w) == (250, 300)
    assert (drafted.orig_height, drafted.orig_width) == (1000, 1200)
    rgb = encode(Image.fromarray(big).convert("RGB"), "JPEG")
    assert decode_image(rgb, draft_size=200).pixels.shape == (250, 300)
    png = encode(Image.fromarray(big), "PNG")
    assert decode_image(png, draft_size=200).pixels.shape == (1000, 1200)  # draft is JPEG-only


# ------------------------------------------------------------------------------------------------ errors


def test_decode_error_message_and_pickle():
    err = DecodeError("corrupt_image", "truncated")
    assert str(err) == "corrupt_image: truncated" and err.reason == "corrupt_image"
    again = pickle.loads(pickle.dumps(err))
    assert again.reason == "corrupt_image" and str(again) == str(err)


def test_empty_and_non_image():
    assert reason_of(b"") == "empty_file"
    assert reason_of(b"patient_id,finding\n1,COVID-19\n" * 20) == "not_an_image"


def test_truncated_files_are_corrupt():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    pixels = synthetic_cxr(4, 128)
    jpeg = encode(Image.fromarray(pixels), "JPEG")
    png = encode(Image.fromarray(pixels), "PNG")
    assert reason_of(jpeg[: len(jpeg) // 2]) == "corrupt_image"
    assert reason_of(png[: len(png) // 2]) == "corrupt_image"
    assert reason_of(png_with_header_only(100, 100)) == "corrupt_image"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_decompression_bomb_is_caught_from_the_header():
    # Pixel data is absent, so reaching the decoder would give corrupt_image: the check is header-only.
    tracemalloc.start()
    try:
        assert reason_of(png_with_header_only(12000, 12000), max_pixels=10_000_000) == "decompression_bomb"
        assert reason_of(png_with_header_only(4000, 3000), max_pixels=10_000_000) == "decompression_bomb"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000
    # above Pillow's own hard limit as well
    assert reason_of(png_with_header_only(20000, 20000), max_pixels=10**12) == "decompression_bomb"
    assert reason_of(encode(Image.new("L", (50, 50)), "PNG"), max_pixels=2499) == "decompression_bomb"
    assert decode_image(encode(Image.new("L", (50, 50)), "PNG"), max_pixels=2500).pixels.shape == (50, 50)


def test_too_small_is_caught_from_the_header():
    assert reason_of(encode(Image.new("L", (1, 1)), "PNG"), min_side=64) == "too_small"
    assert reason_of(encode(Image.new("L", (300, 40)), "PNG"), min_side=64) == "too_small"
    assert reason_of(png_with_header_only(63, 500), min_side=64) == "too_small"  # decoding it would fail
    assert reason_of(dicom_bytes(RAMP), min_side=64) == "too_small"  # 12 rows
    assert decode_image(encode(Image.new("L", (64, 64)), "PNG"), min_side=64).pixels.shape == (64, 64)
    assert decode_image(encode(Image.new("L", (1, 1)), "PNG")).pixels.shape == (1, 1)  # no limit by default
    with pytest.raises(DecodeError) as info:
        prepare(encode(Image.new("L", (8, 8)), "PNG"), size=64, min_side=64)
    assert info.value.reason == "too_small" and "8x8" in info.value.detail


def test_unsupported_pillow_mode():
    assert reason_of(encode(Image.new("LAB", (8, 8)), "TIFF")) == "unsupported_image"


def test_dicom_errors():
    assert reason_of(dicom_bytes(RAMP), max_pixels=RAMP.size - 1) == "decompression_bomb"
    assert reason_of(b"\0" * 128 + b"DICM") == "unsupported_image"  # no pixel data
    assert reason_of(dicom_bytes(RAMP, pixel_data=b"\0" * 50)) == "dicom_error"
    assert reason_of(dicom_bytes(RAMP)[:-100]) == "dicom_error"
    broken_j2k = dicom_bytes(RAMP, transfer_syntax=JPEG2000Lossless, pixel_data=encapsulate([b"not j2k" * 8]))
    assert reason_of(broken_j2k) == "dicom_error"


# ------------------------------------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_is_min_max_scaled():
    out = decode_image(dicom_bytes(RAMP))
    assert (out.format, out.mode, out.orig_height, out.orig_width) == ("DICOM", "MONOCHROME2", 12, 256)
    assert out.pixels.dtype == np.uint8 and out.pixels.shape == (12, 256)
    np.testing.assert_array_equal(out.pixels[0], np.arange(256))


def test_dicom_monochrome1_is_inverted():
    mono2 = decode_image(dicom_bytes(RAMP, "MONOCHROME2")).pixels
    mono1 = decode_image(dicom_bytes(RAMP, "MONOCHROME1"))
    assert mono1.mode == "MONOCHROME1"
    np.testing.assert_array_equal(mono1.pixels.astype(int), 255 - mono2.astype(int))
    windowed2 = decode_image(dicom_bytes(RAMP, "MONOCHROME2", WindowCenter=2048, WindowWidth=1024)).pixels
    windowed1 = decode_image(dicom_bytes(RAMP, "MONOCHROME1", WindowCenter=2048, WindowWidth=1024)).pixels
    np.testing.assert_array_equal(windowed1.astype(int), 255 - windowed2.astype(int))


def test_dicom_window_clips():
    out = decode_image(dicom_bytes(RAMP, WindowCenter=2048, WindowWidth=1024)).pixels[0]
    stored = RAMP[0]
    assert (out[stored < 1536] == 0).all() and (out[stored > 2560] == 255).all()
    inside = out[(stored > 1600) & (stored < 2500)]
    assert 0 < inside.min() and inside.max() < 255 and (np.diff(inside.astype(int)) > 0).all()


def test_dicom_rescale_is_applied_before_the_window():
    # 2 * stored - 1024 lies in [1536, 2560] for stored in [1280, 1792]
    out = decode_image(dicom_bytes(RAMP, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=2048,
                                   WindowWidth=1024)).pixels[0]
    stored = RAMP[0]
    assert (out[stored < 1270] == 0).all() and (out[stored > 1800] == 255).all()
    assert 0 < out[stored == 1536][0] < 255


def test_dicom_multi_frame_uses_first_frame():
    frames = np.stack([RAMP, RAMP[:, ::-1], np.zeros_like(RAMP)])
    out = decode_image(dicom_bytes(frames, NumberOfFrames=3))
    assert out.pixels.shape == (12, 256)
    np.testing.assert_array_equal(out.pixels[0], np.arange(256))


def test_dicom_rgb_to_grey():
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[:, :3] = (0, 255, 0)
    rgb[:, 3:] = (255, 0, 0)
    out = decode_image(dicom_bytes(rgb, "RGB"))
    assert out.mode == "RGB" and out.pixels.shape == (4, 6)
    assert out.pixels[0, 0] == 255 and out.pixels[0, 5] == 0  # green 149.7 > red 76.2, then min-max


# -------------------------------------------------------------------------------------------- transforms


def test_resize_pad_wide_image_leaves_black_bands():
    wide = np.full((100, 200), 255, dtype=np.uint8)
    out = resize(wide, 64, "pad")
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert not out[:15].any() and not out[-15:].any()
    assert (out[17:47] == 255).all()


def test_resize_pad_tall_image_leaves_black_side_bands():
    tall = np.full((300, 100), 200, dtype=np.uint8)
    out = resize(tall, 90, "pad")
    assert out.shape == (90, 90)
    assert not out[:, :29].any() and not out[:, -29:].any() and (out[:, 31:59] == 200).all()


def test_resize_crop_keeps_the_centre():
    wide = np.zeros((100, 300), dtype=np.uint8)
    wide[:, 100:200] = 255  # only the central square is bright
    out = resize(wide, 50, "crop")
    assert out.shape == (50, 50)
    assert out[:, 2:-2].min() == 255 and out.min() > 200  # only the edge columns are antialiased


def test_resize_stretch_and_upscale():
    arr = np.zeros((30, 90), dtype=np.uint8)
    arr[:, 45:] = 255
    out = resize(arr, 60, "stretch")
    assert out.shape == (60, 60)
    assert out[:, :28].max() == 0 and out[:, 32:].min() == 255
    up = resize(synthetic_cxr(5, 32), 128, "crop")
    assert up.shape == (128, 128)


def test_resize_rejects_unknown_mode_and_bad_input():
    with pytest.raises(ValueError):
        resize(np.zeros((10, 10), np.uint8), 8, "zoom")
    with pytest.raises(ValueError):
        resize(np.zeros((10, 10), np.float32), 8)
    with pytest.raises(ValueError):
        resize(np.zeros((10, 10), np.uint8), 0)


def test_contrast_methods_widen_a_low_contrast_image():
    base = synthetic_cxr(6, 128).astype(np.float64)
    low = (110 + (base - base.min()) / (base.max() - base.min()) * 30).astype(np.uint8)  # values 110..140
    assert int(low.max()) - int(low.min()) <= 30
    eq = apply_contrast(low, "equalize")
    np.testing.assert_array_equal(eq, equalize(low))
    assert eq.dtype == np.uint8 and eq.shape == low.shape
    assert int(eq.max()) - int(eq.min()) > 200
    # equalisation is monotonic: the pixel order is kept
    order = np.argsort(low.ravel(), kind="stable")
    assert (np.diff(eq.ravel()[order].astype(int)) >= 0).all()
    cl = apply_contrast(low, "clahe")
    np.testing.assert_array_equal(cl, clahe(low))
    assert cl.dtype == np.uint8 and cl.shape == low.shape
    assert int(cl.max()) - int(cl.min()) > 60 and cl.std() > 2 * low.std()
    assert apply_contrast(low, "none") is low
    with pytest.raises(ValueError):
        apply_contrast(low, "gamma")


# --------------------------------------------------------------------------------------------- hashing


def dct_ii_reference(block: np.ndarray) -> np.ndarray:
    """Unnormalised DCT-II from its definition: X_k = 2 sum_n x_n cos(pi k (2n + 1) / 2N), on both axes."""
    n = block.shape[0]
    k = np.arange(n)[:, None]
    basis = 2 * np.cos(np.pi * k * (2 * np.arange(n)[None, :] + 1) / (2 * n))
    return basis @ block @ basis.T


def reference_phash(pixels: np.ndarray) -> int:
    small = np.asarray(Image.fromarray(pixels).resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dct_ii_reference(small)[:8, :8]
    bits = "".join("1" if b else "0" for b in (low > np.median(low)).ravel())
    return int(bits, 2)


def test_phash_matches_a_reference_dct_and_bit_order():
    for seed in range(5):
        pixels = synthetic_cxr(seed, 200)
        assert to_unsigned64(phash(pixels)) == reference_phash(pixels)
    # the DC coefficient of a bright image is above the median: the first, most significant bit is set
    assert phash(synthetic_cxr(7)) < 0


def test_phash_is_a_signed_int64():
    for seed in range(10):
        h = phash(synthetic_cxr(seed, 96))
        assert isinstance(h, int) and -(1 << 63) <= h < (1 << 63)


def test_phash_identical_and_lossless_copies():
    pixels = synthetic_cxr(11)
    assert hamming(phash(pixels), phash(pixels.copy())) == 0
    png = decode_image(encode(Image.fromarray(pixels), "PNG", compress_level=1)).pixels
    reencoded = decode_image(encode(Image.fromarray(png), "PNG", compress_level=9, optimize=True)).pixels
    tiff = decode_image(encode(Image.fromarray(png), "TIFF")).pixels
    assert pixel_sha256(png) == pixel_sha256(reencoded) == pixel_sha256(tiff) == pixel_sha256(pixels)


def test_phash_near_duplicates_are_close():
    jpeg_d, resize_d, crop_d = [], [], []
    for seed in range(20):
        pixels = synthetic_cxr(seed)
        h = phash(pixels)
        jpeg = decode_image(encode(Image.fromarray(pixels), "JPEG", quality=75)).pixels
        assert pixel_sha256(jpeg) != pixel_sha256(pixels)
        jpeg_d.append(hamming(h, phash(jpeg)))
        smaller = np.asarray(Image.fromarray(pixels).resize((205, 205), Image.Resampling.BILINEAR))
        resize_d.append(hamming(h, phash(smaller)))
        m = round(0.02 * pixels.shape[0])
        crop_d.append(hamming(h, phash(pixels[m:-m, m:-m])))
    assert max(jpeg_d) <= 8 and max(resize_d) <= 8
    # a crop shifts every DCT coefficient a little, so a coefficient that sits next to the median can
    # flip several bits; pHash tolerates small crops on nearly, not absolutely, every image
    assert sum(d <= 8 for d in crop_d) >= 19 and np.median(crop_d) <= 6


def test_phash_unrelated_images_are_far_apart():
    hashes = [phash(synthetic_cxr(seed)) for seed in range(20)]
    dists = [hamming(hashes[i], hashes[j]) for i in range(20) for j in range(i + 1, 20)]
    assert min(dists) >= 12 and np.median(dists) >= 24
    assert sum(d > 16 for d in dists) >= 0.95 * len(dists)
    for i in range(6):  # the first few images: every pair clearly apart
        for j in range(i + 1, 6):
            assert hamming(hashes[i], hashes[j]) > 16


def test_phash_mirror_differs_and_constant_is_safe():
    for seed in (30, 31, 32):
        pixels = synthetic_cxr(seed)
        assert hamming(phash(pixels), phash(pixels[:, ::-1])) > 0
    assert phash(np.zeros((50, 50), np.uint8)) == 0
    assert isinstance(phash(np.full((50, 70), 128, np.uint8)), int)


def test_pixel_sha256_depends_on_shape_and_content():
    arr = np.arange(24, dtype=np.uint8).reshape(4, 6)
    assert pixel_sha256(arr) != pixel_sha256(arr.reshape(6, 4))
    other = arr.copy()
    other[0, 0] = 1
    assert pixel_sha256(arr) != pixel_sha256(other)
    assert pixel_sha256(np.asfortranarray(arr)) == pixel_sha256(arr)
    assert pixel_sha256(arr[:, ::2]) == pixel_sha256(np.ascontiguousarray(arr[:, ::2]))
    assert len(pixel_sha256(arr)) == 64
    with pytest.raises(ValueError):
        pixel_sha256(arr.astype(np.uint16))


def test_signed_unsigned_and_hamming():
    assert to_signed64((1 << 64) - 1) == -1 and to_unsigned64(-1) == (1 << 64) - 1
    assert to_signed64(1 << 63) == -(1 << 63) and to_signed64((1 << 63) - 1) == (1 << 63) - 1
    rng = np.random.default_rng(0)
    for _ in range(200):
        u = int(rng.integers(0, 1 << 63)) * 2 + int(rng.integers(0, 2))
        s = to_signed64(u)
        assert -(1 << 63) <= s < (1 << 63) and to_unsigned64(s) == u
        assert hamming(s, u) == 0
    assert hamming(-1, 0) == 64 and hamming(0b1011, 0b0001) == 2
    assert hamming(to_signed64(1 << 63), 0) == 1


# ------------------------------------------------------------------------------------------------ prepare


def test_prepare_png():
    pixels = synthetic_cxr(40, 300)[:, :200]  # 300 high, 200 wide
    data = encode(Image.fromarray(pixels), "PNG")
    out = prepare(data, size=64)
    assert isinstance(out, Prepared)
    assert out.image.shape == (64, 64) and out.image.dtype == np.uint8 and out.image.flags.writeable
    assert (out.orig_height, out.orig_width, out.orig_format, out.orig_mode) == (300, 200, "PNG", "L")
    assert out.pixel_sha256 == pixel_sha256(pixels) and out.phash == phash(pixels)
    assert not out.image[:, :10].any() and not out.image[:, -10:].any()  # padded at the sides
    np.testing.assert_array_equal(out.image, resize(pixels, 64, "pad"))


def test_prepare_hashes_before_contrast_and_resize():
    data = encode(Image.fromarray(synthetic_cxr(41)), "PNG")
    plain = prepare(data, size=64)
    other = prepare(data, size=128, resize_mode="crop", contrast="clahe")
    assert other.image.shape == (128, 128)
    assert (plain.pixel_sha256, plain.phash) == (other.pixel_sha256, other.phash)
    np.testing.assert_array_equal(
        prepare(data, size=64, contrast="equalize").image,
        resize(apply_contrast(synthetic_cxr(41), "equalize"), 64))


def test_prepare_jpeg_draft_and_resolution_invariance():
    pixels = synthetic_cxr(42)
    large = np.asarray(Image.fromarray(pixels).resize((1024, 1024), Image.Resampling.BICUBIC))
    data = encode(Image.fromarray(large), "JPEG", quality=90)
    drafted = prepare(data, size=128)
    full = prepare(data, size=128, jpeg_draft=False)
    assert (drafted.orig_height, drafted.orig_width, drafted.orig_format) == (1024, 1024, "JPEG")
    assert drafted.image.shape == full.image.shape == (128, 128)
    assert np.abs(drafted.image.astype(int) - full.image.astype(int)).mean() < 3
    assert hamming(drafted.phash, full.phash) <= 4
    small = prepare(encode(Image.fromarray(pixels), "PNG"), size=128)
    assert hamming(small.phash, full.phash) <= 8


def test_prepare_raises_decode_errors():
    with pytest.raises(DecodeError) as info:
        prepare(b"", size=64)
    assert info.value.reason == "empty_file"
    with pytest.raises(DecodeError) as info:
        prepare(png_with_header_only(5000, 5000), size=64, max_pixels=1_000_000)
    assert info.value.reason == "decompression_bomb"
