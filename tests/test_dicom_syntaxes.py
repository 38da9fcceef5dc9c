"""Compressed DICOM transfer syntaxes through cxrspark.images.decode_image.

Every test writes its own files from a generated chest-X-ray-like picture of 12-bit (or 16-bit) stored
values: an uncompressed original, and the same pixels compressed with the encoders of the pinned stack
(pydicom's RLE, pyjpegls for JPEG-LS, pylibjpeg-openjpeg for JPEG 2000, Pillow for JPEG baseline, GDCM
for JPEG lossless and JPEG Extended) or, for JPEG lossless, with a small encoder written here from the
standard (ITU-T T.81 annex H), so that the decoder is checked against a stream it did not write.
Lossless syntaxes must decode to exactly the pixels of the original; lossy ones within a stated tolerance.
"""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (JPEG2000, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit,
                         JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, RLELossless,
                         SecondaryCaptureImageStorage, generate_uid)

from cxrspark.hostile import with_transfer_syntax
from cxrspark.images import DecodeError, decode_image
from cxrspark.sample import PNEUMONIA, synthetic_cxr

HEIGHT, WIDTH = 160, 128
#: window and rescale of the windowed variant (applied to 12-bit stored values: -1024..7166 after rescale)
WINDOWED = {"RescaleSlope": 2, "RescaleIntercept": -1024, "WindowCenter": 3000, "WindowWidth": 4000}

# ----------------------------------------------------------------------------------------------- helpers


def chest(bits: int, seed: int = 7) -> np.ndarray:
    """A CXR-like picture of `bits`-bit stored values spanning 0..2**bits - 1: a collimator edge at 0 and a
    lead marker at the maximum."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    grey = synthetic_cxr(rng, PNEUMONIA, HEIGHT, WIDTH).astype(np.float64) / 255
    arr = np.clip(np.rint(grey * top + rng.normal(0, top / 500, grey.shape)), 0, top)
    arr[:, :3] = 0
    arr[8:20, 100:112] = top
    return arr.astype(np.uint16 if bits > 8 else np.uint8)


def dataset(arr: np.ndarray, photometric: str, bits_stored: int, **elements) -> FileDataset:
    """An uncompressed (explicit VR little endian) single-frame greyscale DICOM of `arr`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = arr.dtype.itemsize * 8, bits_stored, bits_stored - 1
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.PixelData = arr.tobytes()
    return ds


def part10(ds: FileDataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def with_frame(ds: FileDataset, syntax: str, frame: bytes) -> FileDataset:
    """`ds` with its pixel data replaced by one encapsulated compressed frame of transfer syntax `syntax`."""
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds


def jpeg_lossless(arr: np.ndarray, precision: int, predictor: int) -> bytes:
    """A JPEG lossless (process 14) codestream of `arr` with the given sample precision and predictor
    (1..7), written from ITU-T T.81 annex H: one Huffman table giving every difference category 0..16 a
    5-bit code."""
    x = arr.astype(np.int64)
    ra, rb = np.roll(x, 1, axis=1), np.roll(x, 1, axis=0)  # left and above
    rc = np.roll(ra, 1, axis=0)  # above left
    pred = {1: ra, 2: rb, 3: rc, 4: ra + rb - rc, 5: ra + ((rb - rc) >> 1), 6: rb + ((ra - rc) >> 1),
            7: (ra + rb) >> 1}[predictor]
    pred[0, :] = ra[0, :]  # first line: the sample to the left
    pred[:, 0] = rb[:, 0]  # first column: the sample above
    pred[0, 0] = 1 << (precision - 1)
    diff = (x - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff).ravel().tolist()
    bits = []
    for d in diff:
        size = abs(d).bit_length()
        bits.append(format(size, "05b"))
        if 0 < size < 16:
            bits.append(format(d if d > 0 else d + (1 << size) - 1, f"0{size}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    scan = int(stream, 2).to_bytes(len(stream) // 8, "big").replace(b"\xff", b"\xff\x00")
    height, width = arr.shape
    sof3 = b"\xff\xc3" + struct.pack(">HBHHBBBB", 11, precision, height, width, 1, 1, 0x11, 0)
    dht = b"\xff\xc4" + struct.pack(">HB", 36, 0) + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    sos = b"\xff\xda" + struct.pack(">HBBBBBB", 8, 1, 1, 0, predictor, 0, 0)
    return b"\xff\xd8" + sof3 + dht + sos + scan + b"\xff\xd9"


def gdcm_encode(ds: FileDataset, syntax: str) -> bytes:
    """The pixel data of uncompressed `ds` as one frame compressed by GDCM in transfer syntax `syntax`."""
    import gdcm

    writer = gdcm.ImageWriter()  # keeps the image alive
    image = writer.GetImage()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((ds.Columns, ds.Rows, 1))
    pi = gdcm.PhotometricInterpretation.GetPIType(ds.PhotometricInterpretation)
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ImplicitVRLittleEndian))
    image.SetPixelFormat(gdcm.PixelFormat(1, ds.BitsAllocated, ds.BitsStored, ds.HighBit, 0))
    elem = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    elem.SetByteStringValue(ds.PixelData)
    image.SetDataElement(elem)
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(syntax)))
    change.SetInput(image)
    assert change.Change(), f"GDCM cannot encode {syntax}"
    fragments = change.GetOutput().GetDataElement().GetSequenceOfFragments()
    return fragments.GetFragment(0).GetByteValue().GetBuffer().encode("utf-8", "surrogateescape")


def pillow_jpeg(ds: FileDataset, quality: int) -> bytes:
    arr = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def decode_error(data: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_image(data)
    return info.value


# (id, transfer syntax, encode: uncompressed dataset -> the same dataset compressed)
LOSSLESS = [
    ("rle", RLELossless, lambda ds: ds.compress(RLELossless, encoding_plugin="pydicom")),
    ("jpeg-ls", JPEGLSLossless, lambda ds: ds.compress(JPEGLSLossless)),
    ("jpeg2000", JPEG2000Lossless, lambda ds: ds.compress(JPEG2000Lossless)),
    ("jpeg-lossless-sv1", JPEGLosslessSV1,
     lambda ds: with_frame(ds, JPEGLosslessSV1, jpeg_lossless(ds.pixel_array, ds.BitsStored, 1))),
    ("jpeg-lossless-predictor-6", JPEGLossless,
     lambda ds: with_frame(ds, JPEGLossless, jpeg_lossless(ds.pixel_array, ds.BitsStored, 6))),
    ("jpeg-lossless-sv1-gdcm", JPEGLosslessSV1, lambda ds: with_frame(ds, JPEGLosslessSV1,
                                                                      gdcm_encode(ds, JPEGLosslessSV1))),
]
# (id, photometric, bits stored, extra elements)
VARIANTS = [
    ("mono2-12bit", "MONOCHROME2", 12, {}),
    ("mono1-12bit", "MONOCHROME1", 12, {}),
    ("mono1-12bit-windowed", "MONOCHROME1", 12, WINDOWED),
    ("mono2-16bit", "MONOCHROME2", 16, {}),
]

# ------------------------------------------------------------------------------------------------- tests


def test_the_original_is_a_12_bit_chest_picture():
    arr = chest(12)
    assert arr.dtype == np.uint16 and (arr.min(), arr.max()) == (0, 4095)
    assert len(np.unique(arr)) > 1000  # real 12-bit content, not 8-bit values scaled up
    mono2 = decode_image(part10(dataset(arr, "MONOCHROME2", 12))).pixels.astype(int)
    mono1 = decode_image(part10(dataset(arr, "MONOCHROME1", 12))).pixels.astype(int)
    np.testing.assert_array_equal(mono1, 255 - mono2)


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize("case", LOSSLESS, ids=[c[0] for c in LOSSLESS])
def test_lossless_syntax_decodes_to_exactly_the_original(case, variant):
    _, syntax, encode = case
    _, photometric, bits, elements = variant
    arr = chest(bits)
    original = part10(dataset(arr, photometric, bits, **elements))
    compressed = dataset(arr, photometric, bits, **elements)
    compressed = part10(encode(compressed) or compressed)

    ds = pydicom.dcmread(io.BytesIO(compressed))
    assert ds.file_meta.TransferSyntaxUID == syntax and ds["PixelData"].is_undefined_length  # encapsulated
    np.testing.assert_array_equal(ds.pixel_array, arr)  # the stored values themselves, before 8-bit scaling
    want, got = decode_image(original), decode_image(compressed)
    assert (got.format, got.mode, got.orig_height, got.orig_width) == ("DICOM", photometric, HEIGHT, WIDTH)
    assert want.pixels.std() > 20  # the reference is a picture, not a constant
    np.testing.assert_array_equal(got.pixels, want.pixels)


def test_jpeg_lossless_codestreams_have_the_precision_and_predictor_asked_for():
    """The JPEG lossless streams of the tests above: SOF3 (process 14), the sample precision and predictor
    the test asked for; GDCM writes 12-bit samples at precision 16."""
    arr = chest(12)
    for frame, precision, predictor in ((jpeg_lossless(arr, 12, 1), 12, 1), (jpeg_lossless(arr, 12, 6), 12, 6),
                                        (gdcm_encode(dataset(arr, "MONOCHROME2", 12), JPEGLosslessSV1), 16, 1)):
        assert frame[:4] == b"\xff\xd8\xff\xc3" and frame[6] == precision
        sos = frame.index(b"\xff\xda")
        assert frame[sos + 7] == predictor  # Ss, after Ls, Ns, Cs and Td/Ta


# (id, transfer syntax, bits stored, encode, tolerance: (mean, max) absolute difference of the 8-bit output
# from the original's, about 1.5 times what these encoders give; a decoding mistake such as a missed
# inversion or a wrong bit depth is off by tens on average)
LOSSY = [
    ("jpeg2000-psnr-45", JPEG2000, 12, lambda ds: ds.compress(JPEG2000, j2k_psnr=[45]), (2.0, 12)),
    ("jpeg-ls-near-3", JPEGLSNearLossless, 12, lambda ds: ds.compress(JPEGLSNearLossless, jls_error=3),
     (0.25, 1)),
    ("jpeg-baseline-q90", JPEGBaseline8Bit, 8,
     lambda ds: with_frame(ds, JPEGBaseline8Bit, pillow_jpeg(ds, quality=90)), (3.5, 24)),
    ("jpeg-extended-8bit", JPEGExtended12Bit, 8,
     lambda ds: with_frame(ds, JPEGExtended12Bit, gdcm_encode(ds, JPEGExtended12Bit)), (0.5, 4)),
]


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("case", LOSSY, ids=[c[0] for c in LOSSY])
def test_lossy_syntax_decodes_close_to_the_original(case, photometric):
    _, syntax, bits, encode, (mean_tol, max_tol) = case
    arr = chest(bits)
    original = part10(dataset(arr, photometric, bits))
    compressed = dataset(arr, photometric, bits)
    compressed = part10(encode(compressed) or compressed)

    ds = pydicom.dcmread(io.BytesIO(compressed))
    assert ds.file_meta.TransferSyntaxUID == syntax and ds["PixelData"].is_undefined_length  # encapsulated
    stored_error = np.abs(ds.pixel_array.astype(int) - arr)
    assert stored_error.max() > 0  # really lossy, so the tolerance is tested
    if syntax == JPEGLSNearLossless:
        assert stored_error.max() <= 3  # the NEAR bound
    want, got = decode_image(original), decode_image(compressed)
    assert (got.format, got.mode, got.orig_height, got.orig_width) == ("DICOM", photometric, HEIGHT, WIDTH)
    error = np.abs(got.pixels.astype(int) - want.pixels.astype(int))
    assert error.mean() <= mean_tol and error.max() <= max_tol


def unsupported_file(uid: str) -> bytes:
    """A valid JPEG 2000 lossless file whose file meta then names transfer syntax `uid` instead."""
    ds = dataset(chest(12), "MONOCHROME2", 12)
    ds.compress(JPEG2000Lossless)
    return with_transfer_syntax(part10(ds), uid)


@pytest.mark.parametrize("uid, name", [
    ("1.2.840.10008.1.2.4.110", "JPEG XL Lossless"),  # newer than the pinned pydicom
    ("1.2.840.10008.1.2.8.1", "Deflated Image Frame Compression"),  # newer than the pinned pydicom
    ("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile / Main Level"),  # known to pydicom, no decoder
    ("1.2.840.10008.1.2.4.93", "JPEG 2000 Part 2 Multi-component Image Compression"),
    ("1.2.840.113619.5.2", "unknown transfer syntax"),  # a vendor's private syntax
])
def test_a_syntax_without_decoder_is_unsupported_transfer_syntax_naming_it(uid, name):
    data = unsupported_file(uid)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == uid
    err = decode_error(data)
    assert err.reason == "unsupported_transfer_syntax"
    assert err.detail.startswith(f"{name} ({uid})"), err.detail
    assert decode_image(unsupported_file(JPEG2000Lossless)).pixels.std() > 20  # the same file, rightly named


def test_12_bit_jpeg_extended_is_unsupported_transfer_syntax():
    """pydicom's GDCM and Pillow plugins decode only 8-bit JPEG Extended (the 8-bit case is above)."""
    ds = dataset(chest(12), "MONOCHROME2", 12)
    data = part10(with_frame(ds, JPEGExtended12Bit, gdcm_encode(ds, JPEGExtended12Bit)))
    err = decode_error(data)
    assert err.reason == "unsupported_transfer_syntax"
    assert err.detail.startswith("JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51) with 12-bit samples")


def test_broken_compressed_data_stays_dicom_error():
    ds = dataset(chest(12), "MONOCHROME2", 12)
    data = part10(with_frame(ds, JPEGLosslessSV1, jpeg_lossless(chest(12), 12, 1)[:300]))
    assert decode_error(data).reason == "dicom_error"


MISSING_PLUGIN = """
import json, sys
sys.modules["gdcm"] = None  # as if python-gdcm were not installed: importing it raises ImportError
from cxrspark.images import DecodeError, decode_image
out = {}
for path in sys.argv[1:]:
    try:
        out[path] = ["decoded", float(decode_image(open(path, "rb").read()).pixels.std())]
    except DecodeError as exc:
        out[path] = [exc.reason, exc.detail]
print(json.dumps(out))
"""


def test_a_missing_plugin_is_unsupported_transfer_syntax_naming_what_to_install(tmp_path):
    """Without python-gdcm nothing installed decodes JPEG lossless; JPEG 2000 still decodes (openjpeg)."""
    arr = chest(12)
    lossless = tmp_path / "jpeg-lossless.dcm"
    ds = dataset(arr, "MONOCHROME2", 12)
    lossless.write_bytes(part10(with_frame(ds, JPEGLosslessSV1, jpeg_lossless(arr, 12, 1))))
    j2k = tmp_path / "jpeg2000.dcm"
    ds = dataset(arr, "MONOCHROME2", 12)
    ds.compress(JPEG2000Lossless)
    j2k.write_bytes(part10(ds))
    run = subprocess.run([sys.executable, "-c", MISSING_PLUGIN, str(lossless), str(j2k)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    reason, detail = out[str(lossless)]
    assert reason == "unsupported_transfer_syntax"
    assert detail.startswith(f"{JPEGLosslessSV1.name} ({JPEGLosslessSV1}): no decoding plugin installed")
    assert "gdcm" in detail and "pylibjpeg-libjpeg" in detail
    assert out[str(j2k)][0] == "decoded" and out[str(j2k)][1] > 20
