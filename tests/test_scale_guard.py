"""The ingest's driver never holds per-image lists: a few-thousand-row NIH-layout ingest with every
collect / toPandas / toLocalIterator / createDataFrame of the driver watched, so the property cannot
silently regress. Not timed: it checks the structure, the benchmark (benchmarks/ingest_scale.py) the cost.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from cxrspark.config import load_config
from cxrspark.ingest.pipeline import FINGERPRINT_BUCKETS, run_ingest
from cxrspark.ingest.stages import write_records

REPO = Path(__file__).resolve().parents[1]
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
PATIENTS, PER_PATIENT = 1000, 3
FINDINGS = ("No Finding", "Pneumonia", "Effusion")  # Normal, Pneumonia, filtered
COPIES = 12  # byte copies of another patient's image (exact duplicates that link two patients)
MISSING = 5  # rows whose image file does not exist
MALFORMED = 3  # rows with a wrong field count


def _image(rng: np.random.Generator, size: int = 96) -> Image.Image:
    """Smooth random structure: every image distinct, with keypoints of its own."""
    small = rng.random((12, 12))
    big = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), float)
    big += rng.normal(0, 12, big.shape)
    return Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def nih_tree(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("guard") / "nih"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines, names = [HEADER], []
    for p in range(1, PATIENTS + 1):
        finding = FINDINGS[p % 3]
        for k in range(PER_PATIENT):
            name = f"{p:08d}_{k:03d}.png"
            names.append((name, p, finding))
            lines.append(f"{name},{finding},{k},{p},{40 + p % 40},{'MF'[p % 2]},PA,1024,1024,0.14,0.14")
    for i, (name, p, _) in enumerate(names):
        if i >= len(names) - MISSING:
            continue  # listed, never written: missing_file
        _image(rng).save(root / "images" / name)
    # exact copies: patient A's first image written again under patient B's name (same class)
    copies = []
    for c in range(COPIES):
        src, dst = names[3 * (6 * c)], names[3 * (6 * c + 3) + 1]
        assert src[2] == dst[2] != "Effusion"
        (root / "images" / dst[0]).write_bytes((root / "images" / src[0]).read_bytes())
        copies.append((src, dst))
    lines += [f"{PATIENTS + m:08d}_000.png,No Finding,0" for m in range(1, MALFORMED + 1)]
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    return {"root": root, "names": names, "copies": copies}


def _cfg(tmp: Path, root: Path, out: Path):
    f = tmp / "sources.yaml"
    f.write_text(yaml.safe_dump({"sources": [{"name": "nih", "kind": "nih", "root": str(root)}]}))
    return load_config([REPO / "conf/ingest.yaml", f], [f"ingest.output={out}", "ingest.image_size=64",
                                                         "ingest.partitions.decode_rows=200"])


class DriverWatch:
    """Counts the rows every driver-side materialisation moves (instrumentation around the real Spark
    calls, which still run)."""

    def __init__(self, monkeypatch):
        import pyspark.sql.classic.dataframe as classic
        from pyspark.sql.session import SparkSession

        self.sizes: list[tuple[str, int]] = []
        watch = self

        def wrap(cls, name, size):
            orig = getattr(cls, name)

            def inner(*a, **k):
                out = orig(*a, **k)
                watch.sizes.append((name, size(a, out)))
                return out
            monkeypatch.setattr(cls, name, inner)

        wrap(classic.DataFrame, "collect", lambda a, out: len(out))
        wrap(classic.DataFrame, "toPandas", lambda a, out: len(out))
        monkeypatch.setattr(classic.DataFrame, "toLocalIterator",
                            lambda *a, **k: (_ for _ in ()).throw(AssertionError("toLocalIterator on the driver")))
        wrap(SparkSession, "createDataFrame",
             lambda a, out: len(a[1]) if len(a) > 1 and isinstance(a[1], (list, tuple)) else 0)


@pytest.fixture(scope="module")
def guarded_ingest(spark, nih_tree, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        watch = DriverWatch(mp)
        tmp = tmp_path_factory.mktemp("guard-run")
        lines: list[str] = []
        summary = run_ingest(spark, _cfg(tmp, nih_tree["root"], tmp / "out"), log=lines.append, progress_every=0.5)
    finally:
        mp.undo()
    return {"summary": summary, "sizes": watch.sizes, "lines": lines, "out": tmp / "out"}


def test_the_driver_moves_no_per_image_lists(guarded_ingest):
    sizes = guarded_ingest["sizes"]
    images = PATIENTS * PER_PATIENT
    assert sizes, "the watch saw nothing: it is not wired to the calls the ingest makes"
    # per-unit aggregates (one row per patient and label) and the fixed number of fingerprint buckets are the
    # largest things the driver may hold; a per-image list would be ~3,000 rows
    bound = max(PATIENTS, FINGERPRINT_BUCKETS)
    assert bound < 0.4 * images
    too_big = [(name, n) for name, n in sizes if n > bound]
    assert not too_big, f"driver materialised per-image data: {too_big}"
    assert max(n for _, n in sizes) >= PATIENTS * 2 // 3  # the per-unit counts did reach the driver


def test_a_guarded_ingest_still_gives_the_exact_outcome(guarded_ingest, nih_tree):
    s = guarded_ingest["summary"]
    rows = PATIENTS * PER_PATIENT + MALFORMED
    filtered = sum(1 for _, p, f in nih_tree["names"] if f == "Effusion")
    assert s["input_rows"] == rows and s["reconciliation"].endswith("(exact)")
    assert s["counts"]["filtered"] == filtered
    assert s["reasons"]["quarantined/missing_file"] == MISSING
    assert s["reasons"]["quarantined/malformed_row"] == MALFORMED
    assert s["counts"]["duplicate"] == COPIES and s["reasons"]["duplicate/exact"] == COPIES
    assert s["counts"]["curated"] == rows - filtered - MISSING - MALFORMED - COPIES
    # a copy links its two patients: every image of both lands in one split
    cur = pd.concat([pd.read_parquet(guarded_ingest["out"] / "curated" / sp, columns=["record_id", "split"])
                     for sp in s["splits"]])
    split_of = dict(zip(cur["record_id"], cur["split"]))
    for (src, _, _), (dst, _, _) in nih_tree["copies"]:
        a_patient, b_patient = src[:8], dst[:8]
        both = {sp for rid, sp in split_of.items() if rid[4:12] in (a_patient, b_patient)}
        assert len(both) == 1, (src, dst, both)
    # the splits follow the ratios within a few units (stratified by patient)
    n = sum(s["splits"].values())
    assert abs(s["splits"]["train"] / n - 0.72) < 0.03


def test_progress_lines_and_stage_timings(guarded_ingest):
    s, lines = guarded_ingest["summary"], guarded_ingest["lines"]
    for stage in ("sources", "file_checks", "decode", "dedup", "split", "write", "summary"):
        assert stage in s["stage_seconds"] and s["stage_seconds"][stage] >= 0
        assert any(line.startswith(f"{stage}: done in") for line in lines), stage
    progress = [line for line in lines if line.startswith("decode: ") and "/s" in line]
    assert progress, "no progress line during decode"
    done, total = (int(x.replace(",", "")) for x in progress[-1].split()[1].split("/"))
    # the images that reach decoding: not filtered (Effusion), not quarantined before (missing, malformed)
    filtered = sum(PER_PATIENT for p in range(1, PATIENTS + 1) if FINDINGS[p % 3] == "Effusion")
    assert total == PATIENTS * PER_PATIENT - filtered - MISSING and 0 <= done <= total


def test_records_reach_spark_in_chunks(nih_tree, tmp_path):
    """The adapter's rows are streamed into Parquet a chunk at a time, never listed whole."""
    from cxrspark.config import SourceConfig

    per_source, problems = write_records([SourceConfig(name="nih", kind="nih", root=str(nih_tree["root"]))],
                                         str(tmp_path / "records"), log=lambda _: None, chunk=700)
    sizes = [pq.read_metadata(f).num_rows for f in sorted((tmp_path / "records").glob("*.parquet"))]
    assert not problems and per_source == {"nih": PATIENTS * PER_PATIENT + MALFORMED}
    assert max(sizes) == 700 and sum(sizes) == PATIENTS * PER_PATIENT + MALFORMED
    ids = pq.read_table(tmp_path / "records", columns=["record_id"]).column(0).to_pylist()
    assert len(set(ids)) == len(ids) and ids[0] == "nih:00000001_000.png"  # in the metadata's order


def test_the_nih_csv_is_read_with_the_csv_module_too(nih_tree):
    """The fixture itself parses as the real file does (11 names, 11 values)."""
    with open(nih_tree["root"] / "Data_Entry_2017_v2020.csv", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        assert len(header) == 11 and len(next(reader)) == 11


def test_an_unreadable_source_is_one_quarantined_row_and_the_others_go_on(spark, tmp_path):
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    lines = [HEADER]
    for p in range(1, 4):
        name = f"{p:08d}_000.png"
        _image(rng).save(root / "images" / name)
        lines.append(f"{name},No Finding,0,{p},40,M,PA,1024,1024,0.14,0.14")
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    f = tmp_path / "sources.yaml"
    f.write_text(yaml.safe_dump({"sources": [
        {"name": "nih", "kind": "nih", "root": str(root)},
        {"name": "gone", "kind": "nih", "root": str(tmp_path / "nowhere")},  # no metadata file
        {"name": "typo", "kind": "nih", "root": str(root), "options": {"image_dri": "images"}},  # unknown option
    ]}))
    cfg = load_config([REPO / "conf/ingest.yaml", f], [f"ingest.output={tmp_path / 'out'}", "ingest.image_size=64"])
    s = run_ingest(spark, cfg, log=lambda _: None)
    assert s["input_rows_per_source"] == {"gone": 1, "nih": 3, "typo": 1}
    assert s["reasons"]["quarantined/source_unreadable"] == 2 and s["counts"]["curated"] == 3
    assert {p["source"] for p in s["source_problems"]} == {"gone", "typo"}
    assert s["reconciliation"].endswith("(exact)")
