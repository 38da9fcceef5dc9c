"""Patient split and duplicate grouping: pure logic plus the banded LSH join on a real SparkSession."""
from __future__ import annotations

import random
from collections import Counter

from cxrspark.images.hashing import hamming, thumbnail, to_signed64
from cxrspark.ingest.dedup import candidate_pairs
from cxrspark.ingest.groups import connected_components
from cxrspark.ingest.split import assign_splits


def test_connected_components_merge_chains_and_name_by_smallest_member():
    comp = connected_components([("c", "b"), ("b", "a"), ("x", "y")])
    assert comp == {"a": "a", "b": "a", "c": "a", "x": "x", "y": "x"}


def _images(seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(300):
        label = rng.choices(["COVID-19", "Normal", "Pneumonia"], [1, 3, 2])[0]
        out += [(f"p{i}", label)] * rng.randint(1, 4)
    # a patient with two classes (stratified by the rarer one)
    out += [("mixed", "COVID-19"), ("mixed", "Normal")]
    return out


def test_split_is_patient_level_deterministic_and_near_the_ratios():
    images = _images()
    ratios = {"train": 0.72, "val": 0.18, "test": 0.10}
    a = assign_splits(images, ratios, seed=7)
    assert a == assign_splits(list(reversed(images)), ratios, seed=7)  # input order does not matter
    assert a != assign_splits(images, ratios, seed=8)  # the seed does
    assert set(a) == {u for u, _ in images}  # every unit has exactly one split (a dict: no straddling)
    per_split = Counter(a[u] for u, _ in images)
    for name, r in ratios.items():
        assert abs(per_split[name] / len(images) - r) < 0.03, (name, per_split)
    for label in ("COVID-19", "Normal", "Pneumonia"):  # stratified: every class in every split
        assert {a[u] for u, lab in images if lab == label} == set(ratios)


def test_two_way_split():
    images = _images(1)
    a = assign_splits(images, {"train": 0.9, "test": 0.1}, seed=0)
    share = sum(1 for u, _ in images if a[u] == "test") / len(images)
    assert set(a.values()) == {"train", "test"} and 0.07 < share < 0.13


def test_banded_join_finds_exactly_the_pairs_within_the_threshold(spark):
    rng = random.Random(3)
    threshold = 8
    hashes = [rng.getrandbits(64) for _ in range(150)]
    for i in range(60):  # planted neighbours at distances 1..threshold+2
        base = hashes[i]
        bits = rng.sample(range(64), 1 + i % (threshold + 2))
        for b in bits:
            base ^= 1 << b
        hashes.append(base)
    flat = thumbnail(__import__("numpy").zeros((8, 8), dtype="uint8"))
    rows = [(f"r{i:03d}", f"sha{i}", to_signed64(h), flat) for i, h in enumerate(hashes)]
    df = spark.createDataFrame(rows, "record_id string, pixel_sha256 string, phash long, thumb binary")
    found = {(r["a"], r["b"]): r["distance"]
             for r in candidate_pairs(df, threshold, min_correlation=-1.0).collect()}
    brute = {(a, b): hamming(ha, hb) for (a, _, ha, _) in rows for (b, _, hb, _) in rows
             if a < b and hamming(ha, hb) <= threshold}
    assert len(brute) >= 40
    assert found == brute


def test_near_candidates_need_correlated_thumbnails(spark):
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    b = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    rows = [("a", "x", 1, thumbnail(a)), ("b", "y", 1, thumbnail(b)), ("c", "z", 1, thumbnail(a))]
    df = spark.createDataFrame(rows, "record_id string, pixel_sha256 string, phash long, thumb binary")
    pairs = {(r["a"], r["b"]) for r in candidate_pairs(df, 8, min_correlation=0.95).collect()}
    assert pairs == {("a", "c")}  # same pHash everywhere, but only a and c look alike
