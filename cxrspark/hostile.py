"""A generated corpus of hostile and broken input, with the outcome ingest must give each item.

``make_hostile_tree(root)`` writes five sources under ``root`` in their native layouts and, next to
them in ``root/outside/``, the files that the escaping entries point to: named pipes (FIFOs, so that
any attempt to read one can be noticed) and one valid PNG. It returns a manifest: every input row
with its kind, expected outcome and reason code (the text before ':' in the output ``reason``; for a
duplicate, ``<kind>_duplicate``). Run ``python -m cxrspark.hostile DIR`` to write a tree and print
its ``sources:`` YAML.

=========================================  =================================  ===========  ===========================
kind                                       where                              outcome      reason
=========================================  =================================  ===========  ===========================
png_16_bit                                 cohen metadata row                 curated      (min-max scaled)
jpeg_cmyk                                  cohen metadata row                 curated      (via RGB to grey)
png_palette_transparency                   cohen metadata row                 curated      (over black)
jpeg_exif_rotated                          cohen metadata row                 curated      (stored upright)
duplicate_metadata_row (first)             cohen metadata row                 curated
duplicate_metadata_row (same line again)   cohen metadata row                 duplicate    exact_duplicate
jpeg_truncated                             cohen metadata row                 quarantined  corrupt_image
png_truncated                              cohen metadata row                 quarantined  corrupt_image
zero_bytes                                 cohen metadata row                 quarantined  empty_file
random_bytes_png                           cohen metadata row                 quarantined  not_an_image
html_error_page_jpg                        cohen metadata row                 quarantined  not_an_image
decompression_bomb_png                     cohen metadata row                 quarantined  decompression_bomb
image_1x1                                  cohen metadata row                 quarantined  too_small
jpeg_header_20000x20000                    cohen metadata row                 quarantined  decompression_bomb
missing_file                               cohen metadata row                 quarantined  missing_file
dotdot_path (to a FIFO)                    cohen metadata row                 quarantined  path_outside_root
absolute_path (to a FIFO)                  cohen metadata row                 quarantined  path_outside_root
symlink_out_fifo_metadata                  cohen metadata row                 quarantined  path_outside_root
symlink_out_png_metadata                   cohen metadata row                 quarantined  path_outside_root
unknown_label                              cohen metadata row                 filtered     unusable_label
ct_row                                     cohen metadata row                 filtered     modality
lateral_row                                cohen metadata row                 filtered     lateral_view
csv_bad_encoding_row                       cohen metadata row                 quarantined  bad_encoding
csv_wrong_field_count                      cohen metadata row                 quarantined  malformed_row
csv_missing_column (each row)              cohen_nocol: no 'finding' column   quarantined  missing_column
csv_whole_file_utf16                       actualmed_utf16 (one source row)   quarantined  source_unreadable
valid_jpeg (control)                       kermany class folder               curated
symlink_out_fifo_class_folder              kermany class folder               quarantined  path_outside_root
symlink_out_png_class_folder               kermany class folder               quarantined  path_outside_root
symlink_dangling_class_folder              kermany class folder               quarantined  missing_file
dicom_without_pixel_data                   rsna labels row                    quarantined  unsupported_image
dicom_noise_after_magic                    rsna labels row                    quarantined  unsupported_image
dicom_truncated_pixel_data                 rsna labels row                    quarantined  dicom_error
dicom_jpeg_ls_monochrome1                  rsna labels row                    curated      (12-bit, inverted)
dicom_jpeg_xl                              rsna labels row                    quarantined  unsupported_transfer_syntax
=========================================  =================================  ===========  ===========================

Notes: of two identical metadata rows the one with the smaller record_id is kept (same image size and
source, see cxrspark.ingest.dedup.KEEP_RULE). pydicom parses noise after the DICM magic as one private
element, so that file is "a DICOM without PixelData". The JPEG XL file is a JPEG 2000 file whose file
meta names JPEG XL Lossless, which no installed plugin decodes. A metadata file whose header cannot be
decoded makes its whole source one quarantined row. Outcomes assume conf/ingest.yaml (max_pixels 50 M,
min_side 64).
"""
from __future__ import annotations

import io
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrspark.sample import (ACTUALMED_HEADER, COHEN_HEADER, COVID, NORMAL, PNEUMONIA, csv_text,
                             decompression_bomb_png, dicom_bytes, encode, phash_reference, synthetic_cxr)
from cxrspark.schema import CURATED, DUPLICATE, FILTERED, QUARANTINED

SEED = 20_000
#: a transfer syntax that no installed plugin decodes (newer than the pinned pydicom's UID dictionary)
JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"
#: curated pictures differ by at least this many bits of the reference pHash (never near duplicates)
MIN_PHASH_DISTANCE = 18
HTML_ERROR_PAGE = (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
                   b"<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>\n")
#: (name, kind) of the corpus sources
SOURCES = (("cohen", "cohen"), ("cohen_nocol", "cohen"), ("actualmed_utf16", "actualmed"),
           ("kermany", "kermany"), ("rsna", "rsna"))


class _Corpus:
    def __init__(self, root: Path):
        self.root = root
        self.items: list[dict[str, Any]] = []
        self.pixels: dict[str, np.ndarray] = {}  # record_id -> the upright grey pixels decoding must give
        self.hashes: list[int] = []

    def picture(self, cls: str, size: tuple[int, int]) -> np.ndarray:
        """A new CXR-like picture, far (in pHash) from every earlier one."""
        for attempt in range(100):
            grey = synthetic_cxr(np.random.default_rng([SEED, len(self.hashes), attempt]), cls, *size)
            h = phash_reference(Image.fromarray(grey))
            if all(bin(h ^ other).count("1") >= MIN_PHASH_DISTANCE for other in self.hashes):
                break
        self.hashes.append(h)
        return grey

    def write(self, rel: str, data: bytes) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def link(self, rel: str, target: Path) -> None:
        """A relative symlink at ``rel`` pointing to ``target``."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(os.path.relpath(target, path.parent))

    def item(self, record_id: str, kind: str, outcome: str, reason: str | None, source_path: str = "",
             detail: str = "") -> None:
        self.items.append({"record_id": record_id, "source": record_id.split(":", 1)[0], "kind": kind,
                           "source_path": source_path, "outcome": outcome, "reason": reason, "detail": detail})


# ---- hostile bytes ------------------------------------------------------------------------------------
def jpeg_claiming(data: bytes, width: int, height: int) -> bytes:
    """A baseline JPEG whose frame header (SOF0) claims width x height; the scan data is unchanged."""
    sof = data.index(b"\xff\xc0")
    out = bytearray(data)
    out[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(out)


def palette_png_with_transparency(grey: np.ndarray) -> tuple[bytes, np.ndarray]:
    """A palette PNG of ``grey`` (grey palette) whose upper-left quarter uses a fully transparent red
    entry, and the pixels a decoder must give (transparent = composited over black = 0)."""
    grey = np.minimum(grey, 254)
    index = grey.copy()
    h, w = grey.shape
    index[: h // 2, : w // 2] = 255
    img = Image.fromarray(index)
    img.putpalette([v for i in range(255) for v in (i, i, i)] + [255, 0, 0])
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=255)
    expected = grey.copy()
    expected[: h // 2, : w // 2] = 0
    return buf.getvalue(), expected


def dicom_without_pixels(grey: np.ndarray, patient_id: str) -> bytes:
    """A valid CR DICOM header (view, sex, age ...) with the PixelData element removed."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(grey, patient_id, view="PA", sex="F", age="050")))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def compressed_dicom(grey: np.ndarray, patient_id: str, syntax: str) -> bytes:
    """A 12-bit MONOCHROME1 CR DICOM of ``grey`` compressed by pydicom in transfer ``syntax`` (JPEG-LS,
    JPEG 2000 or RLE lossless: decoding gives ``grey`` back when it spans 0..255)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(grey, patient_id, view="PA", sex="F", age="060", monochrome1=True)))
    ds.compress(syntax)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the RSNA-style age '060' (see cxrspark.sample.dicom_bytes)
        warnings.simplefilter("ignore", UserWarning)
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def with_transfer_syntax(data: bytes, uid: str) -> bytes:
    """The DICOM Part 10 file ``data`` with the Transfer Syntax UID of its file meta replaced by ``uid``
    (also one that pydicom refuses to write, such as JPEG XL); the dataset after the meta is unchanged."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = uid
    fp = DicomBytesIO()
    write_file_meta_info(fp, meta, enforce_standard=True)
    end_of_meta = 144 + int.from_bytes(data[140:144], "little")  # after (0002,0000) File Meta Group Length
    return data[:132] + fp.getvalue() + data[end_of_meta:]


def _full_range(grey: np.ndarray) -> np.ndarray:
    """``grey`` stretched to 0..255 (a 16-bit copy of it then min-max scales back to exactly this)."""
    g = grey.astype(np.float64)
    return np.rint((g - g.min()) * 255.0 / (g.max() - g.min())).astype(np.uint8)


# ---- outside the source roots ---------------------------------------------------------------------------
def _outside(c: _Corpus) -> dict[str, Any]:
    """root/outside/: one FIFO per escaping entry (a regular empty file where FIFOs do not exist) and a
    valid PNG that two symlinks point to."""
    folder = c.root / "outside"
    folder.mkdir(parents=True, exist_ok=True)
    fifos = {}
    for name in ("dotdot", "absolute", "cohen-link", "kermany-link"):
        path = folder / f"{name}.png"
        if hasattr(os, "mkfifo"):
            os.mkfifo(path)
        else:
            path.write_bytes(b"")
        fifos[name] = path
    secret = c.picture(NORMAL, (144, 144))
    png = c.write("outside/secret.png", encode(secret, "png-L"))
    return {"dir": str(folder), "fifos": {k: str(v) for k, v in fifos.items()}, "png": str(png),
            "png_pixels": secret}


# ---- the sources ------------------------------------------------------------------------------------------
def _cohen(c: _Corpus, out: dict[str, Any]) -> None:
    s = "cohen"
    rows: list[tuple[list[str], str, str, str | None, str]] = []  # cells, kind, outcome, reason, detail

    def cells(pid: str, filename: str, finding: str = "COVID-19", view: str = "PA", modality: str = "X-ray",
              notes: str = "") -> list[str]:
        row = dict.fromkeys(COHEN_HEADER, "")
        row.update(patientid=pid, finding=finding, view=view, modality=modality, folder="images",
                   filename=filename, clinical_notes=notes)
        return [row[h] for h in COHEN_HEADER]

    def add(row: list[str], kind: str, outcome: str = QUARANTINED, reason: str | None = None,
            detail: str = "") -> None:
        rows.append((row, kind, outcome, reason, detail))

    def image(name: str, data: bytes) -> str:
        c.write(f"{s}/images/{name}", data)
        return name

    expected: dict[int, np.ndarray] = {}  # row index -> pixels decoding must give
    grey = _full_range(c.picture(COVID, (150, 170)))
    expected[len(rows)] = grey
    add(cells("1", image("sixteen-bit.png", encode(grey, "png-16"))), "png_16_bit", CURATED,
        detail="16-bit greyscale PNG spanning 0..65535")
    grey = c.picture(COVID, (160, 150))
    expected[len(rows)] = grey
    add(cells("2", image("cmyk.jpg", encode(grey, "jpeg-CMYK"))), "jpeg_cmyk", CURATED, detail="CMYK JPEG")
    data, pixels = palette_png_with_transparency(c.picture(COVID, (140, 160)))
    expected[len(rows)] = pixels
    add(cells("3", image("palette.png", data)), "png_palette_transparency", CURATED,
        detail="palette PNG, upper-left quarter fully transparent")
    grey = c.picture(COVID, (120, 180))
    expected[len(rows)] = grey
    add(cells("4", image("exif-rotated.jpg", encode(grey, "jpeg-exif"))), "jpeg_exif_rotated", CURATED,
        detail="stored rotated 90 degrees, EXIF Orientation 6; upright it is 120 high, 180 wide")
    dup = cells("5", image("twice.png", encode(c.picture(COVID, (150, 150)), "png-L")))
    add(dup, "duplicate_metadata_row", CURATED, detail="first of two identical lines")
    add(list(dup), "duplicate_metadata_row", DUPLICATE, "exact_duplicate", "the same line again")
    jpeg = encode(c.picture(COVID, (160, 160)), "jpeg-L")
    add(cells("6", image("truncated.jpg", jpeg[: len(jpeg) // 2])), "jpeg_truncated", reason="corrupt_image")
    png = encode(c.picture(COVID, (160, 160)), "png-L")
    add(cells("7", image("truncated.png", png[: len(png) // 2])), "png_truncated", reason="corrupt_image")
    add(cells("8", image("zero.png", b"")), "zero_bytes", reason="empty_file")
    add(cells("9", image("random.png", np.random.default_rng(SEED).bytes(4096))), "random_bytes_png",
        reason="not_an_image")
    add(cells("10", image("error-page.jpg", HTML_ERROR_PAGE)), "html_error_page_jpg", reason="not_an_image")
    add(cells("11", image("bomb.png", decompression_bomb_png())), "decompression_bomb_png",
        reason="decompression_bomb", detail="8000x8000 1-bit PNG of a few KB")
    add(cells("12", image("pixel.png", encode(np.full((1, 1), 128, np.uint8), "png-L"))), "image_1x1",
        reason="too_small")
    small = encode(c.picture(COVID, (64, 64)), "jpeg-L")
    add(cells("13", image("huge-header.jpg", jpeg_claiming(small, 20000, 20000))), "jpeg_header_20000x20000",
        reason="decompression_bomb", detail="64x64 JPEG whose frame header says 20000x20000")
    add(cells("14", "not-in-the-snapshot.png"), "missing_file", reason="missing_file")
    add(cells("15", "../../outside/dotdot.png"), "dotdot_path", reason="path_outside_root")
    add(cells("16", out["fifos"]["absolute"]), "absolute_path", reason="path_outside_root")
    c.link(f"{s}/images/linked-pipe.png", Path(out["fifos"]["cohen-link"]))
    add(cells("17", "linked-pipe.png"), "symlink_out_fifo_metadata", reason="path_outside_root")
    c.link(f"{s}/images/linked-secret.png", Path(out["png"]))
    add(cells("18", "linked-secret.png"), "symlink_out_png_metadata", reason="path_outside_root")
    add(cells("19", image("unknown.png", encode(c.picture(COVID, (128, 128)), "png-L")), "Chickenpox"),
        "unknown_label", FILTERED, "unusable_label")
    add(cells("20", image("ct.png", encode(c.picture(COVID, (128, 128)), "png-L")), view="Axial",
              modality="CT"), "ct_row", FILTERED, "modality")
    add(cells("21", image("lateral.png", encode(c.picture(COVID, (128, 128)), "png-L")), view="L"),
        "lateral_row", FILTERED, "lateral_view")
    add(cells("22", image("latin1.png", encode(c.picture(COVID, (128, 128)), "png-L")),
              notes="caf@@LATIN1@@ au lait"), "csv_bad_encoding_row", reason="bad_encoding",
        detail="one Latin-1 byte (0xE9) in the UTF-8 file")
    add(["23", "0", "M", "50", "COVID-19", "PA"], "csv_wrong_field_count", reason="malformed_row")

    text = csv_text(COHEN_HEADER, [r[0] for r in rows]).encode("utf-8")
    c.write(f"{s}/metadata.csv", text.replace(b"@@LATIN1@@", "é".encode("latin-1")))
    for i, (row, kind, outcome, reason, detail) in enumerate(rows):
        record_id = f"{s}:L{i + 2}"  # line 1 is the header
        filename = row[COHEN_HEADER.index("filename")] if len(row) == len(COHEN_HEADER) else ""
        unreadable = reason in ("bad_encoding", "malformed_row")  # nothing of the row is known
        source_path = "" if unreadable else filename if os.path.isabs(filename) else f"images/{filename}"
        c.item(record_id, kind, outcome, reason, source_path, detail)
        if i in expected:
            c.pixels[record_id] = expected[i]


def _cohen_nocol(c: _Corpus) -> None:
    s = "cohen_nocol"
    header = [h for h in COHEN_HEADER if h != "finding"]
    rows = []
    for pid in ("1", "2"):
        name = f"nocol-{pid}.png"
        c.write(f"{s}/images/{name}", encode(c.picture(COVID, (128, 128)), "png-L"))
        row = dict.fromkeys(header, "")
        row.update(patientid=pid, view="PA", modality="X-ray", folder="images", filename=name)
        rows.append([row[h] for h in header])
    c.write(f"{s}/metadata.csv", csv_text(header, rows).encode("utf-8"))
    for lineno in range(2, 2 + len(rows)):
        c.item(f"{s}:L{lineno}", "csv_missing_column", QUARANTINED, "missing_column",
               detail="metadata.csv has no 'finding' column; its images exist")


def _actualmed_utf16(c: _Corpus) -> None:
    s = "actualmed_utf16"
    c.write(f"{s}/images/a.png", encode(c.picture(COVID, (128, 128)), "png-L"))
    row = ["ANON1", "", "", "", "COVID-19", "", "", "", "PA", "X-ray", "a.png", "", ""]
    c.write(f"{s}/metadata.csv", csv_text(ACTUALMED_HEADER, [row]).encode("utf-16"))
    c.item(f"{s}:<source>", "csv_whole_file_utf16", QUARANTINED, "source_unreadable",
           detail="a UTF-16 metadata file in a UTF-8 source: the header cannot be read")


def _kermany(c: _Corpus, out: dict[str, Any]) -> None:
    s = "kermany"
    entries = []
    for rel, cls in (("train/NORMAL/IM-0001-0001.jpeg", NORMAL),
                     ("train/PNEUMONIA/person1_bacteria_1.jpeg", PNEUMONIA)):
        c.write(f"{s}/{rel}", encode(c.picture(cls, (160, 160)), "jpeg-RGB"))
        entries.append((rel, "valid_jpeg", CURATED, None))
    c.link(f"{s}/train/NORMAL/IM-0002-0001.jpeg", Path(out["fifos"]["kermany-link"]))
    entries.append(("train/NORMAL/IM-0002-0001.jpeg", "symlink_out_fifo_class_folder", QUARANTINED,
                    "path_outside_root"))
    c.link(f"{s}/train/NORMAL/IM-0003-0001.jpeg", Path(out["png"]))
    entries.append(("train/NORMAL/IM-0003-0001.jpeg", "symlink_out_png_class_folder", QUARANTINED,
                    "path_outside_root"))
    c.link(f"{s}/train/PNEUMONIA/person2_virus_2.jpeg", c.root / s / "train" / "PNEUMONIA" / "gone.jpeg")
    entries.append(("train/PNEUMONIA/person2_virus_2.jpeg", "symlink_dangling_class_folder", QUARANTINED,
                    "missing_file"))
    for rel, kind, outcome, reason in sorted(entries):
        c.item(f"{s}:{rel}", kind, outcome, reason, rel)


def _rsna(c: _Corpus) -> None:
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

    s = "rsna"
    specs = [
        ("no-pixels", dicom_without_pixels(c.picture(PNEUMONIA, (128, 128)), "no-pixels"),
         "dicom_without_pixel_data", "unsupported_image"),
        ("noise", b"\0" * 128 + b"DICM" + np.random.default_rng(SEED + 1).bytes(2048),
         "dicom_noise_after_magic", "unsupported_image"),
        ("truncated", dicom_bytes(c.picture(PNEUMONIA, (128, 128)), "truncated", view="PA", sex="M",
                                  age="040")[:-100], "dicom_truncated_pixel_data", "dicom_error"),
        ("jpeg-xl", with_transfer_syntax(compressed_dicom(c.picture(PNEUMONIA, (128, 128)), "jpeg-xl",
                                                          JPEG2000Lossless), JPEG_XL_LOSSLESS),
         "dicom_jpeg_xl", "unsupported_transfer_syntax"),
    ]
    grey = _full_range(c.picture(PNEUMONIA, (150, 140)))
    specs.append(("jpeg-ls", compressed_dicom(grey, "jpeg-ls", JPEGLSLossless), "dicom_jpeg_ls_monochrome1", None))
    labels = []
    for pid, data, _, _ in specs:
        c.write(f"{s}/stage_2_train_images/{pid}.dcm", data)
        labels.append([pid, 20, 30, 40, 50, 1])  # Target 1: Lung Opacity, so it goes on to decoding
    c.write(f"{s}/stage_2_train_labels.csv",
            csv_text(["patientId", "x", "y", "width", "height", "Target"], labels).encode("utf-8"))
    for lineno, (pid, _, kind, reason) in enumerate(specs, start=2):
        c.item(f"{s}:L{lineno}", kind, CURATED if reason is None else QUARANTINED, reason,
               f"stage_2_train_images/{pid}.dcm")
        if reason is None:
            c.pixels[f"{s}:L{lineno}"] = grey


def make_hostile_tree(root: Path | str) -> dict[str, Any]:
    """Write the corpus under ``root`` (see the module docstring) and return its manifest.

    Keys: ``sources`` ([{name, kind, root}]), ``items`` (one per input row: record_id, source, kind,
    source_path, outcome, reason code, detail), ``expected`` (rows and the count of each outcome),
    ``pixels`` ({record_id: the upright 2-D uint8 pixels decoding must give} for the decoded kinds)
    and ``outside`` (dir, fifos {name: path}, png, png_pixels: what no output row may come from).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    c = _Corpus(root)
    out = _outside(c)
    _cohen(c, out)
    _cohen_nocol(c)
    _actualmed_utf16(c)
    _kermany(c, out)
    _rsna(c)
    counts = {o: sum(1 for i in c.items if i["outcome"] == o) for o in (CURATED, FILTERED, DUPLICATE, QUARANTINED)}
    return {
        "sources": [{"name": name, "kind": kind, "root": str(root / name)} for name, kind in SOURCES],
        "items": c.items,
        "expected": {"rows": len(c.items), **counts},
        "pixels": c.pixels,
        "outside": out,
    }


def sources_config(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """conf/sources.yaml-style entries for the corpus: [{name, kind, root, options}]."""
    return [{"name": s["name"], "kind": s["kind"], "root": s["root"], "options": {}} for s in manifest["sources"]]


def main(argv: list[str] | None = None) -> int:
    import yaml

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m cxrspark.hostile OUT_DIR", file=sys.stderr)
        return 2
    manifest = make_hostile_tree(Path(argv[0]))
    for item in manifest["items"]:
        print(f"# {item['record_id']:<45} {item['kind']:<32} {item['outcome']:<12} {item['reason'] or ''}")
    print(yaml.safe_dump({"sources": sources_config(manifest)}, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
