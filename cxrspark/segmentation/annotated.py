"""The annotated lung set: V7 annotation files + the images they refer to -> arrays for the U-Net.

Every annotation entry ends either as a training example or as a problem with a reason (no lung
polygon, unknown image, unreadable image, size mismatch); nothing is dropped silently.
"""
from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrspark.images.decode import DecodeError, decode_image
from cxrspark.images.transforms import apply_contrast, resize
from cxrspark.segmentation.masks import AnnotationError, parse_v7, rasterise, resize_mask


@dataclass
class AnnotatedSet:
    """images[c] is the (n, size, size) uint8 stack prepared with contrast method contrasts[c]."""

    names: list[str]
    patient_keys: list[str]
    images: np.ndarray  # (n_contrasts, n, size, size) uint8
    masks: np.ndarray  # (n, size, size) uint8 0/1
    contrasts: list[str]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (annotation entry, reason)

    def subset(self, idx: np.ndarray) -> "AnnotatedSet":
        return AnnotatedSet([self.names[i] for i in idx], [self.patient_keys[i] for i in idx],
                            self.images[:, idx], self.masks[idx], self.contrasts, [])


def read_annotation_files(location: str | Path) -> Iterator[tuple[str, bytes]]:
    """(entry name, JSON bytes) of every .json in a zip file or a folder, in name order."""
    location = Path(location)
    if location.is_dir():
        for p in sorted(location.rglob("*.json")):
            yield str(p.relative_to(location)), p.read_bytes()
        return
    if not location.is_file():
        raise FileNotFoundError(f"annotations not found: {location}")
    with zipfile.ZipFile(location) as zf:
        for name in sorted(n for n in zf.namelist() if n.endswith(".json")):
            yield name, zf.read(name)


def load_annotated(entries: Iterator[tuple[str, bytes]], images: dict[str, tuple[str, str]], size: int,
                   contrasts: list[str], resize_mode: str = "pad") -> AnnotatedSet:
    """`images` maps an original file name to (path, patient_key). Masks are rasterised at the
    written image's size, then image and mask get the same square resize."""
    names, patients, stacks, masks, problems = [], [], [], [], []
    for entry, data in entries:
        try:
            ann = parse_v7(data)
        except AnnotationError as exc:
            problems.append((entry, str(exc)))
            continue
        if ann.original_filename not in images:
            problems.append((entry, f"unknown_image: {ann.original_filename}"))
            continue
        path, patient = images[ann.original_filename]
        try:
            pixels = decode_image(Path(path).read_bytes()).pixels
        except (OSError, DecodeError) as exc:
            problems.append((entry, f"unreadable_image: {exc}"))
            continue
        h, w = pixels.shape
        if abs(w / h - ann.width / ann.height) > 0.02:
            problems.append((entry, f"size_mismatch: image {w}x{h}, annotation {ann.width}x{ann.height}"))
            continue
        mask = rasterise(ann.polygons, (ann.width, ann.height), (w, h))
        if mask.sum() == 0:
            problems.append((entry, "empty_mask: the polygons cover no pixel"))
            continue
        names.append(ann.original_filename)
        patients.append(patient)
        stacks.append([resize(apply_contrast(pixels, c), size, resize_mode) for c in contrasts])
        masks.append(resize_mask(mask, size, resize_mode))
    if not names:
        raise ValueError(f"no usable annotation; problems: {problems[:5]}")
    return AnnotatedSet(names, patients, np.stack(stacks, axis=1), np.stack(masks), list(contrasts), problems)


def patient_split(patient_keys: list[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): whole patients, in a seeded sha256 order, ~val_fraction of them
    held out (at least one)."""
    unique = sorted(set(patient_keys), key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    n_val = max(1, round(len(unique) * val_fraction))
    held = set(unique[:n_val])
    val = np.array([i for i, k in enumerate(patient_keys) if k in held], dtype=np.int64)
    train = np.array([i for i, k in enumerate(patient_keys) if k not in held], dtype=np.int64)
    return train, val
