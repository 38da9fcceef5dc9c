"""Input standardisation (ingest.standardize): the pure functions on generated pictures, the stored image
of the U-Net path with a stand-in segmenter, and the ingest and folder prediction on a real SparkSession."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from scipy.special import ndtri

from cxrspark.images.standardize import (MIN_REGION, Standardizer, file_sha256, histmatch, normal_reference,
                                         padding, region, zscore)
from cxrspark.sample import COHEN_HEADER, csv_text, synthetic_cxr

REPO = Path(__file__).resolve().parents[1]


def _picture(seed: int = 0, shape=(96, 80)) -> np.ndarray:
    """A CXR-like picture whose grey levels stay well inside 0..255 (room for a style change)."""
    pic = synthetic_cxr(np.random.default_rng(seed), "Normal", *shape).astype(np.float64)
    return np.rint(40 + 0.5 * pic).astype(np.uint8)


def _padded(pic: np.ndarray, top: int = 10, left: int = 6) -> np.ndarray:
    out = np.zeros((pic.shape[0] + 2 * top, pic.shape[1] + 2 * left), np.uint8)
    out[top:top + pic.shape[0], left:left + pic.shape[1]] = pic
    return out


def _styled(pic: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """Another collection's style: a global gain and offset of the picture (padding stays black)."""
    out = np.clip(np.rint(pic.astype(np.float64) * gain + offset), 1, 255).astype(np.uint8)
    return np.where(pic > 0, out, 0).astype(np.uint8)


def _lungs(shape, cx=(0.32, 0.68), cy=0.45, rx=0.14, ry=0.3) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    return np.logical_or(*[((xx - x) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1 for x in cx]).astype(np.uint8)


# ---- pure functions --------------------------------------------------------------------------------
def test_zscore_over_a_mask_gives_lung_mean_128_and_sd_scale():
    pic = _padded(_picture(1))
    mask = _lungs(pic.shape)
    for scale in (20.0, 32.0):
        out = zscore(pic, mask, scale)
        lungs = out[mask.astype(bool)].astype(np.float64)
        assert out.dtype == np.uint8 and out.shape == pic.shape
        assert abs(lungs.mean() - 128) < 1.0 and abs(lungs.std() - scale) < 1.0
        assert not out[padding(pic)].any()  # the pad mode's black borders stay black
    # without a mask: the non-padding pixels, not the black borders, give the statistics
    out = zscore(pic)
    content = out[~padding(pic)].astype(np.float64)
    assert padding(pic).sum() > 0.2 * pic.size and abs(content.mean() - 128) < 1.0 and abs(content.std() - 32) < 1.0


@pytest.mark.parametrize("gain,offset", [(1.6, -25.0), (0.8, 30.0)])
@pytest.mark.parametrize("method", ["zscore", "histmatch"])
def test_a_global_gain_and_offset_of_the_collection_is_removed(method, gain, offset):
    pic = _padded(_picture(2))
    other = _styled(pic, gain, offset)
    mask = _lungs(pic.shape)
    std = Standardizer(method, 32.0)
    inside = ~padding(pic)
    assert np.abs(pic[inside].astype(int) - other[inside]).mean() > 10  # the raw images differ a lot
    for m in (mask, None):
        a, b = std(pic, m).astype(int), std(other, m).astype(int)
        diff = np.abs(a - b)
        # grey levels that the gain merges or splits cost at most a few levels here and there
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 3, (m is None, diff.mean(), diff.max())
        if gain > 1:  # no two levels merge: the same ranks, so histogram matching gives the same image
            assert method != "histmatch" or diff.max() == 0


def test_histmatch_output_quantiles_follow_the_reference(tmp_path):
    rng = np.random.default_rng(3)
    skewed = np.clip(rng.exponential(30.0, (120, 100)) + 5, 0, 255).astype(np.uint8)  # a very non-normal image
    probs = np.array([0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95])
    out = histmatch(skewed, scale=24.0)
    assert np.abs(np.quantile(out, probs) - (128 + 24.0 * ndtri(probs))).max() <= 2.5
    assert np.array_equal(normal_reference(24.0), np.clip(128 + 24.0 * ndtri((np.arange(1024) + 0.5) / 1024), 0, 255))
    # a reference image: its whole histogram, read from the file once
    ref = np.concatenate([np.full(3000, 40), np.linspace(60, 220, 9000)]).astype(np.uint8).reshape(100, 120)
    Image.fromarray(ref).save(tmp_path / "ref.png")
    std = Standardizer.build("histmatch", 32.0, tmp_path / "ref.png")
    assert std.reference is not None and len(std.reference) == 1024
    matched = std(skewed)
    probs = np.array([0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 0.9, 0.95])  # away from the spike's edge at 0.25
    assert np.abs(np.quantile(matched, probs) - np.quantile(ref, probs)).max() <= 3
    assert (matched == 40).mean() == pytest.approx(0.25, abs=0.03)  # the reference's spike is reproduced


def test_degenerate_images_do_not_crash_and_fall_back():
    pic = _padded(_picture(4))
    for method in ("zscore", "histmatch"):
        std = Standardizer(method, 32.0)
        for constant in (0, 77, 255):  # a constant image is left unchanged
            flat = np.full((40, 50), constant, np.uint8)
            assert np.array_equal(std(flat), flat) and np.array_equal(std(flat, np.ones_like(flat)), flat)
        plain = std(pic)
        empty = np.zeros(pic.shape, np.uint8)
        tiny = empty.copy()
        tiny[50, 40:45] = 1
        assert tiny.sum() < MIN_REGION * pic.size
        # an empty or too small mask: the non-padding pixels, as without a mask
        assert np.array_equal(std(pic, empty), plain) and np.array_equal(std(pic, tiny), plain)
        # a mask over pixels that are all equal (nothing to standardise by): the non-padding pixels
        flat_lungs = pic.copy()
        lungs = _lungs(pic.shape).astype(bool)
        flat_lungs[lungs] = 90
        assert np.array_equal(region(flat_lungs, lungs), ~padding(pic))
        assert np.array_equal(std(flat_lungs, lungs), std(flat_lungs))
        # an image that is padding but for a few pixels: the whole image, no crash
        speck = np.zeros((64, 64), np.uint8)
        speck[30, 30:33] = (10, 200, 40)
        assert std(speck).shape == (64, 64)
    assert np.array_equal(Standardizer("none")(pic), pic)
    with pytest.raises(ValueError, match="unknown standardize method"):
        Standardizer("whiten")
    with pytest.raises(ValueError, match="mask shape"):
        zscore(pic, np.ones((3, 3), np.uint8))


class _FixedLungs:
    """A segmenter that finds the same two lungs in every image (the U-Net path without TensorFlow)."""

    def probabilities(self, stack: np.ndarray) -> np.ndarray:
        return np.stack([_lungs(stack.shape[1:], cx=(0.36, 0.62), cy=0.5, rx=0.1, ry=0.22).astype(np.float32)
                         for _ in stack])


@pytest.mark.parametrize("stored_image", ["full", "lung_crop", "lung_masked"])
def test_the_unet_path_standardises_the_stored_image_over_its_aligned_lung_mask(stored_image):
    from cxrspark.segmentation.masks import decode_mask, mask_in_stored_frame
    from cxrspark.spark.udfs import segment_batch

    size = 64
    pics = [np.asarray(Image.fromarray(_styled(_picture(s), g, o)).resize((size, size))) for s, g, o in
            ((5, 1.0, 0.0), (6, 1.5, -30.0), (7, 0.7, 40.0))]
    opts = dict(stored_image=stored_image, crop_margin=0.05, threshold=0.5, min_area=0.08, max_area=0.65,
                max_components=2, min_region=0.01)
    raw = segment_batch(_FixedLungs(), [p.tobytes() for p in pics] + [None], [size] * 3 + [None], **opts)
    out = segment_batch(_FixedLungs(), [p.tobytes() for p in pics] + [None], [size] * 3 + [None], **opts,
                        standardize=Standardizer("zscore", 32.0))
    assert out["image"].iloc[3] is None  # a row without an image stays null
    pd.testing.assert_frame_equal(out.drop(columns="image"), raw.drop(columns="image"))  # masks and QC unchanged
    for k in range(3):
        mask = decode_mask(out["lung_mask"].iloc[k])
        lungs = mask_in_stored_frame(mask, stored_image, 0.05).astype(bool)
        img = np.frombuffer(out["image"].iloc[k], np.uint8).reshape(size, size).astype(np.float64)
        assert abs(img[lungs].mean() - 128) < 1.5 and abs(img[lungs].std() - 32) < 1.5, (stored_image, k)
        if stored_image == "lung_masked":
            assert not img[~mask.astype(bool)].any()  # non-lung pixels stay 0


# ---- the ingest and folder prediction on Spark ------------------------------------------------------
def _cohen_tree(root: Path, n: int = 12) -> Path:
    """A Cohen-layout source of ``n`` pictures of three classes (PNG, not square: padded at ingest), each
    with its own grey-level style (gain and offset), one patient per picture."""
    images = root / "cohen" / "images"
    images.mkdir(parents=True)
    cells = []
    findings = ("COVID-19", "No Finding", "Pneumonia")
    for i in range(n):
        pic = synthetic_cxr(np.random.default_rng(100 + i), ("COVID-19", "Normal", "Pneumonia")[i % 3], 120, 96)
        gain, offset = 0.5 + 0.08 * i, 10.0 + 5 * (i % 4)
        Image.fromarray(np.clip(np.rint(pic * gain + offset), 0, 255).astype(np.uint8)).save(images / f"im{i:02d}.png")
        c = dict.fromkeys(COHEN_HEADER, "")
        c.update(patientid=f"P{i}", finding=findings[i % 3], view="PA", modality="X-ray", folder="images",
                 filename=f"im{i:02d}.png")
        cells.append([c[k] for k in COHEN_HEADER])
    (root / "cohen" / "metadata.csv").write_text(csv_text(COHEN_HEADER, cells))
    return root / "cohen"


def _config(tmp: Path, cohen: Path, output: Path, *overrides: str):
    from cxrspark.config import load_config

    f = tmp / "sources.yaml"
    f.write_text(yaml.safe_dump({"sources": [{"name": "cohen", "kind": "cohen", "root": str(cohen)}]}))
    return load_config([REPO / "conf/ingest.yaml", f], [f"ingest.output={output}", "ingest.image_size=64",
                                                       "ingest.dedup.near=false", *overrides])


@pytest.fixture(scope="module")
def ingests(spark, tmp_path_factory):
    from cxrspark.ingest.pipeline import run_ingest

    tmp = tmp_path_factory.mktemp("standardize")
    cohen = _cohen_tree(tmp / "raw")
    out = {"tmp": tmp, "cohen": cohen}
    for name, extra in (("plain", ()), ("zscore", ("ingest.standardize.method=zscore",))):
        out[name] = run_ingest(spark, _config(tmp, cohen, tmp / name, *extra), log=lambda _: None)
    return out


def _stored(dataset: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((dataset / "curated").iterdir())], ignore_index=True)


def test_an_ingest_with_zscore_stores_standardised_images_and_hashes_differently(ingests):
    plain, std = ingests["plain"], ingests["zscore"]
    assert plain["counts"] == std["counts"] and std["counts"]["curated"] == 12
    assert std["dataset_hash"] != plain["dataset_hash"]
    assert std["standardize"]["method"] == "zscore" and plain["standardize"]["method"] == "none"
    assert std["config"]["ingest"]["standardize"]["method"] == "zscore"
    assert std["protocol"]["leaky"] is False
    before, after = (_stored(ingests["tmp"] / n).set_index("record_id").sort_index() for n in ("plain", "zscore"))
    assert list(before.index) == list(after.index)
    assert (before["pixel_sha256"] == after["pixel_sha256"]).all()  # the decoded pixels (and dedup) are untouched
    raw_means, means, sds = [], [], []
    for rid in after.index:
        a = np.frombuffer(before.loc[rid, "image"], np.uint8).reshape(64, 64)
        b = np.frombuffer(after.loc[rid, "image"], np.uint8).reshape(64, 64)
        pad = padding(a)
        assert pad.any() and not b[pad].any()  # padded (the pictures are not square), and the borders stay black
        raw_means.append(a[~pad].mean())
        means.append(b[~pad].mean())
        sds.append(b[~pad].std())
    assert np.ptp(raw_means) > 40  # every picture had its own style ...
    assert np.abs(np.array(means) - 128).max() < 2 and np.abs(np.array(sds) - 32).max() < 2  # ... removed


def test_a_reference_image_is_recorded_and_a_bad_one_stops_the_ingest_before_any_work(ingests, spark, tmp_path):
    from cxrspark.ingest.pipeline import run_ingest
    from cxrspark.ingest.stages import standardize_record

    Image.fromarray(_picture(9)).save(tmp_path / "ref.png")
    cfg = _config(tmp_path, ingests["cohen"], tmp_path / "ds", "ingest.standardize.method=histmatch",
                  f"ingest.standardize.reference={tmp_path / 'ref.png'}")
    rec = standardize_record(cfg.ingest)
    assert rec["reference_sha256"] == file_sha256(tmp_path / "ref.png") and rec["method"] == "histmatch"
    (tmp_path / "bad.png").write_bytes(b"not an image")
    for bad in ("bad.png", "missing.png"):
        cfg = _config(tmp_path, ingests["cohen"], tmp_path / "ds", "ingest.standardize.method=histmatch",
                      f"ingest.standardize.reference={tmp_path / bad}")
        with pytest.raises(ValueError, match="ingest.standardize.reference"):
            run_ingest(spark, cfg, log=lambda _: None)
    assert not (tmp_path / "ds").exists()


def test_predict_on_a_folder_standardises_exactly_as_the_ingest_did(ingests, spark, tmp_path):
    from cxrspark.config import load_config
    from cxrspark.predict import _folder_frame, preprocessing_config, preprocessing_differences

    dataset = ingests["tmp"] / "zscore"
    cfg = load_config([REPO / "conf/ingest.yaml"], ["ingest.image_size=64"])  # standardize: none here
    prep, where = preprocessing_config(cfg, dataset)
    assert where == str(dataset) and prep.ingest.standardize.method == "zscore"
    assert preprocessing_differences(ingests["tmp"] / "plain", dataset) == [
        "standardize.method: 'none' here, 'zscore' in training"]
    df, n = _folder_frame(spark, ingests["cohen"] / "images", "*.png", prep)
    got = {r["record_id"]: bytes(r["image"]) for r in df.select("record_id", "image").collect()}
    stored = _stored(dataset)
    want = {Path(p).name: bytes(img) for p, img in zip(stored["source_path"], stored["image"])}
    assert n == len(got) == len(want) == 12 and got == want
    summary = json.loads((dataset / "summary.json").read_text())
    assert summary["standardize"]["method"] == "zscore"
