"""The whole ingest on a real SparkSession: generated fixture trees of every layout, then the real data."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrspark.config import load_config
from cxrspark.ingest.pipeline import run_ingest
from cxrspark.sample import make_sample_tree, sources_config

REPO = Path(__file__).resolve().parents[1]


def _config(tmp: Path, sources: list[dict], output: Path, *overrides: str):
    f = tmp / "sources.yaml"
    f.write_text(yaml.safe_dump({"sources": sources}))
    return load_config([REPO / "conf/ingest.yaml", f],
                       [f"ingest.output={output}", "ingest.image_size=64", *overrides])


def _read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(out / name)


def _curated(out: Path, splits=("train", "val", "test")) -> pd.DataFrame:
    return pd.concat([_read(out, f"curated/{s}") for s in splits], ignore_index=True)


@pytest.fixture(scope="module")
def sample(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ingest")
    manifest = make_sample_tree(tmp / "raw", seed=0)
    cfg = _config(tmp, sources_config(manifest), tmp / "out")
    summary = run_ingest(spark, cfg, log=lambda _: None)
    return {"tmp": tmp, "manifest": manifest, "summary": summary, "out": tmp / "out", "cfg": cfg}


def test_every_planted_outcome_has_its_exact_count(sample):
    exp, counts = sample["manifest"]["expected"], sample["summary"]["counts"]
    assert counts == {"curated": exp["curated"], "filtered": exp["filtered"],
                      "duplicate": exp["duplicates"], "quarantined": exp["quarantined"]}
    assert sum(counts.values()) == exp["rows"] == sample["summary"]["input_rows"]
    reasons = Counter()
    for name in ("quarantine", "filtered"):
        reasons.update(_read(sample["out"], name)["reason"].str.split(":").str[0])
    assert dict(reasons) == sample["manifest"]["expected_reasons"]
    assert "(exact)" in sample["summary"]["reconciliation"]


def test_quarantine_rows_keep_the_row_and_say_why(sample):
    q = _read(sample["out"], "quarantine")
    assert q["reason"].notna().all() and (q["reason"].str.len() > 5).all()
    assert set(q["stage"]) == {"metadata", "decode", "dedup"}
    traversal = q[q["reason"].str.startswith("path_outside_root")]
    assert len(traversal) == 1 and "etc/passwd" in traversal["source_path"].iloc[0]
    assert q["record_id"].is_unique


def test_curated_parquet_is_petastorm_readable_and_consistent(sample):
    from petastorm import make_batch_reader

    out = sample["out"]
    classes = sample["cfg"].ingest.classes
    rows = 0
    with make_batch_reader(f"file://{out}/curated/train", num_epochs=1, workers_count=1) as reader:
        for batch in reader:
            for img, h, w, label, idx in zip(batch.image, batch.height, batch.width, batch.label,
                                             batch.label_index):
                assert len(img) == h * w == 64 * 64
                assert classes[idx] == label
                rows += 1
    cur = _curated(out)
    assert rows == (cur["split"] == "train").sum() > 0
    img = np.frombuffer(cur["image"].iloc[0], dtype=np.uint8).reshape(64, 64)
    assert img.std() > 0  # real pixels, not an empty buffer
    assert cur["record_id"].is_unique and cur["pixel_sha256"].is_unique
    assert cur["patient_key"].str.match(r"^[a-z0-9_]+:.+").all()
    assert set(cur["label"]) == set(classes)


def test_no_patient_or_duplicate_group_straddles_splits(sample):
    cur = _curated(sample["out"])
    assert cur.groupby("patient_key")["split"].nunique().max() == 1
    assert cur.groupby("split_group")["split"].nunique().max() == 1
    dups = _read(sample["out"], "duplicates")
    # the dropped copy's patient is split with the kept copy's patient
    kept = cur.set_index("record_id")
    for _, d in dups.iterrows():
        assert d["duplicate_of"] in kept.index
        others = cur[cur["patient_key"] == d["patient_key"]]
        assert (others["split"] == kept.loc[d["duplicate_of"], "split"]).all()
    # a cross-source copy links two patient keys into one split group
    cross = dups[dups["patient_key"] != dups["kept_patient_key"]]
    assert len(cross) >= 1
    assert set(cur["split"]) == {"train", "val", "test"}


def test_dedup_report_lists_every_dropped_row_with_evidence(sample):
    dups = _read(sample["out"], "duplicates")
    assert len(dups) == sample["manifest"]["expected"]["duplicates"]
    assert set(dups["kind"]) == {"exact", "near"}
    assert (dups.loc[dups["kind"] == "exact", "distance_to_kept"] == 0).all()
    near = dups[dups["kind"] == "near"]
    v = sample["cfg"].ingest.dedup.verify
    # every near copy passed the verification against the image that was kept, and says how
    assert (near["inliers"] >= v.min_inliers).all() and (near["overlap"] >= v.min_overlap).all()
    assert (near["detail"] >= v.min_detail).all() and (near["rotation"].abs() <= v.max_rotation).all()
    assert near["evidence"].str.contains(r"inliers, scale .* rotation .* overlap .* detail").all()
    assert dups.loc[dups["kind"] == "exact", "evidence"].str.contains("same decoded pixels").all()
    assert dups["keep_rule"].str.contains("most original pixels").all()
    st = sample["summary"]["dedup"]
    assert st["candidate_pairs"] >= st["verified_pairs"] >= len(near)
    assert st["keypoint_rows"] > 0 and st["buckets"] > 0 and st["method"]["lsh_sha256"]


def test_same_input_same_output_and_rerun_replaces_atomically(sample, spark):
    out = sample["out"]
    before = _curated(out).sort_values("record_id").reset_index(drop=True)
    summary = run_ingest(spark, sample["cfg"], log=lambda _: None)  # same output folder again
    after = _curated(out).sort_values("record_id").reset_index(drop=True)
    assert summary["dataset_hash"] == sample["summary"]["dataset_hash"]
    pd.testing.assert_frame_equal(before, after)
    assert not list(out.parent.glob("out.incomplete-*")) and not list(out.parent.glob("out.old-*"))


def test_a_failed_run_leaves_the_previous_output_untouched(sample, spark):
    out = sample["out"]
    stamp = json.loads((out / "summary.json").read_text())["dataset_hash"]

    def fail(_msg: str) -> None:
        raise RuntimeError("simulated crash in the middle of ingest")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_ingest(spark, sample["cfg"], log=fail)
    assert json.loads((out / "summary.json").read_text())["dataset_hash"] == stamp
    assert not list(out.parent.glob("out.incomplete-*"))


def test_a_run_killed_between_the_commit_renames_gets_its_previous_output_back(tmp_path):
    from cxrspark.ingest.output import AtomicDir

    final = tmp_path / "dataset"
    first = AtomicDir(final)
    Path(first.path("summary.json")).write_text("first")
    first.commit()
    (tmp_path / "dataset.old-0ld0ld00").mkdir()  # an older replaced output whose removal was cut short
    (tmp_path / "dataset.old-0ld0ld00" / "part").write_text("")
    time.sleep(0.05)
    # commit() of a second run moved the output aside, then the process died before the second rename
    interrupted = AtomicDir(final)
    Path(interrupted.path("summary.json")).write_text("second, never committed")
    final.rename(tmp_path / "dataset.old-deadbeef")
    AtomicDir(final).abort()  # the next run starts
    assert (final / "summary.json").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_ratios_and_image_options_change_the_output(sample, spark):
    tmp = sample["tmp"]
    cfg = _config(tmp, sources_config(sample["manifest"]), tmp / "out2",
                  "ingest.split.ratios={train: 0.8, test: 0.2}", "ingest.contrast=clahe",
                  "ingest.resize_mode=crop", "ingest.image_size=32")
    summary = run_ingest(spark, cfg, log=lambda _: None)
    assert set(summary["splits"]) == {"train", "test"}
    cur = _curated(tmp / "out2", ("train", "test"))
    assert (cur["height"] == 32).all() and (cur["image"].map(len) == 32 * 32).all()
    assert summary["counts"]["curated"] == sample["summary"]["counts"]["curated"]


def test_the_near_duplicate_projection_is_part_of_the_dataset_hash(sample, spark):
    tmp = sample["tmp"]
    cfg = _config(tmp, sources_config(sample["manifest"]), tmp / "out3", "ingest.dedup.bits=36")
    summary = run_ingest(spark, cfg, log=lambda _: None)
    before = sample["summary"]
    assert summary["dedup"]["method"]["lsh_sha256"] != before["dedup"]["method"]["lsh_sha256"]
    assert summary["dataset_hash"] != before["dataset_hash"]
    assert summary["counts"] == before["counts"]  # the planted copies are found all the same


@pytest.mark.realdata
@pytest.mark.slow
def test_the_real_data_ingests_with_no_leak_and_every_row_accounted(real_dataset):
    summary = json.loads((real_dataset / "summary.json").read_text())
    counts = summary["counts"]
    assert summary["input_rows"] == 484 + 8 + 6 + 6 + 925 + 503
    assert sum(counts.values()) == summary["input_rows"]
    filtered = _read(real_dataset, "filtered")["reason"].str.split(":").str[0].value_counts()
    assert filtered["modality"] == 12 and filtered["lateral_view"] == 13
    cur = _curated(real_dataset)
    assert cur.groupby("patient_key")["split"].nunique().max() == 1
    assert cur.groupby("split_group")["split"].nunique().max() == 1
    assert cur["pixel_sha256"].is_unique  # no exact duplicate survives
    groups = cur.dropna(subset=["dup_group"]).groupby("dup_group")
    assert len(groups) > 0 and groups["split"].nunique().max() == 1
    # the darkcovidnet COVID-19 folder re-publishes Cohen images (114 of them, many re-cropped or
    # re-windowed): the keypoint search puts every one in one duplicate group with its original
    dups = _read(real_dataset, "duplicates")
    group = dict(zip(cur["record_id"], cur["dup_group"])) | dict(zip(dups["record_id"], dups["dup_group"]))
    rows = pd.concat([cur[["record_id", "source", "source_path"]], dups[["record_id", "source", "source_path"]]])
    rows["name"] = rows["source_path"].map(lambda p: Path(p).name)
    dark = rows[(rows["source"] == "darkcovidnet") & rows["source_path"].str.contains("/Covid-19/")]
    pairs = dark.merge(rows[rows["source"] == "cohen"], on="name")
    assert pairs["name"].nunique() >= 110
    same = [group.get(a) is not None and group.get(a) == group.get(b)
            for a, b in zip(pairs["record_id_x"], pairs["record_id_y"])]
    assert all(same), pairs[[not x for x in same]]
    assert summary["dedup"]["candidate_pairs"] <= 1e-4 * len(rows) * (len(rows) - 1) / 2
    # what survives of them is split with its Cohen patient (the file-name rule links them too)
    cur["name"] = cur["source_path"].map(lambda p: Path(p).name)
    copies = cur[cur["source"] == "darkcovidnet"].merge(cur[cur["source"] == "cohen"], on="name")
    assert (copies["split_x"] == copies["split_y"]).all()
    assert copies["patient_key_x"].str.startswith("cohen:").all()
