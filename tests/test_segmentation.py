"""Lung segmentation: rasterising V7 polygons, mask post-processing and QC, verified weights, the
U-Net's training job (real horovodrun, real MLflow store) and the Spark UDF in ingest."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxrspark.segmentation import masks as M
from cxrspark.segmentation.annotated import load_annotated, patient_split, read_annotation_files

REPO = Path(__file__).resolve().parents[1]


# ---- rasterisation ------------------------------------------------------------------------------
def test_rasterise_square_scaled_from_the_original_frame():
    # original 20x10 px, written 10x5: centres scale as x' = (x + 0.5) * 0.5 - 0.5.
    # x in [1.5, 9.5] -> [0.5, 4.5] (columns 1..4), y in [1.5, 5.5] -> [0.5, 2.5] (rows 1..2)
    square = np.array([[1.5, 1.5], [9.5, 1.5], [9.5, 5.5], [1.5, 5.5]])
    expected = np.zeros((5, 10), dtype=np.uint8)
    expected[1:3, 1:5] = 1
    np.testing.assert_array_equal(M.rasterise([square], (20, 10), (10, 5)), expected)


def test_rasterise_triangle_and_two_lungs_hand_computed():
    # pixel (r, c) is inside when its centre satisfies c > 0.5, r > 0.5, c + r < 7.5 (no centre lies
    # on an edge): rows 1..6 hold 6+5+4+3+2+1 pixels
    tri = np.array([[0.5, 0.5], [7.0, 0.5], [0.5, 7.0]])
    expected = np.zeros((8, 8), dtype=np.uint8)
    for r in range(1, 7):
        expected[r, 1:8 - r] = 1
    got = M.rasterise([tri], (8, 8), (8, 8))
    np.testing.assert_array_equal(got, expected)
    assert got.sum() == 21
    # a second polygon fills into the same class
    other = np.array([[6.6, 5.6], [7.4, 5.6], [7.4, 7.4], [6.6, 7.4]])
    both = M.rasterise([tri, other], (8, 8), (8, 8))
    assert both.sum() == 21 + 2 and both[6:8, 7].all()


def test_parse_v7_reports_bad_annotations():
    good = {"image": {"width": 100, "height": 80, "original_filename": "a.png"},
            "annotations": [{"name": "Lung", "polygon": {"path": [{"x": 1, "y": 1}, {"x": 9, "y": 1},
                                                                  {"x": 9, "y": 9}]}},
                            {"name": "PatientID:3", "tag": {}}]}
    ann = M.parse_v7(json.dumps(good))
    assert (ann.original_filename, ann.width, ann.height, len(ann.polygons)) == ("a.png", 100, 80, 1)
    cases = {
        "no_lung_polygon": {**good, "annotations": [{"name": "View/L", "tag": {}}]},
        "bad_image_size": {**good, "image": {"width": 0, "height": 80, "original_filename": "a.png"}},
        "bad_polygon": {**good, "annotations": [{"name": "Lung", "polygon": {"path": [{"x": 1, "y": 1}]}}]},
        "bad_annotation": {"annotations": []},
    }
    for code, doc in cases.items():
        with pytest.raises(M.AnnotationError, match=f"^{code}"):
            M.parse_v7(doc)
    with pytest.raises(M.AnnotationError, match="^bad_json"):
        M.parse_v7(b"{not json")


def test_generated_annotation_set_matches_its_true_masks_and_reports_problems(tmp_path):
    from cxrspark.sample import make_lung_sample

    sample = make_lung_sample(tmp_path, patients=4, images_per_patient=2)
    entries = list(read_annotation_files(sample["annotations"]))
    images = {p.name: (str(p), f"cohen:{p.name.split('-')[1]}") for p in Path(sample["images"]).glob("images/*")}
    for _, data in entries:
        try:
            ann = M.parse_v7(data)
        except M.AnnotationError:
            continue
        if ann.original_filename in sample["masks"]:
            truth = sample["masks"][ann.original_filename]
            got = M.rasterise(ann.polygons, (ann.width, ann.height), truth.shape[::-1])
            assert M.dice(got, truth) > 0.99
    data = load_annotated(iter(entries), images, 64, ["none", "equalize"])
    assert data.images.shape == (2, 8, 64, 64) and data.masks.shape == (8, 64, 64)
    assert sorted(code.split(":")[0] for _, code in data.problems) == ["no_lung_polygon", "unknown_image"]
    assert 0.1 < data.masks.mean() < 0.5  # two lungs, padded into a square


def test_patient_split_keeps_patients_whole_and_is_deterministic():
    keys = [f"p{i // 3}" for i in range(60)]
    train, val = patient_split(keys, 0.25, seed=7)
    assert sorted(np.concatenate([train, val])) == list(range(60))
    assert not {keys[i] for i in train} & {keys[i] for i in val}
    assert len({keys[i] for i in val}) == 5
    again = patient_split(keys, 0.25, seed=7)
    assert np.array_equal(again[1], val) and not np.array_equal(patient_split(keys, 0.25, seed=8)[1], val)


# ---- post-processing, QC, crops, storage ----------------------------------------------------------
def _two_lungs(size=100):
    prob = np.zeros((size, size), dtype=np.float32)
    prob[20:80, 15:45] = 0.9  # left lung, 1800 px
    prob[20:80, 55:85] = 0.8  # right lung, 1800 px
    prob[40:45, 25:30] = 0.1  # a hole in the left lung
    prob[2:4, 2:4] = 0.9  # a speck (4 px < 0.5% of 10000)
    return prob


def test_clean_mask_keeps_two_largest_regions_and_fills_holes():
    mask, components = M.clean_mask(_two_lungs())
    assert components == 2  # the speck is below min_component
    assert mask.sum() == 3600 and mask[2, 2] == 0 and mask[42, 27] == 1
    prob = _two_lungs()
    prob[85:95, 40:60] = 0.9  # a third region (200 px = 2%)
    mask3, n3 = M.clean_mask(prob)
    assert n3 == 3 and mask3.sum() == 3600  # counted, but only the two largest kept


def test_lung_qc_flags_implausible_masks():
    mask, n = M.clean_mask(_two_lungs())
    ok = M.lung_qc(mask, n, min_area=0.08, max_area=0.65, max_components=2)
    assert ok.ok and ok.reason is None and ok.area_fraction == 0.36
    small = M.lung_qc(mask[:, :] * (np.arange(100) < 20)[None, :], 1, min_area=0.08, max_area=0.65,
                      max_components=2)
    assert not small.ok and small.reason.startswith("lung_area_too_small")
    big = M.lung_qc(np.ones((10, 10), np.uint8), 1, min_area=0.08, max_area=0.65, max_components=2)
    assert big.reason.startswith("lung_area_too_large")
    many = M.lung_qc(mask, 4, min_area=0.08, max_area=0.65, max_components=2)
    assert many.reason == "too_many_regions: 4 > 2"
    assert M.lung_qc(np.zeros((10, 10), np.uint8), 0, min_area=0.08, max_area=0.65,
                     max_components=2).reason == "no_lungs_found"


def test_lung_box_crop_and_masking():
    mask, _ = M.clean_mask(_two_lungs())
    # box rows 20..80, cols 15..85 (exclusive); margin 10% of 60 and 70 -> 6 and 7 px
    assert M.lung_box(mask, 0.0) == (20, 15, 80, 85)
    assert M.lung_box(mask, 0.1) == (14, 8, 86, 92)
    assert M.lung_box(np.zeros((5, 5), np.uint8), 0.1) is None
    image = np.arange(100 * 100, dtype=np.uint32).reshape(100, 100).astype(np.uint8)
    crop = M.crop_to_lungs(image, mask, 0.0)
    assert crop.shape == (100, 100)
    # a 60x70 box padded into a square: the top and bottom 7 rows are padding
    assert crop[:7].max() == 0 and crop[8:92].mean() > 0
    masked = M.mask_outside_lungs(np.full((100, 100), 200, np.uint8), mask)
    assert masked.sum() == 200 * 3600 and masked[50, 50] == 0


def test_mask_storage_roundtrip_is_exact_and_compact():
    mask, _ = M.clean_mask(_two_lungs(224))
    data = M.encode_mask(mask)
    np.testing.assert_array_equal(M.decode_mask(data), mask)
    assert len(data) < 1000  # vs 50176 bytes raw


def test_analyse_stores_the_chosen_image():
    image = np.full((100, 100), 120, np.uint8)
    prob = _two_lungs()
    full = M.analyse(image, prob, stored_image="full")
    assert full.image is image and full.qc.ok
    masked = M.analyse(image, prob, stored_image="lung_masked")
    assert masked.image[50, 50] == 0 and masked.image[50, 30] == 120
    cropped = M.analyse(image, prob, stored_image="lung_crop", crop_margin=0.0)
    assert cropped.image.shape == (100, 100) and cropped.image[0].max() == 0  # padding of the 60x70 box
    none = M.analyse(image, np.zeros((100, 100), np.float32), stored_image="lung_crop")
    assert none.image is image and not none.qc.ok and none.qc.reason == "no_lungs_found"
