"""The U-Net's weights on disk: a folder with the weights file, a manifest that verifies it, a card.

    lung_unet/
        lung_unet.h5      Keras weights (HDF5)
        manifest.json     file name, size in bytes, sha256, architecture, validation metrics, provenance
        CARD.md           what data, which command, which commit, validation Dice/IoU

Loading checks the size and the hash before TensorFlow opens the file, and the architecture when the
weights are loaded, so a missing, truncated, replaced or mismatched file fails with a clear message.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

#: the weights that ship with cxrspark (trained by jobs/train_segmenter.py; see its CARD.md)
BUNDLED = Path(__file__).resolve().parent / "lung_unet"
WEIGHTS_FILE = "lung_unet.h5"
MANIFEST_FILE = "manifest.json"
CARD_FILE = "CARD.md"


class SegmenterError(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundled_folder() -> Path:
    """The bundled weights folder. When cxrspark is imported from a zip (``spark-submit --py-files``,
    as on cluster executors) its files are extracted once to the temp directory; the size and hash
    check that follows still applies to the extracted copy."""
    if BUNDLED.is_dir():
        return BUNDLED
    import tempfile
    import zipfile

    archive = next((p for p in BUNDLED.parents if p.is_file() and zipfile.is_zipfile(p)), None)
    if archive is None:
        return BUNDLED  # not found: resolve() reports it
    inner = BUNDLED.relative_to(archive).as_posix() + "/"
    stat = archive.stat()
    target = Path(tempfile.gettempdir()) / f"cxrspark-lung_unet-{stat.st_size}-{int(stat.st_mtime)}"
    if not (target / MANIFEST_FILE).is_file():
        tmp = Path(tempfile.mkdtemp(prefix="cxrspark-lung_unet-", dir=target.parent))
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if name.startswith(inner) and not name.endswith("/"):
                    (tmp / name[len(inner):]).write_bytes(zf.read(name))
        try:
            tmp.rename(target)
        except OSError:  # another worker extracted it first
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(location: str | Path | None) -> tuple[Path, dict[str, Any]]:
    """(weights file, manifest) of a weights folder (None: the bundled one), verified by size and hash."""
    folder = Path(location) if location else bundled_folder()
    if folder.is_file():  # the weights file itself: its manifest sits beside it
        folder = folder.parent
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise SegmenterError(
            f"lung U-Net weights: no {MANIFEST_FILE} in {folder}. Point ingest.lungs.weights at a folder "
            f"written by `jobs/train_segmenter.py --set segmenter.publish=<folder>` (or leave it null for "
            f"the bundled weights)")
    try:
        manifest = json.loads(manifest_path.read_text())
        name, size, digest = manifest["file"], int(manifest["bytes"]), manifest["sha256"]
        manifest["architecture"]["size"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SegmenterError(f"lung U-Net weights: {manifest_path} is not a valid manifest ({exc!r})") from None
    weights = folder / name
    if not weights.is_file():
        raise SegmenterError(f"lung U-Net weights: {weights} is missing (named by {manifest_path})")
    actual = weights.stat().st_size
    if actual != size:
        raise SegmenterError(f"lung U-Net weights: {weights} has {actual} bytes, the manifest says {size} "
                             f"(truncated or replaced; a git checkout without LFS/large files?)")
    if sha256_file(weights) != digest:
        raise SegmenterError(f"lung U-Net weights: sha256 of {weights} does not match {manifest_path}; "
                             f"the file was changed after it was published")
    return weights, manifest


def load_unet(location: str | Path | None = None):
    """The verified U-Net with its weights, and its manifest."""
    from cxrspark.segmentation.unet import build_unet

    weights, manifest = resolve(location)
    arch = manifest["architecture"]
    model = build_unet(int(arch["size"]), int(arch["base_filters"]), int(arch["depth"]))
    try:
        model.load_weights(str(weights))
    except (ValueError, OSError) as exc:
        raise SegmenterError(f"lung U-Net weights: {weights} does not fit the architecture {arch} "
                             f"of its manifest: {exc}") from None
    return model, manifest


def publish(model, folder: str | Path, manifest: dict[str, Any], card: str) -> Path:
    """Write weights + manifest (size, hash filled in) + card into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    tmp = folder / (WEIGHTS_FILE + ".tmp.h5")
    model.save_weights(str(tmp), save_format="h5")
    tmp.replace(weights)
    full = {**manifest, "file": WEIGHTS_FILE, "bytes": weights.stat().st_size, "sha256": sha256_file(weights)}
    (folder / MANIFEST_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    (folder / CARD_FILE).write_text(card)
    return folder
