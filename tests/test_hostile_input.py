"""The hostile-input corpus (cxrspark.hostile) through the real ingest in one run.

Every planted item ends in its documented outcome and reason code, the job finishes, the
reconciliation line adds up to the corpus, decoded kinds have the right pixels, and nothing outside
the source roots is read: the escaping entries point to named pipes, and a watcher notices any
process that opens one for reading.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrspark.config import load_config
from cxrspark.hostile import make_hostile_tree, sources_config
from cxrspark.images import pixel_sha256, resize
from cxrspark.ingest.pipeline import run_ingest

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
SPLITS = ("train", "val", "test")
RECONCILIATION = re.compile(r"^reconciliation: input rows (\d+) = curated (\d+) \+ filtered (\d+) \+ "
                            r"duplicates (\d+) \+ quarantined (\d+) \(exact\)$")


class PipeWatch:
    """Notices any process opening one of ``fifos`` for reading.

    A non-blocking open of a FIFO for writing succeeds only while some process has it open for
    reading; the watcher then records it and closes at once, so the reader sees end of file instead
    of hanging.
    """

    def __init__(self, fifos: list[str], interval: float = 0.005):
        self.fifos, self.interval = fifos, interval
        self.opened: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for fifo in self.fifos:
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:  # ENXIO: no reader
                    continue
                self.opened.append(fifo)
                os.close(fd)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PipeWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _outcomes(out: Path) -> dict[str, tuple[str, str | None]]:
    """record_id -> (outcome, reason code) from the written tables; each record_id in exactly one."""
    tables = {
        "quarantined": pd.read_parquet(out / "quarantine"),
        "filtered": pd.read_parquet(out / "filtered"),
        "duplicate": pd.read_parquet(out / "duplicates"),
        "curated": pd.concat([pd.read_parquet(out / "curated" / s) for s in SPLITS], ignore_index=True),
    }
    got: dict[str, tuple[str, str | None]] = {}
    for outcome, df in tables.items():
        for _, row in df.iterrows():
            if outcome == "duplicate":
                code = f"{row['kind']}_duplicate"
            elif outcome == "curated":
                code = None
            else:
                code = row["reason"].split(":", 1)[0]
            assert row["record_id"] not in got, f"{row['record_id']} is in two outputs"
            got[row["record_id"]] = (outcome, code)
    return got


@pytest.mark.slow
def test_hostile_corpus_gets_its_documented_outcomes_and_nothing_outside_is_read(spark, tmp_path):
    manifest = make_hostile_tree(tmp_path / "raw")
    items = manifest["items"]
    kinds = {i["kind"] for i in items} - {"valid_jpeg"}
    assert len(kinds) >= 20, sorted(kinds)
    outside = manifest["outside"]
    fifos = list(outside["fifos"].values())
    assert all(Path(f).exists() and not Path(f).is_file() for f in fifos)

    sources = tmp_path / "sources.yaml"
    sources.write_text(yaml.safe_dump({"sources": sources_config(manifest)}))
    out = tmp_path / "dataset"
    cfg = load_config([REPO / "conf/ingest.yaml", sources], [f"ingest.output={out}", f"ingest.image_size={SIZE}"])
    assert cfg.ingest.min_side == 64 and cfg.ingest.max_pixels == 50_000_000  # the corpus' assumptions
    log: list[str] = []
    with PipeWatch(fifos) as watch:
        # the watcher itself notices a reader
        fd = os.open(fifos[0], os.O_RDONLY | os.O_NONBLOCK)
        deadline = time.time() + 10
        while not watch.opened and time.time() < deadline:
            time.sleep(0.01)
        os.close(fd)
        assert set(watch.opened) == {fifos[0]}  # noticed (once per poll while the reader is open)
        watch.opened.clear()
        summary = run_ingest(spark, cfg, log=log.append)
    assert watch.opened == [], f"a file outside the source roots was opened: {watch.opened}"

    # the job finished: its summary is written and its reconciliation line logged
    assert json.loads((out / "summary.json").read_text())["input_rows"] == summary["input_rows"]
    assert summary["reconciliation"] in log
    exp = manifest["expected"]
    m = RECONCILIATION.match(summary["reconciliation"])
    assert m, summary["reconciliation"]
    n, curated, filtered, duplicates, quarantined = map(int, m.groups())
    assert (n, curated, filtered, duplicates, quarantined) == (
        exp["rows"], exp["curated"], exp["filtered"], exp["duplicate"], exp["quarantined"])
    assert curated + filtered + duplicates + quarantined == n == len(items)
    assert summary["counts"] == {k: exp[k] for k in ("curated", "filtered", "duplicate", "quarantined")}

    # every item: its exact outcome and reason code, and nothing else in the outputs
    got = _outcomes(out)
    want = {i["record_id"]: (i["outcome"], i["reason"]) for i in items}
    wrong = {rid: (want.get(rid), got.get(rid)) for rid in set(want) | set(got) if want.get(rid) != got.get(rid)}
    assert not wrong, "\n".join(f"{rid}: expected {w}, got {g}" for rid, (w, g) in sorted(wrong.items()))

    quarantine = pd.read_parquet(out / "quarantine").set_index("record_id")
    decode_codes = {"corrupt_image", "empty_file", "not_an_image", "decompression_bomb", "too_small",
                    "unsupported_image", "unsupported_transfer_syntax", "dicom_error"}
    for rid, row in quarantine.iterrows():
        assert row["stage"] == ("decode" if want[rid][1] in decode_codes else "metadata"), (rid, row["stage"])
    assert "['finding']" in quarantine.loc["cohen_nocol:L2", "reason"]
    dups = pd.read_parquet(out / "duplicates").set_index("record_id")
    assert dups.loc["cohen:L7", "duplicate_of"] == "cohen:L6"

    # decoded kinds: the pixels written, upright, greyscale
    cur = pd.concat([pd.read_parquet(out / "curated" / s) for s in SPLITS], ignore_index=True).set_index("record_id")
    kind_of = {i["kind"]: i["record_id"] for i in items}

    def stored(rid: str) -> np.ndarray:
        return np.frombuffer(cur.loc[rid, "image"], np.uint8).reshape(SIZE, SIZE).astype(int)

    for kind in ("png_16_bit", "png_palette_transparency", "dicom_jpeg_ls_monochrome1"):  # lossless: exact
        rid = kind_of[kind]
        expected = manifest["pixels"][rid]
        assert cur.loc[rid, "pixel_sha256"] == pixel_sha256(expected), kind
        np.testing.assert_array_equal(stored(rid), resize(expected, SIZE, "pad"))
    assert cur.loc[kind_of["png_16_bit"], "orig_mode"].startswith("I;16")
    assert cur.loc[kind_of["png_palette_transparency"], "orig_mode"] == "P"
    assert cur.loc[kind_of["dicom_jpeg_ls_monochrome1"], "orig_mode"] == "MONOCHROME1"
    assert "JPEG XL Lossless (1.2.840.10008.1.2.4.110)" in quarantine.loc[kind_of["dicom_jpeg_xl"], "reason"]
    for kind, mode in (("jpeg_cmyk", "CMYK"), ("jpeg_exif_rotated", "L")):  # lossy: close to the expected
        rid = kind_of[kind]
        expected = manifest["pixels"][rid]
        assert cur.loc[rid, "orig_mode"] == mode
        assert (cur.loc[rid, "orig_height"], cur.loc[rid, "orig_width"]) == expected.shape
        assert np.abs(stored(rid) - resize(expected, SIZE, "pad")).mean() < 4, kind
    rid = kind_of["jpeg_exif_rotated"]
    sideways = resize(np.rot90(manifest["pixels"][rid]), SIZE, "pad")  # as the file stores it (ROTATE_90)
    assert np.abs(stored(rid) - sideways).mean() > 20

    # nothing outside the roots: the outside PNG's pixels are nowhere, no output row has a path there
    assert pixel_sha256(outside["png_pixels"]) not in set(cur["pixel_sha256"])
    escaping = [i["record_id"] for i in items if i["kind"].startswith(("symlink_out", "dotdot", "absolute"))]
    assert len(escaping) == 6 and quarantine.loc[escaping, "path"].isna().all()
    for name in ("quarantine", "filtered"):
        paths = pd.read_parquet(out / name)["path"].dropna()
        assert not paths.map(lambda p: Path(p).resolve().is_relative_to(outside["dir"])).any()


def test_a_corrupt_file_in_the_batch_does_not_round_the_others_hashes(spark, tmp_path):
    """A batch with a decode error holds null hashes; the 64-bit pHash of every other image in that
    batch must still be exact (pandas would make the column float64 and round it by a few bits)."""
    import numpy as np
    from PIL import Image
    from pyspark.sql import functions as F

    from cxrspark.spark.udfs import make_prepare_udf, prepare_one

    rng = np.random.default_rng(3)
    paths = []
    for i in range(6):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (96, 96), dtype=np.uint8)).save(p)
        paths.append(str(p))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    paths.insert(3, str(tmp_path / "broken.png"))
    opts = dict(size=64, resize_mode="pad", contrast="none", max_pixels=10**7, max_file_bytes=10**7,
                jpeg_draft=True)
    udf = make_prepare_udf(**opts)
    got = {r["path"]: (r["phash"], r["decode_error"]) for r in spark.createDataFrame(
        [(p,) for p in paths], "path string").coalesce(1).select("path", udf(F.col("path")).alias("d"))
        .select("path", "d.phash", "d.decode_error").collect()}
    assert got[str(tmp_path / "broken.png")][0] is None and got[str(tmp_path / "broken.png")][1]
    for p in paths:
        if "broken" not in p:
            assert got[p] == (prepare_one(p, **opts)["phash"], None), p
