"""Patient split and connected components: pure logic (the near-duplicate search: tests/test_dedup.py)."""
from __future__ import annotations

import random
from collections import Counter

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
