"""A small generated source tree that mimics every supported source layout, with planted problems.

``make_sample_tree(root, seed)`` writes ``root/<source>/`` for the eight sample sources (cohen,
figure1, actualmed, mhh, darkcovidnet, kermany, radiography, rsna) in their native layouts, metadata
formats and image encodings, and returns a manifest with the outcome the ingest pipeline must reach
for every input row. The same seed gives the same bytes.

Images are synthetic chest-X-ray-like pictures (a random low-frequency field, two darker lungs, mild
noise), each from its own random seed so that no two base images are perceptual duplicates; each
class looks systematically different (COVID-19: bright peripheral blobs in both lower lungs;
Pneumonia: one dense patch; Normal: clean lungs) so a classifier can learn something.

Outcome semantics (each row ends in exactly one outcome, checked in this order):

a. quarantined at metadata stage (the adapter sets ``error``: missing_file, path_outside_root,
   malformed_row, bad_encoding);
b. filtered: modality not X-ray -> 'modality', view Lateral -> 'lateral_view', other non-frontal known
   view -> 'non_frontal_view', unusable finding -> 'unusable_label';
c. quarantined at decode: empty_file, corrupt_image, not_an_image, decompression_bomb;
d. duplicates: every planted copy (exact or near) of a kept image is one 'duplicate'; a group of
   identical images with different labels is quarantined whole ('duplicate_label_conflict');
e. curated.

Run ``python -m cxrspark.sample OUT_DIR [SEED]`` to write a tree and print its manifest.
"""
from __future__ import annotations

import csv
import io
import json
import re
import struct
import sys
import uuid
import warnings
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrspark.sources._common import under

CURATED, FILTERED, DUPLICATE, QUARANTINED = "curated", "filtered", "duplicate", "quarantined"
COVID, NORMAL, PNEUMONIA, OTHER = "COVID-19", "Normal", "Pneumonia", "other"

# (name, kind) of the sample sources, in the order they are written and listed
SOURCES = (
    ("cohen", "cohen"),
    ("figure1", "figure1"),
    ("actualmed", "actualmed"),
    ("mhh", "mhh"),
    ("darkcovidnet", "darkcovidnet"),
    ("kermany", "kermany"),
    ("radiography", "covid_radiography"),
    ("rsna", "rsna"),
)

# stage of each reason code (a: metadata, b: filter, c: decode, d: dedup)
STAGES = {
    "missing_file": "metadata", "path_outside_root": "metadata", "malformed_row": "metadata",
    "bad_encoding": "metadata",
    "modality": "filter", "lateral_view": "filter", "non_frontal_view": "filter", "unusable_label": "filter",
    "empty_file": "decode", "corrupt_image": "decode", "not_an_image": "decode",
    "decompression_bomb": "decode",
    "duplicate_label_conflict": "dedup", "exact_duplicate": "dedup", "near_duplicate": "dedup",
}

COHEN_HEADER = [
    "patientid", "offset", "sex", "age", "finding", "survival", "intubated", "intubation_present",
    "went_icu", "in_icu", "needed_supplemental_O2", "extubated", "temperature", "pO2_saturation",
    "leukocyte_count", "neutrophil_count", "lymphocyte_count", "view", "modality", "date", "location",
    "folder", "filename", "doi", "url", "license", "clinical_notes", "other_notes", "",
]
INITIATIVE_HEADER = ["patientid", "offset", "sex", "age", "finding", "survival", "temperature",
                     "pO2 saturation", "view", "modality", "artifacts/distortion", "notes"]
ACTUALMED_HEADER = ["patientid", "offset", "sex", "age", "finding", "survival", "temperature",
                    "pO2 saturation", "view", "modality", "imagename", "artifacts/distortion", "notes"]
MHH_HEADER = [
    "patient_id", "image_id", "sex", "age", "size", "weight", "admission_offset", "icu_admission_offset",
    "icu_release_offset", "death_offset", "modality", "projection", "crp_offset", "crp_val",
    "d-dimer_offset", "d-dimer_val", "factor_xii_offset", "factor_xii_val", "ldh_offset", "ldh_val",
    "lymphocytes_offset", "lymphocytes_val", "neutrophils_offset", "neutrophils_val", "pco2_offset",
    "pco2_val", "po2_offset", "po2_val",
]
_FIXED_TIME = (2020, 6, 22, 0, 0, 0)
#: base pictures differ from each other by at least this many bits of the reference 64-bit pHash
MIN_PHASH_DISTANCE = 18


# ---- synthetic pictures ----------------------------------------------------------------------------
def synthetic_cxr(rng: np.random.Generator, cls: str, height: int, width: int) -> np.ndarray:
    """A CXR-like uint8 greyscale picture of class ``cls`` (COVID-19 / Normal / Pneumonia / other)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy /= height
    xx /= width
    # random low-frequency field: what makes two pictures perceptually different
    grid = rng.random((6, 6)).astype(np.float32)
    field = np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC))
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    img = 0.2 + 0.6 * field
    # body outline: darker outside a large ellipse
    body = ((xx - 0.5) / 0.47) ** 2 + ((yy - 0.56) / 0.55) ** 2
    img *= np.where(body > 1.0, 0.7, 1.0)
    # mediastinum / spine
    img += 0.10 * np.exp(-((xx - 0.5) / 0.05) ** 2)
    lungs = []
    for side in (-1, 1):
        cx = 0.5 + side * rng.uniform(0.17, 0.21)
        cy = rng.uniform(0.42, 0.48)
        rx, ry = rng.uniform(0.12, 0.16), rng.uniform(0.26, 0.32)
        d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        img -= 0.18 * np.clip((1.0 - d) * 3.0, 0.0, 1.0)
        lungs.append((side, cx, cy, rx, ry))

    def blob(cx: float, cy: float, sigma: float, amp: float) -> None:
        nonlocal img
        img = img + amp * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2)))

    if cls == COVID:  # bilateral peripheral ground-glass in the lower zones
        for side, cx, cy, rx, ry in lungs:
            for _ in range(3):
                blob(cx + side * rx * rng.uniform(0.3, 0.75), cy + ry * rng.uniform(0.2, 0.7),
                     rng.uniform(0.035, 0.05), rng.uniform(0.3, 0.4))
    elif cls == PNEUMONIA:  # one dense lobar consolidation
        side, cx, cy, rx, ry = lungs[int(rng.integers(2))]
        blob(cx + rx * rng.uniform(-0.4, 0.4), cy + ry * rng.uniform(-0.5, 0.5), rng.uniform(0.07, 0.09),
             rng.uniform(0.5, 0.6))
    elif cls == OTHER:  # something else: a diffuse haze over one whole lung
        side, cx, cy, rx, ry = lungs[int(rng.integers(2))]
        blob(cx, cy, rng.uniform(0.10, 0.14), 0.15)
    img = img + rng.normal(0.0, 0.02, img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def textured_cxr(seed: int, height: int = 420, width: int = 380) -> np.ndarray:
    """A :func:`synthetic_cxr` with the fine structure real films have (vessel-like blobs at several
    scales, rib arcs, grain), so that keypoints find enough detail: the pictures of the near-duplicate
    tests. Different seeds give look-alikes (same anatomy, different detail)."""
    rng = np.random.default_rng(seed)
    img = synthetic_cxr(rng, NORMAL, height, width).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(160):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        s, amp = rng.uniform(1.5, 6.0), rng.uniform(-40.0, 40.0)
        y0, y1 = int(max(0, cy - 4 * s)), int(min(height, cy + 4 * s))
        x0, x1 = int(max(0, cx - 4 * s)), int(min(width, cx + 4 * s))
        img[y0:y1, x0:x1] += amp * np.exp(-((yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2) / (2 * s * s))
    for k in range(8):
        y = height * (0.2 + 0.08 * k)
        img += rng.uniform(10.0, 25.0) * np.exp(-((yy - y - 0.15 * height * np.sin(np.pi * xx / width)) ** 2) / 18.0)
    img += rng.normal(0.0, 4.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _rgb(grey: np.ndarray) -> np.ndarray:
    """A colour version of a grey picture (a faint tint, as scanned films and screenshots have)."""
    g = grey.astype(np.int16)
    return np.clip(np.stack([g + 3, g, g - 4], axis=-1), 0, 255).astype(np.uint8)


def encode(grey: np.ndarray, fmt: str) -> bytes:
    """Encode a grey picture: jpeg-L, jpeg-RGB, jpeg-CMYK, jpeg-exif, png-L, png-RGB, png-RGBA, png-P, png-16."""
    buf = io.BytesIO()
    img = Image.fromarray(grey)
    if fmt == "jpeg-L":
        img.save(buf, "JPEG", quality=90)
    elif fmt == "jpeg-RGB":
        Image.fromarray(_rgb(grey)).save(buf, "JPEG", quality=90)
    elif fmt == "jpeg-CMYK":
        Image.fromarray(_rgb(grey)).convert("CMYK").save(buf, "JPEG", quality=90)
    elif fmt == "jpeg-exif":
        # stored rotated; EXIF Orientation 6 says "rotate 90 degrees clockwise to display"
        exif = Image.Exif()
        exif[0x0112] = 6
        img.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    elif fmt == "png-L":
        img.save(buf, "PNG")
    elif fmt == "png-RGB":
        Image.fromarray(_rgb(grey)).save(buf, "PNG")
    elif fmt == "png-RGBA":
        rgba = np.concatenate([_rgb(grey), np.full(grey.shape + (1,), 255, np.uint8)], axis=-1)
        Image.fromarray(rgba).save(buf, "PNG")
    elif fmt == "png-P":
        Image.fromarray(_rgb(grey)).quantize(colors=128).save(buf, "PNG")
    elif fmt == "png-16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(buf, "PNG")
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return buf.getvalue()


def decompression_bomb_png(width: int = 8000, height: int = 8000) -> bytes:
    """A valid 1-bit PNG of width x height (64 M pixels by default) that compresses to a few KB."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte + packed bits
    idat = zlib.compress(row * height, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def dicom_bytes(grey: np.ndarray, patient_id: str, *, view: str, sex: str, age: str,
                monochrome1: bool = False) -> bytes:
    """A CR DICOM file (explicit VR little endian): 8-bit MONOCHROME2, or 12-bit MONOCHROME1."""
    with warnings.catch_warnings():  # RSNA writes ages such as '051' (DICOM wants '051Y'): keep that quirk
        warnings.simplefilter("ignore", UserWarning)
        return _dicom_bytes(grey, patient_id, view=view, sex=sex, age=age, monochrome1=monochrome1)


def _dicom_bytes(grey: np.ndarray, patient_id: str, *, view: str, sex: str, age: str, monochrome1: bool) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    uid = generate_uid(entropy_srcs=["cxrspark-sample", patient_id])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["cxrspark-sample-study", patient_id])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["cxrspark-sample-series", patient_id])
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.PatientSex = sex
    ds.PatientAge = age
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    if monochrome1:  # high values are dark: the decoder must invert
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelData = (4095 - grey.astype(np.uint16) * 16).astype("<u2").tobytes()
    else:
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = grey.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _deterministic_zip(data: bytes) -> bytes:
    """Rewrite an OOXML zip (openpyxl output) with fixed timestamps so that its bytes are reproducible."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            content = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                content = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", b"2020-06-22T00:00:00Z", content)
            dst.writestr(zipfile.ZipInfo(info.filename, date_time=_FIXED_TIME), content,
                         compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def xlsx_bytes(rows: list[list[Any]]) -> bytes:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    for row in rows:
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return _deterministic_zip(buf.getvalue())


def csv_text(header: list[str], rows: list[list[Any]], lineterminator: str = "\n") -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=lineterminator)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def phash_reference(data: bytes | Image.Image) -> int:
    """64-bit DCT perceptual hash (imagehash-style: 32x32 grey, 2-D DCT, 8x8 low frequencies > median).

    A reference used to check that planted near duplicates are near and base images are not.
    """
    from scipy.fft import dct

    img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    small = np.asarray(img.convert("L").resize((32, 32), Image.LANCZOS), dtype=np.float64)
    low = dct(dct(small, axis=0), axis=1)[:8, :8]
    bits = (low > np.median(low)).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


# ---- the tree ---------------------------------------------------------------------------------------
class _Tree:
    def __init__(self, root: Path, seed: int):
        self.root = root
        self.seed = seed
        self.n_pictures = 0
        self.hashes: list[int] = []
        self.rows: list[dict[str, Any]] = []
        self.planted: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}  # "<source>/<relative path>" -> bytes written
        self.bases: list[str] = []  # files holding a distinct base picture (for the pHash check)

    # pictures and files
    def picture(self, cls: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """A new base picture, at least MIN_PHASH_DISTANCE bits (reference pHash) from every earlier one."""
        index = self.n_pictures
        self.n_pictures += 1
        for attempt in range(100):
            rng = np.random.default_rng([self.seed, index, attempt])
            shape = size or (int(rng.integers(128, 201)), int(rng.integers(128, 201)))
            grey = synthetic_cxr(rng, cls, *shape)
            h = phash_reference(Image.fromarray(grey))
            if all(bin(h ^ other).count("1") >= MIN_PHASH_DISTANCE for other in self.hashes):
                break
        self.hashes.append(h)
        return grey

    def write(self, source: str, rel: str, data: bytes, base: bool = False) -> bytes:
        path = self.root / source / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.files[f"{source}/{rel}"] = data
        if base:
            self.bases.append(f"{source}/{rel}")
        return data

    def image(self, source: str, rel: str, cls: str, fmt: str, size: tuple[int, int] | None = None) -> bytes:
        return self.write(source, rel, encode(self.picture(cls, size), fmt), base=True)

    # bookkeeping
    def row(self, record_id: str, source_path: str, label: str | None, outcome: str = CURATED,
            reason: str | None = None, *, group: str | None = None, **detail: Any) -> None:
        source = record_id.split(":", 1)[0]
        row = {"record_id": record_id, "source": source, "source_path": source_path, "label": label,
               "outcome": outcome, "reason": reason}
        if group:
            row["dup_group"] = group
        self.rows.append(row)
        if outcome != CURATED or detail or group:
            self.planted.append({**row, "stage": STAGES.get(reason or "", "dedup" if group else None), **detail})

    def find(self, source: str, source_path: str) -> str:
        """record_id of an already written row."""
        return next(r["record_id"] for r in self.rows if r["source"] == source and r["source_path"] == source_path)

    def manifest(self) -> dict[str, Any]:
        outcomes = Counter(r["outcome"] for r in self.rows)
        reasons = Counter(r["reason"] for r in self.rows if r["reason"] and r["outcome"] != DUPLICATE)
        dup_kinds = Counter(r["reason"] for r in self.rows if r["outcome"] == DUPLICATE)
        per_source: dict[str, dict[str, int]] = {}
        for r in self.rows:
            counts = per_source.setdefault(r["source"], {"rows": 0, CURATED: 0, FILTERED: 0, "duplicates": 0,
                                                          QUARANTINED: 0})
            counts["rows"] += 1
            counts["duplicates" if r["outcome"] == DUPLICATE else r["outcome"]] += 1
        curated_labels = Counter(r["label"] for r in self.rows if r["outcome"] == CURATED)
        return {
            "seed": self.seed,
            "sources": [{"name": name, "kind": kind, "root": str(self.root / name)} for name, kind in SOURCES],
            "expected": {"rows": len(self.rows), "curated": outcomes[CURATED], "filtered": outcomes[FILTERED],
                         "duplicates": outcomes[DUPLICATE], "quarantined": outcomes[QUARANTINED]},
            "expected_reasons": dict(sorted(reasons.items())),
            "expected_duplicates": dict(sorted(dup_kinds.items())),
            "expected_curated_labels": dict(sorted(curated_labels.items())),
            "per_source": per_source,
            "planted": self.planted,
            "rows": self.rows,
        }


def _cohen(t: _Tree) -> None:
    s = "cohen"
    doi, url = "10.0000/sample.cohen", "https://example.org/cohen/case"
    rows: list[tuple[list[Any] | str, dict[str, Any]]] = []  # (cells or raw line, bookkeeping)

    def cells(pid: str, finding: str, view: str, filename: str, *, modality: str = "X-ray", offset: str = "0",
              sex: str = "M", age: str = "60", license: str = "CC BY 4.0", notes: str = "",
              folder: str = "images") -> list[Any]:
        c = dict.fromkeys(COHEN_HEADER, "")
        c.update(patientid=pid, offset=offset, sex=sex, age=age, finding=finding, view=view, modality=modality,
                 date="March 3, 2020", location="Sample Hospital, Somewhere", folder=folder,
                 filename=filename, doi=doi, url=f"{url}-{pid}", license=license, clinical_notes=notes)
        return [c[h] for h in COHEN_HEADER]

    def add(line: list[Any] | str, label: str | None, outcome: str = CURATED, reason: str | None = None,
            **detail: Any) -> None:
        rows.append((line, {"label": label, "outcome": outcome, "reason": reason, **detail}))

    # patient 1: three images on three days (several images per patient), one file used by two rows
    t.image(s, "images/covid-p1-day0.jpg", COVID, "jpeg-L")
    add(cells("1", "COVID-19", "PA", "covid-p1-day0.jpg"), COVID)
    t.image(s, "images/covid-p1-day3.png", COVID, "png-RGB")
    add(cells("1", "COVID-19", "AP", "covid-p1-day3.png", offset="3", license=" "), COVID)
    t.image(s, "images/covid-p1-day7.jpeg", COVID, "jpeg-RGB")
    add(cells("1", "COVID-19", "AP Supine", "covid-p1-day7.jpeg", offset="7"), COVID, group="cohen-same-file")
    add(cells("1", "COVID-19", "AP Supine", "covid-p1-day7.jpeg", offset="8",
              notes="Same radiograph, described again on day 8."), COVID, DUPLICATE, "exact_duplicate",
        group="cohen-same-file", detail="second metadata row referencing the same file", of_line=4)
    # patient 2: PNG RGBA, copied byte for byte into darkcovidnet/Covid-19
    t.image(s, "images/covid-p2.png", COVID, "png-RGBA")
    add(cells("2", "COVID-19", "PA", "covid-p2.png", sex="F", age="47"), COVID, group="covid-p2")
    # patient 3: JPEG RGB, re-encoded at quality 80 into darkcovidnet/Covid-19
    t.image(s, "images/covid-p3.jpg", COVID, "jpeg-RGB")
    add(cells("3", "COVID-19", "PA", "covid-p3.jpg", age="71"), COVID, group="covid-p3")
    # patient 4: a .jpg file that holds PNG bytes
    t.image(s, "images/covid-p4-ards.jpg", COVID, "png-L")
    add(cells("4", "COVID-19, ARDS", "AP Supine", "covid-p4-ards.jpg", age="58"), COVID,
        detail=".jpg file holding PNG bytes")
    t.image(s, "images/strep-p5.png", PNEUMONIA, "png-P")
    add(cells("5", "Streptococcus", "PA", "strep-p5.png", sex="F", age="33", license="CC BY-NC-SA 4.0"), PNEUMONIA,
        detail="palette PNG")
    t.image(s, "images/sars-p6.jpg", PNEUMONIA, "jpeg-CMYK")
    add(cells("6", "SARS", "PA", "sars-p6.jpg", age="40", license=""), PNEUMONIA, detail="CMYK JPEG")
    t.image(s, "images/pneumonia-p7.jpeg", PNEUMONIA, "jpeg-L")
    add(cells("7", "Pneumonia", "AP", "pneumonia-p7.jpeg", age="66"), PNEUMONIA)
    t.image(s, "images/normal-p8.png", NORMAL, "png-L")
    add(cells("8", "No Finding", "PA", "normal-p8.png", sex="F", age="29"), NORMAL)
    t.image(s, "images/klebsiella-p14.jpg", PNEUMONIA, "jpeg-RGB")
    add(cells("14", "Klebsiella", "AP", "klebsiella-p14.jpg", age="80"), PNEUMONIA)
    # stage b: filtered rows (images present)
    t.image(s, "images/todo-p9.jpg", OTHER, "jpeg-L")
    add(cells("9", "todo", "PA", "todo-p9.jpg"), None, FILTERED, "unusable_label")
    t.image(s, "images/ct-p10-axial.jpg", COVID, "jpeg-L")
    add(cells("10", "COVID-19", "Axial", "ct-p10-axial.jpg", modality="CT"), COVID, FILTERED, "modality")
    t.image(s, "images/covid-p10-L.jpg", COVID, "jpeg-L")
    add(cells("10", "COVID-19", "L", "covid-p10-L.jpg", offset="1"), COVID, FILTERED, "lateral_view")
    t.image(s, "images/ards-p15.png", OTHER, "png-L")
    add(cells("15", "ARDS", "PA", "ards-p15.png"), None, FILTERED, "unusable_label")
    # stage a: rows the adapter cannot map
    add(cells("11", "COVID-19", "PA", "not-in-the-snapshot.jpg"), COVID, QUARANTINED, "missing_file")
    add(cells("12", "COVID-19", "PA", "../../etc/passwd"), COVID, QUARANTINED, "path_outside_root")
    t.image(s, "images/broken-row.jpg", COVID, "jpeg-L")
    add("13,0,M,50,COVID-19,PA,X-ray,images,broken-row.jpg", None, QUARANTINED, "malformed_row",
        detail=f"9 fields instead of {len(COHEN_HEADER)}")
    t.image(s, "images/covid-p16.jpg", COVID, "jpeg-L")
    add(cells("16", "COVID-19", "PA", "covid-p16.jpg", notes="Drinks @@LATIN1@@ au lait daily."), None,
        QUARANTINED, "bad_encoding", unreadable=True, detail="one Latin-1 byte (0xE9) in the UTF-8 file")
    # stage c: a decompression bomb referenced by an otherwise valid row
    t.write(s, "images/huge-scan.png", decompression_bomb_png())
    add(cells("17", "COVID-19", "PA", "huge-scan.png"), COVID, QUARANTINED, "decompression_bomb",
        detail="8000x8000 1-bit PNG (64 M pixels)")

    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(COHEN_HEADER)
    for line, _ in rows:
        if isinstance(line, str):
            text.write(line + "\n")
        else:
            csv.writer(text, lineterminator="\n").writerow(line)
    data = text.getvalue().encode("utf-8").replace(b"@@LATIN1@@", "café".encode("latin-1"))
    t.write(s, "metadata.csv", data)
    for lineno, (line, book) in enumerate(rows, start=2):
        book = dict(book)
        of_line = book.pop("of_line", None)
        if of_line:
            book["of"] = f"{s}:L{of_line}"
        unreadable = book.pop("unreadable", False) or isinstance(line, str)  # nothing of the row is known
        source_path = "" if unreadable else under("images", line[COHEN_HEADER.index("filename")])
        t.row(f"{s}:L{lineno}", source_path, book.pop("label"), book.pop("outcome"), book.pop("reason"), **book)


def _figure1(t: _Tree) -> None:
    s = "figure1"
    rows = []

    def cells(pid: str, finding: str, view: str = "", notes: str = "", sex: str = "", age: str = "") -> list[str]:
        return [pid, "", sex, age, finding, "", "", "", view, "X-ray", "", notes]

    t.image(s, "images/COVID-00001a.jpg", COVID, "jpeg-L")
    rows.append((cells("COVID-00001a", "COVID-19", age="67+", notes="Fièvre 38,5 °C, toux sèche."), COVID, CURATED,
                 None, {}))
    t.image(s, "images/COVID-00001b.png", COVID, "png-L")
    rows.append((cells("COVID-00001b", "COVID-19", age="67+", notes="Image taken 3 days later"), COVID, CURATED,
                 None, {}))
    t.image(s, "images/COVID-00001c.jpeg", COVID, "jpeg-L")
    rows.append((cells("COVID-00001c", "COVID-19", "AP erect", age="67+"), COVID, CURATED, None, {}))
    t.image(s, "images/COVID-00002.jpg", NORMAL, "jpeg-exif")
    rows.append((cells("COVID-00002", "No finding", notes="labeled normal patient (réviseur)"), NORMAL, CURATED,
                 None, {"detail": "JPEG with EXIF orientation 6"}))
    t.image(s, "images/COVID-00003.jpg", PNEUMONIA, "jpeg-L")
    rows.append((cells("COVID-00003", "Pneumonia", notes="labeled pneumonia"), PNEUMONIA, CURATED, None, {}))
    t.image(s, "images/COVID-00004.jpg", OTHER, "jpeg-L")
    rows.append((cells("COVID-00004", "", notes="primary tuberculosis infection"), None, FILTERED,
                 "unusable_label", {}))
    t.image(s, "images/COVID-00005.png", COVID, "png-L")
    rows.append((cells("COVID-00005", "COVID-19", "Oblique"), COVID, FILTERED, "non_frontal_view", {}))
    rows.append((cells("COVID-00006", "COVID-19", "AP"), COVID, QUARANTINED, "missing_file", {}))
    t.write(s, "metadata.csv", csv_text(INITIATIVE_HEADER, [r[0] for r in rows]).encode("latin-1"))
    for lineno, (cells_, label, outcome, reason, detail) in enumerate(rows, start=2):
        pid = cells_[0]
        ext = next((p.suffix for p in (t.root / s / "images").glob(f"{pid}.*")), ".jpg")
        t.row(f"{s}:L{lineno}", f"images/{pid}{ext}", label, outcome, reason, **detail)


def _actualmed(t: _Tree) -> None:
    s = "actualmed"
    rows = []
    specs = [
        ("ANON1", "COVID-19", "AP", COVID, ", date taken (YYYYMMDD): 20200321"),
        ("ANON2", "COVID-19", "AP", COVID, ", date taken (YYYYMMDD): 20200325"),
        ("ANON2", "COVID-19", "AP", COVID, ", date taken (YYYYMMDD): 20200326"),
        ("ANON3", "No finding", "PA", NORMAL, "Negative (covid-19 viral infection is excluded), date taken "
                                              "(YYYYMMDD): 20200403"),
        ("ANON4", "", "PA", None, "Inconclusive, date taken (YYYYMMDD): 20200407"),
    ]
    for i, (pid, finding, view, label, notes) in enumerate(specs):
        name = f"CR.1.2.840.113564.{1722810170 + i}.2020032{i}001546031810.1003000225002.png"
        t.image(s, f"images/{name}", label or OTHER, "png-RGB", (int(150 + 7 * i), 200))
        rows.append([pid, "", "", "", finding, "", "", "", view, "X-ray", name, "", notes])
        t.row(f"{s}:L{i + 2}", f"images/{name}", label, CURATED if label else FILTERED,
              None if label else "unusable_label")
    t.write(s, "metadata.csv", csv_text(ACTUALMED_HEADER, rows, "\r\n").encode("utf-8"))


CROPPED_MHH_IMAGE = "0957ce54"


def _mhh(t: _Tree) -> dict[str, bytes]:
    s = "mhh"
    rows = []
    specs = [("663cea67", "3964b961", "m", "CR", "ap", "png-16"), ("663cea67", "7b68340a", "m", "CR", "ap", "png-L"),
             ("663cea67", "0957ce54", "m", "DX", "pa", "png-L"), ("a408d6f0", "23823ebc", "f", "CR", "pa", "png-L"),
             ("a408d6f0", "e87352fc", "f", "DX", "ap", "png-L")]
    out = {}
    for i, (pid, iid, sex, modality, projection, fmt) in enumerate(specs):
        out[iid] = t.image(s, f"png/{iid}.png", COVID, fmt, (200, 168 + 8 * i))
        detail: dict[str, Any] = {"group": "mhh-crop"} if iid == CROPPED_MHH_IMAGE else {}
        cells = dict.fromkeys(MHH_HEADER, "")
        cells.update(patient_id=pid, image_id=iid, sex=sex, age="", admission_offset=str(-i), modality=modality,
                     projection=projection)
        rows.append([cells[h] for h in MHH_HEADER])
        if fmt == "png-16":
            detail["detail"] = "16-bit PNG"
        t.row(f"{s}:L{i + 2}", f"png/{iid}.png", COVID, **detail)
    t.write(s, "data.csv", csv_text(MHH_HEADER, rows).encode("utf-8"))
    return out


def _reencode(data: bytes, fmt: str, *, quality: int = 80, scale: float = 1.0, crop: float = 0.0) -> bytes:
    img = Image.open(io.BytesIO(data))
    img.load()
    if crop:
        w, h = img.size
        dx, dy = round(w * crop), round(h * crop)
        img = img.crop((dx, dy, w - dx, h - dy))
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB" if img.mode not in ("L", "RGB") else img.mode).save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def _darkcovidnet(t: _Tree, cohen_files: dict[str, bytes], kermany_conflict: bytes) -> None:
    s, base = "darkcovidnet", "X-Ray Image DataSet"
    entries: list[tuple[str, str | None, str, str | None, dict[str, Any]]] = []
    t.image(s, f"{base}/Covid-19/01E392EE-69F9-4E33-BFCE-E5C968654078.jpeg", COVID, "jpeg-RGB")
    t.image(s, f"{base}/Covid-19/covid-19-pneumonia-20-pa.png", COVID, "png-RGBA")
    entries += [("Covid-19/01E392EE-69F9-4E33-BFCE-E5C968654078.jpeg", COVID, CURATED, None, {}),
                ("Covid-19/covid-19-pneumonia-20-pa.png", COVID, CURATED, None, {})]
    # the Cohen collection's images, as DarkCovidNet took them (different patient keys)
    t.write(s, f"{base}/Covid-19/covid-p2.png", cohen_files["covid-p2.png"])
    entries.append(("Covid-19/covid-p2.png", COVID, DUPLICATE, "exact_duplicate",
                    {"group": "covid-p2", "of": t.find("cohen", "images/covid-p2.png"),
                     "detail": "byte copy of cohen images/covid-p2.png"}))
    t.write(s, f"{base}/Covid-19/covid-p3.jpg", _reencode(cohen_files["covid-p3.jpg"], "JPEG", quality=80))
    entries.append(("Covid-19/covid-p3.jpg", COVID, DUPLICATE, "near_duplicate",
                    {"group": "covid-p3", "of": t.find("cohen", "images/covid-p3.jpg"),
                     "detail": "JPEG quality 80 re-encode of cohen images/covid-p3.jpg"}))
    for name in ("00000001_000.png", "00000001_001.png", "00000002_000.png"):
        t.image(s, f"{base}/No_findings/{name}", NORMAL, "png-L", (192, 192))
        entries.append((f"No_findings/{name}", NORMAL, CURATED, None, {}))
    t.write(s, f"{base}/No_findings/00000003_000.png", b"")
    entries.append(("No_findings/00000003_000.png", NORMAL, QUARANTINED, "empty_file", {}))
    for name in ("00000010_000.png", "00000011_000.png", "00000011_001.png"):
        t.image(s, f"{base}/Pneumonia/{name}", PNEUMONIA, "png-L", (192, 192))
        entries.append((f"Pneumonia/{name}", PNEUMONIA, CURATED, None, {}))
    t.write(s, f"{base}/Pneumonia/IM-0004-0001.jpeg", kermany_conflict)
    entries.append(("Pneumonia/IM-0004-0001.jpeg", PNEUMONIA, QUARANTINED, "duplicate_label_conflict",
                    {"group": "kermany-conflict",
                     "of": t.find("kermany", "dataset/train/NORMAL/IM-0004-0001.jpeg"),
                     "detail": "byte copy of kermany dataset/train/NORMAL/IM-0004-0001.jpeg"}))
    for rel, label, outcome, reason, detail in sorted(entries, key=lambda e: e[0]):
        t.row(f"{s}:{base}/{rel}", f"{base}/{rel}", label, outcome, reason, **detail)


def _kermany(t: _Tree) -> dict[str, bytes]:
    s = "kermany"
    out: dict[str, bytes] = {}
    entries: list[tuple[str, str, str, str | None, dict[str, Any]]] = []
    for rel in ("dataset/train/NORMAL/IM-0001-0001.jpeg", "dataset/train/NORMAL/IM-0002-0001.jpeg",
                "dataset/train/NORMAL/NORMAL2-IM-0003-0001.jpeg", "dataset/test/NORMAL/IM-0006-0001.jpeg"):
        t.image(s, rel, NORMAL, "jpeg-RGB", (160, 160))
        entries.append((rel, NORMAL, CURATED, None, {}))
    rel = "dataset/train/NORMAL/IM-0004-0001.jpeg"
    out["conflict"] = t.image(s, rel, NORMAL, "jpeg-RGB", (160, 160))
    entries.append((rel, NORMAL, QUARANTINED, "duplicate_label_conflict",
                    {"group": "kermany-conflict", "detail": "also in darkcovidnet Pneumonia"}))
    rel = "dataset/train/NORMAL/IM-0005-0001.jpeg"
    full = encode(t.picture(NORMAL, (160, 160)), "jpeg-RGB")
    t.write(s, rel, full[: len(full) * 2 // 5])
    entries.append((rel, NORMAL, QUARANTINED, "corrupt_image", {"detail": "JPEG truncated to 40 %"}))
    for rel in ("dataset/train/PNEUMONIA/person1_bacteria_1.jpeg", "dataset/train/PNEUMONIA/person1_virus_2.jpeg",
                "dataset/train/PNEUMONIA/person3_virus_4.jpeg", "dataset/test/PNEUMONIA/person4_virus_5.jpeg"):
        t.image(s, rel, PNEUMONIA, "jpeg-RGB", (160, 160))
        entries.append((rel, PNEUMONIA, CURATED, None, {}))
    rel = "dataset/train/PNEUMONIA/person2_bacteria_3.jpeg"
    out["resize"] = t.image(s, rel, PNEUMONIA, "jpeg-RGB", (160, 160))
    entries.append((rel, PNEUMONIA, CURATED, None, {"group": "kermany-person2"}))
    for rel, label, outcome, reason, detail in sorted(entries, key=lambda e: e[0]):
        t.row(f"{s}:{rel}", rel, label, outcome, reason, **detail)
    return out


def _radiography(t: _Tree, mhh_crop: bytes, kermany_resize: bytes) -> None:
    s, base = "radiography", "COVID-19_Radiography_Dataset"
    entries: list[tuple[str, str | None, str, str | None, dict[str, Any]]] = []
    meta: dict[str, list[list[Any]]] = {}

    def add(cls: str, n: int, label: str | None, outcome: str = CURATED, reason: str | None = None,
            **detail: Any) -> str:
        rel = f"{cls}/images/{cls}-{n}.png"
        entries.append((rel, label, outcome, reason, detail))
        meta_name = "NORMAL" if cls == "Normal" else cls  # the published Normal sheet says NORMAL-<n>
        meta.setdefault(cls, []).append([f"{meta_name}-{n}", "PNG", "256*256",
                                         f"https://example.org/radiography/{cls.lower().replace(' ', '-')}/{n}"])
        return f"{base}/{rel}"

    t.image(s, add("COVID", 1, COVID), COVID, "png-L", (144, 144))
    t.image(s, add("COVID", 2, COVID), COVID, "png-RGB", (144, 144))
    original = f"png/{CROPPED_MHH_IMAGE}.png"
    t.write(s, add("COVID", 3, COVID, DUPLICATE, "near_duplicate", group="mhh-crop", of=t.find("mhh", original),
                   detail=f"2 % per side crop of mhh {original}"), _reencode(mhh_crop, "PNG", crop=0.02))
    mask = np.zeros((144, 144), np.uint8)
    mask[30:120, 20:65] = 255
    mask[30:120, 80:125] = 255
    t.write(s, f"{base}/COVID/masks/COVID-1.png", encode(mask, "png-L"))
    t.write(s, f"{base}/Normal/masks/Normal-1.png", encode(mask, "png-L"))
    t.image(s, add("Normal", 1, NORMAL), NORMAL, "png-L", (144, 144))
    t.image(s, add("Normal", 2, NORMAL), NORMAL, "png-L", (144, 144))
    t.write(s, add("Normal", 3, NORMAL, QUARANTINED, "not_an_image", detail="text file named .png"),
            b"404: Not Found\n")
    t.image(s, add("Viral Pneumonia", 1, PNEUMONIA), PNEUMONIA, "png-L", (144, 144))
    t.write(s, add("Viral Pneumonia", 2, PNEUMONIA, DUPLICATE, "near_duplicate", group="kermany-person2",
                   of=t.find("kermany", "dataset/train/PNEUMONIA/person2_bacteria_3.jpeg"),
                   detail="0.8x resize of kermany person2_bacteria_3.jpeg"),
            _reencode(kermany_resize, "PNG", scale=0.8))
    t.image(s, add("Lung_Opacity", 1, None, FILTERED, "unusable_label"), OTHER, "png-L", (144, 144))
    header = ["FILE NAME", "FORMAT", "SIZE", "URL"]
    for cls, rows in meta.items():
        if cls == "Lung_Opacity":  # one class ships its metadata as CSV
            t.write(s, f"{base}/{cls}.metadata.csv", csv_text(header, rows).encode("utf-8"))
        else:
            t.write(s, f"{base}/{cls}.metadata.xlsx", xlsx_bytes([header] + rows))
    for rel, label, outcome, reason, detail in sorted(entries, key=lambda e: e[0]):
        t.row(f"{s}:{base}/{rel}", f"{base}/{rel}", label, outcome, reason, **detail)


def _rsna(t: _Tree) -> None:
    s = "rsna"
    rng = np.random.default_rng(10_000)  # file names do not depend on the seed: same layout for every seed
    pids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(7)]
    # (patientId, boxes, class or None, label, outcome, reason, header, image kind)
    specs = [
        (pids[0], [(40, 50, 30, 60), (100, 40, 28, 70)], "Lung Opacity", PNEUMONIA, CURATED, None,
         ("PA", "F", "045"), "mono2"),
        (pids[1], [(30, 60, 40, 50)], "Lung Opacity", PNEUMONIA, CURATED, None, ("AP", "M", "062Y"), "mono1"),
        (pids[2], [], "Normal", NORMAL, CURATED, None, ("PA", "M", "033Y"), "mono2"),
        (pids[3], [], "Normal", NORMAL, CURATED, None, ("AP", "F", "051"), "mono1"),
        (pids[4], [], "No Lung Opacity / Not Normal", None, FILTERED, "unusable_label", ("PA", "F", "070"), "mono2"),
        (pids[5], [], None, None, FILTERED, "unusable_label", ("PA", "M", "028"), "mono2"),
        (pids[6], [], "Normal", NORMAL, QUARANTINED, "missing_file", ("PA", "M", "040"), None),
    ]
    labels, classes = [], []
    for pid, boxes, cls, label, outcome, reason, (view, sex, age), kind in specs:
        first_line = len(labels) + 2
        for box in boxes or [None]:
            labels.append([pid, *(box if box else ("", "", "", "")), 1 if box else 0])
            if cls:
                classes.append([pid, cls])
        if kind:
            cx = PNEUMONIA if label == PNEUMONIA else NORMAL if label == NORMAL else OTHER
            t.write(s, f"stage_2_train_images/{pid}.dcm",
                    dicom_bytes(t.picture(cx, (160, 160)), pid, view=view, sex=sex, age=age,
                                monochrome1=kind == "mono1"), base=True)
        detail: dict[str, Any] = {"boxes": len(boxes), "view": view, "sex": sex, "age": int(age.rstrip("Y"))}
        if kind == "mono1":
            detail["detail"] = "MONOCHROME1, 12 bits stored"
        t.row(f"{s}:L{first_line}", f"stage_2_train_images/{pid}.dcm", label, outcome, reason, **detail)
    t.write(s, "stage_2_train_labels.csv",
            csv_text(["patientId", "x", "y", "width", "height", "Target"], labels).encode("utf-8"))
    t.write(s, "stage_2_detailed_class_info.csv", csv_text(["patientId", "class"], classes).encode("utf-8"))


def make_sample_tree(root: Path | str, seed: int = 0) -> dict[str, Any]:
    """Write the sample source tree under ``root`` and return its manifest (see the module docstring).

    Manifest keys: ``sources`` ([{name, kind, root}]), ``expected`` (rows, curated, filtered, duplicates,
    quarantined), ``expected_reasons`` ({reason code: rows} over filtered and quarantined rows),
    ``expected_curated_labels``, ``per_source``, ``planted`` (every non-curated row and every row of a
    duplicate group, with its stage and details) and ``rows`` (record_id, source, label, outcome,
    reason, dup_group for every input row; within a duplicate group the pipeline may keep any one),
    ``base_images`` (files that hold a distinct base picture) and ``seed``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    t = _Tree(root, seed)
    _cohen(t)
    _figure1(t)
    _actualmed(t)
    mhh = _mhh(t)
    kermany = _kermany(t)
    cohen_files = {Path(k).name: v for k, v in t.files.items() if k.startswith("cohen/images/")}
    _darkcovidnet(t, cohen_files, kermany["conflict"])
    _radiography(t, mhh[CROPPED_MHH_IMAGE], kermany["resize"])
    _rsna(t)
    order = [name for name, _ in SOURCES]
    t.rows.sort(key=lambda r: order.index(r["source"]))  # stable: keeps each source's own order
    t.planted.sort(key=lambda r: order.index(r["source"]))
    manifest = t.manifest()
    manifest["base_images"] = sorted(t.bases)
    return manifest


def sources_config(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """conf/sources.yaml-style entries for the sample tree: [{name, kind, root, options}]."""
    return [{"name": s["name"], "kind": s["kind"], "root": s["root"], "options": {}} for s in manifest["sources"]]


# ---- a generated lung-annotation set (the layout of the V7 annotations + Cohen images) -------------
def make_lung_sample(root: Path | str, patients: int = 12, images_per_patient: int = 2, seed: int = 0,
                     size: tuple[int, int] = (160, 128), original_scale: float = 2.5) -> dict[str, Any]:
    """A Cohen-layout tree (metadata.csv + images/) of CXR-like pictures with two dark elliptic lungs,
    and V7 Darwin JSON lung polygons for them in ``annotations/`` (as a zip, like the real release).

    Polygons are written in the coordinates of a fictitious ORIGINAL that is ``original_scale`` times
    the written image (as in the real data, whose images were downscaled). One extra JSON without lung
    polygons and one naming an image that does not exist test the problem reporting.
    Returns {"images": cohen root, "annotations": zip path, "masks": {file name: true mask}}.
    """
    import zipfile

    root = Path(root)
    images_dir = root / "cohen" / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    ow, oh = round(w * original_scale), round(h * original_scale)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rows, docs, masks = [], {}, {}
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    for p in range(patients):
        for k in range(images_per_patient):
            name = f"lungs-{p:03d}-{k}.png"
            img = 150 + 40 * rng.random((6, 6))
            img = np.asarray(Image.fromarray(img.astype(np.float32)).resize((w, h), Image.BICUBIC))
            mask = np.zeros((h, w), dtype=np.uint8)
            annotations = []
            for side in (-1, 1):
                cx, cy = w * (0.5 + side * rng.uniform(0.17, 0.22)), h * rng.uniform(0.42, 0.5)
                rx, ry = w * rng.uniform(0.11, 0.15), h * rng.uniform(0.25, 0.32)
                inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
                img = np.where(inside, img - 90, img)
                mask |= inside.astype(np.uint8)
                # the polygon in ORIGINAL pixel-centre coordinates: x_orig = (x + 0.5) * ow / w - 0.5
                px = (cx + rx * np.cos(t) + 0.5) * ow / w - 0.5
                py = (cy + ry * np.sin(t) + 0.5) * oh / h - 0.5
                annotations.append({"name": "Lung", "polygon": {"path": [{"x": round(float(x), 2), "y": round(float(y), 2)}
                                                                          for x, y in zip(px, py)]}})
            img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(images_dir / name)
            masks[name] = mask
            rows.append([f"{p + 1}", name])
            docs[f"{2000 + len(docs)}.json"] = {"image": {"width": ow, "height": oh, "original_filename": name},
                                               "annotations": annotations}
    docs["9998.json"] = {"image": {"width": ow, "height": oh, "original_filename": rows[0][1]},
                         "annotations": [{"name": "View/L", "tag": {}}]}
    docs["9999.json"] = {"image": {"width": ow, "height": oh, "original_filename": "not-in-the-collection.png"},
                         "annotations": docs["2000.json"]["annotations"]}
    cells = []
    for pid, name in rows:
        c = dict.fromkeys(COHEN_HEADER, "")
        c.update(patientid=pid, finding="COVID-19", view="PA", modality="X-ray", folder="images", filename=name)
        cells.append([c[k] for k in COHEN_HEADER])
    (root / "cohen" / "metadata.csv").write_text(csv_text(COHEN_HEADER, cells))
    zpath = root / "v7labs" / "annotations" / "covid-only.zip"
    zpath.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zpath, "w") as zf:
        for n, d in docs.items():
            zf.writestr(n, json.dumps(d))
    return {"images": str(root / "cohen"), "annotations": str(zpath), "masks": masks}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m cxrspark.sample OUT_DIR [SEED]", file=sys.stderr)
        return 2
    manifest = make_sample_tree(Path(argv[0]), int(argv[1]) if len(argv) > 1 else 0)
    print(json.dumps({k: manifest[k] for k in ("sources", "expected", "expected_reasons")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
