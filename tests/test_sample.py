"""The generated sample tree: deterministic, read by every adapter, and its manifest is right for the
adapter-level outcomes (stage a: metadata errors, stage b: filters). Stages c-d are checked by the
pipeline tests. No Spark here."""
from __future__ import annotations

import io
import itertools
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps

from cxrspark.labels import CLASSES
from cxrspark.sample import MIN_PHASH_DISTANCE, SOURCES, STAGES, make_sample_tree, phash_reference, sources_config
from cxrspark.schema import FRONTAL_VIEWS, LATERAL_VIEWS, UNKNOWN_VIEW, SourceRecord
from cxrspark.sources import make_adapter

OUTCOME_KEYS = {"curated": "curated", "filtered": "filtered", "duplicate": "duplicates",
                "quarantined": "quarantined"}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sample")
    start = time.perf_counter()
    manifest = make_sample_tree(root, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"make_sample_tree took {elapsed:.1f} s"
    return root, manifest


@pytest.fixture(scope="module")
def records(sample) -> dict[str, list[SourceRecord]]:
    _, manifest = sample
    return {c["name"]: list(make_adapter(c["kind"], c["name"], c["root"], c["options"]).checked_records())
            for c in sources_config(manifest)}


def adapter_stage(r: SourceRecord) -> tuple[str, str] | None:
    """The pipeline's stage a/b decision for one record: (outcome, reason code) or None (goes on)."""
    if r.error:
        return "quarantined", r.error.split(":", 1)[0]
    if r.modality != "X-ray":
        return "filtered", "modality"
    if r.view in LATERAL_VIEWS:
        return "filtered", "lateral_view"
    if r.view not in FRONTAL_VIEWS and r.view != UNKNOWN_VIEW:
        return "filtered", "non_frontal_view"
    if r.label is None:
        return "filtered", "unusable_label"
    return None


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load_grey(path: Path) -> Image.Image:
    if path.suffix == ".dcm":
        ds = pydicom.dcmread(path)
        a = ds.pixel_array.astype(np.float64)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            a = a.max() - a
        return Image.fromarray(((a - a.min()) / np.ptp(a) * 255).astype(np.uint8))
    return ImageOps.exif_transpose(Image.open(path)).convert("L")


# ---- the tree ---------------------------------------------------------------------------------------------------
def test_deterministic_for_a_seed(sample, tmp_path):
    root, manifest = sample
    again = make_sample_tree(tmp_path / "again", seed=0)
    assert tree_bytes(root) == tree_bytes(tmp_path / "again")
    assert {k: v for k, v in again.items() if k != "sources"} == {k: v for k, v in manifest.items() if k != "sources"}
    other = make_sample_tree(tmp_path / "other", seed=1)
    a, b = tree_bytes(root), tree_bytes(tmp_path / "other")
    assert a.keys() == b.keys() and a != b, "another seed gives other pictures in the same layout"
    assert other["expected"] == manifest["expected"]


def test_small(sample):
    root, manifest = sample
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 4 * 2**20
    assert 60 <= manifest["expected"]["rows"] <= 90
    for rel in manifest["base_images"]:
        w, h = load_grey(root / rel).size
        assert 96 <= w <= 200 and 96 <= h <= 200, rel


def test_manifest_is_consistent(sample):
    root, manifest = sample
    exp = manifest["expected"]
    assert [s["name"] for s in manifest["sources"]] == [n for n, _ in SOURCES]
    assert exp["rows"] == exp["curated"] + exp["filtered"] + exp["duplicates"] + exp["quarantined"]
    assert exp["rows"] == len(manifest["rows"]) == sum(s["rows"] for s in manifest["per_source"].values())
    assert sum(manifest["expected_reasons"].values()) == exp["filtered"] + exp["quarantined"]
    assert sum(manifest["expected_duplicates"].values()) == exp["duplicates"]
    counted = Counter(OUTCOME_KEYS[r["outcome"]] for r in manifest["rows"])
    assert {k: counted[k] for k in ("curated", "filtered", "duplicates", "quarantined")} == \
        {k: exp[k] for k in ("curated", "filtered", "duplicates", "quarantined")}
    # every reason code the pipeline knows is planted at least once
    assert set(manifest["expected_reasons"]) == {
        "missing_file", "path_outside_root", "malformed_row", "bad_encoding", "modality", "lateral_view",
        "non_frontal_view", "unusable_label", "empty_file", "corrupt_image", "not_an_image", "decompression_bomb",
        "duplicate_label_conflict"}
    assert manifest["expected_reasons"]["duplicate_label_conflict"] == 2
    # enough of every class for a 3-way split
    curated = Counter(r["label"] for r in manifest["rows"] if r["outcome"] == "curated")
    assert set(curated) == set(CLASSES) and min(curated.values()) >= 6
    assert manifest["expected_curated_labels"] == dict(curated)
    # every duplicate group keeps exactly one row, with one label
    groups: dict[str, list[dict]] = {}
    for r in manifest["rows"]:
        if r.get("dup_group"):
            groups.setdefault(r["dup_group"], []).append(r)
    for name, rows in groups.items():
        outcomes = Counter(r["outcome"] for r in rows)
        if outcomes["quarantined"]:
            assert {r["reason"] for r in rows} == {"duplicate_label_conflict"} and len({r["label"] for r in rows}) == 2
        else:
            assert outcomes == {"curated": 1, "duplicate": len(rows) - 1} and len({r["label"] for r in rows}) == 1


def test_duplicates_link_patients_across_sources(sample, records):
    _, manifest = sample
    by_id = {r.record_id: r for recs in records.values() for r in recs}
    dups = [p for p in manifest["planted"] if p["outcome"] == "duplicate"]
    assert Counter(p["reason"] for p in dups) == {"exact_duplicate": 2, "near_duplicate": 3}
    cross = [p for p in dups if p["source"] == "darkcovidnet" and p["of"].startswith("cohen:")]
    assert {p["reason"] for p in cross} == {"exact_duplicate", "near_duplicate"}
    for p in cross:
        assert by_id[p["record_id"]].patient_key != by_id[p["of"]].patient_key
        assert by_id[p["record_id"]].label == by_id[p["of"]].label
    same_file = [p for p in dups if p["source"] == "cohen"]
    assert len(same_file) == 1 and by_id[same_file[0]["record_id"]].path == by_id[same_file[0]["of"]].path


def test_pictures_are_distinct_and_near_duplicates_are_near(sample, records):
    root, manifest = sample
    hashes = {rel: phash_reference(load_grey(root / rel)) for rel in manifest["base_images"]}
    assert len(hashes) >= 55
    dist = [bin(a ^ b).count("1") for a, b in itertools.combinations(hashes.values(), 2)]
    assert min(dist) >= MIN_PHASH_DISTANCE - 2, "two base pictures are perceptually too close"
    assert np.median(dist) >= 20
    by_id = {r.record_id: r for recs in records.values() for r in recs}
    for p in manifest["planted"]:
        if p["outcome"] != "duplicate":
            continue
        copy, orig = Path(by_id[p["record_id"]].path), Path(by_id[p["of"]].path)
        a, b = load_grey(copy), load_grey(orig)
        if p["reason"] == "exact_duplicate":
            assert np.array_equal(np.asarray(a), np.asarray(b))
        else:
            assert bin(phash_reference(a) ^ phash_reference(b)).count("1") <= 6, p
    conflict = [by_id[p["record_id"]] for p in manifest["planted"] if p["reason"] == "duplicate_label_conflict"]
    assert len(conflict) == 2 and len({r.label for r in conflict}) == 2
    assert Path(conflict[0].path).read_bytes() == Path(conflict[1].path).read_bytes()


def test_encodings_and_broken_files(sample, records):
    root, manifest = sample
    seen = set()
    for recs in records.values():
        for r in recs:
            if r.path is None or r.path.endswith(".dcm"):
                continue
            try:
                with Image.open(r.path) as im:
                    seen.add((im.format, im.mode))
                    if im.format == "JPEG" and im.getexif().get(0x0112, 1) != 1:
                        seen.add(("JPEG", "exif-orientation"))
                    if im.format == "PNG" and Path(r.path).suffix == ".jpg":
                        seen.add(("PNG", "as .jpg"))
            except Exception:  # noqa: BLE001 - the planted broken files, checked below
                pass
    assert seen >= {("JPEG", "L"), ("JPEG", "RGB"), ("JPEG", "CMYK"), ("JPEG", "exif-orientation"), ("PNG", "L"),
                    ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("PNG", "as .jpg")}
    photometric = {pydicom.dcmread(r.path, stop_before_pixels=True).PhotometricInterpretation
                   for r in records["rsna"] if r.path}
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    by_id = {r.record_id: r for recs in records.values() for r in recs}
    decode = {p["reason"]: Path(by_id[p["record_id"]].path) for p in manifest["planted"] if p["stage"] == "decode"}
    assert set(decode) == {"empty_file", "corrupt_image", "not_an_image", "decompression_bomb"}
    assert decode["empty_file"].stat().st_size == 0
    with pytest.raises(Exception):
        Image.open(decode["not_an_image"])
    with pytest.raises(OSError):
        with Image.open(decode["corrupt_image"]) as im:
            im.load()
    bomb = decode["decompression_bomb"]
    assert bomb.stat().st_size < 20_000
    with Image.open(bomb) as im:  # the header alone: 64 M pixels, above the pipeline's 50 M limit
        assert im.size[0] * im.size[1] > 50_000_000


# ---- adapters on the tree: stages a and b ----------------------------------------------------------------------
def test_every_adapter_reads_its_part(sample, records):
    _, manifest = sample
    assert set(records) == {n for n, _ in SOURCES}
    for name, recs in records.items():
        assert len(recs) == manifest["per_source"][name]["rows"], name
    all_ids = [r.record_id for recs in records.values() for r in recs]
    assert all_ids == [r["record_id"] for r in manifest["rows"]], "same rows, same stable order"


def test_adapter_outcomes_match_the_manifest(sample, records):
    _, manifest = sample
    expected = {p["record_id"]: (p["outcome"], p["reason"]) for p in manifest["planted"]
                if p["stage"] in ("metadata", "filter")}
    got = {r.record_id: stage for recs in records.values() for r in recs if (stage := adapter_stage(r))}
    assert got == expected
    # counts per reason, as the pipeline will report them
    reasons = Counter(reason for _, reason in got.values())
    assert reasons == {r: n for r, n in manifest["expected_reasons"].items() if STAGES[r] in ("metadata", "filter")}
    assert sum(outcome == "filtered" for outcome, _ in got.values()) == manifest["expected"]["filtered"]
    rows = {r["record_id"]: r for r in manifest["rows"]}
    for recs in records.values():
        for r in recs:
            assert r.label == rows[r.record_id]["label"], r.record_id
            assert r.source_path == rows[r.record_id]["source_path"], r.record_id


def test_adapter_level_details(records):
    cohen = records["cohen"]
    assert sum(r.modality == "CT" for r in cohen) == 1 and sum(r.view == "Lateral" for r in cohen) == 1
    # patients with several images (patient-level splitting matters)
    assert max(Counter(r.patient_key for r in cohen if not r.error).values()) >= 3
    assert Counter(r.patient_key for r in records["figure1"])["figure1:COVID-00001"] == 3
    assert any("é" in r.provenance.get("notes", "") for r in records["figure1"]), "Latin-1 decoded"
    assert len({r.patient_key for r in records["mhh"]}) == 2
    rsna = records["rsna"]
    assert {r.view for r in rsna if r.path} == {"PA", "AP"}
    assert all(r.sex in ("M", "F") and isinstance(r.age, int) for r in rsna if r.path)
    assert max(r.provenance["box_count"] for r in rsna) == 2
    kermany = records["kermany"]
    assert Counter(r.patient_key for r in kermany)["kermany:person1"] == 2
    assert {r.provenance["split"] for r in kermany} == {"train", "test"}
    rad = records["radiography"]
    assert not any("masks" in r.source_path for r in rad)
    assert all(r.provenance.get("url", "").startswith("https://") for r in rad)


def test_sources_config(sample):
    root, manifest = sample
    config = sources_config(manifest)
    assert [c["name"] for c in config] == [n for n, _ in SOURCES]
    assert all(set(c) == {"name", "kind", "root", "options"} and Path(c["root"]).is_dir() for c in config)
    assert all(Path(c["root"]).parent == root for c in config)


def test_every_adapter_derives_label_and_keys_through_the_one_mapping(tmp_path):
    """Labels come only from labels.normalise_finding of the kept finding; ids and patient keys are
    namespaced by the source name (SourceAdapter.record)."""
    from cxrspark.labels import normalise_finding
    from cxrspark.sample import make_sample_tree, sources_config
    from cxrspark.sources import make_adapter

    manifest = make_sample_tree(tmp_path / "raw", seed=0)
    kinds = set()
    for s in sources_config(manifest):
        for rec in make_adapter(s["kind"], s["name"], s["root"], s["options"]).records():
            kinds.add(s["kind"])
            assert rec.label == normalise_finding(rec.finding), rec
            assert rec.record_id.startswith(f"{s['name']}:") and rec.patient_key.startswith(f"{s['name']}:")
            assert rec.source == s["name"]
    assert len(kinds) == 8
